"""The figures of bench/repeat_runs.sh over its runs: mean, sample standard deviation and range.

    python bench/repeat_table.py --out_dir out/repeat

Reads OUT_DIR/<part>/s<seed>/... (whatever parts and runs are there), prints one line per figure and
writes OUT_DIR/table.json. For hh_winrate it also pools the runs: each held-out prompt's outcome (win 1,
tie 1/2, loss 0 by the judge) averaged over the runs, then the mean and a 95% bootstrap interval over
prompts. That interval is over prompts only; the spread over runs is the per-run win-rate line.
"""
import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from eval_winrate import outcomes, win_rate  # noqa: E402
from utils import configure, write_json  # noqa: E402

OUT_DIR = "out/repeat"  # bench/repeat_runs.sh's OUT
BOOTSTRAP = 2000  # resamples of the pooled win rate's interval
POOLED = "HH judge RM win rate, the runs pooled per prompt"

config = configure(globals())

# (part, figure, file under the run dir, keys into that JSON)
FIGURES = [
    ("embedded", "RM accuracy", "rm/summary.json", ["accuracy"]),
    ("embedded", "RM accuracy, correctness-only pairs", "rm/summary.json", ["accuracy_correctness"]),
    ("embedded", "RM accuracy, format-only pairs", "rm/summary.json", ["accuracy_format"]),
    ("embedded", "PPO gold score (greedy)", "rlhf/summary.json", ["gold_score"]),
    ("embedded", "win rate RLHF over SFT, gold judge", "winrate/summary.json", ["gold", "win_rate"]),
    ("embedded", "win rate RLHF over SFT, the run's RM", "winrate/summary.json", ["rm", "win_rate"]),
    ("rm_hh", "head-only SmolLM2 RM, 500 HH harmless test pairs", "result.json", ["accuracy"]),
    ("hh_rms", "HH proxy RM (rows 1-906), 299 test pairs", "rm_proxy/summary.json", ["accuracy"]),
    ("hh_rms", "HH judge RM (rows 907-1812), 299 test pairs", "rm_judge/summary.json", ["accuracy"]),
    ("smollm2_rm", "SmolLM2 LoRA RM on the shipped task", "rm/summary.json", ["accuracy"]),
    ("smollm2_rm", "SmolLM2 LoRA RM, correctness-only pairs", "rm/summary.json", ["accuracy_correctness"]),
    ("smollm2_rm", "SmolLM2 LoRA RM, format-only pairs", "rm/summary.json", ["accuracy_format"]),
    *[("smollm2_rm", f"SmolLM2 LoRA RM, correctness-only pairs: {t}", "rm/summary.json", ["accuracy_correctness_per_type", t])
      for t in ("add", "capital", "count", "opposite", "sort")],
    ("hh_winrate", "HH judge RM win rate RLHF over SFT, 200 test prompts", "rlhf/report.json", ["judge_win_rate", "win_rate"]),
    ("hh_winrate", "HH judge RM win rate, lower end of its 95% interval", "rlhf/report.json", ["judge_win_rate", "ci95", 0]),
    ("hh_winrate", "HH proxy RM win rate RLHF over SFT", "rlhf/report.json", ["proxy_win_rate", "win_rate"]),
    ("hh_winrate", "HH judge RM mean score of RLHF answers", "rlhf/report.json", ["judge_mean", "rlhf"]),
    ("hh_winrate", "HH KL to SFT, nats per sampled answer", "rlhf/report.json", ["kl_sampled"]),
    ("hh_winrate", "HH RLHF reply length, tokens", "rlhf/report.json", ["mean_length_tokens", "rlhf"]),
]


def value(path: str, keys: list):
    x = json.load(open(path))
    for k in keys:  # a str key into a dict, an int index into a list
        x = (x.get(k) if isinstance(x, dict) else x[k] if isinstance(x, list) and isinstance(k, int) and k < len(x)
             else None)
    return x


def spread(values: list) -> dict:
    """mean, sample standard deviation (0 for one run), min and max."""
    return {"runs": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values),
            "values": values}


def pooled_win_rate(paths: list[str]) -> dict | None:
    """The judge's win rate over all runs' answers: per prompt, the mean outcome over runs; bootstrap over prompts.
    The runs must share their SFT answers (greedy, the same SFT model: the same text), or None."""
    runs = [[json.loads(line) for line in open(p)] for p in paths]
    column = lambda rows, model, key: [r[model][key] for r in rows]
    if len(runs) < 2 or any(column(rows, "sft", "response") != column(runs[0], "sft", "response") for rows in runs):
        return None
    per_run = [outcomes(column(rows, "sft", "gold"), column(rows, "rlhf", "gold"), column(rows, "sft", "response"),
                        column(rows, "rlhf", "response")) for rows in runs]
    pooled = [sum(o) / len(o) for o in zip(*per_run)]  # (prompts,)
    return {"runs": len(runs), **win_rate(pooled, BOOTSTRAP, 0)}


def main() -> None:
    table = []
    for part, name, rel, keys in FIGURES:
        runs = sorted(glob.glob(os.path.join(OUT_DIR, part, "s*", rel)))
        values = [v for v in (value(p, keys) for p in runs) if isinstance(v, (int, float))]
        if values:
            table.append({"part": part, "figure": name, **spread(values)})
    for row in table:
        print(f"{row['part']:<11} {row['figure']:<52} {row['mean']:.3f} ± {row['std']:.3f} "
              f"[{row['min']:.3f}, {row['max']:.3f}] over {row['runs']} runs")
    pooled = pooled_win_rate(sorted(glob.glob(os.path.join(OUT_DIR, "hh_winrate", "s*", "rlhf", "side_by_side.jsonl"))))
    if pooled:
        print(f"{'hh_winrate':<11} {POOLED:<52} {pooled['win_rate']:.3f} "
              f"[{pooled['ci95'][0]:.3f}, {pooled['ci95'][1]:.3f}] (95% over {pooled['prompts']} prompts) "
              f"over {pooled['runs']} runs")
        table.append({"part": "hh_winrate", "figure": POOLED, **pooled})
    if not table:
        print(f"no runs under {OUT_DIR}")
    write_json(os.path.join(OUT_DIR, "table.json"), table)


if __name__ == "__main__":
    main()
