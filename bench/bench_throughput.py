"""Benchmark (not a test): training throughput of SFT, the reward model and PPO on the opt-125m architecture.

    FILES="--tokenizer SmolLM2-135M-Instruct.Q4_1.gguf --alpaca alpaca-en.jsonl --hh hh-harmless-train.jsonl"
    python bench/bench_throughput.py $FILES       # every run below, ~25 min on 2 quiet cores
    python bench/bench_throughput.py $FILES --runs sft-bf16,sft-bf16+group --sft_steps 4   # some, shorter

The model is facebook/opt-125m's exact architecture (125M parameters, dropout 0.1 as in its config) with
random weights, built locally; the project's trainers run it on real data (the files given):
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

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.probe import describe, probe  # noqa: E402
from bench.throughput_parts import build_model, row, without_runs  # noqa: E402
from bench.throughput_stages import STAGES  # noqa: E402

# noqa: E402
from utils import (
    ConfigError,
    UserError,
    configure,
    peak_rss_mb,
    quiet_transformers,
    run_main,
    seed_everything,
    write_json,
)

RUNS = "sft-fp32,sft-fp32+group,sft-bf16,sft-bf16+group,rm-fp32,rm-bf16,rm-bf16+group,ppo-fp32,ppo-bf16,ppo-bf16+frozen_bf16+group,ppo-bf16+frozen_bf16+group+ckpt"
TOKENIZER = ""  # required: SmolLM2-135M-Instruct's GGUF file, whose tokenizer tokenizes the data
# required: an Alpaca JSONL file (e.g. alpaca-en.jsonl): SFT demonstrations, PPO prompts
ALPACA = ""
HH = ""  # required: an Anthropic HH JSONL file (e.g. hh-harmless-train.jsonl): reward-model pairs
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


def parse_run(run: str) -> tuple[str, bool, set]:
    stage, _, rest = run.partition("-")
    precision, *levers = rest.split("+")
    if (
        stage not in STAGES
        or precision not in ("fp32", "bf16")
        or not set(levers) <= {"group", "frozen_bf16", "ckpt"}
    ):
        raise ConfigError(
            f"--runs: {run!r} is not STAGE-PRECISION[+LEVER...] with STAGE in sft, rm, ppo, "
            "PRECISION fp32 or bf16, LEVER group, frozen_bf16 or ckpt"
        )
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
    result = STAGES[stage](config, os.path.join(OUT_DIR, "opt125m"), out_dir, bf16, levers)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def main() -> None:
    if RUN:
        return child(RUN)
    runs = [r for r in RUNS.split(",") if r]
    for run in runs:
        parse_run(run)
    for name, path in (("alpaca", ALPACA), ("hh", HH)):
        if not path or not os.path.exists(path):
            raise ConfigError(
                f"--{name} {path!r}: not found (give the path of the file: "
                "see the usage at the top of bench/bench_throughput.py)"
            )
    quiet_transformers()
    build_model(OUT_DIR, TOKENIZER)
    path = os.path.join(OUT_DIR, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    passed = without_runs(sys.argv[1:])  # every other override reaches the child processes
    print(
        f"{'run':34} {'throughput':58} {'GF/s':>5} {'GiB':>6}   matmul probe before / after (fp32, bf16 GFLOP/s)"
    )
    for run in runs:
        before = probe()
        proc = subprocess.run(
            [sys.executable, __file__, "--run", run, *passed], capture_output=True, text=True
        )
        after = probe()
        if proc.returncode:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            raise UserError(f"run {run} failed (exit {proc.returncode}; its output is above)")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r.update(
            probe_before=before,
            probe_after=after,
            settings={k: v for k, v in config.items() if k != "RUN"},
            probe=f"{before['fp32_gflops']:.0f}/{before['bf16_gflops']:.0f} -> "
            f"{after['fp32_gflops']:.0f}/{after['bf16_gflops']:.0f}",
        )
        results[run] = r
        write_json(path, results)
        print(row(run, r), flush=True)
    print(f"wrote {path}; {describe(probe())}")


if __name__ == "__main__":
    run_main(main)
