"""The table RL settings are chosen from, without the gold judge: every run of an out folder (as
bench/choose_on_validation.sh writes it) scored on the labelled validation comparisons.

For each run: the implicit preference accuracy on ds/rm_val_ranked.jsonl, i.e. how often the run moved
the labellers' better reply up more than the worse one, log pi(chosen)/pi_sft(chosen) > log
pi(rejected)/pi_sft(rejected), over all pairs and over the pairs that differ only in correctness or
only in format (DPO's own validation metric, and a fair one for PPO and GRPO: the labels are the
labelling budget's, no judge is asked); then the reward-model score and the KL to SFT of its last
validation evaluation (metrics.jsonl). Per method (the folder name's prefix, ppo_beta0.2_s0 -> ppo),
the setting with the highest mean accuracy over seeds is marked: the rule the defaults follow.

    python bench/validation_choice.py --out out/choose --sft_model out/sft
"""
import glob
import json
import os
import re
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset.rm import RMDataset, flatten_groups, rm_collate  # noqa: E402
from dataset.task import gold_judge  # noqa: E402
from model.load import load_causal_lm, load_tokenizer  # noqa: E402
from trainer.dpo import policy_sequence_logprobs  # noqa: E402
from trainer.rm import pairwise_metrics  # noqa: E402
from utils import configure, quiet_transformers  # noqa: E402

OUT = "out/choose"  # the folder of runs
SFT_MODEL = "out/sft"  # the reference every run started from
RM_MODEL = "out/rm"  # printed only: the reward model the runs were trained against
DATA = "ds/rm_val_ranked.jsonl"  # labelled validation comparisons
MAX_LEN = 96  # tokens per prompt + response, as the reward model and DPO cut them
BATCH = 64  # comparison groups per forward pass


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


def chosen_settings(rows: list[dict]) -> dict:
    """{method: the setting whose mean preference accuracy over its seeds is the highest}; a tie keeps
    the first setting in name order."""
    best = {}
    for (method, setting), rs in sorted(by_setting(rows).items()):
        mean = sum(r["accuracy"] for r in rs) / len(rs)
        if method not in best or mean > best[method][1]:
            best[method] = (setting, mean)
    return {method: setting for method, (setting, _) in best.items()}


def main():
    configure(globals())
    quiet_transformers()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(SFT_MODEL, "SFT_MODEL")
    pad_id = tokenizer.pad_token_id
    data = RMDataset(DATA, tokenizer, MAX_LEN, verbose=False, judge=gold_judge)
    flat = flatten_groups(data.items)
    ref = sequence_logprobs_of(load_causal_lm(SFT_MODEL, "SFT_MODEL").eval(), data.items, pad_id)
    runs = sorted(d for d in glob.glob(os.path.join(OUT, "*")) if os.path.exists(os.path.join(d, "config.json")))
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
    best = chosen_settings(rows)
    print(f"validation comparisons: {DATA}, {len(flat['chosen'])} pairs; reference {SFT_MODEL}; "
          f"reward model {RM_MODEL}")
    print("| method | setting | seeds | preference accuracy | correctness-only | format-only | RM score | KL |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (method, setting), rs in sorted(by.items()):
        def mean(k):
            return sum(r[k] for r in rs) / len(rs)
        mark = " (chosen)" if best[method] == setting else ""
        print(f"| {method} | {setting}{mark} | {len(rs)} | {mean('accuracy'):.3f} | {mean('correctness'):.3f} | "
              f"{mean('format'):.3f} | {mean('reward'):.2f} | {mean('kl'):.2f} |")


if __name__ == "__main__":
    main()
