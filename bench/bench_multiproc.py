"""SFT speed and memory with 1 process, 2 processes (DDP over gloo) and 2 processes sharded
(FSDP2 over gloo, --fsdp True), 1 thread each, beside a matmul probe.

    python bench/bench_multiproc.py            # opt-125m architecture, random init, ~3 min
    python bench/bench_multiproc.py --model embedded --batch_size 64 --max_len 96 --steps 20

Prints one line per run: processes, tokens/s (non-pad tokens through forward + backward + AdamW,
summed over the ranks), seconds per step, the peak RSS of each rank, the bytes each rank holds of
the trained weights + gradients + AdamW state, and the 1-thread float32 matmul GFLOP/s measured
just before and just after it. The machine sometimes runs at half speed for minutes: compare only runs
whose probes agree. Each process gets its own batch, so 2 processes move twice the tokens per step;
perfect scaling is 2x the 1-process tokens/s on 2 free cores.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from probe import matmul_gflops  # noqa: E402  (bench/probe.py)


def worker(args) -> None:
    """One rank: build the SFT trainer, run warmup steps, then time `steps` training steps."""
    import torch

    from transformers import OPTForCausalLM

    from dataset.sft import SFTDataset
    from model.load import load_causal_lm, load_tokenizer, opt125m_config
    from trainer.base import LoopConfig, OptimConfig
    from trainer.dist import all_ranks, reduce_sum
    from trainer.fsdp import local_bytes
    from trainer.sft import SFTTrainer
    from utils import peak_rss_mb

    torch.set_num_threads(1)
    opt125m = args.model == "opt125m"
    tok = load_tokenizer("embedded" if opt125m else args.model)  # its ids fit OPT's vocabulary
    data = SFTDataset("ds/sft_train.jsonl", tok, args.max_len, verbose=False)
    torch.manual_seed(0)  # the same random weights in every rank
    model = OPTForCausalLM(opt125m_config()) if opt125m else load_causal_lm(args.model)
    loop = LoopConfig(out_dir=args.out, max_steps=args.warmup + args.steps, warmup_steps=0,
                      grad_clip=1.0, eval_interval=0, log_interval=10 ** 9, save_interval=0, seed=0,
                      bf16=False, resume=False, log_with="none", group_by_length=False,
                      gradient_checkpointing=False, fsdp=args.fsdp)
    optim = OptimConfig(lr=1e-3, weight_decay=0.0, batch_size=args.batch_size, grad_accum=1)
    trainer = SFTTrainer(model, tok, data, None, None, loop=loop, optim=optim, run_config={},
                         max_new_tokens=1, eval_batch_size=64, judge=None)
    del model  # the trainer holds the (sharded) model
    for _ in range(args.warmup):  # first steps allocate and warm caches
        trainer.training_step()
        trainer.step += 1
    tokens, start = 0, time.perf_counter()
    for _ in range(args.steps):
        batch = trainer.get_batch(trainer.step)
        tokens += int(batch["attention_mask"].sum())
        # fetches the same batch again (cheap): data order is a function of the step
        trainer.training_step()
        trainer.step += 1
    seconds = time.perf_counter() - start
    total = reduce_sum(trainer.accelerator, {"tokens": tokens})["tokens"]
    held = local_bytes(trainer.unwrap(trainer.model), trainer.optimizer)
    held = held["params"] * 2 + held["optimizer"]  # gradients (freed after a step): as the weights
    ranks = all_ranks(trainer.accelerator, (peak_rss_mb(), held / 2 ** 20))
    if trainer.accelerator.is_main_process:
        print(json.dumps({"processes": trainer.accelerator.num_processes,
                          "tokens_per_s": total / seconds, "s_per_step": seconds / args.steps,
                          "peak_rss_mb": [r[0] for r in ranks],
                          "state_mb": [r[1] for r in ranks]}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="opt125m",
                        help="'opt125m' (its architecture, random init), "
                        "'embedded' or a model directory")
    parser.add_argument("--batch_size", type=int, default=4, help="examples per process per step")
    parser.add_argument("--max_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--fsdp", type=lambda v: v == "True", default=False,
                        help=argparse.SUPPRESS)
    parser.add_argument(
        "--mmap_threshold",
        type=int,
        default=131072,
        help="glibc MALLOC_MMAP_THRESHOLD_ of every run (0: glibc's dynamic default)",
    )
    parser.add_argument("--out", default="out/bench_multiproc")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.worker:
        return worker(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    if args.mmap_threshold:
        # A fixed threshold: buffers above it are mmap'ed and go back to the system when freed.
        # glibc's default raises its threshold after each large free, so FSDP's per-step gather and
        # reduce-scatter buffers end up in the heap and stay counted in RSS (2 FSDP ranks peaked at
        # 3,092-3,241 MiB instead of 1,960 MiB at opt-125m's architecture; docs/scaling.md).
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    flags = [
        "--model",
        args.model,
        "--batch_size",
        str(args.batch_size),
        "--max_len",
        str(args.max_len),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--out",
        args.out,
        "--worker",
    ]
    for procs, sharded in ((1, False), (2, False), (2, True)):
        launcher = (
            [sys.executable]
            if procs == 1
            else [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(free_port()),
            ]
        )
        before = matmul_gflops(threads=1)
        cmd = launcher + [os.path.abspath(__file__)] + flags + ["--fsdp", str(sharded)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        after = matmul_gflops(threads=1)
        if proc.returncode != 0:
            sys.exit(f"{procs}-process run failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        kind = "FSDP" if sharded else ("DDP " if procs > 1 else "    ")
        rss = " / ".join(f"{m:.0f}" for m in r["peak_rss_mb"])
        state = " / ".join(f"{m:.0f}" for m in r["state_mb"])
        print(f"{procs} process(es) {kind} x 1 thread: {r['tokens_per_s']:7.0f} tokens/s, "
              f"{r['s_per_step']:.2f} s/step, peak RSS per rank {rss} MiB, weights + gradients + "
              f"AdamW per rank {state} MiB   (matmul probe, 1 thread fp32: {before:.1f} GFLOP/s "
              f"before, {after:.1f} after)", flush=True)


if __name__ == "__main__":
    main()
