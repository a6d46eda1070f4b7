"""GRPO: group-normalised advantages, the loss before any update, a short run, a train_rlhf.py smoke run."""
import copy
import json
import math
import os
import sys

import pytest
import torch

from conftest import ROOT, run_inline, trainer_configs
from dataset.task import gold_judge
from dataset.prompt import PromptDataset
from model.load import load_causal_lm, load_tokenizer
from model.loss import group_advantages, grpo_loss
from trainer.grpo import GRPOConfig, GRPOTrainer


def starts_in_format(rows, responses):
    """Toy reward: 1 for a response in the preferred 'The answer is ...' form, else 0."""
    return [float(r.startswith("The answer is")) for r in responses]


def make_trainer(sft_dir, tmp_path, max_steps=1, **kw):
    tok = load_tokenizer(sft_dir)
    actor = load_causal_lm(sft_dir)
    prompts = PromptDataset("ds/prompts_train.jsonl", tok, 72, limit=256, verbose=False)
    settings = dict(actor_lr=1e-4, weight_decay=0.0, rollout_batch=16, group_size=4, mini_batch=8, ppo_epochs=2,
                    max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0, grpo_beta=0.04, clip_range=0.2,
                    grpo_loss="token", grpo_std_scale=False, stop_approx_kl=0.0,
                    missing_eos_penalty=1.0, normalize_scores=True, frozen_bf16=True, close_truncated=False, eval_batch_size=100,
                    eval_sampled=False, stop_disagreement=0.0)
    settings.update(kw)
    return GRPOTrainer(actor, copy.deepcopy(actor), None, tok, prompts, cfg=GRPOConfig(**settings),
                       reward_fn=starts_in_format, judge=gold_judge, eval_prompts=None, run_config={},
                       loop=trainer_configs(tmp_path, max_steps=max_steps, seed=0, log_interval=1)["loop"])


def test_group_advantages_zero_mean_per_group_and_zero_for_equal_rewards():
    """Within every group the advantages have mean 0 and variance 1 and equal a plain per-group loop;
    a group whose rewards are all equal (no preference among its samples) gets exactly 0 everywhere,
    not rounding noise blown up by the division; shifting or scaling a group's rewards changes nothing."""
    torch.manual_seed(0)
    rewards = torch.cat([torch.randn(5, 4) * 3 + 1, torch.full((1, 4), 0.1), torch.full((1, 4), -7.3)])  # (7, 4)
    adv = group_advantages(rewards, scale_std=True)
    assert torch.all(adv[5:] == 0)
    assert adv.mean(1).abs().max() < 1e-6 and torch.allclose(adv[:5].var(1, unbiased=False), torch.ones(5), atol=1e-5)
    for i in range(5):
        row = rewards[i].tolist()
        mean = sum(row) / 4
        std = (sum((r - mean) ** 2 for r in row) / 4) ** 0.5
        assert torch.allclose(adv[i], torch.tensor([(r - mean) / std for r in row]), atol=1e-5)
    assert torch.allclose(group_advantages(rewards * 2.5 - 4, scale_std=True), adv, atol=1e-5)


def test_group_advantages_default_keeps_the_score_gap():
    """By default (GRPO_STD_SCALE=False) a group's advantages are its scores minus their mean: a 1e-3
    gap in the reward model's scores stays a 1e-3 advantage instead of becoming +-1 like a real gap."""
    rewards = torch.tensor([[0.5, 0.501, 0.5, 0.501], [0.0, 2.0, 0.0, 2.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv, rewards - rewards.mean(1, keepdim=True))
    assert adv[0].abs().max() < 1e-3 and adv[1].abs().max() == 1.0
    assert torch.allclose(group_advantages(rewards, scale_std=True).abs(), torch.ones(2, 4), atol=1e-3)


def test_grpo_token_level_loss_has_no_length_bias():
    """Two replies with the same advantage, one of 1 token and one of 4: the token-level loss (default)
    gives every token the same gradient; the per-response mean ('sequence') gives the 1-token reply 4x."""
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1]])
    adv = torch.tensor([1.0, 1.0])

    def grads(token_level):
        logprobs = torch.full((2, 4), -1.0, requires_grad=True)
        loss, _ = grpo_loss(logprobs, logprobs.detach(), logprobs.detach(), adv, mask, 0.2, 0.0, token_level=token_level)
        loss.backward()
        return logprobs.grad
    token, sequence = grads(True), grads(False)
    assert token[0, 0] == token[1, 0] == token[1, 3]
    assert sequence[0, 0] == pytest.approx(4 * sequence[1, 0].item())


