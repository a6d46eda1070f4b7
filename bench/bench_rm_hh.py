"""Benchmark (not a test): a reward model on real preference data, Anthropic HH-RLHF harmless pairs.

    FILES="--model SmolLM2-135M-Instruct.Q4_1.gguf --train_file hh-harmless-train.jsonl \
           --test_file hh-harmless-test.jsonl"
    nohup python bench/bench_rm_hh.py $FILES > out/bench_rm_hh.log 2>&1 &     # ~11 min on 2 quiet cores
    python bench/bench_rm_hh.py $FILES --train_limit 40 --test_limit 16 --out_dir out/t_bench   # smoke

Trains train_rm.py on SmolLM2-135M with the HH harmless training pairs, then loads the saved reward
model and scores ALL 500 pairs of the HH harmless test file once, end to end (the one test row whose
replies contain an extra Assistant turn is split at the common prefix).

The default is the head-only reward model (TRAIN_LAYERS=0): SmolLM2 stays frozen, the dialogues go
through its chat template, and the scalar head is fitted by L2-regularised logistic regression on the
last-token features, the L2 strength picked by 5-fold cross-validation on the training pairs. One
forward pass over the 3,616 training sequences (~8 min here) replaces hours of fine-tuning; on 1,808
pairs it also generalises better than the fine-tuning that fits this CPU (see the README).
The test file is never used for training or for choosing settings. Prints the accuracy beside the
rule "always prefer the shorter reply", the wall time and the peak memory; writes OUT_DIR/result.json.
"""
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset.comparisons import read_comparisons  # noqa: E402
from dataset.rm import RMDataset  # noqa: E402
from model.reward import load_reward_model  # noqa: E402
from trainer.rm import evaluate_pairs  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
# noqa: E402
from utils import ConfigError, configure, peak_rss_mb, quiet_transformers, run_main, write_json

MODEL = ""  # required: SmolLM2-135M-Instruct (a GGUF file, a directory or a hub id)
TRAIN_FILE = ""  # required: hh-harmless-train.jsonl, 1,812 HH harmless pairs
TEST_FILE = ""  # required: hh-harmless-test.jsonl, 500 pairs, evaluation only
OUT_DIR = "out/bench_rm_hh"  # split files, the reward model (OUT_DIR/rm), result.json
# last rows of TRAIN_FILE held out to select the best checkpoint (0: none, train on all)
DEV_ROWS = 0
TRAIN_LIMIT = None  # train on only the first N rows (None: all; only for smoke runs)
TEST_LIMIT = None  # score only the first N test rows (None: all 500; only for smoke runs)
# tokens per dialogue: the last reply and the end of the dialogue before it (cut from the left)
MAX_LEN = 256
CHAT_TEMPLATE = True  # render the HH turns with SmolLM2's chat template (user/assistant messages)
# 0: head only (frozen backbone, logistic regression); N: fine-tune the top N of 30 blocks
TRAIN_LAYERS = 0
# fine-tuning only (TRAIN_LAYERS > 0): optimizer steps of BATCH_SIZE x GRAD_ACCUM pairs
MAX_STEPS = 60
BATCH_SIZE = 4  # pairs per micro-batch (small: little padding)
GRAD_ACCUM = 2  # micro-batches per step
LR = 3e-5  # peak learning rate
EVAL_INTERVAL = 0  # steps between dev evaluations (0: before and after training only)
BF16 = True  # bfloat16 autocast: about 3x faster on this CPU

