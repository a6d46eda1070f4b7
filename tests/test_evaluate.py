"""The one held-out evaluation every stage uses (trainer/evaluate.py): rows in prompt order, one set of
per-type keys, KL exactly 0 against a copy of the policy (also with dropout and temperature != 1), and
NaN rather than a made-up figure where no judge, reward or reference is given."""
import copy
import math

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers import OPTConfig, OPTForCausalLM

from dataset.prompt import PromptDataset
from dataset.task import gold_judge
from model.load import load_tokenizer
from trainer.evaluate import Evaluator, mean_judgement, reference_for


def fresh_accelerator() -> Accelerator:
    AcceleratorState._reset_state(True)  # accelerate keeps one mixed-precision setting per process; tests change it
    return Accelerator(cpu=True)


def tiny_policy(dropout: float) -> OPTForCausalLM:
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(vocab_size=512, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_hidden_layers=2,
                                    num_attention_heads=2, max_position_embeddings=128, dropout=dropout,
                                    attention_dropout=dropout, activation_dropout=0.0))


def test_rows_keys_and_a_copied_reference_give_kl_zero():
    """Sampled at temperature 0.7 from a policy with dropout 0.1: every row's KL to a frozen copy is exactly
    0, the rows come back in prompt order, rewards are the reward function's, and the per-type keys are
    '<type>/gold|correct|format' for exactly the types present."""
    tok = load_tokenizer("embedded")
    items = PromptDataset("ds/prompts_val.jsonl", tok, 48, limit=10, verbose=False).items
    policy = tiny_policy(dropout=0.1)
    ref = copy.deepcopy(policy).eval()
    evaluate = Evaluator(fresh_accelerator(), tok, max_new_tokens=6, temperature=0.7, batch_size=4, judge=gold_judge,
                         reward=lambda chunk, out: out.action_mask.sum(1).float(), reference=reference_for(ref))
    torch.manual_seed(1)
    result = evaluate(policy.train(), items, do_sample=True)
    rows = result["rows"]
    assert [r["input"] for r in rows] == [it["row"]["input"] for it in items]
    assert all(r["kl"] == 0.0 for r in rows) and result["kl"] == 0.0
    assert all(r["reward"] >= 1 for r in rows)  # the response length, EOS included
    types = {it["row"]["type"] for it in items}
    assert {k for k in result if "/" in k} == {f"{t}/{key}" for t in types for key in ("gold", "correct", "format")}
    assert policy.training  # the evaluator restores the mode it found


def test_without_judge_reward_or_reference_the_figures_are_nan():
    """No judge, reward model or reference (SFT on data without a judge): gold, reward and KL are NaN,
    never 0, and mean_judgement says None."""
    tok = load_tokenizer("embedded")
    items = PromptDataset("ds/prompts_val.jsonl", tok, 48, limit=3, verbose=False).items
    evaluate = Evaluator(fresh_accelerator(), tok, max_new_tokens=4, temperature=1.0, batch_size=8)
    result = evaluate(tiny_policy(dropout=0.0), items, do_sample=False)
    assert all(math.isnan(result[k]) for k in ("gold_score", "reward", "kl"))
    assert mean_judgement(None, [it["row"] for it in items], ["x"] * 3) is None
    assert mean_judgement(lambda row, response: None, [it["row"] for it in items], ["x"] * 3) is None
    assert mean_judgement(gold_judge, [items[0]["row"]], ["nonsense"]) == 0.0
