"""PPO invariants: KL and ratio at the start, log-prob alignment, GAE, reward placement, learning."""
import copy
import json

import pytest
import torch

from dataset.prompt import PromptDataset
from model.load import load_causal_lm, load_tokenizer
from model.loss import compute_gae, kl_penalized_rewards, masked_mean, masked_whiten
from model.peft import apply_peft
from model.reward import load_reward_model, position_ids_for
from trainer.ppo import PPOTrainer

from conftest import run_script


def starts_in_format(rows, responses):
    """Toy reward: 1 for a response in the preferred 'The answer is ...' form, else 0."""
    return [float(r.startswith("The answer is")) for r in responses]


def make_trainer(sft_dir, tmp_path, reward_fn=starts_in_format, lora=False, **kw):
    tok = load_tokenizer(sft_dir)
    actor = load_causal_lm(sft_dir)
    ref = None if lora else copy.deepcopy(actor)
    if lora:
        actor = apply_peft(actor, "lora", r=4, alpha=8, targets=("q_proj", "v_proj"))
    critic = load_reward_model(sft_dir, tok.pad_token_id)
    prompts = PromptDataset("ds/prompts_train.jsonl", tok, 72, limit=256, verbose=False)
    args = dict(actor_lr=1e-4, critic_lr=1e-4, rollout_batch=16, mini_batch=8, ppo_epochs=2, max_new_tokens=12,
                beta=0.05, out_dir=str(tmp_path), run_config={}, max_steps=1, seed=0, log_interval=1)
    args.update(kw)
    return PPOTrainer(actor, ref, critic, None, tok, prompts, None, reward_fn, **args)


@pytest.fixture(scope="module")
def rollout(sft_dir, tmp_path_factory):
    trainer = make_trainer(sft_dir, tmp_path_factory.mktemp("ppo"))
    torch.manual_seed(0)
    return trainer, trainer.make_experience(trainer.get_batch(0)["items"])


def test_kl_zero_and_ratio_one_before_any_update(rollout):
    """With the actor a copy of the reference, KL is exactly 0; on the first minibatch, before any
    update, the ratio is exactly 1, nothing is clipped and approx KL is 0."""
    trainer, exp = rollout
    assert torch.equal(exp.kl, torch.zeros_like(exp.kl))
    assert torch.equal(exp.logprobs, exp.ref_logprobs)
    trainer.learn(exp)
    first = trainer.first_minibatch_stats
    assert first["ratio"] == 1.0 and first["clipfrac"] == 0.0 and first["approx_kl"] == 0.0


def test_lora_actor_reference_is_the_adapter_free_model(sft_dir, tmp_path):
    """With a LoRA actor there is no second model: the reference is the actor with adapters off, so at
    initialisation (LoRA B = 0) KL is exactly 0; after an update the actor moves and the reference does not."""
    trainer = make_trainer(sft_dir, tmp_path, lora=True, actor_lr=1e-2)
    assert trainer.ref is None
    torch.manual_seed(2)
    items = trainer.get_batch(0)["items"]
    exp = trainer.make_experience(items)
    assert torch.equal(exp.kl, torch.zeros_like(exp.kl))
    trainer.learn(exp)
    actor = trainer.unwrap(trainer.actor)
    with torch.no_grad():
        _, new = trainer.policy_forward(actor, exp.sequences, exp.attention_mask, exp.context_length)
        with trainer.reference_context():
            _, ref = trainer.policy_forward(actor, exp.sequences, exp.attention_mask, exp.context_length)
    m = exp.action_mask.bool()
    assert not torch.allclose(new[m], exp.logprobs[m]) and torch.allclose(ref[m], exp.ref_logprobs[m], atol=1e-6)


def test_rollout_logprobs_equal_a_fresh_forward_pass(sft_dir, tmp_path):
    """Log-probs recorded at rollout equal a fresh forward pass over the same padded batch, and the
    left-padded positions match each prompt run alone without padding."""
    trainer = make_trainer(sft_dir, tmp_path)
    torch.manual_seed(1)
    exp = trainer.make_experience(trainer.get_batch(0)["items"])
    actor = trainer.unwrap(trainer.actor).eval()
    with torch.no_grad():
        _, fresh = trainer.policy_forward(actor, exp.sequences, exp.attention_mask, exp.context_length)
        m = exp.action_mask.bool()
        assert torch.allclose(fresh[m], exp.logprobs[m], atol=1e-5)
        row = int(exp.attention_mask[:, : exp.context_length].sum(1).argmin())  # the most left-padded prompt
        keep = exp.attention_mask[row].bool()
        alone = actor(input_ids=exp.sequences[row][keep][None]).logits[0]
        padded = actor(input_ids=exp.sequences[row][None], attention_mask=exp.attention_mask[row][None],
                       position_ids=position_ids_for(exp.attention_mask[row][None])).logits[0][keep]
        assert torch.allclose(alone, padded, atol=1e-4)


