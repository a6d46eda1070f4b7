"""bench/validation_choice.py: the judge-free rule RL settings are chosen by on the validation split."""
import os

import torch

from bench.validation_choice import chosen_settings, preference_metrics, sequence_logprobs_of
from conftest import ROOT
from dataset.rm import RMDataset, flatten_groups, rm_collate
from model.load import load_causal_lm, load_tokenizer
from trainer.dpo import policy_sequence_logprobs


def test_the_setting_with_the_best_mean_over_seeds_is_chosen():
    rows = [{"method": "ppo", "setting": "beta0.1", "accuracy": a} for a in (0.70, 0.50)] + \
           [{"method": "ppo", "setting": "beta0.2", "accuracy": a} for a in (0.65, 0.64)] + \
           [{"method": "dpo", "setting": "lr1e-4", "accuracy": 0.6},
            {"method": "dpo", "setting": "lr3e-4", "accuracy": 0.6}]
    # beta0.1 has the best single seed, beta0.2 the best mean; a tie keeps the first name
    assert chosen_settings(rows) == {"ppo": "beta0.2", "dpo": "lr1e-4"}


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
