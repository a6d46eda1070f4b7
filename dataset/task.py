"""The shipped task: a family of small instructions with a programmatic gold judge.

The judge stands in for InstructGPT's human labellers. `score(prompt, response)` returns a number in
[0, 1] computed from the prompt text alone:

    gold = 0.6 * correct + 0.4 * preferred_format

* correct: the answer in the response is the right one (see `extract_answer`).
* preferred_format: the response is one sentence of the exact form "The answer is <answer>."
  (the labellers' preference: a complete, concise sentence, nothing after it, the phrase once).

Demonstrations are written by simulated human demonstrators who are sloppy on purpose: most of them
answer bare ("85") or hedge ("85, I think."), and some give a wrong answer. SFT imitates that, so the
SFT model lands well below the judge's maximum and the reward model + PPO have room to improve it.

Run `python -m dataset.task --seed 0` to (re)write every file in ds/ (see ds/README.md).
"""
import argparse
import json
import os
import random
import re

TEMPLATE_PREFIX = "The answer is "
CORRECT_WEIGHT, FORMAT_WEIGHT = 0.6, 0.4

CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
    "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Chile": "Santiago",
    "Cuba": "Havana", "Greece": "Athens", "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin",
    "Portugal": "Lisbon", "Russia": "Moscow", "China": "Beijing", "India": "Delhi", "Canada": "Ottawa",
    "Mexico": "Mexico City", "Brazil": "Brasilia", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Hungary": "Budapest", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Ghana": "Accra", "Nepal": "Kathmandu", "Belgium": "Brussels",
    "Ukraine": "Kyiv", "Argentina": "Buenos Aires", "Colombia": "Bogota", "Morocco": "Rabat",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "light": "dark", "happy": "sad",
    "old": "new", "early": "late", "full": "empty", "hard": "soft", "high": "low", "long": "short",
    "open": "closed", "rich": "poor", "strong": "weak", "wet": "dry", "young": "old", "loud": "quiet",
    "thick": "thin", "clean": "dirty", "near": "far", "first": "last", "left": "right", "win": "lose",
    "inside": "outside", "true": "false", "day": "night", "good": "bad", "buy": "sell", "push": "pull",
    "cheap": "expensive", "heavy": "light", "sweet": "sour", "wide": "narrow", "begin": "end",
    "above": "below", "before": "after", "black": "white", "north": "south", "east": "west",
}
WORDS = ("the red fox cat dog runs jumps over a small big house tree river blue green sees eats old "
         "man woman child bird sings loud quiet walks near far sun moon light").split()

# One instruction sentence per type: the judge recognises the type by it.
INSTRUCTIONS = {
    "add": "Add the two numbers.",
    "sort": "Sort the numbers from smallest to largest.",
    "capital": "Name the capital city of the country.",
    "opposite": "Give the opposite of the word.",
    "count": "Count the words in the sentence.",
    "repeat": "Repeat the word three times.",
}
TYPES = tuple(INSTRUCTIONS)
HOLDOUT_TYPE = "repeat"  # never in the SFT/RM/PPO data: the PEFT comparison adapts to it
MAIN_TYPES = tuple(t for t in TYPES if t != HOLDOUT_TYPE)


def make_example(kind: str, rng: random.Random, items: dict = None) -> tuple[str, str]:
    """Return (input, correct answer) for one instruction of type `kind`. `items` restricts the lookup
    kinds (capital, opposite, repeat) to one split's pool of inputs (`item_pools`)."""
    items = items or {}
    if kind == "add":
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        return f"{a} and {b}", str(a + b)
    if kind == "sort":
        nums = rng.sample(range(100), rng.randint(3, 4))
        return " ".join(map(str, nums)), " ".join(map(str, sorted(nums)))
    if kind == "capital":
        country = rng.choice(items.get(kind, sorted(CAPITALS)))
        return country, CAPITALS[country]
    if kind == "opposite":
        word = rng.choice(items.get(kind, sorted(OPPOSITES)))
        return word, OPPOSITES[word]
    if kind == "count":
        words = rng.choices(WORDS, k=rng.randint(2, 7))
        return " ".join(words), str(len(words))
    if kind == "repeat":
        word = rng.choice(items.get(kind, WORDS))
        return word, " ".join([word] * 3)
    raise ValueError(f"unknown instruction type {kind!r}; expected one of {TYPES}")


def wrong_answer(kind: str, inp: str, answer: str, rng: random.Random) -> str:
    """A plausible mistake a careless demonstrator would make (never equal to `answer`)."""
    if kind in ("add", "count"):
        return str(max(0, int(answer) + rng.choice([-2, -1, 1, 2])) if answer != "0" else 1)
    if kind == "sort":
        nums = answer.split()
        i = rng.randrange(len(nums) - 1)
        nums[i], nums[i + 1] = nums[i + 1], nums[i]
        return " ".join(nums)
    if kind == "capital":
        return rng.choice(sorted(set(CAPITALS.values()) - {answer}))
    if kind == "opposite":
        return rng.choice(sorted(set(OPPOSITES.values()) - {answer}))
    if kind == "repeat":
        return " ".join([inp] * rng.choice([2, 4]))
    raise ValueError(kind)


def render(answer: str, style: str) -> str:
    """Write an answer in one of the demonstrators' styles."""
    return {"preferred": f"{TEMPLATE_PREFIX}{answer}.", "bare": answer, "hedged": f"{answer}, I think."}[style]


# ---------------------------------------------------------------------------------------------
# The gold judge
_INPUT_RE = re.compile(r"### Input:\n(.*?)\n\n### Response:", re.S)


