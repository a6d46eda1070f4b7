#!/usr/bin/env bash
# The whole embedded pipeline (SFT -> RM -> PPO) on the shipped task regenerated with another seed,
# timed end to end. Usage: bash bench/run_pipeline.sh SEED   (seed 0 reproduces ds/ exactly)
# ARGS="--group_by_length False" bash bench/run_pipeline.sh 0: settings given to all three stages; OUT: another run dir.
# Writes out/seed<SEED>/{ds,sft,rm,rlhf} (each stage's timing.json from bench/timed.py); prints each
# stage's summary, the total wall time and a matmul probe before and after (bench/probe.py).
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-1}"
run="${OUT:-out/seed$seed}"
args="${ARGS:-}"
data="$run/ds"
export TQDM_DISABLE=1
python bench/probe.py
start=$(date +%s)
python -m dataset.task_data --seed "$seed" --out "$data"
python bench/timed.py "$run/sft" -- python train_sft.py --seed "$seed" --train_data "$data/sft_train.jsonl" \
    --eval_data "$data/sft_val.jsonl" --eval_prompts "$data/prompts_val.jsonl" \
    --test_data "$data/sft_test.jsonl" --test_prompts "$data/prompts_test.jsonl" --out_dir "$run/sft" $args
python bench/timed.py "$run/rm" -- python train_rm.py --seed "$seed" --model "$run/sft" \
    --train_data "$data/rm_train_ranked.jsonl" --eval_data "$data/rm_val_ranked.jsonl" \
    --test_data "$data/rm_test_ranked.jsonl" --out_dir "$run/rm" $args
python bench/timed.py "$run/rlhf" -- python train_rlhf.py --seed "$seed" --sft_model "$run/sft" --rm_model "$run/rm" \
    --prompts "$data/prompts_train.jsonl" --ptx_data "$data/sft_train.jsonl" --eval_prompts "$data/prompts_val.jsonl" \
    --test_prompts "$data/prompts_test.jsonl" \
    --out_dir "$run/rlhf" $args
echo "pipeline seed $seed: $(( $(date +%s) - start )) s wall"
python bench/probe.py
for stage in sft rm rlhf; do echo "$stage: $(cat "$run/$stage/summary.json" | tr -d '\n' | tr -s ' ' | cut -c1-600)"; done
