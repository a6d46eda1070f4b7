"""The table of bench/compare_defaults.sh: each variant's test-split figures, mean ± sample std over seeds.

    python bench/defaults_table.py out/defaults

Reads OUT/<variant>_s<seed>/summary.json (train_rlhf.py) and prints a markdown table: gold score,
correctness and format (greedy, test prompts), the correctness change per task type against SFT, and KL.
"""
import glob
import json
import os
import re
import statistics
import sys

VARIANTS = ("ppo_zero_head", "ppo_rm_critic", "grpo_token", "grpo_seq_std")


def spread(values: list) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(out: str) -> None:
    runs = {v: [] for v in VARIANTS}
    for path in sorted(glob.glob(os.path.join(out, "*_s*", "summary.json"))):
        match = re.fullmatch(r"(\w+)_s(\d+)", os.path.basename(os.path.dirname(path)))
        if match and match.group(1) in runs:
            runs[match.group(1)].append(json.load(open(path)))
    types = sorted(
        {
            k.split("/")[0]
            for rs in runs.values()
            for r in rs
            for k in r.get("per_type", {})
            if k.endswith("/correct")
        }
    )
    print("| variant | seeds | gold (greedy) | correct | format | KL | "
          + " | ".join(f"{t} correct vs SFT" for t in types) + " |")
    print("|" + " --- |" * (6 + len(types)))
    for variant, rs in runs.items():
        if not rs:
            continue
        deltas = [
            spread(
                [
                    r["per_type"][f"{t}/correct"]["rlhf"] - r["per_type"][f"{t}/correct"]["sft"]
                    for r in rs
                    if f"{t}/correct" in r.get("per_type", {})
                ]
            )
            for t in types
        ]
        print(f"| {variant} | {len(rs)} | {spread([r['gold_score'] for r in rs])} | "
              f"{spread([r['correct'] for r in rs])} | {spread([r['format'] for r in rs])} | "
              f"{spread([r['kl'] for r in rs])} | " + " | ".join(deltas) + " |")
    sft = next((r for rs in runs.values() for r in rs), None)
    if sft:
        print(
            f"\nSFT on the same test prompts: gold {sft['gold_score_sft']:.3f}, correct {sft['correct_sft']:.3f}, "
            f"format {sft['format_sft']:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/defaults")