config = configure(globals())


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """Float32 matmul speed now: a shared machine can run at half speed for minutes."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.time()
    for _ in range(repeat):
        a @ b
    return 2 * n ** 3 * repeat / (time.time() - start) / 1e9


def shorter_reply_accuracy(source: str, limit: int = None) -> float:
    """Accuracy of the rule 'prefer the shorter reply' (characters; a tie counts half)."""
    groups = read_comparisons(source, on_mismatch="common_prefix", limit=limit)
    wins = [
        1.0 if len(c) < len(r) else 0.5 if len(c) == len(r) else 0.0
        for c, r in (g["responses"] for g in groups)
    ]
    return sum(wins) / len(wins)


def main():
    for name, value in (("model", MODEL), ("train_file", TRAIN_FILE), ("test_file", TEST_FILE)):
        if not value or (name != "model" and not os.path.exists(value)):
            raise ConfigError(
                f"--{name} {value!r}: not found (give it: see the usage at the top of "
                "bench/bench_rm_hh.py)"
            )
    quiet_transformers()
    start, gflops_before = time.time(), matmul_gflops()
    data_dir, rm_dir = os.path.join(OUT_DIR, "data"), os.path.join(OUT_DIR, "rm")
    os.makedirs(data_dir, exist_ok=True)
    with open(TRAIN_FILE, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    for name, part in (
        ("train", lines[: len(lines) - DEV_ROWS]),
        ("dev", lines[len(lines) - DEV_ROWS :]),
    ):
        with open(os.path.join(data_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(part)
    subprocess.run(
        [
            sys.executable,
            "train_rm.py",
            "--model",
            MODEL,
            "--train_data",
            f"{data_dir}/train.jsonl",
            "--eval_data",
            f"{data_dir}/dev.jsonl" if DEV_ROWS else "none",
            "--out_dir",
            rm_dir,
            "--max_len",
            str(MAX_LEN),
            "--max_steps",
            str(MAX_STEPS),
            "--batch_size",
            str(BATCH_SIZE),
            "--grad_accum",
            str(GRAD_ACCUM),
            "--train_layers",
            str(TRAIN_LAYERS),
            "--lr",
            str(LR),
            "--chat_template",
            str(CHAT_TEMPLATE),
            "--train_limit",
            str(TRAIN_LIMIT),
            "--warmup_steps",
            str(max(1, MAX_STEPS // 10)),
            "--eval_interval",
            str(EVAL_INTERVAL),
            "--eval_batch_size",
            "16",
            "--bf16",
            str(BF16),
            "--log_interval",
            "5",
        ],
        check=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    with open(os.path.join(rm_dir, "summary.json")) as f:
        train_summary = json.load(f)

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    model = load_reward_model(rm_dir, tokenizer.pad_token_id).eval()
    test = RMDataset(TEST_FILE, tokenizer, MAX_LEN, on_mismatch="common_prefix", limit=TEST_LIMIT,
                     chat_template=CHAT_TEMPLATE)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
        metrics = evaluate_pairs(model, test, tokenizer.pad_token_id, batch_size=8)
    result = {
        "accuracy": metrics["accuracy"],
        "margin": metrics["margin"],
        "test_pairs": metrics["pairs"],
        "shorter_reply_accuracy": shorter_reply_accuracy(TEST_FILE, TEST_LIMIT),
        "dev_accuracy": train_summary["accuracy"],
        "dev_accuracy_base": train_summary["accuracy_base"],
        "cv_accuracy": train_summary.get("cv_accuracy"),
        "head_l2": train_summary.get("head_l2"),
        "train_seconds": train_summary["train_seconds"],
        "wall_seconds": time.time() - start,
        "peak_rss_mb": max(train_summary["peak_rss_mb"], peak_rss_mb()),
        "matmul_gflops_before": gflops_before,
        "matmul_gflops_after": matmul_gflops(),
        "config": config,
    }
    write_json(os.path.join(OUT_DIR, "result.json"), result)
    print(
        f"HH harmless test ({result['test_pairs']} pairs): accuracy {result['accuracy']:.4f} "
        f"(always prefer the shorter reply: {result['shorter_reply_accuracy']:.4f}); dev accuracy "
        f"{result['dev_accuracy']} (before training {result['dev_accuracy_base']})"
    )
    print(
        f"wall time {result['wall_seconds'] / 60:.1f} min (training {result['train_seconds'] / 60:.1f} min), "
        f"peak memory {result['peak_rss_mb']:.0f} MiB, matmul {gflops_before:.0f} -> "
        f"{result['matmul_gflops_after']:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    run_main(main)
