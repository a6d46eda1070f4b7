"""Verifiable rewards for the shipped task, written as TRL reward functions: f(prompts, completions,
**fields) -> list[float]. GRPO on them is RLVR (reinforcement learning with verifiable rewards): no reward
model, the reward is a check the task can make itself.

    python train_rlhf.py --algo grpo --reward examples/task_rewards.py:correct,examples/task_rewards.py:formatted \
        --reward_weights 1.0,0.2

Each prompt is the text the policy saw (or a list of chat messages), each completion the sampled reply (or
[{"role": "assistant", "content": ...}]); the rows' other fields (instruction, input, type) come as keyword
arguments and are not needed here: the task's checker reads the instruction and input from the prompt.
"""
from dataset.task import judge


def _text(x) -> str:
    return x if isinstance(x, str) else x[-1]["content"]


def _judged(prompts, completions, key: str) -> list[float]:
    out = []
    for prompt, completion in zip(prompts, completions):
        prompt = prompt if isinstance(prompt, str) else next(
            m["content"] for m in reversed(prompt) if m["role"] == "user")
        try:
            out.append(float(judge(prompt, _text(completion))[key]))
        except (ValueError, KeyError, IndexError):  # not one of the task's prompts: no reward
            out.append(0.0)
    return out


def correct(prompts, completions, **kwargs) -> list[float]:
    """1.0 where the reply's answer is right (the task's checker), else 0.0."""
    return _judged(prompts, completions, "correct")


def formatted(prompts, completions, **kwargs) -> list[float]:
    """1.0 where the reply has the task's preferred form ("The answer is X."), else 0.0."""
    return _judged(prompts, completions, "format")
