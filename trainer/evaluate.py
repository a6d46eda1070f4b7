"""Held-out evaluation of a policy, one implementation for every stage (SFT, PPO, GRPO, DPO).

Each prompt is answered (greedy or sampled at the rollout temperature); each answer gets the reward
model's score, the task's judgement (gold score, correct, format) and its KL to the reference, summed over
the response tokens (nats per response). `summarize_rows` turns the rows into means, overall and per
instruction type, under one set of keys: gold_score, correct, format, reward, kl, '<type>/gold',
'<type>/correct', '<type>/format'.

The task's judge and the reward come in as functions: the scripts pass the shipped task's `gold_judge`
(dataset/task.py), and nothing in trainer/ imports the task.
"""
import contextlib
from typing import Callable, Optional

import torch

from model.generate import Responses, decode_responses, response_logprobs, sample_responses
from model.peft import disabled_adapters
from trainer.dist import gather_shards, shard

Judge = Callable[[dict, str], Optional[dict]]  # (prompt row, response) -> {'score', 'correct', 'format'} or None
NO_JUDGEMENT = {"score": float("nan"), "correct": float("nan"), "format": float("nan")}


class Evaluator:
    """evaluator(policy, items, do_sample) -> summary dict (with 'rows'), on every rank.

    items: PromptDataset items ({'prompt_ids', 'row'}). judge(row, response): the task's judgement, None
    where it does not apply. reward(items, responses: Responses) -> (B,) scores. reference(policy): a context
    manager that yields the reference model (for a LoRA policy: itself with adapters off). Without judge,
    reward or reference the matching figures are NaN."""

    def __init__(self, accelerator, tokenizer, *, max_new_tokens: int, temperature: float, batch_size: int,
                 judge: Judge = None, reward: Callable = None, reference: Callable = None):
        self.accelerator, self.tokenizer, self.judge, self.reward, self.reference = accelerator, tokenizer, judge, reward, reference
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size

    @torch.no_grad()
    def __call__(self, policy, items: list[dict], do_sample: bool) -> dict:
        was_training = policy.training
        policy.eval()
        mine, real = shard(self.accelerator, items)  # each rank answers its share of the prompts
        with self.accelerator.autocast():
            rows = [row for i in range(0, len(mine), self.batch_size)
                    for row in self.answer_rows(policy, mine[i: i + self.batch_size], do_sample)]
        policy.train(was_training)
        return summarize_rows(gather_shards(self.accelerator, rows[:real]))  # all rows, in prompt order, on every rank

    def answer_rows(self, policy, chunk: list[dict], do_sample: bool) -> list[dict]:
        """One batch: answers, then reward, judgement and summed KL to the reference of each."""
        sampling = dict(do_sample=True, temperature=self.temperature) if do_sample else dict(do_sample=False)
        out = sample_responses(policy, self.tokenizer, [it["prompt_ids"] for it in chunk], self.max_new_tokens, **sampling)
        nan = [float("nan")] * len(chunk)
        kl = self.kl_to_reference(policy, out) if self.reference is not None else nan
        rewards = self.reward(chunk, out).tolist() if self.reward is not None else nan
        rows = []
        for it, response, r, k in zip(chunk, decode_responses(self.tokenizer, out.sequences, out.context_length), rewards, kl):
            j = (self.judge(it["row"], response) if self.judge is not None else None) or NO_JUDGEMENT
            rows.append({"type": it["row"].get("type"), "input": it["row"].get("input", ""), "response": response,
                         "reward": r, "gold": j["score"], "correct": j["correct"], "format": j["format"], "kl": k})
        return rows

    def kl_to_reference(self, policy, out: Responses) -> list[float]:
        """sum over response tokens of log pi(y_t) - log pi_ref(y_t), both at the sampling temperature."""
        args = (out.sequences, out.attention_mask, out.context_length, self.temperature)
        logprobs = response_logprobs(policy, *args)[1]  # (B, N)
        with self.reference(policy) as ref:
            ref_logprobs = response_logprobs(ref, *args)[1]  # (B, N)
        return ((logprobs - ref_logprobs) * out.action_mask).sum(1).tolist()


def reference_for(ref) -> Callable:
    """The `reference` an Evaluator (and PPO's rollout) takes: policy -> a context manager yielding `ref`,
    or, with ref=None (a LoRA policy), the policy itself with its adapters off (no second copy of the weights)."""
    @contextlib.contextmanager
    def reference(policy):
        if ref is not None:
            yield ref
        else:
            with disabled_adapters(policy) as base:
                yield base
    return reference


def summarize_rows(rows: list[dict]) -> dict:
    """Means over evaluation rows, overall and per instruction type ('<type>/gold', ...), plus the rows."""
    out = {"rows": rows}
    for key, name in (("reward", "reward"), ("gold", "gold_score"), ("correct", "correct"), ("format", "format"), ("kl", "kl")):
        out[name] = sum(r[key] for r in rows) / len(rows)
    for kind in sorted({r["type"] for r in rows if r["type"]}):
        sel = [r for r in rows if r["type"] == kind]
        for key in ("gold", "correct", "format"):
            out[f"{kind}/{key}"] = sum(r[key] for r in sel) / len(sel)
    return out


def mean_judgement(judge: Judge, rows: list[dict], responses: list[str]) -> Optional[float]:
    """Mean gold score of responses to rows, or None when the judge does not apply to every row."""
    if judge is None:
        return None
    judged = [judge(row, response) for row, response in zip(rows, responses)]
    if any(j is None for j in judged):
        return None
    return sum(j["score"] for j in judged) / len(judged)


def test_evaluation(trainer, **data) -> dict:
    """trainer.run_evaluation() on other data (the test split): `data` replaces the trainer's evaluation
    attributes (eval_data=..., eval_prompts=...) for this one call, and the result selects nothing (no
    out_dir/best: choices are made on validation only)."""
    saved = {name: getattr(trainer, name) for name in data}
    trainer.best_metric = None  # an instance attribute shadowing the class's
    try:
        for name, value in data.items():
            setattr(trainer, name, value)
        return trainer.run_evaluation()
    finally:
        for name, value in saved.items():
            setattr(trainer, name, value)
        del trainer.best_metric
