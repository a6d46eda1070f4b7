#!/usr/bin/env bash
# GPU check of the multi-process paths that a CPU machine cannot run: NCCL DDP, FSDP2 for every stage
# (PPO's actor and critic sharded), DeepSpeed ZeRO-2/3 for SFT and the reward model, and PPO's refusal
# of DeepSpeed. A few steps of the embedded model each; needs >= 2 GPUs (and `pip install deepspeed`
# for the ZeRO part). Run from the repository root:
#     bash bench/gpu_check_sharded.sh            # N=2 processes; OUT=out/gpu_check
# It stops at the first failure; "ALL GPU CHECKS PASSED" at the end means every path ran and saved a
# model that transformers reloads. Until it has run, README "Scaling out" marks these paths untested.
set -euo pipefail
N=${N:-2}
OUT=${OUT:-out/gpu_check}
export TQDM_DISABLE=1 HF_HUB_OFFLINE=1
SFT="--max_steps 4 --batch_size 8 --eval_limit 16 --eval_interval 0 --save_interval 0"
RM="--max_steps 4 --batch_size 4 --eval_limit 16 --eval_interval 0"
PPO="--iterations 2 --rollout_batch 8 --mini_batch 4 --ppo_epochs 1 --eval_limit 8 --eval_interval 0"
reload() {  # the saved model loads in plain transformers and has finite weights
  python - "$1" "$2" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
cls = AutoModelForCausalLM if sys.argv[2] == "lm" else AutoModelForSequenceClassification
model = cls.from_pretrained(sys.argv[1])
assert all(torch.isfinite(p).all() for p in model.parameters()), sys.argv[1]
print(f"reloaded {sys.argv[1]} ({sum(p.numel() for p in model.parameters()):,} parameters)")
PY
}

echo "== 2-process equality tests on GPUs (NCCL): tests/test_multiproc.py"
python -m pytest -q tests/test_multiproc.py
echo "== DDP over NCCL (torchrun)"
torchrun --nproc_per_node "$N" train_sft.py $SFT --out_dir "$OUT/ddp_sft"
reload "$OUT/ddp_sft" lm
for cfg in fsdp zero2 zero3; do
  if [[ $cfg == zero* ]] && ! python -c "import deepspeed" 2>/dev/null; then echo "SKIP $cfg: deepspeed not installed"; continue; fi
  echo "== $cfg: SFT, reward model"
  accelerate launch --config_file "configs/$cfg.yaml" --num_processes "$N" train_sft.py $SFT --out_dir "$OUT/${cfg}_sft"
  reload "$OUT/${cfg}_sft" lm
  accelerate launch --config_file "configs/$cfg.yaml" --num_processes "$N" train_rm.py --model "$OUT/${cfg}_sft" $RM --out_dir "$OUT/${cfg}_rm"
  reload "$OUT/${cfg}_rm" rm
done
echo "== fsdp: PPO (actor and critic sharded, reference and reward model replicated)"
accelerate launch --config_file configs/fsdp.yaml --num_processes "$N" train_rlhf.py --sft_model "$OUT/fsdp_sft" \
  --rm_model "$OUT/fsdp_rm" $PPO --out_dir "$OUT/fsdp_rlhf"
reload "$OUT/fsdp_rlhf" lm
if python -c "import deepspeed" 2>/dev/null; then
  echo "== zero3: PPO must refuse with a clear error"
  if accelerate launch --config_file configs/zero3.yaml --num_processes "$N" train_rlhf.py --sft_model "$OUT/zero3_sft" \
       --rm_model "$OUT/zero3_rm" $PPO --out_dir "$OUT/zero3_rlhf" 2> "$OUT/zero3_rlhf.err"; then
    echo "FAIL: PPO ran under DeepSpeed"; exit 1
  fi
  grep -q "PPO under DeepSpeed is not supported" "$OUT/zero3_rlhf.err" && echo "refused as expected"
fi
echo "ALL GPU CHECKS PASSED"
