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

dataset/task_data.py writes the task's data files (ds/, see ds/README.md).
"""
import random
import re

TEMPLATE_PREFIX = "The answer is "
CORRECT_WEIGHT, FORMAT_WEIGHT = 0.6, 0.4

CAPITALS = {
    "France": "Paris",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Chile": "Santiago",
    "Cuba": "Havana",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Russia": "Moscow",
    "China": "Beijing",
    "India": "Delhi",
    "Canada": "Ottawa",
    "Mexico": "Mexico City",
    "Brazil": "Brasilia",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Hungary": "Budapest",
    "Turkey": "Ankara",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Ghana": "Accra",
    "Nepal": "Kathmandu",
    "Belgium": "Brussels",
    "Ukraine": "Kyiv",
    "Argentina": "Buenos Aires",
    "Colombia": "Bogota",
    "Morocco": "Rabat",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "light": "dark",
    "happy": "sad",
    "old": "new",
    "early": "late",
    "full": "empty",
    "hard": "soft",
    "high": "low",
    "long": "short",
    "open": "closed",
    "rich": "poor",
    "strong": "weak",
    "wet": "dry",
    "young": "old",
    "loud": "quiet",
    "thick": "thin",
    "clean": "dirty",
    "near": "far",
    "first": "last",
    "left": "right",
    "win": "lose",
    "inside": "outside",
    "true": "false",
    "day": "night",
    "good": "bad",
    "buy": "sell",
    "push": "pull",
    "cheap": "expensive",
    "heavy": "light",
    "sweet": "sour",
    "wide": "narrow",
    "begin": "end",
    "above": "below",
    "before": "after",
    "black": "white",
    "north": "south",
    "east": "west",
}
WORDS = (
    "the red fox cat dog runs jumps over a small big house tree river blue green sees eats old "
    "man woman child bird sings loud quiet walks near far sun moon light"
).split()

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
    return {
        "preferred": f"{TEMPLATE_PREFIX}{answer}.",
        "bare": answer,
        "hedged": f"{answer}, I think.",
    }[style]


# ---------------------------------------------------------------------------------------------
# The gold judge
_INPUT_RE = re.compile(r"### Input:\n(.*?)\n\n### Response:", re.S)


def parse_prompt(prompt: str) -> tuple[str, str]:
    """Recover (type, input) from a prompt rendered in the Alpaca format (dataset/chat.py), or from the
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
_FORMAT = re.compile(
    re.escape(TEMPLATE_PREFIX) + r"(?!.*" + re.escape(TEMPLATE_PREFIX.strip()) + r")[^.\n]+\."
)


def judge(prompt: str, response: str) -> dict:
    """Score one response: {'correct': 0/1, 'format': 0/1, 'score': gold in [0, 1]}."""
    correct = float(extract_answer(response) == reference_answer(prompt))
    fmt = float(re.fullmatch(_FORMAT, response.strip()) is not None)
    return {
        "correct": correct,
        "format": fmt,
        "score": CORRECT_WEIGHT * correct + FORMAT_WEIGHT * fmt,
    }


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
