#!/usr/bin/env bash
# Each RL default against the one it replaced, on the same SFT model and reward model, seeds 0 1 2,
# reported on the test prompts (chosen on nothing: both variants run their full ITERATIONS):
#   PPO's critic:  CRITIC_INIT=zero_head (default)  vs  rm (the critic starts as the reward model)
#   GRPO's loss:   token-level, no std scaling (default)  vs  sequence mean + group-std scaling
#
#   SFT=out/seed0/sft RM=out/seed0/rm bash bench/compare_defaults.sh      # ~40 min on 2 quiet cores
#
# Settings (environment): SEEDS ("0 1 2"), OUT (out/defaults), SFT and RM (default out/sft, out/rm),
# ARGS (overrides for every run), PAIRS ("ppo grpo": which pairs to run). Prints the table of bench/defaults_table.py (mean ± sample std).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${SEEDS:-0 1 2}"
out="${OUT:-out/defaults}"
sft="${SFT:-out/sft}"
rm_dir="${RM:-out/rm}"
export TQDM_DISABLE=1
run() {  # run NAME SEED ARGS...: one train_rlhf.py run, kept if its summary exists
    local dir="$out/$1_s$2"; shift 2
    [ -f "$dir/summary.json" ] && return
    # seeds after the first reuse the SFT policy's test evaluation (the same prompts, model and settings)
    local sft_eval=run; [ -f "$out/sft_eval/sft_eval.json" ] && sft_eval="$out/sft_eval"
    mkdir -p "$dir"
    python train_rlhf.py --sft_model "$sft" --rm_model "$rm_dir" --save_interval 0 --sft_eval "$sft_eval" \
        --out_dir "$dir" "$@" ${ARGS:-} > "$dir/log.txt" 2>&1 || { tail -5 "$dir/log.txt"; exit 1; }
    echo "$dir: $(tail -1 "$dir/log.txt")"
    [ -f "$out/sft_eval/sft_eval.json" ] || { mkdir -p "$out/sft_eval" && cp "$dir/sft_eval.json" "$out/sft_eval/"; }
}
pairs=" ${PAIRS:-ppo grpo} "
for seed in $seeds; do  # PPO's pair over every seed first, then GRPO's
    [[ "$pairs" == *" ppo "* ]] || break
    run ppo_zero_head "$seed" --seed "$seed" --critic_init zero_head
    run ppo_rm_critic "$seed" --seed "$seed" --critic_init rm
done
for seed in $seeds; do
    [[ "$pairs" == *" grpo "* ]] || break
    run grpo_token "$seed" --seed "$seed" --algo grpo --grpo_loss token --grpo_std_scale False
    run grpo_seq_std "$seed" --seed "$seed" --algo grpo --grpo_loss sequence --grpo_std_scale True
done
python bench/defaults_table.py "$out"
