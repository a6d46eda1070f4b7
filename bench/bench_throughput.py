"""Benchmark (not a test): training throughput of SFT, the reward model and PPO on the opt-125m architecture.

    bash ../shared/tools/get-smollm2.sh           # once: its tokenizer (a 49k byte-level BPE) tokenizes the data
    python bench/bench_throughput.py              # every run below, ~25 min on 2 quiet cores
    python bench/bench_throughput.py --runs sft-bf16,sft-bf16+group --sft_steps 4    # some runs, shorter

The model is facebook/opt-125m's exact architecture (125M parameters, dropout 0.1 as in its config) with
random weights, built locally; the project's trainers run it on real data from ../shared/data:
  sft  Alpaca demonstrations, batch 8, max length 256: non-pad and padded tokens per second
  rm   HH harmless pairs, 8 pairs per step, max length 256: pairs per second
  ppo  8 Alpaca prompts x 32 new tokens, 4 PPO epochs, minibatch 8, four full models (actor, reference,
       critic, reward model): seconds per rollout + update, split into generate / score / learn
A run is STAGE-PRECISION[+LEVER...]; levers: group (length-grouped batches: GROUP_BY_LENGTH), frozen_bf16
(PPO's frozen models keep bf16 weights: FROZEN_BF16), ckpt (activation checkpointing: GRADIENT_CHECKPOINTING).
Each run is a fresh process (its own peak RSS); the first WARMUP steps of each are not timed. A 1-second fp32
and bf16 matmul probe runs before and after each, so a figure from a busy machine can be read against what the
machine gave. "model GFLOP/s" counts 6 N FLOP per padded token (N = the parameters in matrix products, the
tied LM head included).
Prints a table and writes OUT_DIR/results.json.
"""
import copy
import dataclasses
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.probe import describe, probe  # noqa: E402
from dataset.prompt import PromptDataset  # noqa: E402
from dataset.rm import RMDataset  # noqa: E402
from dataset.sft import SFTDataset  # noqa: E402
from model.load import load_causal_lm, load_tokenizer, opt125m_config  # noqa: E402
from model.reward import load_reward_model  # noqa: E402
from trainer.base import LoopConfig, OptimConfig  # noqa: E402
from trainer.ppo import PPOConfig, PPOTrainer  # noqa: E402
from trainer.rm import RMTrainer  # noqa: E402
from trainer.sft import SFTTrainer  # noqa: E402
from utils import configure, peak_rss_mb, quiet_transformers, seed_everything, write_json  # noqa: E402

RUNS = "sft-fp32,sft-fp32+group,sft-bf16,sft-bf16+group,rm-fp32,rm-bf16,rm-bf16+group,ppo-fp32,ppo-bf16,ppo-bf16+frozen_bf16+group,ppo-bf16+frozen_bf16+group+ckpt"
TOKENIZER = os.path.expanduser("~/.cache/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")  # from get-smollm2.sh
ALPACA = "../shared/data/alpaca-en.jsonl"  # SFT demonstrations and PPO prompts
HH = "../shared/data/hh-harmless-train.jsonl"  # reward-model pairs
OUT_DIR = "out/bench_throughput"  # the model (OUT_DIR/opt125m), per-run scratch dirs, results.json
MAX_LEN = 256  # tokens per SFT example and per RM sequence
SFT_BATCH = 8  # demonstrations per step
SFT_STEPS = 10  # timed SFT steps
RM_PAIRS = 8  # pairs per step (HH: one pair per row)
RM_STEPS = 10  # timed RM steps
PPO_PROMPTS = 8  # prompts per rollout
PPO_NEW_TOKENS = 32  # tokens sampled per prompt (random weights: EOS is rare, so all 32 every time)
PPO_EPOCHS = 4  # passes over each rollout
PPO_MINI_BATCH = 8  # rows per PPO gradient step
PPO_ITERATIONS = 3  # timed rollout + update iterations
MAX_PROMPT_LEN = 224  # PPO prompt tokens (cut from the left): prompt + response fit MAX_LEN
WARMUP = 1  # untimed steps (iterations) before the timed ones
DATA_ROWS = 2000  # rows read from each data file (more than any run uses)
RUN = ""  # internal: the one run a child process measures

config = configure(globals())


# ---------------------------------------------------------------------------------------------- model
def build_model() -> str:
    """OUT_DIR/opt125m: opt-125m's architecture and dropout (0.1), random weights (seed 0), and SmolLM2's
    tokenizer (its 49,152 ids fit OPT's 50,272-row embedding)."""
    path = os.path.join(OUT_DIR, "opt125m")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    if not os.path.exists(TOKENIZER):
        raise SystemExit(f"error: {TOKENIZER} not found: run `bash ../shared/tools/get-smollm2.sh` (or set --tokenizer)")
    from transformers import AutoTokenizer, OPTForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(TOKENIZER), gguf_file=os.path.basename(TOKENIZER))
    cfg = opt125m_config()
    cfg.dropout = 0.1  # facebook/opt-125m's config (attention and activation dropout are 0.0 there)
    cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    OPTForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def matmul_params(model) -> int:
    """Parameters that take part in matrix products: every >= 2-D weight but the embeddings, plus the LM
    head (tied to the token embedding) where the model has one (a reward model has a scalar head instead)."""
    inner = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n)
    head = model.get_output_embeddings()
    return inner + (head.weight.numel() if head is not None else 0)


