#!/usr/bin/env bash
# PPO's remedies against reward over-optimisation, each against today's default, from the same SFT model and
# seeds; every figure on the test prompts, nothing chosen by the gold judge:
#   ppo        the default: one reward model
#   ensemble   three reward models (seeds 0, 1, 2), reward = mean - std of their standardised scores
#   stop       the ensemble, and the run ends once their disagreement on the rollouts rises 1.5x
#   iterated   half the labels up front, half on the round-1 policy's own samples (bench/iterated_rlhf.sh)
# Then the table (gold, correct, format and KL; per type) and OUT/remedies.png.
#
#   bash bench/remedies.sh           # 3 seeds into out/remedies (about 2 hours on 2 cores)
#   SEEDS=0 OUT=out/remedies_tiny PPO_ARGS="--iterations 2 --eval_limit 20 --test_limit 20" \
#     RM_ARGS="--max_steps 5 --eval_limit 20" LABEL_ARGS="--limit 20" bash bench/remedies.sh   # a quick check
#
# Settings (environment): SEEDS ("0 1 2"), SFT (out/sft), RM (out/rm: the default reward model, seed 0), OUT,
# DATA (ds: the task's files; a regenerated task's folder, e.g. out/seed1/ds from bench/run_pipeline.sh 1),
# PPO_ARGS (extra train_rlhf.py overrides of every PPO run), RM_ARGS (of the reward models trained here),
# LABEL_ARGS (of label_samples.py), METHODS ("ppo ensemble iterated stop": which of them to run), EVAL_ARGS (of
# bench/eval_rm.py). With iterated: OUT/on_policy.md, each reward's correctness-only accuracy per type on the round-1
# policies' own samples (bench/on_policy_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${SEEDS:-0 1 2}"
sft="${SFT:-out/sft}"
rm0="${RM:-out/rm}"
out="${OUT:-out/remedies}"
data="${DATA:-ds}"
sft_files=(--train_data "$data/sft_train.jsonl" --eval_data "$data/sft_val.jsonl" --eval_prompts "$data/prompts_val.jsonl"
           --test_data "$data/sft_test.jsonl" --test_prompts "$data/prompts_test.jsonl")
rm_files=(--train_data "$data/rm_train_ranked.jsonl" --eval_data "$data/rm_val_ranked.jsonl"
          --test_data "$data/rm_test_ranked.jsonl")
rl_files=(--prompts "$data/prompts_train.jsonl" --ptx_data "$data/sft_train.jsonl" --eval_prompts "$data/prompts_val.jsonl"
          --test_prompts "$data/prompts_test.jsonl")
methods=" ${METHODS:-ppo ensemble iterated stop} "
want() { [[ "$methods" == *" $1 "* ]]; }
export TQDM_DISABLE=1
[ -f "$sft/config.json" ] || python train_sft.py "${sft_files[@]}" --out_dir "$sft"
[ -f "$rm0/config.json" ] || python train_rm.py --model "$sft" "${rm_files[@]}" --out_dir "$rm0" ${RM_ARGS:-}
for s in 1 2; do
    want ensemble || want stop || break
    [ -f "$out/rm_seed$s/config.json" ] || python train_rm.py --model "$sft" "${rm_files[@]}" --seed "$s" \
        --out_dir "$out/rm_seed$s" --overwrite True ${RM_ARGS:-}
done
ensemble="$rm0,$out/rm_seed1,$out/rm_seed2"
# a run without its summary.json (or model) is unfinished: it starts again (--overwrite True)
ppo() {  # OUT_DIR, then train_rlhf.py settings
    local dir=$1
    shift
    [ -f "$dir/summary.json" ] || python bench/timed.py "$dir" -- python train_rlhf.py --sft_model "$sft" \
        "${rl_files[@]}" --eval_interval 0 --out_dir "$dir" --overwrite True "$@" ${PPO_ARGS:-}
}
for seed in $seeds; do
    ! want ppo || ppo "$out/ppo_s$seed" --seed "$seed" --rm_model "$rm0"
    ! want ensemble || ppo "$out/ensemble_s$seed" --seed "$seed" --rm_model "$ensemble" --rm_ensemble mean_minus_std
    ! want iterated || SEED=$seed SFT=$sft DATA=$data OUT="$out/iterated" RUN="$out/iterated_s$seed" LABEL_ARGS="${LABEL_ARGS:-}" \
        bash bench/iterated_rlhf.sh
done
# last: a stop rule that never fires leaves the run identical to the ensemble's (same seed, same random numbers)
for seed in $seeds; do
    want stop || break
    ppo "$out/stop_s$seed" --seed "$seed" --rm_model "$ensemble" --rm_ensemble mean_minus_std \
        --stop_disagreement 1.5
done
python bench/alignment_table.py "$out" --plot "$out/remedies.png"
# why: what each reward sees on a PPO policy's own answers. The round-1 policies' samples for the test groups'
# prompts, ranked by the labeller (bench/iterated_rlhf.sh); correctness-only accuracy per type -> OUT/on_policy.md
on_policy() {  # REWARD SEED, then bench/eval_rm.py settings
    local reward=$1 seed=$2
    shift 2
    python bench/eval_rm.py "$@" ${EVAL_ARGS:-} | grep ": accuracy " | sed "s|^|$reward\t$seed\t|" >> "$out/on_policy.tsv"
}
if want iterated; then
    : > "$out/on_policy.tsv"
    for seed in $seeds; do
        samples="$out/iterated/label_s$seed/eval.jsonl"
        on_policy "one reward model (default)" "$seed" --models "$rm0" --data "$samples"
        ! { want ensemble || want stop; } || on_policy "ensemble (mean - std)" "$seed" --models "$ensemble" \
            --ensemble mean_minus_std --data "$samples"
        # iterated_rlhf.sh scored its two reward models on these samples already: rm0's line, then rm1's
        mapfile -t scored < <(grep ": accuracy " "$out/iterated/rm_on_policy_s$seed.txt")
        printf '%s\t%s\t%s\n' "iterated: half the labels (round 1)" "$seed" "${scored[0]}" \
            "iterated: relabelled (round 2)" "$seed" "${scored[1]}" >> "$out/on_policy.tsv"
    done
    python bench/on_policy_table.py "$out/on_policy.tsv" | tee "$out/on_policy.md"
fi
