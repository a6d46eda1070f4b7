#!/usr/bin/env bash
# Reward over-optimisation on the embedded task (Gao et al. 2022, "Scaling Laws for Reward Model
# Overoptimization"): the gold score and the proxy (reward-model) score against the KL to the SFT policy, for
# best-of-N and for PPO over training, with reward models trained on 1/4, 1/2 and all of the shipped
# comparisons. Every figure is measured on the test prompts. Nothing here chooses a setting, a checkpoint or
# when to stop: PPO runs its default iterations and keeps no "best" model, and the PPO runs' evaluations read
# the test prompts only to draw the curve.
#
#   bash bench/overoptimisation.sh      # about 40 minutes on 2 quiet cores: out/overopt/, pic/overoptimisation.png
#
# Settings (environment): SFT (out/sft) and RM (out/rm: the reward model on all comparisons), trained here
# with their defaults if missing; OUT (out/overopt); POOL (64 samples per prompt for best-of-N); PLOT
# (pic/overoptimisation.png); PPO_ARGS (extra train_rlhf.py overrides, e.g. --iterations 100).
set -euo pipefail
cd "$(dirname "$0")/.."
sft="${SFT:-out/sft}"
rm_all="${RM:-out/rm}"
out="${OUT:-out/overopt}"
export TQDM_DISABLE=1
[ -f "$sft/config.json" ] || python train_sft.py --out_dir "$sft"
[ -f "$rm_all/config.json" ] || python train_rm.py --model "$sft" --out_dir "$rm_all"
groups=$(grep -c . ds/rm_train_ranked.jsonl)  # ranked groups of the shipped reward-model data
for part in quarter:4 half:2; do
    name=${part%%:*}
    [ -f "$out/rm_$name/config.json" ] || python train_rm.py --model "$sft" --train_limit $((groups / ${part##*:})) \
        --out_dir "$out/rm_$name" --overwrite True
done
rms="quarter=$out/rm_quarter,half=$out/rm_half,all=$rm_all"
for name in quarter half all; do
    rm_dir=$out/rm_$name
    [ "$name" = all ] && rm_dir=$rm_all
    [ -f "$out/ppo_$name/summary.json" ] || python train_rlhf.py --sft_model "$sft" --rm_model "$rm_dir" \
        --eval_prompts ds/prompts_test.jsonl --eval_limit None --test_prompts none --eval_interval 5 \
        --eval_sampled True --save_interval 0 --out_dir "$out/ppo_$name" --overwrite True ${PPO_ARGS:-}
done
python bench/overoptimisation.py --sft_model "$sft" --rms "$rms" --pool "${POOL:-64}" \
    --ppo "quarter=$out/ppo_quarter,half=$out/ppo_half,all=$out/ppo_all" --out_dir "$out" \
    --plot "${PLOT:-pic/overoptimisation.png}"