def known_fields(cls, **values):
    """cls(**values) without the values cls has no field for (measuring an older version of the trainers)."""
    return cls(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}})


def loop_config(out_dir: str, bf16: bool, levers: set) -> LoopConfig:
    return known_fields(LoopConfig, out_dir=out_dir, max_steps=10 ** 6, warmup_steps=0, grad_clip=1.0, eval_interval=0,
                        log_interval=1, save_interval=0, seed=0, bf16=bf16, resume=False, log_with="none",
                        group_by_length="group" in levers, gradient_checkpointing="ckpt" in levers)


# ---------------------------------------------------------------------------------------------- stages
def timed_steps(trainer, steps: int, count, on_timed_start=lambda: None) -> dict:
    """Run WARMUP + steps training steps; time the last `steps`. count(index) -> {name: amount} of step `index`."""
    totals, seconds = {}, 0.0
    for i in range(WARMUP + steps):
        if i == WARMUP:
            on_timed_start()
        trainer.step = i
        start = time.perf_counter()
        trainer.training_step()
        if i >= WARMUP:
            seconds += time.perf_counter() - start
            for k, v in count(i).items():
                totals[k] = totals.get(k, 0) + v
    return {"seconds": seconds, "steps": steps, **totals}


def run_sft(model_dir: str, out_dir: str, bf16: bool, levers: set) -> dict:
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    data = SFTDataset(ALPACA, tokenizer, MAX_LEN, limit=DATA_ROWS, verbose=False)
    trainer = SFTTrainer(model, tokenizer, data, None, None, loop=loop_config(out_dir, bf16, levers),
                         optim=OptimConfig(lr=2e-5, weight_decay=0.0, batch_size=SFT_BATCH, grad_accum=1),
                         run_config={}, max_new_tokens=1, eval_batch_size=64, judge=None)

    def count(i):
        mask = trainer.get_batch(i)["attention_mask"]
        return {"tokens": int(mask.sum()), "padded_tokens": mask.numel()}

    r = timed_steps(trainer, SFT_STEPS, count)
    r.update(tokens_per_s=r["tokens"] / r["seconds"], padded_tokens_per_s=r["padded_tokens"] / r["seconds"],
             matmul_params=matmul_params(model))
    r["model_gflops"] = 6 * r["matmul_params"] * r["padded_tokens_per_s"] / 1e9
    return r


def run_rm(model_dir: str, out_dir: str, bf16: bool, levers: set) -> dict:
    tokenizer = load_tokenizer(model_dir)
    model = load_reward_model(model_dir, tokenizer.pad_token_id)
    data = RMDataset(HH, tokenizer, MAX_LEN, on_mismatch="common_prefix", limit=DATA_ROWS, verbose=False)
    trainer = RMTrainer(model, tokenizer, data, None, loop=loop_config(out_dir, bf16, levers),
                        optim=OptimConfig(lr=1e-5, weight_decay=0.0, batch_size=RM_PAIRS, grad_accum=1),
                        run_config={}, eval_batch_size=8)

    def count(i):
        batch = trainer.get_batch(i)
        return {"pairs": len(batch["chosen_index"]), "tokens": int(batch["attention_mask"].sum()),
                "padded_tokens": batch["attention_mask"].numel()}

    r = timed_steps(trainer, RM_STEPS, count)
    r.update(pairs_per_s=r["pairs"] / r["seconds"], tokens_per_s=r["tokens"] / r["seconds"],
             matmul_params=matmul_params(model))
    r["model_gflops"] = 6 * r["matmul_params"] * r["padded_tokens"] / r["seconds"] / 1e9
    return r


