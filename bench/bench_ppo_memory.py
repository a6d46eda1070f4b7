"""Peak memory and time of one full-size PPO iteration (rollout + update) on the opt-125m architecture:
full fine-tuning (actor + separate reference copy) vs a LoRA actor (reference = actor with adapters off).

    python bench/bench_ppo_memory.py                 # both variants, ~5-10 min on 2 CPU cores
    python bench/bench_ppo_memory.py --ppo_epochs 4  # the default number of PPO epochs (slower, same peak)

Uses a locally built checkpoint with opt-125m's exact architecture and random weights (no download):
actor, reference, critic and reward model are all 125M-parameter models. Each variant runs
train_rlhf.py in its own process, so each peak RSS is that variant's alone. Prints a table.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ppo_epochs", type=int, default=1)
    parser.add_argument("--rollout_batch", type=int, default=64)
    parser.add_argument("--mini_batch", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=20)
    parser.add_argument("--out", default="out/bench_ppo_memory")
    args = parser.parse_args()
    os.chdir(ROOT)
    from model.load import build_opt125m_arch

    ckpt = build_opt125m_arch(os.path.join(args.out, "opt125m-arch"))
    rows = []
    for peft in ("none", "lora"):
        out_dir = os.path.join(args.out, peft)
        cmd = [
            sys.executable,
            "train_rlhf.py",
            "--sft_model",
            ckpt,
            "--rm_model",
            ckpt,
            "--peft",
            peft,
            "--iterations",
            "1",
            "--rollout_batch",
            str(args.rollout_batch),
            "--mini_batch",
            str(args.mini_batch),
            "--ppo_epochs",
            str(args.ppo_epochs),
            "--max_new_tokens",
            str(args.max_new_tokens),
            "--eval_prompts",
            "none",
            "--test_prompts",
            "none",
            "--out_dir",
            out_dir,
        ]
        start = time.time()
        subprocess.run(
            cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"}, stdout=subprocess.DEVNULL
        )
        summary = json.load(open(os.path.join(out_dir, "summary.json")))
        rows.append((peft, summary["peak_rss_mb"], summary["train_seconds"], time.time() - start))
    print(
        f"opt-125m architecture, 1 PPO iteration: {args.rollout_batch} prompts x <= {args.max_new_tokens} new tokens, "
        f"minibatch {args.mini_batch}, {args.ppo_epochs} PPO epoch(s), fp32"
    )
    print(
        "| actor | peak RSS (MiB) | rollout + update (s) | process wall (s) |\n| --- | --- | --- | --- |"
    )
    for peft, rss, secs, wall in rows:
        print(
            f"| {'full (separate reference)' if peft == 'none' else 'LoRA r=8 q,v (reference = adapters off)'} "
            f"| {rss:,.0f} | {secs:.1f} | {wall:.1f} |"
        )
    print(
        f"LoRA saves {rows[0][1] - rows[1][1]:,.0f} MiB ({100 * (1 - rows[1][1] / rows[0][1]):.0f}%)"
    )


if __name__ == "__main__":
    main()
