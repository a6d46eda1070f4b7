"""Held-out evaluation of a policy, one implementation for every stage (SFT, PPO, GRPO, DPO).

Each prompt is answered (greedy or sampled at the rollout temperature); each answer gets the reward
model's score, the task's judgement (gold score, correct, format) and its KL to the reference,
summed over the response tokens (nats per response). `summarize_rows` turns the rows into means,
overall and per instruction type, under one set of keys: gold_score, correct, format, reward, kl,
'<type>/gold', '<type>/correct', '<type>/format'.

The task's judge and the reward come in as functions: the scripts pass the shipped task's
`gold_judge` (dataset/task.py), and nothing in trainer/ imports the task.

RLHF and DPO compare the SFT policy with the trained one on the same held-out prompts
(`greedy_and_sampled`, `comparison_summary`, `print_comparison`); RLHF can reuse an earlier run's
SFT evaluation (`SFTEvalSettings`, `read_sft_eval`, `sft_evaluation`).
"""
import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch

from dataset.sft import render_prompt
from model.generate import Responses, decode_responses, response_logprobs, sample_responses
from model.peft import disabled_adapters
from trainer.dist import gather_shards, shard
from utils import ConfigError, append_jsonl, from_settings, own_random_numbers, write_json

# judge(prompt row, response) -> {'score', 'correct', 'format'}, or None where it does not apply
Judge = Callable[[dict, str], Optional[dict]]
NO_JUDGEMENT = {"score": float("nan"), "correct": float("nan"), "format": float("nan")}


class Evaluator:
    """evaluator(policy, items, do_sample) -> summary dict (with 'rows'), on every rank.

    items: PromptDataset items ({'prompt_ids', 'row'}). judge(row, response): the task's judgement,
    None where it does not apply. reward(items, responses: Responses) -> (B,) scores.
    reference(policy): a context manager that yields the reference model (for a LoRA policy: itself
    with adapters off). Without judge, reward or reference the matching figures are NaN."""

    def __init__(self, accelerator, tokenizer, *, max_new_tokens: int, temperature: float,
                 batch_size: int, judge: Judge = None, reward: Callable = None,
                 reference: Callable = None, lm_head_chunk: int = 0):
        self.accelerator, self.tokenizer = accelerator, tokenizer
        # the KL's log-probs a chunk of tokens at a time (response_logprobs); the caller has checked that policy and
        # reference both have a plain head (trainer/onpolicy.py), so the KL of a copied reference stays exactly 0
        self.lm_head_chunk = lm_head_chunk
        self.judge, self.reward, self.reference = judge, reward, reference
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.batch_size = batch_size  # prompts per generate call

    @torch.no_grad()
    def __call__(self, policy, items: list[dict], do_sample: bool) -> dict:
        was_training = policy.training
        policy.eval()
        mine, real = shard(self.accelerator, items)  # each rank answers its share of the prompts
        with self.accelerator.autocast():
            rows = [row for i in range(0, len(mine), self.batch_size)
                    for row in self.answer_rows(policy, mine[i: i + self.batch_size], do_sample)]
        policy.train(was_training)
        # all rows, in prompt order, on every rank
        return summarize_rows(gather_shards(self.accelerator, rows[:real]))

    def answer_rows(self, policy, chunk: list[dict], do_sample: bool) -> list[dict]:
        """One batch: answers, then reward, judgement and summed KL to the reference of each."""
        sampling = dict(do_sample=False)
        if do_sample:
            sampling = dict(do_sample=True, temperature=self.temperature)
        out = sample_responses(policy, self.tokenizer, [it["prompt_ids"] for it in chunk],
                               self.max_new_tokens, **sampling)
        nan = [float("nan")] * len(chunk)
        kl = self.kl_to_reference(policy, out) if self.reference is not None else nan
        rewards = self.reward(chunk, out).tolist() if self.reward is not None else nan
        rows = []
        responses = decode_responses(self.tokenizer, out.sequences, out.context_length)
        for it, response, r, k in zip(chunk, responses, rewards, kl):
            j = self.judge(it["row"], response) if self.judge is not None else None
            j = j or NO_JUDGEMENT
            rows.append({"type": it["row"].get("type"), "input": it["row"].get("input", ""),
                         "response": response, "reward": r, "gold": j["score"],
                         "correct": j["correct"], "format": j["format"], "kl": k})
        return rows

    def kl_to_reference(self, policy, out: Responses) -> list[float]:
        """sum over response tokens of log pi(y_t) - log pi_ref(y_t), both at the sampling
        temperature."""
        args = (out.sequences, out.attention_mask, out.context_length, self.temperature, self.lm_head_chunk)
        logprobs = response_logprobs(policy, *args)[0]  # (B, N)
        with self.reference(policy) as ref:
            ref_logprobs = response_logprobs(ref, *args)[0]  # (B, N)
        return ((logprobs - ref_logprobs) * out.action_mask).sum(1).tolist()