def run_ppo(model_dir: str, out_dir: str, bf16: bool, levers: set) -> dict:
    import trainer.ppo as ppo_module

    tokenizer = load_tokenizer(model_dir)
    actor = load_causal_lm(model_dir)
    ref = copy.deepcopy(actor)
    critic = load_reward_model(model_dir, tokenizer.pad_token_id)
    reward_model = load_reward_model(model_dir, tokenizer.pad_token_id)
    prompts = PromptDataset(ALPACA, tokenizer, MAX_PROMPT_LEN, limit=DATA_ROWS, verbose=False)
    cfg = known_fields(PPOConfig, actor_lr=1e-6, critic_lr=1e-5, weight_decay=0.0, rollout_batch=PPO_PROMPTS, mini_batch=PPO_MINI_BATCH,
                    ppo_epochs=PPO_EPOCHS, stop_approx_kl=0.0, max_new_tokens=PPO_NEW_TOKENS, temperature=1.0, top_k=0,
                    top_p=1.0, beta=0.2, target_kl=0.0, kl_horizon=1000, gamma=1.0, lam=0.95, clip_range=0.2,
                    value_clip=0.2, ptx_coef=0.0, ptx_batch=8, missing_eos_penalty=1.0, normalize_scores=True,
                    frozen_bf16="frozen_bf16" in levers, close_truncated=False)
    trainer = PPOTrainer(actor, ref, critic, reward_model, tokenizer, prompts, cfg=cfg,
                         loop=loop_config(out_dir, bf16, levers), run_config={}, ptx_data=None, reward_fn=None,
                         judge=None, eval_prompts=None)
    phases = {"generate": 0.0, "experience": 0.0, "learn": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            phases[name] += time.perf_counter() - start
            return out
        return wrapper

    sample = ppo_module.sample_responses
    ppo_module.sample_responses = timed("generate", sample)
    trainer.make_experience = timed("experience", trainer.make_experience)
    trainer.learn = timed("learn", trainer.learn)
    lengths = []

    def count(i):
        lengths.append(trainer.last_sequence_shape)
        return {}

    trainer.last_sequence_shape = None
    original = trainer.make_experience

    def remember_shape(items):
        exp = original(items)
        trainer.last_sequence_shape = list(exp.sequences.shape)
        return exp

    trainer.make_experience = remember_shape
    r = timed_steps(trainer, PPO_ITERATIONS, count, on_timed_start=lambda: phases.update(dict.fromkeys(phases, 0.0)))
    ppo_module.sample_responses = sample
    n = PPO_ITERATIONS
    r.update(seconds_per_iteration=r["seconds"] / n, generate_s=phases["generate"] / n,
             score_s=(phases["experience"] - phases["generate"]) / n, learn_s=phases["learn"] / n,
             sequence_shapes=lengths)
    return r


STAGES = {"sft": run_sft, "rm": run_rm, "ppo": run_ppo}


def parse_run(run: str) -> tuple[str, bool, set]:
    stage, _, rest = run.partition("-")
    precision, *levers = rest.split("+")
    if stage not in STAGES or precision not in ("fp32", "bf16") or not set(levers) <= {"group", "frozen_bf16", "ckpt"}:
        raise SystemExit(f"error: --runs: {run!r} is not STAGE-PRECISION[+LEVER...] with STAGE in sft, rm, ppo, "
                         "PRECISION fp32 or bf16, LEVER group, frozen_bf16 or ckpt")
    return stage, precision == "bf16", set(levers)


def child(run: str) -> None:
    """Measure one run in this process and print its result as the last line (JSON)."""
    quiet_transformers()
    seed_everything(0)
    stage, bf16, levers = parse_run(run)
    out_dir = os.path.join(OUT_DIR, "runs", run)
    lock = os.path.join(out_dir, ".lock")
    if os.path.exists(lock):
        os.remove(lock)  # a scratch dir: an earlier benchmark's run may have left its lock
    result = STAGES[stage](os.path.join(OUT_DIR, "opt125m"), out_dir, bf16, levers)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def row(run: str, r: dict) -> str:
    stage = run.split("-")[0]
    if stage == "sft":
        figure = f"{r['tokens_per_s']:7.1f} tok/s ({r['padded_tokens_per_s']:.0f} padded)"
    elif stage == "rm":
        figure = f"{r['pairs_per_s']:7.2f} pairs/s ({r['tokens_per_s']:.0f} tok/s)"
    else:
        figure = (f"{r['seconds_per_iteration']:7.1f} s/iter (generate {r['generate_s']:.1f}, score {r['score_s']:.1f}, "
                  f"learn {r['learn_s']:.1f})")
    gflops = f"{r['model_gflops']:5.0f}" if "model_gflops" in r else "    -"
    return f"{run:34} {figure:58} {gflops} {r['peak_rss_mb'] / 1024:6.2f}   {r['probe']}"


def without_runs(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--runs="):
            skip = False
            continue
        if a == "--runs":
            skip = True
            continue
        out.append(a)
    return out


def main() -> None:
    if RUN:
        return child(RUN)
    runs = [r for r in RUNS.split(",") if r]
    for run in runs:
        parse_run(run)
    for path in (ALPACA, HH):
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} not found (the benchmark reads ../shared/data; see its README)")
    quiet_transformers()
    build_model()
    path = os.path.join(OUT_DIR, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    passed = without_runs(sys.argv[1:])  # every other override reaches the child processes
    print(f"{'run':34} {'throughput':58} {'GF/s':>5} {'GiB':>6}   matmul probe before / after (fp32, bf16 GFLOP/s)")
    for run in runs:
        before = probe()
        proc = subprocess.run([sys.executable, __file__, "--run", run, *passed], capture_output=True, text=True)
        after = probe()
        if proc.returncode:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise SystemExit(f"error: run {run} failed (exit {proc.returncode})")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(probe_before=before, probe_after=after, settings={k: v for k, v in config.items() if k != "RUN"},
                 probe=f"{before['fp32_gflops']:.0f}/{before['bf16_gflops']:.0f} -> "
                       f"{after['fp32_gflops']:.0f}/{after['bf16_gflops']:.0f}")
        results[run] = r
        write_json(path, results)
        print(row(run, r), flush=True)
    print(f"wrote {path}; {describe(probe())}")


if __name__ == "__main__":
    main()