def parse_prompt(prompt: str) -> tuple[str, str]:
    """Recover (type, input) from a prompt rendered with dataset.sft.PROMPT_TEMPLATE, or from the
    raw 'instruction\\ninput' text."""
    for kind, instruction in INSTRUCTIONS.items():
        if instruction in prompt:
            m = _INPUT_RE.search(prompt)
            inp = m.group(1) if m else prompt.split(instruction, 1)[1].strip().split("\n")[0]
            return kind, inp.strip()
    raise ValueError(f"the gold judge does not know this prompt: {prompt[:80]!r}")


def reference_answer(prompt: str) -> str:
    kind, inp = parse_prompt(prompt)
    if kind == "add":
        a, b = inp.split(" and ")
        return str(int(a) + int(b))
    if kind == "sort":
        return " ".join(map(str, sorted(int(x) for x in inp.split())))
    if kind == "capital":
        return CAPITALS[inp]
    if kind == "opposite":
        return OPPOSITES[inp]
    if kind == "count":
        return str(len(inp.split()))
    return " ".join([inp] * 3)


def extract_answer(response: str) -> str:
    """The answer a reader takes from the response: wrappers of the known styles removed."""
    text = response.strip()
    if text.startswith(TEMPLATE_PREFIX):
        text = text[len(TEMPLATE_PREFIX):]
    for suffix in (", I think.", "."):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    return text.strip()


# "The answer is X." with one answer X: no period or line break inside, no repeated "The answer is"
_FORMAT = re.compile(re.escape(TEMPLATE_PREFIX) + r"(?!.*" + re.escape(TEMPLATE_PREFIX.strip()) + r")[^.\n]+\.")


def judge(prompt: str, response: str) -> dict:
    """Score one response: {'correct': 0/1, 'format': 0/1, 'score': gold in [0, 1]}."""
    correct = float(extract_answer(response) == reference_answer(prompt))
    fmt = float(re.fullmatch(_FORMAT, response.strip()) is not None)
    return {"correct": correct, "format": fmt, "score": CORRECT_WEIGHT * correct + FORMAT_WEIGHT * fmt}


def score(prompt: str, response: str) -> float:
    """Gold score in [0, 1] of `response` to `prompt` (1.0 = correct and in the preferred format)."""
    return judge(prompt, response)["score"]


def rank_responses(prompt: str, responses: list[str]) -> list[str]:
    """Distinct non-empty responses with distinct gold scores, best first (first sample kept on a tie):
    a labeller's ranking of K samples (label_samples.py)."""
    by_score = {}
    for response in responses:
        if response.strip():
            by_score.setdefault(score(prompt, response), response)
    return [by_score[s] for s in sorted(by_score, reverse=True)]


def row_text(row: dict) -> str:
    """The prompt text the judge reads from a row: 'instruction' + '\n' + 'input', a 'prompt', or the last
    user turn of 'messages' (parse_prompt reads the raw and the rendered forms alike)."""
    if "instruction" in row:
        return row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
    if "messages" in row:
        return next(m["content"] for m in reversed(row["messages"]) if m["role"] == "user")
    return row["prompt"]


def gold_judge(row: dict, response: str):
    """The task's judgement of `response` to a prompt row, {'correct', 'format', 'score'}, for rows of the
    shipped task (they carry a 'type'); None for rows of other data. This is the function the scripts pass
    to the trainers (judge=gold_judge): nothing below the scripts imports the task."""
    if row.get("type") is None:
        return None
    return judge(row_text(row), response)


def score_if_known(prompt: str, response: str):
    """The gold score where the judge applies (one of the task's instructions with a valid input), else None:
    for free-form prompts typed into chat.py or any prompt file."""
    try:
        return score(prompt, response)
    except (ValueError, KeyError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------
# The generator
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
LOOKUP_TABLES = {"capital": sorted(CAPITALS), "opposite": sorted(OPPOSITES), "repeat": sorted(set(WORDS))}
POOL_SHARES = {"train": 0.6, "val": 0.2, "test": 0.2}


def item_pools(seed: int) -> dict:
    """{split: {kind: inputs}}: each lookup kind's table shuffled by `seed` and cut 60/20/20, disjoint."""
    rng = random.Random(f"pools-{seed}")
    pools = {split: {} for split in SPLITS}
    for kind, table in LOOKUP_TABLES.items():
        items = rng.sample(table, len(table))
        n_train = round(POOL_SHARES["train"] * len(items))
        n_val = round(POOL_SHARES["val"] * len(items))
        cuts = {"train": items[:n_train], "val": items[n_train:n_train + n_val], "test": items[n_train + n_val:]}
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
    for split in ("test", "val", "train"):  # held-out splits first: later splits skip what they hold
        files[f"prompts_{split}"] = [prompt_row(*x) for x in draw(sizes[f"prompts_{split}"], MAIN_TYPES, split)]
        files[f"sft_{split}"] = [demo_row(*x) for x in draw(sizes[f"sft_{split}"], MAIN_TYPES, split)]
        files[f"rm_{split}_ranked"] = [ranked_row(*x) for x in draw(sizes[f"rm_{split}"], MAIN_TYPES, split)]
        if split == "val":  # PEFT's held-out file: the val pool of the held-out type
            files["peft_eval"] = [preferred_row(*x) for x in draw(sizes["peft_eval"], (HOLDOUT_TYPE,), split)]
        if split == "train":
            files["peft_train"] = [preferred_row(*x) for x in draw(sizes["peft_train"], (HOLDOUT_TYPE,), split)]
        earlier |= current
    # The same comparisons as chosen/rejected pairs (one pair per prompt), the other common format.
    files["rm_train_pairs"] = [{"type": r["type"], "instruction": r["instruction"], "input": r["input"],
                                "chosen": r["responses"][0], "rejected": r["responses"][rng.randint(1, 3)]}
                               for r in files["rm_train_ranked"]]
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
