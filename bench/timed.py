"""Run one command, keep its output, and record what it cost: wall time, CPU time and peak memory.

    python bench/timed.py OUT_DIR -- python train_dpo.py --out_dir OUT_DIR

Writes OUT_DIR/log.txt (the command's output, also echoed) and OUT_DIR/timing.json: wall_seconds,
cpu_seconds (user + system of the command and its children: on 2 cores up to 2x wall), peak_rss_mb
(the largest resident set of any one of them) and the command line.
"""
import json
import os
import resource
import subprocess
import sys
import time


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        raise SystemExit("usage: python bench/timed.py OUT_DIR -- COMMAND [ARGS...]")
    out_dir, command = sys.argv[1], sys.argv[3:]
    os.makedirs(out_dir, exist_ok=True)
    start = time.time()
    with open(os.path.join(out_dir, "log.txt"), "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = {"wall_seconds": time.time() - start, "cpu_seconds": usage.ru_utime + usage.ru_stime,
              "peak_rss_mb": usage.ru_maxrss / 1024, "command": command, "returncode": code}
    with open(os.path.join(out_dir, "timing.json"), "w") as f:
        json.dump(timing, f, indent=2)
    if code:
        raise SystemExit(f"{' '.join(command)} failed with exit code {code}; see {out_dir}/log.txt")


if __name__ == "__main__":
    main()