def test_grpo_stop_approx_kl_honoured(sft_dir, tmp_path):
    """STOP_APPROX_KL, shared with PPO, stops GRPO's epochs too (a tiny threshold: after the first)."""
    trainer = make_trainer(sft_dir, tmp_path, ppo_epochs=3, actor_lr=1e-2, stop_approx_kl=1e-9)
    torch.manual_seed(0)
    items = [it for it in trainer.get_batch(0)["items"] for _ in range(4)]
    exp = trainer.make_experience(items)
    exp.advantages = torch.linspace(-1, 1, len(items))  # a signal whatever the toy reward gave
    assert trainer.learn(exp)["grpo/epochs"] == 1


def test_grpo_refuses_ppo_only_settings(tmp_path, monkeypatch, capsys):
    """--beta (PPO's KL weight) and the other PPO-only settings under --algo grpo are an error naming
    them, not silently ignored; GRPO's own settings under PPO likewise (checked before any model loads)."""
    import runpy

    monkeypatch.chdir(ROOT)
    for algo, flag, value in (("grpo", "--beta", "0.05"), ("ppo", "--grpo_loss", "sequence")):
        monkeypatch.setattr(sys, "argv", ["train_rlhf.py", "--algo", algo, flag, value, "--out_dir", str(tmp_path)])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(os.path.join(ROOT, "train_rlhf.py"), run_name="__main__")
        said = capsys.readouterr()
        assert exit_.value.code == 2 and f"does not use {flag}" in said.err + said.out, said


