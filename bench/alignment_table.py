"""The PPO / DPO / GRPO comparison table and figure, from the runs of bench/compare_alignment.sh.

    python bench/alignment_table.py out/compare [--plot pic/alignment_comparison.png]

Reads OUT/<method>_s<seed>/summary.json (written by train_rlhf.py / train_dpo.py) and timing.json
(bench/timed.py), prints a markdown table with the mean and the spread (sample standard deviation over
seeds; "n" runs) of each figure, and a per-type table of the greedy gold score; writes both to
OUT/results.md, the numbers to OUT/results.json, and the figure: held-out gold score against KL to SFT
and against CPU-minutes, one small dot per run and a large one per method's mean.
"""
import argparse
import glob
import json
import math
import os
import re
import statistics

METHODS = ("ppo", "grpo", "dpo", "bon")  # first, in this order; any other <name>_s<seed> folder follows
LABELS = {"ppo": "PPO", "grpo": "GRPO", "dpo": "DPO", "bon": "best-of-N",  # bon: bench/best_of_n.py
          # bench/remedies.sh
          "ensemble": "PPO, RM ensemble", "stop": "PPO, ensemble + stop", "iterated": "iterated RLHF"}
COLUMNS = [  # (key, header, format)
    ("gold_score", "gold (greedy)", "{:.3f}"),
    ("correct", "correct", "{:.3f}"),
    ("format", "format", "{:.3f}"),
    ("kl", "KL to SFT (nats, sampled)", "{:.2f}"),
    ("reward", "RM score", "{:.2f}"),
    ("train_minutes", "train time (min)", "{:.2f}"),
    ("wall_minutes", "process wall (min)", "{:.2f}"),
    ("cpu_minutes", "CPU-minutes", "{:.2f}"),
    ("peak_rss_mb", "peak RSS (MiB)", "{:.0f}"),
]


def load_runs(out: str) -> dict:
    """{method: [run dict, one per seed]} for every OUT/<method>_s<seed>/ with a summary.json; METHODS
    first, then the others by name."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "*_s*", "summary.json"))):
        match = re.fullmatch(r"(\w+)_s(\d+)", os.path.basename(os.path.dirname(path)))
        if not match:
            continue
        with open(path) as f:
            run = json.load(f)
        timing_path = os.path.join(os.path.dirname(path), "timing.json")
        timing = json.load(open(timing_path)) if os.path.exists(timing_path) else {}
        run.update(seed=int(match.group(2)), train_minutes=run["train_seconds"] / 60,
                   wall_minutes=timing.get("wall_seconds", float("nan")) / 60,
                   cpu_minutes=timing.get("cpu_seconds", float("nan")) / 60)
        run["peak_rss_mb"] = max(run["peak_rss_mb"], timing.get("peak_rss_mb", 0))
        runs.setdefault(match.group(1), []).append(run)
    order = [m for m in METHODS if m in runs] + sorted(m for m in runs if m not in METHODS)
    return {m: runs[m] for m in order}


def mean_spread(values: list) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list, fmt: str) -> str:
    mean, spread = mean_spread(values)
    return (
        "-"
        if mean != mean
        else fmt.format(mean) + (f" ± {fmt.format(spread)}" if len(values) > 1 else "")
    )


def per_type(r: dict, kind: str, key: str, sft: bool = False) -> float:
    """A run's per-type figure: per_type holds {"sft": x, "<method>": y}."""
    return next(v for k, v in r["per_type"][f"{kind}/{key}"].items() if (k == "sft") == sft)