def test_gae_equals_plain_loop():
    """Vectorised-over-batch GAE equals a per-row Python loop over only the real response tokens."""
    torch.manual_seed(0)
    rewards, values = torch.randn(5, 7), torch.randn(5, 7)
    lengths = [7, 1, 4, 6, 3]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths], dtype=torch.float)
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for i, n in enumerate(lengths):
        expected, running = [0.0] * n, 0.0
        for t in reversed(range(n)):
            next_v = values[i, t + 1].item() if t + 1 < n else 0.0
            running = rewards[i, t].item() + 0.9 * next_v - values[i, t].item() + 0.9 * 0.8 * running
            expected[t] = running
        assert torch.allclose(adv[i, :n], torch.tensor(expected), atol=1e-5)
        assert torch.all(adv[i, n:] == 0) and torch.allclose(ret[i, :n], adv[i, :n] + values[i, :n])


def test_nonzero_advantages_equal_response_tokens(rollout):
    """After whitening, exactly the response tokens (up to and including EOS) carry an advantage."""
    _, exp = rollout
    assert int((exp.advantages != 0).sum()) == int(exp.action_mask.sum())
    assert abs(masked_mean(exp.advantages, exp.action_mask).item()) < 1e-5


def test_score_on_last_response_token_and_nothing_after_eos(rollout):
    """The score sits on the last response token (the EOS when one was produced); after EOS every token
    is pad and every mask and reward is 0."""
    trainer, exp = rollout
    tok, P = trainer.tokenizer, exp.context_length
    response = exp.sequences[:, P:]
    assert bool((response == tok.eos_token_id).any(1).any()), "the SFT model should end some responses"
    for i in range(response.size(0)):
        n = int(exp.action_mask[i].sum())
        eos = (response[i] == tok.eos_token_id).nonzero()
        if len(eos):
            assert n == int(eos[0]) + 1  # mask covers up to and including the first EOS
        assert torch.all(response[i, n:] == tok.pad_token_id) and torch.all(exp.rewards[i, n:] == 0)
        assert torch.all(exp.attention_mask[i, P + n:] == 0)
    rewards, _ = kl_penalized_rewards(exp.scores, exp.logprobs, exp.ref_logprobs + 0.1, exp.action_mask, beta=0.0)
    last = exp.action_mask.sum(1).long() - 1
    assert torch.equal(rewards.gather(1, last[:, None]).squeeze(1), exp.scores)
    assert int((rewards != 0).sum()) <= response.size(0)


def test_masked_helpers():
    """masked_mean(x, m) equals x[m].mean(); masked_whiten gives mean 0, variance 1 on the mask."""
    x, m = torch.randn(4, 6), torch.rand(4, 6) > 0.4
    assert torch.allclose(masked_mean(x, m), x[m].mean())
    w = masked_whiten(x, m.float())
    assert abs(w[m].mean().item()) < 1e-5 and abs(w[m].var(unbiased=False).item() - 1) < 1e-3 and torch.all(w[~m] == 0)


def test_short_run_on_toy_reward_raises_reward(sft_dir, tmp_path):
    """A few PPO iterations against a toy reward (answer in the preferred form) raise the mean reward."""
    trainer = make_trainer(sft_dir, tmp_path, max_steps=12, rollout_batch=32, actor_lr=3e-4, ppo_epochs=4)
    trainer.fit()
    scores = [json.loads(l)["ppo/score"] for l in open(tmp_path / "metrics.jsonl")]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.2, scores


def test_opt125m_architecture_two_ppo_iterations(opt125m_dir, tmp_path):
    """The opt-125m-architecture checkpoint (random weights) runs two PPO iterations end to end."""
    run_script("train_rlhf.py", "--sft_model", opt125m_dir, "--rm_model", opt125m_dir, "--iterations", "2",
               "--rollout_batch", "2", "--mini_batch", "1", "--ppo_epochs", "1", "--max_new_tokens", "4",
               "--eval_limit", "2", "--eval_interval", "0", "--out_dir", str(tmp_path))
    metrics = [m for m in map(json.loads, open(tmp_path / "metrics.jsonl")) if "ppo/kl" in m]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["ppo/kl"] == m["ppo/kl"] for m in metrics)  # no NaN
    assert json.load(open(tmp_path / "summary.json"))["eval_prompts"] == 2
