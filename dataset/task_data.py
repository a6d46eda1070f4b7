"""The shipped task's data files: demonstrations, ranked comparisons and prompts, in three disjoint
splits, drawn by the simulated demonstrators of dataset/task.py.

Run `python -m dataset.task_data --seed 0` to (re)write every file in ds/ (see ds/README.md).
"""
import argparse
import json
import os
import random

from dataset.task import (
    CAPITALS,
    HOLDOUT_TYPE,
    INSTRUCTIONS,
    MAIN_TYPES,
    OPPOSITES,
    WORDS,
    make_example,
    render,
    wrong_answer,
)

DEMO_STYLES = {"preferred": 0.25, "bare": 0.55, "hedged": 0.20}  # demonstrators' habits
DEMO_WRONG = 0.15  # share of demonstrations with a wrong answer
# Three disjoint splits: train (SFT, RM, PPO prompts), val (every choice: best checkpoint, settings,
# early stopping) and test (reported figures only). Files are named <what>_<split>.
SIZES = {"sft_train": 8000, "sft_val": 400, "sft_test": 400,
         "rm_train": 3000, "rm_val": 300, "rm_test": 500,
         "prompts_train": 4000, "prompts_val": 300, "prompts_test": 1000,  # test: 200 per type
         "peft_train": 1000, "peft_eval": 200}
SPLITS = ("train", "val", "test")
# The lookup kinds have few inputs (38 countries, 40 words): each split gets its own share of them,
# so a test capital is a country the model never saw in training or validation.
LOOKUP_TABLES = {
    "capital": sorted(CAPITALS),
    "opposite": sorted(OPPOSITES),
    "repeat": sorted(set(WORDS)),
}
POOL_SHARES = {"train": 0.6, "val": 0.2, "test": 0.2}


def item_pools(seed: int) -> dict:
    """{split: {kind: inputs}}: each lookup kind's table shuffled by `seed` and cut 60/20/20, disjoint."""
    rng = random.Random(f"pools-{seed}")
    pools = {split: {} for split in SPLITS}
    for kind, table in LOOKUP_TABLES.items():
        items = rng.sample(table, len(table))
        n_train = round(POOL_SHARES["train"] * len(items))
        n_val = round(POOL_SHARES["val"] * len(items))
        cuts = {
            "train": items[:n_train],
            "val": items[n_train : n_train + n_val],
            "test": items[n_train + n_val :],
        }
        for split in SPLITS:
            pools[split][kind] = cuts[split]
    return pools


def split_of(name: str) -> str:
    """The split a shipped file belongs to, from its name: rm_val_ranked -> val (peft_eval: val)."""
    return next(split for split in SPLITS if f"_{split}" in name) if name != "peft_eval" else "val"


def demonstration(kind, inp, answer, rng):
    style = rng.choices(list(DEMO_STYLES), weights=list(DEMO_STYLES.values()))[0]
    said = wrong_answer(kind, inp, answer, rng) if rng.random() < DEMO_WRONG else answer
    return render(said, style)


def ranked_responses(kind, inp, answer, rng) -> list[str]:
    """Four responses ranked best first by the gold judge (scores 1.0 > 0.6 > 0.4 > 0.0)."""
    wrong = wrong_answer(kind, inp, answer, rng)
    sloppy = rng.choice(["bare", "hedged"])
    return [render(answer, "preferred"), render(answer, sloppy),
            render(wrong, "preferred"), render(wrong, sloppy)]


def generate(seed: int, out_dir: str, sizes: dict = SIZES) -> dict:
    """Write every shipped data file. No (type, input) appears in two splits: the lookup kinds draw
    from disjoint item pools, the others skip inputs an earlier split holds (test is drawn first,
    then val, then train). Within a split, prompts may repeat."""
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    pools = item_pools(seed)
    earlier = set()  # (kind, input) pairs of the splits drawn before this one
    current = set()

    def draw(n, kinds, split):
        out = []
        while len(out) < n:
            kind = kinds[len(out) % len(kinds)]
            inp, answer = make_example(kind, rng, pools[split])
            if (kind, inp) in earlier:
                continue  # another split holds this input: draw again
            out.append((kind, inp, answer))
        current.update((k, i) for k, i, _ in out)
        return out

    def row(kind, inp):
        return {"type": kind, "instruction": INSTRUCTIONS[kind], "input": inp}

    def prompt_row(k, i, a):
        return row(k, i)

    def demo_row(k, i, a):
        return dict(row(k, i), output=demonstration(k, i, a, rng))

    def ranked_row(k, i, a):
        return dict(row(k, i), responses=ranked_responses(k, i, a, rng))

    def preferred_row(k, i, a):
        return dict(row(k, i), output=render(a, "preferred"))

    files = {}
    # held-out splits first: later splits skip what they hold
    for split in ("test", "val", "train"):
        files[f"prompts_{split}"] = [
            prompt_row(*x) for x in draw(sizes[f"prompts_{split}"], MAIN_TYPES, split)
        ]
        files[f"sft_{split}"] = [
            demo_row(*x) for x in draw(sizes[f"sft_{split}"], MAIN_TYPES, split)
        ]
        files[f"rm_{split}_ranked"] = [
            ranked_row(*x) for x in draw(sizes[f"rm_{split}"], MAIN_TYPES, split)
        ]
        if split == "val":  # PEFT's held-out file: the val pool of the held-out type
            files["peft_eval"] = [
                preferred_row(*x) for x in draw(sizes["peft_eval"], (HOLDOUT_TYPE,), split)
            ]
        if split == "train":
            files["peft_train"] = [
                preferred_row(*x) for x in draw(sizes["peft_train"], (HOLDOUT_TYPE,), split)
            ]
        earlier |= current
    # The same comparisons as chosen/rejected pairs (one pair per prompt), the other common format.
    files["rm_train_pairs"] = [
        {
            "type": r["type"],
            "instruction": r["instruction"],
            "input": r["input"],
            "chosen": r["responses"][0],
            "rejected": r["responses"][rng.randint(1, 3)],
        }
        for r in files["rm_train_ranked"]
    ]
    for name, rows in files.items():
        with open(os.path.join(out_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return {name: len(rows) for name, rows in files.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ds")
    args = parser.parse_args()
    for name, n in generate(args.seed, args.out).items():
        print(f"{args.out}/{name}.jsonl: {n} rows")
