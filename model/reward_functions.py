"""Reward functions from a file: REWARD='FILE.py:FUNCTION' (several comma-separated, REWARD_WEIGHTS).

A function is called as TRL's GRPOTrainer calls one, so a TRL reward function works unchanged:

    f(prompts, completions, **fields) -> list[float]

* prompts: the prompt of each rollout as the policy saw it: the rendered text for text rows (Alpaca
  instruction/input, or `prompt`), the list of messages for conversational rows;
* completions: the sampled replies, text for text rows, [{"role": "assistant", "content": reply}]
  for conversational ones;
* fields: every other field of the rows, one list each (`instruction`, `input`, `type`, an answer
  column...), None where a row lacks it.

The reward is sum_i w_i * f_i (weights 1 unless REWARD_WEIGHTS gives them). 'gold' (the task's gold
judge) may be one of the terms; 'rm' (the learned reward model) stands alone. A return of the wrong
length, a NaN or something not a number stops the run with one line naming the function.
"""
import importlib.util
import math
import os

from dataset.chat import render_prompt
from utils import ConfigError, UserError


def gold_function(judge):
    """'gold': the data's gold judge (the scripts pass the task's) as a reward function; an upper bound on
    what RLHF can reach, not RLHF."""
    def gold(prompts, completions, rows, **fields):
        return [judge(r, c if isinstance(c, str) else c[0]["content"])["score"]
                for r, c in zip(rows, completions)]
    return gold


def load_function(spec: str, judge=None):
    """'gold' or 'path/file.py:function' -> (name, function)."""
    if spec == "gold":
        if judge is None:
            raise ConfigError(
                "REWARD='gold': these prompts have no gold judge (use 'rm' or FILE.py:FUNCTION)"
            )
        return "gold", gold_function(judge)
    path, _, name = spec.rpartition(":")
    if not path.endswith(".py") or not name:
        raise ConfigError(f"REWARD={spec!r}: expected 'rm', 'gold' or FILE.py:FUNCTION "
                          "(e.g. examples/task_rewards.py:correct), comma-separated for several")
    if not os.path.exists(path):
        raise ConfigError(f"REWARD={spec!r}: no file {path}")
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"REWARD={spec!r}: {path} has no function {name!r}")
    return f"{os.path.basename(path)}:{name}", fn


def checked(name: str, scores, n: int) -> list[float]:
    """The scores as floats, or a UserError naming the function and what is wrong with its return."""
    if isinstance(scores, (str, bytes, dict)) or not hasattr(scores, "__len__"):
        raise UserError(
            f"reward function {name}: returned {type(scores).__name__}, expected a list of "
            f"{n} floats (one per completion)"
        )
    scores = list(scores.tolist() if hasattr(scores, "tolist") else scores)
    if len(scores) != n:
        raise UserError(
            f"reward function {name}: returned {len(scores)} values for {n} completions "
            "(return one float per completion)"
        )
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise UserError(
                f"reward function {name}: value {i} is {s!r}, not a number (return floats)"
            )
        if not math.isfinite(s):
            raise UserError(f"reward function {name}: value {i} is {s} (return finite floats)")
    return [float(s) for s in scores]


def reward_functions(spec: str, weights: str, judge=None):
    """REWARD and REWARD_WEIGHTS -> reward_fn(rows, responses) -> list[float] for the trainers, or None
    for 'rm' (the trainers then score with the reward model)."""
    specs = [s.strip() for s in spec.split(",") if s.strip()]
    if specs == ["rm"]:
        return None
    if "rm" in specs:
        raise ConfigError(f"REWARD={spec!r}: 'rm' cannot be combined with other rewards here "
                          "(use the reward model alone, or functions and 'gold')")
    functions = [load_function(s, judge) for s in specs]
    try:
        w = [float(x) for x in weights.split(",")] if weights.strip() else [1.0] * len(functions)
    except ValueError:
        raise ConfigError(f"REWARD_WEIGHTS={weights!r}: expected comma-separated numbers") from None
    if len(w) != len(functions):
        raise ConfigError(
            f"REWARD_WEIGHTS={weights!r}: {len(w)} weights for {len(functions)} reward "
            f"functions in REWARD={spec!r} (give one per function)"
        )

    def reward_fn(rows: list[dict], responses: list[str]) -> list[float]:
        chat = ["messages" in r for r in rows]
        prompts = [r["messages"] if c else render_prompt(r) for r, c in zip(rows, chat)]
        completions = [
            [{"role": "assistant", "content": x}] if c else x for x, c in zip(responses, chat)
        ]
        keys = sorted(
            {k for r in rows for k in r if not k.startswith("_")} - {"prompt", "messages"}
        )
        fields = {k: [r.get(k) for r in rows] for k in keys}
        total = [0.0] * len(rows)
        for (name, fn), weight in zip(functions, w):
            extra = {"rows": rows} if name == "gold" else {}
            scores = checked(
                name, fn(prompts=prompts, completions=completions, **fields, **extra), len(rows)
            )
            total = [t + weight * s for t, s in zip(total, scores)]
        return total

    reward_fn.names = [name for name, _ in functions]
    return reward_fn
