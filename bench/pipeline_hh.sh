#!/usr/bin/env bash
# PPO on natural language: Anthropic HH harmless prompts, a LoRA actor from SmolLM2-135M-Instruct, and two
# reward models on disjoint halves of the HH training pairs: PPO optimises the proxy (half A) and never sees
# the judge (half B), which scores the held-out answers of SFT (the instruct model itself) and RLHF.
#
#   export GGUF=SmolLM2-135M-Instruct.Q4_1.gguf HH_DATA=dir/with/hh-harmless-{train,test}.jsonl   # required
#   bash bench/pipeline_hh.sh                # ~100 min on 2 cores: out/hh_ppo/{rm_proxy,rm_judge,rlhf}, report.json, pic/hh_ppo.png
#   ITERATIONS=1 EVAL_LIMIT=4 RM_LIMIT=40 OUT=out/hh_smoke bash bench/pipeline_hh.sh   # smoke run
#   STAGES=rms SEED=1 OUT=out/repeat/hh_r1 bash bench/pipeline_hh.sh   # only the two reward models (bench/repeat_runs.sh)
#   STAGES=ppo RMS=out/hh_ppo SEED=1 SFT_EVAL=out/hh_ppo/rlhf OUT=out/hh_s1 PLOT=out/hh_s1/curve.png bash bench/pipeline_hh.sh
#       # PPO again with another seed: RMS's reward models, and the SFT evaluation of an earlier run (~55 min)
#
# Reward models: head-only (frozen SmolLM2, logistic regression on last-token features, L2 by 5-fold CV),
# each on 906 pairs, accuracy on the last 300 pairs of hh-harmless-test.jsonl. PPO prompts: the dialogues
# of hh-harmless-train.jsonl up to their last Assistant turn, cut from the left to MAX_PROMPT_LEN; held-out:
# the first EVAL_LIMIT dialogues of hh-harmless-test.jsonl (test: reported, never evaluated during training,
# since nothing here is chosen; no validation evaluations). A reply cut at 64 tokens is scored closed with EOS,
# as the reward models were trained, and pays MISSING_EOS_PENALTY (1.0, train_rlhf's default), so PPO gains
# nothing by running to the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
gguf="${GGUF:-}"  # required: SmolLM2-135M-Instruct as a GGUF file
out="${OUT:-out/hh_ppo}"
rms="${RMS:-$out}"  # where rm_proxy and rm_judge are (trained by the rms stage into OUT)
[ -f "$gguf" ] || { echo "error: GGUF='$gguf': not found (set GGUF=<SmolLM2-135M-Instruct GGUF file>)" >&2; exit 4; }
hh="${HH_DATA:-}"  # required: the directory of hh-harmless-train.jsonl and hh-harmless-test.jsonl
[ -f "$hh/hh-harmless-train.jsonl" ] && [ -f "$hh/hh-harmless-test.jsonl" ] || {
  echo "error: HH_DATA='$hh': no hh-harmless-{train,test}.jsonl there (set HH_DATA=<their directory>)" >&2; exit 4; }
export TQDM_DISABLE=1
mkdir -p "$out/data"
train="$hh/hh-harmless-train.jsonl" test="$hh/hh-harmless-test.jsonl"
head -n 906 "$train" > "$out/data/proxy.jsonl"      # half A: the reward PPO optimises
tail -n +907 "$train" > "$out/data/judge.jsonl"     # half B: the judge PPO never sees
tail -n 300 "$test" > "$out/data/rm_test.jsonl"     # reward-model accuracy (not the PPO held-out prompts)
stages="${STAGES:-rms ppo}"
start=$(date +%s)
[[ " $stages " == *" rms "* ]] && for half in proxy judge; do
  python bench/timed.py "$out/rm_$half" -- python train_rm.py --model "$gguf" --train_data "$out/data/$half.jsonl" \
      --eval_data none --test_data "$out/data/rm_test.jsonl" --train_layers 0 --chat_template True --bf16 True --max_len 256 \
      --seed "${SEED:-0}" --train_limit "${RM_LIMIT:-None}" --eval_limit "${RM_LIMIT:-None}" --out_dir "$out/rm_$half"
done
[[ " $stages " == *" ppo "* ]] || { echo "pipeline_hh ($stages): $(( $(date +%s) - start )) s wall"; exit 0; }
python bench/timed.py "$out/rlhf" -- python train_rlhf.py --sft_model "$gguf" --rm_model "$rms/rm_proxy" \
    --judge_rm "$rms/rm_judge" --prompts "$train" --eval_prompts none \
    --test_prompts "$test" --test_limit "${EVAL_LIMIT:-200}" \
    --chat_template True --bf16 True --seed "${SEED:-0}" --save_interval 0 \
    --peft lora --lora_r 16 --lora_alpha 32 --lora_targets q_proj,k_proj,v_proj,o_proj \
    --actor_lr "${ACTOR_LR:-2e-4}" --critic_lr 1e-5 --critic_init zero_head --beta "${BETA:-0.1}" \
    --iterations "${ITERATIONS:-16}" --rollout_batch 16 --mini_batch 8 --ppo_epochs 2 \
    --max_prompt_len 192 --max_new_tokens 64 --close_truncated True --missing_eos_penalty "${MISSING_EOS_PENALTY:-1.0}" \
    --eval_interval 0 --sft_eval "${SFT_EVAL:-run}" --out_dir "$out/rlhf" ${PPO_ARGS:-}
python bench/hh_report.py --run_dir "$out/rlhf" --plot "${PLOT:-pic/hh_ppo.png}"
echo "pipeline_hh: $(( $(date +%s) - start )) s wall"
