#!/usr/bin/env bash
# The whole pipeline on a pretrained model: SmolLM2-135M-Instruct (Llama architecture, 135M parameters)
# on the shipped task, SFT -> reward model -> PPO, with LoRA and bf16 autocast, every prompt and response
# rendered with the model's own chat template (--chat_template True in all three stages).
#
#   export GGUF=SmolLM2-135M-Instruct.Q4_1.gguf   # required: the model (transformers reads it with `gguf`)
#   bash bench/pipeline_smollm2.sh           # ~47 min on 2 cores: out/smollm2/{sft,rm,rlhf}, each with summary.json, timing.json
#   STAGES="rm" SEED=1 OUT=out/repeat/smollm2_r1 SFT=out/smollm2/sft bash bench/pipeline_smollm2.sh   # only the RM, on an SFT model
#   STAGES="rlhf" SFT=out/smollm2/sft RM=out/smollm2/rm OUT=out/smollm2_gold PPO_ARGS="--reward gold" bash bench/pipeline_smollm2.sh   # PPO only
#   STEPS_SFT=2 STEPS_RM=2 ITERATIONS=1 EVAL_LIMIT=4 RM_EVAL_LIMIT=4 OUT=out/smollm2_smoke bash bench/pipeline_smollm2.sh   # smoke, ~10 min
#
# Validation: EVAL_LIMIT prompts of ds/prompts_val.jsonl and RM_EVAL_LIMIT ranked groups of
# ds/rm_val_ranked.jsonl (the RM's best checkpoint); reported: the first EVAL_LIMIT prompts of
# ds/prompts_test.jsonl (gold judge) and RM_EVAL_LIMIT groups of ds/rm_test_ranked.jsonl. Each stage runs through bench/timed.py (wall time, CPU time, peak memory and a
# matmul probe before and after); the last line prints the whole run's wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
gguf="${GGUF:-}"  # required: SmolLM2-135M-Instruct as a GGUF file
out="${OUT:-out/smollm2}"
[ -f "$gguf" ] || { echo "error: GGUF='$gguf': not found (set GGUF=<SmolLM2-135M-Instruct GGUF file>)" >&2; exit 4; }
export TQDM_DISABLE=1
lora="--peft lora --lora_r 16 --lora_alpha 32 --lora_targets q_proj,k_proj,v_proj,o_proj"
common="--chat_template True --bf16 True --seed ${SEED:-0} --save_interval 0"
stages="${STAGES:-sft rm rlhf}"
sft="${SFT:-$out/sft}"  # the SFT model the later stages start from
rm="${RM:-$out/rm}"  # the reward model PPO uses (and its critic starts from)
has() { [[ " $stages " == *" $1 "* ]]; }
start=$(date +%s)
has sft && python bench/timed.py "$sft" -- python train_sft.py --model "$gguf" $common $lora --lr 5e-4 \
    --max_steps "${STEPS_SFT:-60}" --batch_size 32 --warmup_steps 6 --eval_interval 0 \
    --eval_limit "${EVAL_LIMIT:-200}" --test_limit "${EVAL_LIMIT:-200}" --out_dir "$sft" ${SFT_ARGS:-}
has rm && python bench/timed.py "$rm" -- python train_rm.py --model "$sft" $common $lora --lr 3e-4 \
    --max_steps "${STEPS_RM:-240}" --batch_size 8 --warmup_steps 6 --eval_interval 0 \
    --eval_limit "${RM_EVAL_LIMIT:-100}" --out_dir "$rm" ${RM_ARGS:-}
has rlhf && python bench/timed.py "$out/rlhf" -- python train_rlhf.py --sft_model "$sft" --rm_model "$rm" $common $lora \
    --actor_lr 2e-4 --critic_lr 1e-5 --critic_init zero_head --iterations "${ITERATIONS:-12}" --rollout_batch 32 \
    --mini_batch 16 --ppo_epochs 2 --eval_interval 0 --eval_limit "${EVAL_LIMIT:-200}" --test_limit "${EVAL_LIMIT:-200}" --out_dir "$out/rlhf" ${PPO_ARGS:-}
echo "pipeline_smollm2: $(( $(date +%s) - start )) s wall"
