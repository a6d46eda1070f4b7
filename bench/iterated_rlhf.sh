#!/usr/bin/env bash
# Iterated RLHF within the shipped labelling budget, as InstructGPT collected its comparisons: the reward
# model starts on the first half of the shipped ranked groups; PPO round 1 trains against it; the round-1 policy's
# own samples on the other half's prompts are ranked by the simulated labeller (label_samples.py); the reward
# model continues on both halves; PPO round 2 starts again from the SFT model against it. At most as many
# labelled groups in all as the shipped file holds (prompts whose samples all tie are left out).
#
#   SEED=0 bash bench/iterated_rlhf.sh       # OUT/ppo_s0: the round-2 run, on the test prompts
#
# Settings (environment): SEED (0: both PPO rounds and the labeller's sampling), SFT (out/sft), DATA (ds: the task's
# files; a regenerated task's folder, e.g. out/seed1/ds from bench/run_pipeline.sh 1), OUT
# (out/iterated), RUN (OUT/ppo_s$SEED: the round-2 out dir), PPO_ARGS (extra overrides of both PPO rounds),
# RM_ARGS (of both reward models), LABEL_ARGS (of label_samples.py), EVAL_ARGS (of bench/eval_rm.py; a model trained
# with its chat template is scored with it: --chat_template True).
# OUT/rm_on_policy_s$SEED.txt: each reward model's accuracy on the round-1 policy's samples for the test
# prompts, ranked by the labeller (per type, correctness-only pairs): what relabelling taught it.
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${SEED:-0}"
sft="${SFT:-out/sft}"
out="${OUT:-out/iterated}"
run="${RUN:-$out/ppo_s$seed}"
data="${DATA:-ds}"
rm_files=(--eval_data "$data/rm_val_ranked.jsonl" --test_data "$data/rm_test_ranked.jsonl")
rl_files=(--prompts "$data/prompts_train.jsonl" --ptx_data "$data/sft_train.jsonl" --eval_prompts "$data/prompts_val.jsonl")
export TQDM_DISABLE=1
mkdir -p "$out"
groups=$(grep -c . "$data/rm_train_ranked.jsonl")
half=$((groups / 2))
[ -f "$out/rm0/config.json" ] || python train_rm.py --model "$sft" --train_data "$data/rm_train_ranked.jsonl" \
    "${rm_files[@]}" --train_limit "$half" --out_dir "$out/rm0" --overwrite True ${RM_ARGS:-}
# round 1: its figures are on the validation prompts (--test_prompts none); nothing is chosen by them
[ -f "$out/round1_s$seed/summary.json" ] || python train_rlhf.py --sft_model "$sft" --rm_model "$out/rm0" \
    "${rl_files[@]}" --seed "$seed" --eval_interval 0 --test_prompts none --out_dir "$out/round1_s$seed" --overwrite True ${PPO_ARGS:-}
if [ ! -f "$out/label_s$seed/eval.jsonl" ]; then  # written last
    tail -n +"$((half + 1))" "$data/rm_train_ranked.jsonl" > "$out/second_half_s$seed.jsonl"  # one per seed: seeds run at once
    python label_samples.py --model "$out/round1_s$seed" --train_prompts "$out/second_half_s$seed.jsonl" \
        --eval_prompts "$data/rm_test_ranked.jsonl" --seed "$seed" --out "$out/label_s$seed" ${LABEL_ARGS:-}
fi
if [ ! -f "$out/rm1_s$seed/config.json" ]; then
    { head -n "$half" "$data/rm_train_ranked.jsonl"; cat "$out/label_s$seed/train.jsonl"; } \
        > "$out/rm1_data_s$seed.jsonl"
    python train_rm.py --model "$out/rm0" --train_data "$out/rm1_data_s$seed.jsonl" "${rm_files[@]}" --seed "$seed" \
        --out_dir "$out/rm1_s$seed" --overwrite True ${RM_ARGS:-}
fi
python bench/eval_rm.py --models "$out/rm0,$out/rm1_s$seed" --data "$out/label_s$seed/eval.jsonl" ${EVAL_ARGS:-} \
    | tee "$out/rm_on_policy_s$seed.txt"
[ -f "$run/summary.json" ] || python bench/timed.py "$run" -- python train_rlhf.py --sft_model "$sft" \
    --rm_model "$out/rm1_s$seed" "${rl_files[@]}" --test_prompts "$data/prompts_test.jsonl" --seed "$seed" --eval_interval 0 --out_dir "$run" --overwrite True ${PPO_ARGS:-}
