#!/usr/bin/env bash
# Concurrent first starts: N times, a fresh clone of this repository (no out/embedded yet) runs
# `torchrun --nproc_per_node 2 train_sft.py`, so both processes build the embedded model and its tokenizer
# at the same moment. Prints each run's exit code and the count that succeeded.
#
#   bash bench/fresh_starts.sh                     # 10 runs of a short SFT (5 steps, 20 evaluation prompts)
#   N=3 SFT_ARGS="" TIMEOUT=3600 bash bench/fresh_starts.sh   # the full default SFT run, 3 times
set -uo pipefail
cd "$(dirname "$0")/.."
n="${N:-10}"
args="${SFT_ARGS---max_steps 5 --eval_limit 20 --test_limit 20 --save_interval 0}"
work="$(mktemp -d)"
ok=0
for i in $(seq 1 "$n"); do
    git clone -q . "$work/clone$i"
    (cd "$work/clone$i" && TQDM_DISABLE=1 OMP_NUM_THREADS=1 timeout "${TIMEOUT:-900}" \
        torchrun --nproc_per_node 2 train_sft.py $args > "$work/run$i.log" 2>&1)
    rc=$?
    [ "$rc" = 0 ] && ok=$((ok + 1))
    echo "run $i: exit $rc (log $work/run$i.log)"
    rm -rf "$work/clone$i"
done
echo "fresh starts: $ok of $n succeeded"