def reference_for(ref) -> Callable:
    """The `reference` an Evaluator (and PPO's rollout) takes: policy -> a context manager yielding
    `ref`, or, with ref=None (a LoRA policy), the policy itself with its adapters off (no second
    copy of the weights)."""
    @contextlib.contextmanager
    def reference(policy):
        if ref is not None:
            yield ref
        else:
            with disabled_adapters(policy) as base:
                yield base
    return reference


def summarize_rows(rows: list[dict]) -> dict:
    """Means over evaluation rows, overall and per instruction type ('<type>/gold', ...), plus the
    rows."""
    out = {"rows": rows}
    for key, name in (("reward", "reward"), ("gold", "gold_score"), ("correct", "correct"),
                      ("format", "format"), ("kl", "kl")):
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
    """trainer.run_evaluation() on other data (the test split): `data` replaces the trainer's
    evaluation attributes (eval_data=..., eval_prompts=...) for this one call, and the result
    selects nothing (no out_dir/best: choices are made on validation only)."""
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


# ---------------------------------------------------------------------- SFT vs the trained policy
def greedy_and_sampled(evaluate_policy: Callable, policy, prompts: list[dict]) -> dict:
    """{'greedy': ..., 'sampled': ...}: an Evaluator's summaries of policy on prompts, greedy (the
    gold score) then sampled at the rollout temperature (the KL figure). Every rank answers its
    share. The sampled pass draws under random numbers of its own: training after it draws what it
    would draw without it, so the number of test prompts never changes a run's training."""
    greedy = evaluate_policy(policy, prompts, do_sample=False)
    with own_random_numbers(next(policy.parameters()).device):
        sampled = evaluate_policy(policy, prompts, do_sample=True)
    return {"greedy": greedy, "sampled": sampled}


def comparison_summary(before: dict, after: dict, name: str) -> dict:
    """summary.json's figures of the SFT policy (`before`, keys *_sft) and the trained one
    (`after`), both from greedy_and_sampled on the same prompts. per_type: for each per-type key,
    {'sft': before, name.lower(): after}."""
    b, a = before["greedy"], after["greedy"]
    return {"gold_score_sft": b["gold_score"], "gold_score": a["gold_score"],
            "correct_sft": b["correct"], "correct": a["correct"],
            "format_sft": b["format"], "format": a["format"],
            "gold_score_sampled_sft": before["sampled"]["gold_score"],
            "gold_score_sampled": after["sampled"]["gold_score"], "kl": after["sampled"]["kl"],
            "kl_greedy": a["kl"], "reward_sft": b["reward"], "reward": a["reward"],
            "eval_prompts": len(a["rows"]),
            "per_type": {k: {"sft": b[k], name.lower(): a[k]} for k in a if "/" in k}}


def print_comparison(before: dict, after: dict, name: str, heading: str) -> None:
    """SFT vs the trained policy (`name`: 'RLHF', 'DPO'): overall (greedy; sampled in brackets),
    per instruction type, and the first answers side by side. The RM score column only where a
    reward model (or reward function) scored the answers."""
    b, a = before["greedy"], after["greedy"]
    rm = not math.isnan(b["reward"])
    print(f"\n{heading} (greedy; sampled in brackets)")
    rm_header = f"{'RM score':>10}" if rm else ""
    print(f"{'':14}{'gold':>14}{'correct':>9}{'format':>8}{rm_header}{'KL':>7}")
    for label, r, s in (("SFT", b, before["sampled"]), (name, a, after["sampled"])):
        reward = f"{r['reward']:10.3f}" if rm else ""
        print(f"{label:14}{r['gold_score']:6.3f} ({s['gold_score']:.3f}){r['correct']:9.3f}"
              f"{r['format']:8.3f}{reward}{s['kl']:7.2f}")
    arrow = f"SFT->{name}"
    print(f"\n{'type':10}{'correct ' + arrow:>20}{'format ' + arrow:>20}{'gold ' + arrow:>18}")
    for k in sorted({k.split("/")[0] for k in a if "/" in k}):
        print(f"{k:10}{b[k + '/correct']:10.2f} -> {a[k + '/correct']:.2f}"
              f"{b[k + '/format']:12.2f} -> {a[k + '/format']:.2f}"
              f"{b[k + '/gold']:10.2f} -> {a[k + '/gold']:.2f}")

    def scores(row):
        return (f"rm {row['reward']:+.2f}, " if rm else "") + f"gold {row['gold']:.1f}"

    print()
    for rb, ra in list(zip(b["rows"], a["rows"]))[:6]:
        print(f"{rb['input']!r:26} SFT: {rb['response']!r:28} ({scores(rb)})   "
              f"{name}: {ra['response']!r:28} ({scores(ra)})")


