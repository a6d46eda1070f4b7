"""What each remedy's reward sees on a PPO policy's own answers: the correctness-only accuracy per type
(pairs of a right and a wrong answer in the same form) on the round-1 policies' samples, from the lines
bench/remedies.sh collects in OUT/on_policy.tsv (reward, seed, then bench/eval_rm.py's line).

    python bench/on_policy_table.py out/remedies/on_policy.tsv

Prints a markdown table: per reward, the mean over seeds (and each seed's figure) of the correctness-only
accuracy, overall and per instruction type.
"""
import re
import statistics
import sys

TYPES = ("add", "capital", "count", "opposite", "sort")


def parse(line: str) -> tuple[str, str, dict]:
    """'reward<TAB>seed<TAB>eval_rm line' -> (reward, seed, {'all': acc, 'pairs': n, type: acc, ...})."""
    reward, seed, text = line.rstrip("\n").split("\t", 2)
    m = re.search(r"accuracy_correctness ([0-9.]+) \((\d+) pairs\)", text)
    if not m:
        raise ValueError(f"no correctness-only accuracy in: {text[:200]}")
    row = {"all": float(m.group(1)), "pairs": int(m.group(2))}
    if "by type: " in text:
        for part in text.split("by type: ", 1)[1].split(", "):
            name, value = part.split()
            row[name] = float(value)
    return reward, seed, row


def table(lines: list[str]) -> str:
    rows = {}
    for line in lines:
        if line.strip():
            reward, seed, row = parse(line)
            rows.setdefault(reward, []).append((seed, row))
    types = [t for t in TYPES if any(t in r for runs in rows.values() for _, r in runs)]
    out = ["| reward | seeds | correctness-only | " + " | ".join(types) + " |",
           "| --- | ---: | ---: | " + " | ".join("---:" for _ in types) + " |"]
    for reward, runs in rows.items():
        cells = []
        for key in ["all"] + types:
            values = [r[key] for _, r in runs if key in r]
            cells.append(f"{statistics.mean(values):.3f} ({' / '.join(f'{v:.2f}' for v in values)})" if values else "-")
        out.append(f"| {reward} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        print(table(f.readlines()))
