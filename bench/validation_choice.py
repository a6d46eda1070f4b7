"""The table RL settings are chosen from, without the gold judge: every run of an out folder (as
bench/choose_on_validation.sh writes it) scored on the labelled validation comparisons.

For each run: the implicit preference accuracy on ds/rm_val_ranked.jsonl, i.e. how often the run moved
the labellers' better reply up more than the worse one, log pi(chosen)/pi_sft(chosen) > log
pi(rejected)/pi_sft(rejected), over all pairs and over the pairs that differ only in correctness or
only in format (DPO's own validation metric, and a fair one for PPO and GRPO: the labels are the
labelling budget's, no judge is asked; the task's rubric only sorts the pairs into the reported
correctness-only and format-only columns, which the rule does not read); then the reward-model score and the KL to SFT of its last
validation evaluation (metrics.jsonl). Per method (the folder name's prefix, ppo_beta0.2_s0 -> ppo),
the setting with the highest mean accuracy over seeds is chosen where it beats today's default
(DEFAULTS) by more than one spread over seeds; otherwise the default stays: the rule the defaults follow.

    python bench/validation_choice.py --out out/choose --sft_model out/sft
"""
import glob
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset.rm import RMDataset, flatten_groups, rm_collate  # noqa: E402
from dataset.task import gold_judge  # noqa: E402
from model.load import load_causal_lm, load_tokenizer  # noqa: E402
from trainer.dpo import policy_sequence_logprobs  # noqa: E402
from trainer.rm import pairwise_metrics  # noqa: E402
from utils import ConfigError, configure, quiet_transformers, run_main  # noqa: E402

OUT = "out/choose"  # the folder of runs
SFT_MODEL = "out/sft"  # the reference every run started from
RM_MODEL = "out/rm"  # printed only: the reward model the runs were trained against
DATA = "ds/rm_val_ranked.jsonl"  # labelled validation comparisons
MAX_LEN = 96  # tokens per prompt + response, as the reward model and DPO cut them
BATCH = 64  # comparison groups per forward pass
# today's defaults, as <method>=<setting> in the folders' names: they stay unless beaten beyond the noise
DEFAULTS = "ppo=beta0.2,grpo=beta0.1,dpo=lr3e-4"


@torch.no_grad()
def sequence_logprobs_of(model, items: list, pad_id: int) -> torch.Tensor:
    """log pi(y|x) of every reply of every group, in flatten_groups order.  -> (N,)"""
    out = []
    for i in range(0, len(items), BATCH):
        out.append(policy_sequence_logprobs(model, rm_collate(items[i: i + BATCH], pad_id)).float())
    return torch.cat(out)


def preference_metrics(policy, ref_logprobs: torch.Tensor, items: list, pad_id: int) -> dict:
    """pairwise_metrics of the log-ratio log pi(y|x) - log pi_ref(y|x) over the groups' pairs:
    accuracy is how often the policy raised the better reply more than the worse one."""
    flat = flatten_groups(items)
    ratio = sequence_logprobs_of(policy, items, pad_id) - ref_logprobs  # (N,)
    return pairwise_metrics(ratio[torch.tensor(flat["chosen"])], ratio[torch.tensor(flat["rejected"])],
                            flat["kinds"])


def last_eval(run_dir: str) -> dict:
    """The last line of metrics.jsonl with an eval/ figure."""
    last = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "eval/kl" in row or "eval/reward" in row:
                last = row
    return last


def by_setting(rows: list[dict]) -> dict:
    """{(method, setting): [its rows, one per seed]}"""
    by = defaultdict(list)
    for r in rows:
        by[(r["method"], r["setting"])].append(r)
    return by


def mean_std(values: list) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values; NaN where there are none
    (DPO logs no reward-model score)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def parse_defaults(text: str) -> dict:
    """DEFAULTS 'ppo=beta0.2,dpo=lr3e-4' -> {'ppo': 'beta0.2', 'dpo': 'lr3e-4'}."""
    pairs = [kv.split("=") for kv in text.split(",") if kv.strip()]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ConfigError(f"DEFAULTS={text!r}: not a list of <method>=<setting> (give e.g. "
                          "'ppo=beta0.2,grpo=beta0.1,dpo=lr3e-4', as in the run folders' names)")
    return dict(pairs)


def chosen_settings(rows: list[dict], defaults: dict) -> dict:
    """{method: its chosen setting}. The best mean preference accuracy over seeds replaces the default
    only where it beats it by more than one spread (the larger sample std of the two): a difference within
    the seeds' noise keeps the default. A method without a default takes its best."""
    chosen = {}
    by = by_setting(rows)
    for method in sorted({m for m, _ in by}):
        stats = {setting: mean_std([r["accuracy"] for r in rs]) for (m, setting), rs in sorted(by.items())
                 if m == method}
        best = max(stats, key=lambda k: stats[k][0])  # the first in name order on a tie
        default = defaults.get(method)
        if default in stats and stats[best][0] - stats[default][0] <= max(stats[best][1], stats[default][1]):
            best = default
        chosen[method] = best
    return chosen


def main():
    configure(globals())
    defaults = parse_defaults(DEFAULTS)
    quiet_transformers()
    tokenizer = load_tokenizer(SFT_MODEL, "SFT_MODEL")
    pad_id = tokenizer.pad_token_id
    data = RMDataset(DATA, tokenizer, MAX_LEN, verbose=False, judge=gold_judge)
    flat = flatten_groups(data.items)
    ref = sequence_logprobs_of(load_causal_lm(SFT_MODEL, "SFT_MODEL").eval(), data.items, pad_id)
    runs = sorted(d for d in glob.glob(os.path.join(OUT, "*")) if os.path.exists(os.path.join(d, "summary.json")))
    rows = []
    for run_dir in runs:
        name = os.path.basename(run_dir)
        m = re.match(r"([a-z]+)_(.+?)_s(\d+)$", name)
        if m is None:
            continue
        acc = preference_metrics(load_causal_lm(run_dir).eval(), ref, data.items, pad_id)
        ev = last_eval(run_dir)
        rows.append({"method": m[1], "setting": m[2], "seed": int(m[3]), "accuracy": acc["accuracy"],
                     "correctness": acc.get("accuracy_correctness", float("nan")),
                     "format": acc.get("accuracy_format", float("nan")),
                     "reward": ev.get("eval/reward", float("nan")), "kl": ev.get("eval/kl", float("nan"))})
    by = by_setting(rows)
    best = chosen_settings(rows, defaults)
    print(f"validation comparisons: {DATA}, {len(flat['chosen'])} pairs; reference {SFT_MODEL}; "
          f"reward model {RM_MODEL}")
    print("| method | setting | seeds | preference accuracy | correctness-only | format-only | RM score | KL |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (method, setting), rs in sorted(by.items()):
        def cell(k, fmt="{:.3f}"):
            mean, std = mean_std([r[k] for r in rs])
            if not math.isfinite(mean):
                return "-"
            return fmt.format(mean) + (" ± " + fmt.format(std) if len(rs) > 1 else "")
        mark = " (chosen)" if best[method] == setting else ""
        mark += " (default)" if f"{method}={setting}" in DEFAULTS.split(",") else ""
        print(f"| {method} | {setting}{mark} | {len(rs)} | {cell('accuracy')} | {cell('correctness')} | "
              f"{cell('format')} | {cell('reward', '{:.2f}')} | {cell('kl', '{:.2f}')} |")


if __name__ == "__main__":
    run_main(main)