def tables(runs: dict) -> str:
    sft = [r["gold_score_sft"] for rs in runs.values() for r in rs]
    lines = [
        f"SFT starting point: greedy gold {cell(sft, '{:.3f}')} (the same checkpoint for every run)",
        "",
        "| method | runs | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for method, rs in runs.items():
        lines.append(
            f"| {LABELS.get(method, method)} | {len(rs)} | "
            + " | ".join(cell([r.get(k) for r in rs], fmt) for k, _, fmt in COLUMNS)
            + " |"
        )
    kinds = sorted(
        {k.split("/")[0] for rs in runs.values() for r in rs for k in r.get("per_type", {})}
    )
    lines += [
        "",
        "Greedy gold score by instruction type (mean over runs; correct / format in brackets):",
        "",
        "| type | SFT | " + " | ".join(LABELS.get(m, m) for m in runs) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in runs) + " |",
    ]
    for kind in kinds:
        any_run = next(iter(runs.values()))
        row = [f"{kind}", cell([per_type(r, kind, "gold", sft=True) for r in any_run], "{:.2f}")]
        for rs in runs.values():
            mean = {key: mean_spread([per_type(r, kind, key) for r in rs])[0] for key in ("correct", "format")}
            row.append(f"{cell([per_type(r, kind, 'gold') for r in rs], '{:.2f}')} "
                       f"({mean['correct']:.2f} / {mean['format']:.2f})")
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Correct by instruction type: SFT, and each method's mean over runs with its change from SFT:",
        "",
        "| type | SFT | " + " | ".join(LABELS.get(m, m) for m in runs) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in runs) + " |",
    ]
    for kind in kinds:
        sft_correct = mean_spread([per_type(r, kind, "correct", sft=True) for rs in runs.values() for r in rs])[0]
        row = [kind, f"{sft_correct:.3f}"]
        for rs in runs.values():
            mean = mean_spread([per_type(r, kind, "correct") for r in rs])[0]
            row.append(f"{mean:.3f} ({mean - sft_correct:+.3f})")
        lines.append("| " + " | ".join(row) + " |")
    if "bon" in runs:
        lines += ["", "best-of-N trains nothing: its gold, correct and format are those of the answer it keeps (a sample), "
                  "its KL is log N - (N - 1) / N, and its time is that of sampling and scoring N answers per test "
                  "prompt (bench/best_of_n.py)."]
    return "\n".join(lines)


def plot(runs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    sft = mean_spread([r["gold_score_sft"] for rs in runs.values() for r in rs])[0]
    for ax, (key, label) in zip(
        axes,
        (
            ("kl", "KL to SFT (nats / response, sampled)"),
            ("cpu_minutes", "CPU-minutes (whole run)"),
        ),
    ):
        for i, (method, rs) in enumerate(runs.items()):
            color = f"C{i}"
            ax.scatter(
                [r[key] for r in rs], [r["gold_score"] for r in rs], s=14, color=color, alpha=0.5
            )
            ax.scatter(
                [mean_spread([r[key] for r in rs])[0]],
                [mean_spread([r["gold_score"] for r in rs])[0]],
                s=90,
                color=color,
                edgecolor="black",
                label=LABELS.get(method, method),
            )
        ax.axhline(sft, color="gray", linestyle="--", linewidth=1, label="SFT")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out gold score (greedy)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "PPO vs GRPO vs DPO vs best-of-N from the same SFT model (small dots: seeds; large: mean)", fontsize=10
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the OUT folder of bench/compare_alignment.sh")
    parser.add_argument("--plot", default="pic/alignment_comparison.png")
    args = parser.parse_args()
    runs = load_runs(args.out)
    if not runs:
        raise SystemExit(
            f"no runs in {args.out}/ (expected {args.out}/<ppo|grpo|dpo|bon>_s<seed>/summary.json)"
        )
    text = tables(runs)
    print(text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(
            {
                m: [
                    {k: r.get(k) for k in ["seed", "gold_score_sft"] + [c for c, _, _ in COLUMNS]}
                    for r in rs
                ]
                for m, rs in runs.items()
            },
            f,
            indent=2,
        )
    plot(runs, args.plot)
    print(f"wrote {args.out}/results.md, {args.out}/results.json, {args.plot}")


if __name__ == "__main__":
    main()
