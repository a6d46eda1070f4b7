"""bench/validation_choice.py: the judge-free rule RL settings are chosen by on the validation split."""
import os

import torch

import pytest

from bench.validation_choice import chosen_settings, parse_defaults, preference_metrics, sequence_logprobs_of
from utils import ConfigError
from conftest import ROOT
from dataset.rm import RMDataset, flatten_groups, rm_collate
from model.load import load_causal_lm, load_tokenizer
from trainer.dpo import policy_sequence_logprobs


def test_a_setting_replaces_the_default_only_beyond_the_seeds_spread():
    def rows(method, setting, accuracies):
        return [{"method": method, "setting": setting, "accuracy": a} for a in accuracies]
    data = (rows("ppo", "beta0.1", (0.70, 0.50)) + rows("ppo", "beta0.2", (0.62, 0.60))
            + rows("ppo", "beta0.4", (0.66, 0.65))
            + rows("dpo", "lr1e-4", (0.70, 0.71)) + rows("dpo", "lr3e-4", (0.69, 0.70))
            + rows("grpo", "beta0.1", (0.6,)) + rows("grpo", "beta0.2", (0.6,)))
    # ppo: beta0.1 has the best seed, beta0.4 the best mean, 0.045 above the default (spreads 0.014,
    # 0.007); dpo: lr1e-4 is 0.01 better, beyond both spreads (0.007), so it wins;
    # grpo: a tie keeps the default; a method without a default takes its best
    assert chosen_settings(data, {"ppo": "beta0.2", "dpo": "lr3e-4", "grpo": "beta0.2"}) == \
        {"ppo": "beta0.4", "dpo": "lr1e-4", "grpo": "beta0.2"}
    data = rows("dpo", "lr1e-4", (0.70, 0.73)) + rows("dpo", "lr3e-4", (0.69, 0.72))
    # 0.01 better, but the seeds spread 0.021: the default stays
    assert chosen_settings(data, {"dpo": "lr3e-4"}) == {"dpo": "lr3e-4"}
    assert chosen_settings(data, {}) == {"dpo": "lr1e-4"}


def test_defaults_are_parsed_and_a_malformed_list_is_one_error():
    assert parse_defaults("ppo=beta0.2,dpo=lr3e-4") == {"ppo": "beta0.2", "dpo": "lr3e-4"}
    for bad in ("ppo", "ppo=", "ppo=a=b"):
        with pytest.raises(ConfigError, match="DEFAULTS"):
            parse_defaults(bad)


def test_preference_accuracy_is_zero_at_the_reference_and_rises_when_the_better_reply_is_raised(sft_dir):
    tok = load_tokenizer(sft_dir)
    data = RMDataset(os.path.join(ROOT, "ds", "rm_val_ranked.jsonl"), tok, 96, limit=6, verbose=False)
    policy = load_causal_lm(sft_dir).eval()
    ref = sequence_logprobs_of(policy, data.items, tok.pad_token_id)
    same = preference_metrics(policy, ref, data.items, tok.pad_token_id)
    assert same["accuracy"] == 0.0 and same["margin"] == 0.0  # no reply moved: no pair ordered
    # a few steps that raise every better reply against its worse one, on these very pairs
    batch, flat = rm_collate(data.items, tok.pad_token_id), flatten_groups(data.items)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(10):
        lp = policy_sequence_logprobs(policy, batch)
        loss = -(lp[flat["chosen"]] - lp[flat["rejected"]]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = preference_metrics(policy, ref, data.items, tok.pad_token_id)
    assert moved["accuracy"] > 0.8 and moved["margin"] > 0
