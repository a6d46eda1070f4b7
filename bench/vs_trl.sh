#!/usr/bin/env bash
# The project beside TRL on the same work, one run, each side at its best setting: ../shared/vs-trl/side_by_side.sh
# with the project's levers, then the share of the bf16 matmul probe each side turns into model FLOPs
# (bench/vs_trl_flops.py). Only ratios from one run mean anything; the probe is printed with them.
#
#   bash bench/vs_trl.sh                 # SFT, reward model and PPO (8-25 min on 2 quiet cores, by machine)
#   ONLY="rm" bash bench/vs_trl.sh       # one stage
#
# The project's best settings (each side's own; docs/throughput.md says what each does):
#   SFT  bf16, length-grouped batches, the LM head and loss in chunks on the supervised tokens (LM_HEAD_CHUNK='auto'),
#        selective activation checkpointing (each layer keeps its matrix products' outputs and runs only the ops
#        between them again: GRADIENT_CHECKPOINTING='selective')
#   RM   bf16, length-grouped batches, dropout off and over-long comparisons left out: TRL's RewardTrainer
#        disables dropout and drops pairs over max_length, so without these two the project does more work;
#        each step's 8 pairs as four micro-batches of 2 (the same optimizer step, a quarter of the activations)
#   PPO  bf16 (frozen models stored in bf16), length-grouped prompts, the policy's log-probs through the LM head a
#        chunk of tokens at a time (LM_HEAD_CHUNK='auto': no (rows x tokens x vocabulary) logits kept for backward)
set -euo pipefail
cd "$(dirname "$0")/.."
harness="${VS_TRL:-../shared/vs-trl}"
# every stage: no test-split evaluation (TRL's side evaluates nothing; the project's default would answer the
# embedded task's test prompts with the 125M model before and after, minutes and memory outside the timed
# span), and --overwrite True (the harness reuses its out dirs)
same="--overwrite True"
export PROJECT_SFT_FLAGS="${PROJECT_SFT_FLAGS:---gradient_checkpointing selective --test_data none --test_prompts none $same}"
export PROJECT_RM_FLAGS="${PROJECT_RM_FLAGS:---group_by_length True --dropout 0.0 --too_long drop --batch_size 2 --grad_accum 4 --test_data none $same}"
export PROJECT_PPO_FLAGS="${PROJECT_PPO_FLAGS:---group_by_length True --test_prompts none $same}"
bash "$harness/side_by_side.sh"
python bench/vs_trl_flops.py "${TMPDIR:-/tmp}/vs-trl/side.jsonl"