def write_side_by_side(path: str, prompts: list[dict], before: dict, after: dict,
                       name: str) -> None:
    """Every held-out prompt with the SFT and the trained policy's greedy answers, one JSON line
    each."""
    if os.path.exists(path):
        os.remove(path)
    for item, rb, ra in zip(prompts, before["greedy"]["rows"], after["greedy"]["rows"]):
        append_jsonl(path, {"prompt": render_prompt(item["row"]), "sft": rb, name.lower(): ra})


# ---------------------------------------------------------------------- reusing an SFT evaluation
@dataclass
class SFTEvalSettings:
    """What the SFT policy's held-out figures depend on: an earlier run's sft_eval.json is reused
    only where every field is the same (train_rlhf.py --sft_eval DIR, for seed sweeps). Built from
    the script's settings as given, before BF16='auto' is resolved; the resolved BF16 is checked
    separately."""
    sft_model: str  # the policy evaluated
    rm_model: str  # the reward model behind the RM score column
    reward: str  # 'rm', 'gold' or reward functions: what the RM score column is
    judge_rm: str  # who judges the answers (the gold figures)
    test_prompts: str  # the prompts answered
    test_limit: Optional[int]  # how many of them
    max_prompt_len: int  # where the prompts are cut
    max_new_tokens: int  # answer length limit
    temperature: float  # the sampled answers and the KL
    chat_template: bool  # how prompts are rendered
    bf16: Any  # autocast, as given (True, False or 'auto')
    frozen_bf16: bool  # the reference's and reward model's matrices (the KL and RM score)
    peft: str  # a LoRA actor's reference is itself with adapters off
    close_truncated: bool  # what the reward model reads of a cut answer
    missing_eos_penalty: float  # part of the score
    normalize_scores: bool  # part of the score
    eval_batch_size: int  # the prompts per generate call shape the sampled draws

    from_settings = classmethod(from_settings)

    def as_saved(self) -> dict:
        """The settings under the scripts' names (SFT_MODEL, ...), as sft_eval.json stores them."""
        return {name.upper(): value for name, value in asdict(self).items()}


def read_sft_eval(source: str, settings: SFTEvalSettings) -> Optional[dict]:
    """source: 'run' (None: evaluate afresh) or an earlier run's OUT_DIR, whose sft_eval.json is
    returned if it was evaluated under the same `settings`; ConfigError otherwise. Called before
    any model loads."""
    if source == "run":
        return None
    path = os.path.join(source, "sft_eval.json")
    if not os.path.isfile(path):
        raise ConfigError(f"SFT_EVAL={source!r}: {path} not found (a run with SFT_EVAL='run' "
                          "writes it)")
    saved = json.load(open(path))
    differ = [f"{k}={saved['settings'].get(k)!r} there, {v!r} here"
              for k, v in settings.as_saved().items()
              if json.dumps(saved["settings"].get(k)) != json.dumps(v)]
    if differ:
        raise ConfigError(f"SFT_EVAL={source!r}: {path} was evaluated under other settings: "
                          f"{'; '.join(differ)}")
    return {**saved, "source": source}


def sft_evaluation(trainer, prompts: list[dict], saved: Optional[dict], settings: SFTEvalSettings,
                   bf16: bool, path: str) -> dict:
    """The SFT policy (the actor before any update) on held-out prompts, greedy and sampled.

    Without `saved` it is evaluated and written to `path` (sft_eval.json) with `settings` and the
    resolved `bf16`. With `saved` (read_sft_eval) the earlier run's figures are returned: the
    greedy ones are what this run would compute, the sampled ones that run's draw. Either way the
    training that follows is the same, same seed (greedy_and_sampled keeps its draws apart)."""
    if saved is not None:
        if saved["bf16_resolved"] != bf16:
            raise ConfigError(f"SFT_EVAL={saved['source']!r}: evaluated with BF16 resolved to "
                              f"{saved['bf16_resolved']}, here it resolves to {bf16}")
        return {"greedy": saved["greedy"], "sampled": saved["sampled"]}
    before = greedy_and_sampled(trainer.evaluate_policy, trainer.unwrap(trainer.actor), prompts)
    if trainer.accelerator.is_main_process:
        write_json(path, {"settings": settings.as_saved(), "bf16_resolved": bf16, **before})
    return before
