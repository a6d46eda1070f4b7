#!/usr/bin/env bash
# PPO vs DPO vs GRPO vs best-of-N (N = 16) on the embedded task: the same SFT checkpoint (and, for PPO,
# GRPO and best-of-N, the same reward model), each method with its default settings, one run per seed;
# then the README table (mean and spread over seeds) and pic/alignment_comparison.png (gold score against KL and CPU-minutes).
#
#   bash bench/compare_alignment.sh            # 3 seeds into out/compare (the README figures; ~30 min quiet)
#   SEEDS=0 OUT=out/compare_tiny PLOT=out/compare_tiny/alignment.png \
#     PPO_ARGS="--iterations 2 --eval_limit 20" GRPO_ARGS="--iterations 2 --eval_limit 20" \
#     DPO_ARGS="--max_steps 3 --eval_limit 20" BON_ARGS="--n 2 --limit 20" \
#     bash bench/compare_alignment.sh      # a quick check of the pipeline
#
# Settings (environment): SEEDS ("0 1 2"), OUT (out/compare), SFT (out/sft) and RM (out/rm), trained here
# with their defaults if missing, PLOT (pic/alignment_comparison.png), and PPO_ARGS / DPO_ARGS / GRPO_ARGS /
# BON_ARGS, extra overrides for one method, and METHODS ("ppo grpo dpo bon": which to run). A run whose
# summary.json exists is kept. Each run's wall time, CPU time and peak memory come from bench/timed.py.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${SEEDS:-0 1 2}"
out="${OUT:-out/compare}"
sft="${SFT:-out/sft}"
rm_dir="${RM:-out/rm}"
plot="${PLOT:-pic/alignment_comparison.png}"
export TQDM_DISABLE=1
[ -f "$sft/config.json" ] || python train_sft.py --out_dir "$sft"
[ -f "$rm_dir/config.json" ] || python train_rm.py --model "$sft" --out_dir "$rm_dir"
methods=" ${METHODS:-ppo grpo dpo bon} "
timed() {  # timed DIR COMMAND...: one run through bench/timed.py, skipped if its method is not in METHODS
    local dir=$1 name; shift
    name=$(basename "$dir"); name=${name%_s*}
    [[ "$methods" == *" $name "* ]] || return 0
    [ -f "$dir/summary.json" ] && return 0  # a finished run is kept
    python bench/timed.py "$dir" -- "$@"
}
for seed in $seeds; do
    timed "$out/ppo_s$seed" python train_rlhf.py --algo ppo --seed "$seed" --sft_model "$sft" \
        --rm_model "$rm_dir" --out_dir "$out/ppo_s$seed" --overwrite True ${PPO_ARGS:-}
    timed "$out/grpo_s$seed" python train_rlhf.py --algo grpo --seed "$seed" --sft_model "$sft" \
        --rm_model "$rm_dir" --out_dir "$out/grpo_s$seed" --overwrite True ${GRPO_ARGS:-}
    timed "$out/dpo_s$seed" python train_dpo.py --seed "$seed" --sft_model "$sft" --eval_rm "$rm_dir" \
        --out_dir "$out/dpo_s$seed" --overwrite True ${DPO_ARGS:-}
    timed "$out/bon_s$seed" python bench/best_of_n.py --seed "$seed" --sft_model "$sft" \
        --rm_model "$rm_dir" --out_dir "$out/bon_s$seed" ${BON_ARGS:-}
done
python bench/alignment_table.py "$out" --plot "$plot"
