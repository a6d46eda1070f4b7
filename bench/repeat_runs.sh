#!/usr/bin/env bash
# Every reward-model and win-rate figure of the README as runs repeated with seeds RUNS, then their mean,
# standard deviation and range (bench/repeat_table.py -> OUT/table.json). A run whose summary is already
# there is kept, so an interrupted call goes on where it stopped.
#
#   bash bench/repeat_runs.sh                        # all parts, RUNS="0 1 2", into out/repeat
#   PARTS=embedded bash bench/repeat_runs.sh         # only the embedded model's (~14 min on 2 cores)
# The SmolLM2 parts need GGUF and HH_DATA (bench/pipeline_hh.sh).
#
# Parts (PARTS, default "embedded rm_hh hh_rms smollm2_rm hh_winrate"):
#   embedded    train_rm.py and train_rlhf.py with --seed S from the SFT model SFT (default out/sft, trained
#               if missing), then eval_winrate.py: RM accuracy (all / correctness / format) and the win
#               rate of RLHF over SFT by the gold judge and by that seed's RM (~4.5 min a run)
#   rm_hh       python bench/bench_rm_hh.py, the head-only SmolLM2 RM on the 500 HH harmless test pairs: it has
#               no seed, so its runs are reruns of the same command (~11.5 min a run)
#   hh_rms      the proxy and judge RMs of bench/pipeline_hh.sh (STAGES=rms, ~25 min on one thread)
#   smollm2_rm  the RM stage of bench/pipeline_smollm2.sh (STAGES=rm) from SMOLLM2_SFT (default
#               out/smollm2/sft, trained first if missing: ~9 min), ~25 min a run (240 steps)
#   hh_winrate  the PPO stage of bench/pipeline_hh.sh with seed S, on the reward models in HH_RMS (default
#               out/hh_ppo, trained first if missing: ~25 min): the judge's win rate of RLHF over SFT, KL,
#               lengths (~75 min a run on one thread; a run after the first that saved sft_eval.json reuses its SFT
#               evaluation, ~55 min)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-0 1 2}"
parts="${PARTS:-embedded rm_hh hh_rms smollm2_rm hh_winrate}"
out="${OUT:-out/repeat}"
sft="${SFT:-out/sft}"
smollm2_sft="${SMOLLM2_SFT:-out/smollm2/sft}"
export TQDM_DISABLE=1
has() { [[ " $parts " == *" $1 "* ]]; }
done_() { [ -f "$1" ] && echo "kept $1"; }  # a finished run: skip it
python bench/probe.py
if has embedded; then
  [ -f "$sft/config.json" ] || python train_sft.py --out_dir "$sft"
  for s in $runs; do
    d="$out/embedded/s$s"
    done_ "$d/rm/summary.json" || python bench/timed.py "$d/rm" -- python train_rm.py --seed "$s" --model "$sft" --out_dir "$d/rm"
    done_ "$d/rlhf/summary.json" || python bench/timed.py "$d/rlhf" -- python train_rlhf.py --seed "$s" --sft_model "$sft" \
        --rm_model "$d/rm" --out_dir "$d/rlhf"
    done_ "$d/winrate/summary.json" || python eval_winrate.py --model_a "$sft" --model_b "$d/rlhf" --rm "$d/rm" \
        --seed "$s" --out_dir "$d/winrate"
  done
fi
if has rm_hh; then
  for s in $runs; do
    done_ "$out/rm_hh/s$s/result.json" || python bench/bench_rm_hh.py --out_dir "$out/rm_hh/s$s" --model "${GGUF:-}" \
        --train_file "${HH_DATA:-}/hh-harmless-train.jsonl" --test_file "${HH_DATA:-}/hh-harmless-test.jsonl"
  done
fi
if has hh_rms; then
  for s in $runs; do
    done_ "$out/hh_rms/s$s/rm_judge/summary.json" || STAGES=rms SEED="$s" OUT="$out/hh_rms/s$s" bash bench/pipeline_hh.sh
  done
fi
if has smollm2_rm; then
  [ -f "$smollm2_sft/adapter_config.json" ] || [ -f "$smollm2_sft/config.json" ] || \
    STAGES=sft SFT="$smollm2_sft" bash bench/pipeline_smollm2.sh
  for s in $runs; do
    done_ "$out/smollm2_rm/s$s/rm/summary.json" || STAGES=rm SEED="$s" SFT="$smollm2_sft" OUT="$out/smollm2_rm/s$s" \
        bash bench/pipeline_smollm2.sh
  done
fi
if has hh_winrate; then
  hh_rms="${HH_RMS:-out/hh_ppo}"
  [ -f "$hh_rms/rm_judge/summary.json" ] || STAGES=rms OUT="$hh_rms" bash bench/pipeline_hh.sh
  sft_eval=run  # the first run that evaluates SFT saves sft_eval.json; the later ones reuse it (greedy: the same answers)
  for s in $runs; do
    d="$out/hh_winrate/s$s"
    done_ "$d/rlhf/report.json" || STAGES=ppo RMS="$hh_rms" SEED="$s" SFT_EVAL="$sft_eval" OUT="$d" PLOT="$d/curve.png" \
        bash bench/pipeline_hh.sh
    [ "$sft_eval" != run ] || [ ! -f "$d/rlhf/sft_eval.json" ] || sft_eval="$d/rlhf"
  done
fi
python bench/probe.py
python bench/repeat_table.py --out_dir "$out"
