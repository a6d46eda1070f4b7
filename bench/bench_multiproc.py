"""SFT throughput with 1 process vs 2 processes (DDP over gloo), 1 thread each, beside a matmul probe.

    python bench/bench_multiproc.py                     # embedded model, batch 64 per process, 20 timed steps
    python bench/bench_multiproc.py --steps 5 --batch_size 16 --model out/opt125m-arch   # any model dir

Prints one line per run: processes, tokens/s (non-pad tokens through forward + backward + AdamW, summed
over the ranks), seconds per step, and the 1-thread float32 matmul GFLOP/s measured just before and
just after it. The machine sometimes runs at half speed for minutes (../shared/FACTS.md): compare
only runs whose probes agree. Each process gets its own batch, so 2 processes move twice the tokens
per step; perfect scaling is 2x the 1-process tokens/s on 2 free cores.
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

    from dataset.sft import SFTDataset
    from model.load import load_causal_lm, load_tokenizer
    from trainer.base import LoopConfig, OptimConfig
    from trainer.dist import reduce_sum
    from trainer.sft import SFTTrainer

    torch.set_num_threads(1)
    tok = load_tokenizer(args.model)
    data = SFTDataset("ds/sft_train.jsonl", tok, args.max_len, verbose=False)
    loop = LoopConfig(out_dir=args.out, max_steps=args.warmup + args.steps, warmup_steps=0, grad_clip=1.0, eval_interval=0,
                      log_interval=10 ** 9, save_interval=0, seed=0, bf16=False, resume=False, log_with="none", group_by_length=False, gradient_checkpointing=False)
    optim = OptimConfig(lr=1e-3, weight_decay=0.0, batch_size=args.batch_size, grad_accum=1)
    trainer = SFTTrainer(load_causal_lm(args.model), tok, data, None, None, loop=loop, optim=optim, run_config={},
                         max_new_tokens=1, judge=None)
    for _ in range(args.warmup):  # first steps allocate and warm caches
        trainer.training_step()
        trainer.step += 1
    tokens, start = 0, time.perf_counter()
    for _ in range(args.steps):
        batch = trainer.get_batch(trainer.step)
        tokens += int(batch["attention_mask"].sum())
        trainer.training_step()  # fetches the same batch again (cheap): data order is a function of the step
        trainer.step += 1
    seconds = time.perf_counter() - start
    total = reduce_sum(trainer.accelerator, {"tokens": tokens})["tokens"]
    if trainer.accelerator.is_main_process:
        print(json.dumps({"processes": trainer.accelerator.num_processes, "tokens_per_s": total / seconds,
                          "s_per_step": seconds / args.steps}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batch_size", type=int, default=64, help="examples per process per step")
    parser.add_argument("--max_len", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default="out/bench_multiproc")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.worker:
        return worker(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    flags = ["--model", args.model, "--batch_size", str(args.batch_size), "--max_len", str(args.max_len),
             "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", args.out, "--worker"]
    for procs in (1, 2):
        launcher = [sys.executable] if procs == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port())]
        before = matmul_gflops(threads=1)
        proc = subprocess.run(launcher + [os.path.abspath(__file__)] + flags, env=env, capture_output=True, text=True)
        after = matmul_gflops(threads=1)
        if proc.returncode != 0:
            sys.exit(f"{procs}-process run failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{procs} process(es) x 1 thread: {result['tokens_per_s']:8.0f} tokens/s, {result['s_per_step']:.3f} s/step"
              f"   (matmul probe, 1 thread fp32: {before:.1f} GFLOP/s before, {after:.1f} after)")


if __name__ == "__main__":
    main()