def test_grpo_loss_ratio_one_kl_zero_and_k3_formula():
    """Before any update (policy = old policy = reference) the ratio is 1, nothing is clipped, the k3
    KL is exactly 0 and the loss is minus the mean advantage; the KL term is k3 = q - 1 - log q with
    q = pi_ref / pi per token, never negative, and raising beta raises the loss by beta * mean k3."""
    torch.manual_seed(1)
    logprobs, mask = -torch.rand(6, 5) * 3, (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(6)
    loss, stats = grpo_loss(logprobs, logprobs.clone(), logprobs.clone(), adv, mask, clip_range=0.2, beta=0.5)
    assert stats["ratio"] == 1.0 and stats["clipfrac"] == 0.0 and stats["kl_k3"] == 0.0
    assert loss.item() == pytest.approx(-((adv[:, None] * mask).sum() / mask.sum()).item(), abs=1e-6)
    loss, _ = grpo_loss(logprobs, logprobs.clone(), logprobs.clone(), adv, mask, 0.2, 0.5, token_level=False)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    ref = logprobs + torch.randn(6, 5)
    q = torch.exp(ref - logprobs)
    k3 = q - 1 - torch.log(q)  # (6, 5)
    loss0, _ = grpo_loss(logprobs, logprobs.clone(), ref, adv, mask, clip_range=0.2, beta=0.0, token_level=False)
    loss1, stats = grpo_loss(logprobs, logprobs.clone(), ref, adv, mask, clip_range=0.2, beta=0.5, token_level=False)
    per_response = (k3 * mask).sum(1) / mask.sum(1)  # (6,): mean over each response's tokens
    assert torch.all(k3 >= 0) and (loss1 - loss0).item() == pytest.approx(0.5 * per_response.mean().item(), rel=1e-5)


def test_rollout_groups_and_first_minibatch_ratio_one(sft_dir, tmp_path):
    """A rollout holds G samples of each prompt side by side; each group's advantages have mean 0; KL to
    the reference (a copy of the actor) is exactly 0, and on the first minibatch the ratio is exactly 1."""
    trainer = make_trainer(sft_dir, tmp_path)
    torch.manual_seed(0)
    prompts = trainer.get_batch(0)["items"]
    assert len(prompts) == 4
    items = [it for it in prompts for _ in range(4)]
    exp = trainer.make_experience(items)
    assert exp.advantages.shape == (16,) and exp.advantages.view(4, 4).mean(1).abs().max() < 1e-6
    assert torch.equal(exp.kl, torch.zeros_like(exp.kl)) and torch.equal(exp.logprobs, exp.ref_logprobs)
    trainer.learn(exp)
    first = trainer.first_minibatch_stats
    assert first["ratio"] == 1.0 and first["clipfrac"] == 0.0 and first["kl_k3"] == 0.0


def test_short_grpo_run_on_toy_reward_raises_reward(sft_dir, tmp_path):
    """A few GRPO iterations against a toy reward (answer in the preferred form) raise the mean reward."""
    trainer = make_trainer(sft_dir, tmp_path, max_steps=12, rollout_batch=8, actor_lr=3e-4, ppo_epochs=2)  # 32 samples / iteration
    trainer.fit()
    scores = [json.loads(line)["grpo/score"] for line in open(tmp_path / "metrics.jsonl")]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.2, scores


def test_train_rlhf_grpo_two_iterations(sft_dir, tmp_path):
    """train_rlhf.py --algo grpo runs two iterations end to end (gold judge as reward, so no RM is needed)
    and writes the summary PPO writes."""
    run_inline("train_rlhf.py", "--algo", "grpo", "--sft_model", sft_dir, "--reward", "gold", "--iterations", "2",
               "--rollout_batch", "8", "--group_size", "4", "--mini_batch", "4", "--max_new_tokens", "8",
               "--eval_limit", "8", "--test_limit", "8", "--eval_interval", "0", "--out_dir", str(tmp_path))
    metrics = [m for m in map(json.loads, open(tmp_path / "metrics.jsonl")) if "grpo/kl" in m]
    assert [m["step"] for m in metrics] == [1, 2] and all(math.isfinite(m["grpo/kl"]) for m in metrics)
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["algo"] == "grpo" and summary["eval_prompts"] == 8 and summary["kl"] == summary["kl"]


def test_an_overflowing_grpo_step_stops_before_any_save(sft_dir, tmp_path):
    """GRPO's actor is checked after its step like every trained model: exit 7, nothing saved."""
    from trainer.guard import NonFiniteError

    trainer = make_trainer(sft_dir, tmp_path, actor_lr=float("inf"))
    with pytest.raises(NonFiniteError, match="updated weights is non-finite"):
        trainer.fit()
    assert not os.path.exists(tmp_path / "checkpoint")


def test_ppo_and_grpo_log_the_same_metrics_under_their_prefix(sft_dir, tmp_path):
    """PPO and GRPO share one on-policy module: one iteration of each logs the same rollout and update
    metrics (score, KL, truncation, gold score, clipped-loss statistics, rank-averaged), each under its own
    prefix; only what belongs to one algorithm (critic, beta, empty groups) differs."""
    from test_ppo import make_trainer as make_ppo_trainer

    logged = {}
    for name, make in (("ppo", make_ppo_trainer), ("grpo", make_trainer)):
        make(sft_dir, tmp_path / name).fit()
        rows = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        logged[name] = {k.split("/", 1)[1] for k in rows[-1] if k.startswith(name + "/")}
    shared = {"score", "kl", "kl_per_token", "response_length", "truncated_frac", "gold_score", "policy_loss",
              "entropy", "approx_kl", "clipfrac", "epochs", "lr"}
    assert shared <= logged["ppo"] and shared <= logged["grpo"], logged
    assert logged["ppo"] - logged["grpo"] >= {"value_loss", "explained_variance", "beta"}
    assert logged["grpo"] - logged["ppo"] == {"no_signal_groups", "kl_k3"}, logged
