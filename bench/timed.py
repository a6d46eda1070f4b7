"""Run one command, keep its output, and record what it cost: wall time, CPU time and peak memory.

    python bench/timed.py OUT_DIR -- python train_dpo.py --out_dir OUT_DIR

Writes OUT_DIR/log.txt (the command's output, also echoed) and OUT_DIR/timing.json: wall_seconds,
cpu_seconds (user + system of the command and its children: on 2 cores up to 2x wall), peak_rss_mb
(the largest resident set of any one of them), the command line, and a matmul probe (bench/probe.py)
just before and just after, so the time can be read against what the machine gave.
"""
import json
import os
import resource
import subprocess
import sys
import time

from probe import describe, probe


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit("usage: python bench/timed.py OUT_DIR -- COMMAND [ARGS...]")
    out_dir, command = sys.argv[1], sys.argv[3:]
    os.makedirs(out_dir, exist_ok=True)
    before = probe()
    start = time.time()
    with open(os.path.join(out_dir, "log.txt"), "w") as log:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    wall = time.time() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = probe()
    timing = {"wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
              "peak_rss_mb": usage.ru_maxrss / 1024, "command": command, "returncode": code,
              "probe_before": before, "probe_after": after}
    print(
        f"{wall:.0f} s wall, peak RSS {timing['peak_rss_mb']:.0f} MiB; before: {describe(before)}; after: {describe(after)}"
    )
    with open(os.path.join(out_dir, "timing.json"), "w") as f:
        json.dump(timing, f, indent=2)
    if code:
        raise SystemExit(f"{' '.join(command)} failed with exit code {code}; see {out_dir}/log.txt")


if __name__ == "__main__":
    main()
