#!/usr/bin/env bash
# The RL settings that were tuned on the old evaluation prompts, chosen again on the validation split,
# without the gold judge: PPO's BETA, GRPO's GRPO_BETA and DPO's LR, each at three values, seeds 0 1 2,
# from the same SFT model and reward model. Each run evaluates on the validation prompts only (its
# test figures are not computed); then bench/validation_choice.py scores every run on the labelled
# validation comparisons (ds/rm_val_ranked.jsonl) and prints the table the defaults are chosen from.
#
#   SFT=out/sft RM=out/rm bash bench/choose_on_validation.sh      # 27 runs into out/choose (~70 min on 2 cores)
#
# Settings (environment): SEEDS ("0 1 2"), OUT (out/choose), SFT (out/sft), RM (out/rm), PPO_BETAS ("0.2 0.4 0.8"),
# GRPO_BETAS ("0.05 0.1 0.2"), DPO_LRS ("1e-4 3e-4 1e-3"), ARGS (overrides for every run).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${SEEDS:-0 1 2}"
out="${OUT:-out/choose}"
sft="${SFT:-out/sft}"
rm_dir="${RM:-out/rm}"
export TQDM_DISABLE=1
run() {  # run DIR SCRIPT ARGS...: one run, kept if its summary exists
    local dir=$1 script=$2; shift 2
    [ -f "$dir/summary.json" ] && return
    mkdir -p "$dir"
    python "$script" --sft_model "$sft" --out_dir "$dir" --overwrite True --save_interval 0 --eval_interval 0 \
        "$@" ${ARGS:-} > "$dir/log.txt" 2>&1 || { tail -5 "$dir/log.txt"; exit 1; }
    echo "$dir: $(tail -1 "$dir/log.txt")"
}
for seed in $seeds; do
    for b in ${PPO_BETAS:-0.2 0.4 0.8}; do
        run "$out/ppo_beta${b}_s$seed" train_rlhf.py --rm_model "$rm_dir" --seed "$seed" --beta "$b" --test_prompts none
    done
    for b in ${GRPO_BETAS:-0.05 0.1 0.2}; do
        run "$out/grpo_beta${b}_s$seed" train_rlhf.py --algo grpo --rm_model "$rm_dir" --seed "$seed" --grpo_beta "$b" \
            --test_prompts none
    done
    for lr in ${DPO_LRS:-1e-4 3e-4 1e-3}; do
        run "$out/dpo_lr${lr}_s$seed" train_dpo.py --seed "$seed" --lr "$lr" --test_prompts none --test_data none
    done
done
python bench/validation_choice.py --out "$out" --sft_model "$sft" --rm_model "$rm_dir"
