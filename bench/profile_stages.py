"""Where a training step's time goes: one of the project's scripts, run as it is, with torch.profiler over a few
of its steps, the time split into matmuls, attention, the LM head, cross-entropy, elementwise ops, dtype casts,
the optimizer, data collation and the rest (Python and the framework between ops).

    python bench/profile_stages.py rm -- --model MODEL --train_data hh.jsonl --max_len 256 --batch_size 8 ...
    python bench/profile_stages.py sft|rm|rlhf [--steps 4] [--skip 2] -- SCRIPT SETTINGS

The script (train_sft.py, train_rm.py or train_rlhf.py) runs in this process with the settings after `--`; the
first --skip training steps are not profiled (the first one builds caches), the next --steps are. Each op's *own*
time (not its children's) goes to one category, so the categories add up to the steps' wall time; "rest" is the
time in no op (Python, autograd's bookkeeping). Collation is everything inside
`Trainer.get_batch`. The profiler itself adds some time to "rest". Prints a markdown table; --json FILE too.
"""
import argparse
import contextlib
import json
import os
import runpy
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch.profiler import ProfilerActivity, profile, schedule

SCRIPTS = {"sft": "train_sft.py", "rm": "train_rm.py", "rlhf": "train_rlhf.py"}
MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_weight_int8pack_mm"}
ATTENTION_PREFIX = ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_softmax", "aten::softmax",
                    "aten::_softmax_backward_data")
CROSS_ENTROPY = {"aten::log_softmax", "aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss",
                 "aten::nll_loss_forward", "aten::nll_loss_backward", "aten::nll_loss_nd", "aten::cross_entropy_loss",
                 "aten::logsumexp"}
OPTIMIZER_PREFIX = ("aten::_fused_adamw", "aten::_foreach", "aten::_fused_adam", "Optimizer.",
                    "aten::linalg_vector_norm", "aten::norm")  # the norms: gradient clipping
CASTS = {"aten::to", "aten::_to_copy", "aten::copy_", "aten::_autocast_to_reduced_precision", "aten::type_as"}
COLLATE, REST = "data collation (get_batch)", "rest: Python and framework between ops"
ORDER = ["matmuls (linear layers)", "LM head (vocabulary matmul)", "attention", "cross-entropy / log-softmax",
         "elementwise, norms, dropout", "dtype casts and copies", "optimizer (AdamW, clipping)"]


def category(name: str, shapes, vocab: int) -> str:
    """The category of one op from its name and input shapes."""
    if name in MATMUL:
        if any(vocab in tuple(s) for s in shapes if s):
            return "LM head (vocabulary matmul)"
        return "matmuls (linear layers)"
    if name.startswith(ATTENTION_PREFIX):
        return "attention"
    if name in CROSS_ENTROPY:
        return "cross-entropy / log-softmax"
    if name.startswith(OPTIMIZER_PREFIX):
        return "optimizer (AdamW, clipping)"
    if name in CASTS:
        return "dtype casts and copies"
    return "elementwise, norms, dropout"


def where(event, vocab: int) -> str:
    """The category of a profiled event: collation if it ran inside get_batch, the framework's own time for
    the step's root and autograd's wrappers, otherwise by the op."""
    parent = event
    while parent is not None:
        if parent.name == "get_batch":
            return COLLATE
        parent = parent.cpu_parent
    if event.name.startswith(("ProfilerStep", "autograd::")) or not event.name.startswith(("aten::", "Optimizer.")):
        return REST
    return category(event.name, event.input_shapes, vocab)


def main() -> None:
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit("usage: python bench/profile_stages.py sft|rm|rlhf [--steps N] [--skip K] -- SCRIPT SETTINGS")
    cut = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=sorted(SCRIPTS))
    parser.add_argument("--steps", type=int, default=4, help="profiled training steps")
    parser.add_argument("--skip", type=int, default=2, help="training steps before them, not profiled")
    parser.add_argument("--vocab", type=int, default=50272, help="the LM head's row count (opt-125m: 50272)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv[:cut])
    script_args = argv[cut + 1:]

    import trainer.base
    import trainer.grpo
    import trainer.onpolicy
    import trainer.ppo

    state = {"step": 0, "depth": 0, "active_wall": 0.0, "prof": None}
    total = args.skip + args.steps

    def active() -> bool:
        return args.skip <= state["step"] < total

    def wrap_step(cls):
        original = cls.__dict__["training_step"]

        def training_step(self):
            if state["depth"]:  # a subclass calling its parent's step: one step, counted once
                return original(self)
            state["depth"] += 1
            start = time.perf_counter()
            try:
                return original(self)
            finally:
                state["depth"] -= 1
                if active():
                    state["active_wall"] += time.perf_counter() - start
                state["step"] += 1
                state["prof"].step()
        cls.training_step = training_step

    for cls in (trainer.base.Trainer, trainer.onpolicy.OnPolicyTrainer, trainer.ppo.PPOTrainer,
                trainer.grpo.GRPOTrainer):
        if "training_step" in cls.__dict__:
            wrap_step(cls)
    get_batch = trainer.base.Trainer.get_batch

    def labelled_get_batch(self, index):
        with torch.profiler.record_function("get_batch"):
            return get_batch(self, index)
    trainer.base.Trainer.get_batch = labelled_get_batch

    script = SCRIPTS[args.stage]
    sched = schedule(wait=max(args.skip - 1, 0), warmup=min(args.skip, 1), active=args.steps, repeat=1)
    sys.argv = [script, "--max_steps" if args.stage != "rlhf" else "--iterations", str(total)] + script_args
    with profile(activities=[ProfilerActivity.CPU], schedule=sched, record_shapes=True) as prof:
        state["prof"] = prof
        with contextlib.redirect_stdout(sys.stderr):
            runpy.run_path(script, run_name="__main__")
    if state["step"] < total:
        sys.exit(f"the run took {state['step']} training steps, fewer than --skip + --steps = {total}")

    seconds = dict.fromkeys(ORDER + [COLLATE, REST], 0.0)
    top, calls = {}, {}
    for event in prof.events():
        name = where(event, args.vocab)
        seconds[name] += event.self_cpu_time_total / 1e6
        key = f"{event.name} {event.input_shapes}" if os.environ.get("PROFILE_SHAPES") else event.name
        top[key] = top.get(key, 0.0) + event.self_cpu_time_total / 1e6
        calls[key] = calls.get(key, 0) + 1
    if os.environ.get("PROFILE_TOP"):  # the ops that cost most, to check the categories
        for key, value in sorted(top.items(), key=lambda kv: -kv[1])[:int(os.environ["PROFILE_TOP"])]:
            print(f"{value / args.steps:8.3f} s/step  {calls[key] / args.steps:7.0f} calls/step  {key}", file=sys.stderr)
    wall = state["active_wall"]
    seconds[REST] += max(wall - sum(seconds.values()), 0.0)
    per_step = {k: v / args.steps for k, v in seconds.items()}
    print(f"\n{args.stage}: {args.steps} profiled steps, {wall / args.steps:.2f} s per step (under the profiler)")
    print("| where | s per step | share |\n| --- | ---: | ---: |")
    for name, value in per_step.items():
        print(f"| {name} | {value:.3f} | {value / max(wall / args.steps, 1e-12):.1%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"stage": args.stage, "steps": args.steps, "s_per_step": wall / args.steps,
                       "seconds_per_step": per_step, "settings": script_args}, f, indent=1)


if __name__ == "__main__":
    main()
