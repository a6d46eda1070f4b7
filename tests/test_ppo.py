"""PPO invariants: KL and ratio at the start, log-prob alignment, GAE, reward placement, learning."""
import copy
import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dataset.prompt import PromptDataset
from dataset.sft import SFTDataset
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM, AutoTokenizer

from model.generate import Responses, generate, position_ids_for
from model.load import ModelError, load_tokenizer, set_pad_token
from model.loss import compute_gae, kl_penalized_rewards, masked_mean, masked_whiten
from model.peft import apply_peft
from model.reward import RewardEnsemble, load_reward_model, reward_scores, token_values
from trainer.ppo import PPOConfig, PPOTrainer, adaptive_beta

from conftest import ROOT, run_inline, run_refused, trainer_configs
from dataset.task import gold_judge


def starts_in_format(rows, responses):
    """Toy reward: 1 for a response in the preferred 'The answer is ...' form, else 0."""
    return [float(r.startswith("The answer is")) for r in responses]


PPO_SETTINGS = dict(actor_lr=1e-4, critic_lr=1e-4, weight_decay=0.0, rollout_batch=16, mini_batch=8, ppo_epochs=2,
                    stop_approx_kl=0.0, max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0, beta=0.05, target_kl=0.0,
                    kl_horizon=1000, gamma=1.0, lam=0.95, clip_range=0.2, value_clip=0.2, ptx_coef=0.0, ptx_batch=4,
                    missing_eos_penalty=1.0, normalize_scores=True, frozen_bf16=True, close_truncated=False, eval_batch_size=100,
                    eval_sampled=False, stop_disagreement=0.0)


def make_trainer(sft_dir, tmp_path, reward_fn=starts_in_format, lora=False, dropout=0.0, bf16=False, tokenizer_dir=None,
                 reward_model=False, max_steps=1, ptx_data=None, lm_head_chunk=0, **kw):
    """A PPOTrainer on the SFT fixture; `dropout` sets opt-125m-style dropout in the actor's config."""
    AcceleratorState._reset_state(True)  # accelerate keeps one mixed-precision setting per process; tests change it
    tok = load_tokenizer(tokenizer_dir or sft_dir)
    drop = dict(dropout=dropout, attention_dropout=dropout, activation_dropout=dropout)
    actor = AutoModelForCausalLM.from_pretrained(sft_dir, **drop)
    ref = None if lora else copy.deepcopy(actor)
    if lora:
        actor = apply_peft(actor, "lora", r=4, alpha=8, targets=("q_proj", "v_proj"))
    critic = load_reward_model(sft_dir, tok.pad_token_id)
    rm = load_reward_model(sft_dir, tok.pad_token_id) if reward_model is True else (reward_model or None)
    prompts = PromptDataset("ds/prompts_train.jsonl", tok, 72, limit=256, verbose=False)
    cfg = PPOConfig(**{**PPO_SETTINGS, **kw})
    return PPOTrainer(actor, ref, critic, rm, tok, prompts, cfg=cfg, ptx_data=ptx_data,
                      reward_fn=None if reward_model else reward_fn, judge=gold_judge, eval_prompts=None, run_config={},
                      loop=trainer_configs(tmp_path, max_steps=max_steps, seed=0, log_interval=1, bf16=bf16)["loop"],
                      lm_head_chunk=lm_head_chunk)


@pytest.fixture(scope="module")
def rollout(sft_dir, tmp_path_factory):
    trainer = make_trainer(sft_dir, tmp_path_factory.mktemp("ppo"))
    torch.manual_seed(0)
    return trainer, trainer.make_experience(trainer.get_batch(0)["items"])


# The configurations users run, beside the embedded model's easy one (dropout 0, fp32, temperature 1,
# pad id != EOS): each breaks "the policy that sampled is the policy that is scored" if any forward
# pass of the rollout differs from learn()'s.
USER_CONFIGS = {
    "embedded": {},
    "dropout_0.1": dict(dropout=0.1),  # facebook/opt-125m's own config: dropout and attention dropout 0.1
    "temperature_0.7": dict(temperature=0.7),
    "bf16": dict(bf16=True),
    "all_with_eos_pad": dict(dropout=0.1, temperature=0.7, bf16=True, eos_pad=True),
    # LM_HEAD_CHUNK: the log-probs through the LM head a few tokens at a time (opt-125m's default)
    "all_with_lm_head_chunk": dict(dropout=0.1, temperature=0.7, bf16=True, eos_pad=True, lm_head_chunk=5),
}


@pytest.fixture(scope="module")
def eos_pad_dir(sft_dir, tmp_path_factory) -> str:
    """The SFT tokenizer saved the way SmolLM2's is: padding with EOS."""
    tok = AutoTokenizer.from_pretrained(sft_dir)
    tok.pad_token = tok.eos_token
    out = str(tmp_path_factory.mktemp("eos_pad"))
    tok.save_pretrained(out)
    shutil.copy(os.path.join(sft_dir, "config.json"), out)  # a model directory, as load_tokenizer expects
    return out


@pytest.mark.parametrize("setting", USER_CONFIGS)
def test_kl_zero_and_ratio_one_before_any_update(sft_dir, eos_pad_dir, tmp_path, setting):
    """With the actor a copy of the reference, KL is exactly 0; on the first minibatch, before any
    update, the ratio is 1 (to 1e-6), nothing is clipped, approx KL is 0 and the critic's values equal
    the rollout's, in every configuration users run."""
    kw = dict(USER_CONFIGS[setting])
    if kw.pop("eos_pad", False):
        kw["tokenizer_dir"] = eos_pad_dir
    trainer = make_trainer(sft_dir, tmp_path, ppo_epochs=1, **kw)
    matrices = {p.dtype for n, p in trainer.ref.named_parameters() if p.dim() == 2 and "embed" not in n}
    assert matrices == ({torch.bfloat16} if kw.get("bf16") else {torch.float32})  # FROZEN_BF16 under bf16
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.get_batch(0)["items"])
    assert torch.equal(exp.kl, torch.zeros_like(exp.kl))
    assert torch.equal(exp.logprobs, exp.ref_logprobs)
    trainer.learn(exp)
    first = trainer.first_minibatch_stats
    assert abs(first["ratio"] - 1) < 1e-6 and first["clipfrac"] == 0.0 and abs(first["approx_kl"]) < 1e-6, first
    assert first["value_drift"] < 1e-6, first


def test_rollout_logprobs_are_the_samplers_distribution(sft_dir, tmp_path):
    """The log-probs PPO scores are those of the distribution the sampler drew from: generate()'s own
    processed scores at temperature 0.7, with a checkpoint generation_config (repetition penalty,
    top_k=5) that must not leak into sampling."""
    trainer = make_trainer(sft_dir, tmp_path, temperature=0.7)
    actor, tok = trainer.unwrap(trainer.actor).eval(), trainer.tokenizer
    actor.generation_config.repetition_penalty, actor.generation_config.top_k = 1.5, 5
    items = trainer.get_batch(0)["items"]
    torch.manual_seed(3)
    sequences, scores = generate(actor, tok, [it["prompt_ids"] for it in items], 12, do_sample=True, temperature=0.7,
                                 return_scores=True)  # (B, P + N), (B, N, V)
    P = max(len(it["prompt_ids"]) for it in items)
    response = sequences[:, P:]
    sampler = torch.log_softmax(scores.float(), -1).gather(-1, response[..., None]).squeeze(-1)  # (B, N)
    is_eos = response == tok.eos_token_id
    action_mask = ((is_eos.cumsum(1) - is_eos.long()) == 0).long()  # up to and including the first EOS
    prompt_mask = torch.tensor([[0] * (P - len(it["prompt_ids"])) + [1] * len(it["prompt_ids"]) for it in items])
    with torch.no_grad():
        logprobs, _ = trainer.policy_forward(actor, sequences, torch.cat([prompt_mask, action_mask], 1), P)
    m = action_mask.bool()
    assert torch.allclose(logprobs[m], sampler[m], atol=1e-5), (logprobs[m] - sampler[m]).abs().max()


@pytest.mark.parametrize("bf16", [False, True])
def test_lm_head_chunk_gives_the_same_logprobs_entropy_ptx_loss_and_gradients(sft_dir, tmp_path, bf16):
    """LM_HEAD_CHUNK changes only memory: the actor's log-probs, entropies, ptx loss and every gradient of
    them equal the full-vocabulary path's, and the evaluation's KL of the copied reference stays exactly 0."""
    tok = load_tokenizer(sft_dir)
    ptx = SFTDataset("ds/sft_train.jsonl", tok, 96, verbose=False)
    trainer = make_trainer(sft_dir, tmp_path, bf16=bf16, temperature=0.7, ptx_coef=0.5, ptx_data=ptx, lm_head_chunk=5)
    assert trainer.lm_head_chunk == 5 and trainer.evaluate_policy.lm_head_chunk == 5
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.get_batch(0)["items"])
    actor = trainer.unwrap(trainer.actor).eval()
    weights = torch.randn(exp.logprobs.shape)  # an arbitrary gradient for the log-probs
    results = {}
    for chunk in (0, 5):
        trainer.lm_head_chunk = chunk
        actor.zero_grad()
        with trainer.accelerator.autocast():
            logprobs, entropy = trainer.policy_forward(actor, exp.sequences, exp.attention_mask, exp.context_length)
            ptx_loss = trainer.ptx_loss(0, 0)
        (logprobs * weights * exp.action_mask).sum().backward()
        logprob_grads = [p.grad.clone() for p in actor.parameters()]
        actor.zero_grad()
        ptx_loss.backward()
        results[chunk] = logprobs, entropy, ptx_loss, logprob_grads, [p.grad.clone() for p in actor.parameters()]
    tol = dict(atol=2e-2, rtol=2e-2) if bf16 else dict(atol=1e-4, rtol=1e-4)
    (full, chunked), m = results.values(), exp.action_mask.bool()
    assert torch.allclose(chunked[0][m], full[0][m], **tol) and torch.allclose(chunked[1][m], full[1][m], **tol)
    assert not chunked[1].requires_grad and chunked[1][m].max() > 0.5  # a metric, of a real distribution
    assert torch.allclose(chunked[2], full[2], **tol)
    for grads in (3, 4):
        assert all(torch.allclose(a, b, **tol) for a, b in zip(chunked[grads], full[grads]))
        assert sum(g.abs().sum() for g in full[grads]) > 0
    out = Responses(exp.sequences, exp.attention_mask, exp.action_mask, exp.action_mask.all(1), exp.context_length)
    with torch.no_grad(), trainer.accelerator.autocast():
        assert trainer.evaluate_policy.kl_to_reference(actor, out) == [0.0] * len(exp.sequences)


def test_pad_equal_to_eos_is_replaced_and_the_score_is_read_at_eos(sft_dir, eos_pad_dir, tmp_path):
    """A tokenizer that pads with EOS gets another pad id (one rule, in load_tokenizer, for every
    stage), so the score PPO uses is the reward model's own output at the EOS token, not the token before."""
    assert AutoTokenizer.from_pretrained(eos_pad_dir).pad_token_id == AutoTokenizer.from_pretrained(eos_pad_dir).eos_token_id
    trainer = make_trainer(sft_dir, tmp_path, tokenizer_dir=eos_pad_dir, reward_model=True)
    tok = trainer.tokenizer
    assert tok.pad_token_id != tok.eos_token_id
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.get_batch(0)["items"])
    with torch.no_grad():
        per_token = token_values(trainer.reward_model, exp.sequences, exp.attention_mask)  # (B, T): the head everywhere
    P, checked = exp.context_length, 0
    for i, row in enumerate(exp.sequences[:, P:]):
        eos = (row == tok.eos_token_id).nonzero()
        if len(eos):
            assert torch.allclose(per_token[i, P + int(eos[0])], exp.raw_scores[i], atol=1e-5)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("close,setting", [(False, "embedded"), (True, "embedded"), (True, "all_with_eos_pad")])
def test_a_cut_response_is_scored_at_its_last_token_or_closed_with_eos(sft_dir, eos_pad_dir, tmp_path, close, setting):
    """MAX_NEW_TOKENS=4 cuts most responses. CLOSE_TRUNCATED=False: the reward model's score at the cut
    response's last token; True: its score at an EOS appended after it (where every training reply ended),
    which is another number. Responses that ended with EOS are scored at their EOS either way. Also with
    dropout 0.1, temperature 0.7, bf16 and a tokenizer that pads with EOS."""
    kw = dict(USER_CONFIGS[setting])
    if kw.pop("eos_pad", False):
        kw["tokenizer_dir"] = eos_pad_dir
    trainer = make_trainer(sft_dir, tmp_path, reward_model=True, max_new_tokens=4, close_truncated=close, **kw)
    tok = trainer.tokenizer
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.get_batch(0)["items"])
    P, N = exp.context_length, exp.sequences.size(1) - exp.context_length
    eos = torch.full((len(exp.sequences), 1), tok.eos_token_id)
    with torch.no_grad(), trainer.accelerator.autocast():  # the head everywhere, EOS appended, as PPO runs it
        per_token = token_values(trainer.reward_model, torch.cat([exp.sequences, eos], 1),
                                 torch.cat([exp.attention_mask, torch.ones_like(eos)], 1))
    cut = [i for i in range(len(eos)) if tok.eos_token_id not in exp.sequences[i, P:].tolist()]
    ended = [i for i in range(len(eos)) if i not in cut]
    assert cut and ended and torch.equal(exp.action_mask[cut].sum(1), torch.full((len(cut),), N))
    at_last, at_eos = per_token[cut, P + N - 1], per_token[cut, P + N]
    assert (at_last - at_eos).abs().min() > 1e-3  # the two readings differ, so the test can tell them apart
    assert torch.allclose(exp.raw_scores[cut], at_eos if close else at_last, atol=1e-5)
    for i in ended:
        first_eos = P + exp.sequences[i, P:].tolist().index(tok.eos_token_id)
        assert torch.allclose(exp.raw_scores[i], per_token[i, first_eos], atol=1e-5)


def test_pad_rule_refuses_a_tokenizer_with_nothing_to_pad_with(sft_dir):
    """No pad, or pad == EOS, and no separate unknown token: a clear error instead of padding with EOS."""
    tok = AutoTokenizer.from_pretrained(sft_dir)
    tok.pad_token, tok.unk_token = tok.eos_token, tok.eos_token
    with pytest.raises(ModelError, match="pads with EOS"):
        set_pad_token(tok, "MODEL='x'")


def test_top_k_and_top_p_are_refused_with_the_reason():
    """PPO samples the full distribution: top-k / top-p would make the KL to the reference infinite."""
    for bad in (dict(top_k=20), dict(top_p=0.9)):
        with pytest.raises(ValueError, match="KL to the reference"):
            PPOConfig(**{**PPO_SETTINGS, **bad})
    code, err = run_refused("train_rlhf.py", "--top_k", "20")
    assert code == 2 and "TOP_K=20" in err


def test_adaptive_kl_controller():
    """beta rises when the KL is above target, falls below it, and one step moves it by at most 20% * batch / horizon."""
    assert adaptive_beta(0.1, kl=1.1, target_kl=1.0, batch=64, horizon=1000) == pytest.approx(0.1 * (1 + 0.1 * 0.064))
    assert adaptive_beta(0.1, kl=9.0, target_kl=1.0, batch=64, horizon=1000) == pytest.approx(0.1 * (1 + 0.2 * 0.064))
    assert adaptive_beta(0.1, kl=0.0, target_kl=1.0, batch=64, horizon=1000) == pytest.approx(0.1 * (1 - 0.2 * 0.064))


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
        new, _ = trainer.policy_forward(actor, exp.sequences, exp.attention_mask, exp.context_length)
        with trainer.reference(actor) as ref_model:
            ref, _ = trainer.policy_forward(ref_model, exp.sequences, exp.attention_mask, exp.context_length)
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
        fresh, _ = trainer.policy_forward(actor, exp.sequences, exp.attention_mask, exp.context_length)
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
    # A reference that disagrees by 0.5 nats on every token: each response token pays -beta * 0.5, the last one
    # also gets the score, and nothing after EOS pays anything (the plain loop of the docstring, written out).
    rewards, kl = kl_penalized_rewards(exp.scores, exp.logprobs, exp.logprobs - 0.5, exp.action_mask, beta=0.2)
    expected = torch.zeros_like(rewards)
    for i in range(response.size(0)):
        n = int(exp.action_mask[i].sum())
        expected[i, :n] = -0.2 * 0.5
        expected[i, n - 1] += exp.scores[i]
    assert torch.allclose(rewards, expected, atol=1e-6) and torch.allclose(kl, 0.5 * exp.action_mask.float())


def test_masked_helpers():
    """masked_mean(x, m) equals x[m].mean(); masked_whiten gives mean 0, variance 1 on the mask."""
    x, m = torch.randn(4, 6), torch.rand(4, 6) > 0.4
    assert torch.allclose(masked_mean(x, m), x[m].mean())
    w = masked_whiten(x, m.float())
    assert abs(w[m].mean().item()) < 1e-5 and abs(w[m].var(unbiased=False).item() - 1) < 1e-3 and torch.all(w[~m] == 0)


def test_short_run_on_toy_reward_raises_reward(sft_dir, tmp_path):
    """A few PPO iterations against a toy reward (answer in the preferred form) raise the mean reward:
    the last two rollouts score well above the first, which is sampled before any update."""
    trainer = make_trainer(sft_dir, tmp_path, max_steps=6, rollout_batch=16, actor_lr=5e-4, ppo_epochs=4)
    trainer.fit()
    scores = [json.loads(l)["ppo/score"] for l in open(tmp_path / "metrics.jsonl")]
    assert sum(scores[-2:]) / 2 > scores[0] + 0.3, scores


def test_opt125m_architecture_ppo_iteration(opt125m_dir, tmp_path):
    """The opt-125m-architecture checkpoint (random weights) runs a PPO iteration end to end."""
    run_inline("train_rlhf.py", "--sft_model", opt125m_dir, "--rm_model", opt125m_dir, "--iterations", "1",
               "--rollout_batch", "2", "--mini_batch", "2", "--ppo_epochs", "1", "--max_new_tokens", "3",
               "--eval_prompts", "none", "--test_limit", "1", "--eval_interval", "0", "--out_dir", str(tmp_path))
    metrics = [m for m in map(json.loads, open(tmp_path / "metrics.jsonl")) if "ppo/kl" in m]
    assert [m["step"] for m in metrics] == [1] and all(math.isfinite(m["ppo/kl"]) for m in metrics)
    assert json.load(open(tmp_path / "summary.json"))["eval_prompts"] == 1


def test_judge_rm_scores_held_out_and_rollout_answers(sft_dir, tmp_path):
    """--judge_rm: a second reward model, never optimised, replaces the gold judge; each held-out answer's
    'gold' in side_by_side.jsonl is that model's score of the reply, and rollouts get a judge mean."""
    from model.reward import load_scorer, score_replies
    from dataset.chat import row_messages
    from dataset.prompt import read_prompts

    judge_dir = str(tmp_path / "judge")
    tok = load_tokenizer(sft_dir)
    torch.manual_seed(1)
    load_reward_model(sft_dir, tok.pad_token_id).save_pretrained(judge_dir)
    tok.save_pretrained(judge_dir)
    out = tmp_path / "ppo"
    run_inline("train_rlhf.py", "--sft_model", sft_dir, "--rm_model", sft_dir, "--judge_rm", judge_dir, "--iterations", "1",
               "--rollout_batch", "8", "--mini_batch", "4", "--max_new_tokens", "8", "--eval_limit", "6", "--test_limit", "6",
               "--eval_interval", "0", "--save_interval", "0", "--out_dir", str(out))
    rows = [json.loads(l) for l in open(out / "side_by_side.jsonl")]
    prompts = read_prompts("ds/prompts_test.jsonl", 6)
    model, scorer_tok = load_scorer(judge_dir)
    expected = [score_replies(model, scorer_tok, [row_messages(p)], [r["rlhf"]["response"]], batch_size=1, max_len=80)[0]
                for p, r in zip(prompts, rows)]
    assert [r["rlhf"]["gold"] for r in rows] == pytest.approx(expected, abs=1e-4)
    metrics = [m for m in map(json.loads, open(out / "metrics.jsonl")) if "ppo/gold_score" in m]
    assert metrics and all(math.isfinite(m["ppo/gold_score"]) for m in metrics)


def test_sft_eval_reuses_an_earlier_runs_sft_evaluation_only_under_the_same_settings(sft_dir, tmp_path):
    """--sft_eval DIR: the SFT figures and answers of an earlier run's sft_eval.json, identical to that run's
    (greedy is deterministic, so they are what this run would have computed); a setting that shapes the
    evaluation (here TEST_LIMIT, and REWARD, which scores the SFT answers) differing is refused, naming it."""
    args = ["train_rlhf.py", "--sft_model", sft_dir, "--rm_model", sft_dir, "--iterations", "1", "--rollout_batch", "4",
            "--mini_batch", "4", "--ppo_epochs", "1", "--max_new_tokens", "8", "--eval_interval", "0",
            "--save_interval", "0", "--temperature", "0.7", "--eval_limit", "4", "--test_limit"]
    first, second = tmp_path / "first", tmp_path / "second"
    run_inline(*args, "6", "--out_dir", str(first))
    saved = json.load(open(first / "sft_eval.json"))
    assert saved["settings"]["TEST_LIMIT"] == 6 and len(saved["greedy"]["rows"]) == 6
    run_inline(*args, "6", "--seed", "1", "--sft_eval", str(first), "--out_dir", str(second))
    assert not (second / "sft_eval.json").exists()
    a, b = json.load(open(first / "summary.json")), json.load(open(second / "summary.json"))
    for key in ("gold_score_sft", "gold_score_sampled_sft", "reward_sft", "correct_sft", "format_sft"):
        assert a[key] == b[key], key
    sft_rows = lambda d: [json.loads(l)["sft"] for l in open(d / "side_by_side.jsonl")]
    assert sft_rows(first) == sft_rows(second) == saved["greedy"]["rows"]
    _, said = run_refused(*args, "5", "--reward", "gold", "--sft_eval", str(first), "--out_dir", str(tmp_path / "third"))
    assert "TEST_LIMIT=6 there, 5 here" in said and "REWARD='rm' there, 'gold' here" in said, said[-2000:]


def test_score_normalisation_safe_when_the_first_batch_scores_are_all_equal():
    """A first batch of equal scores has std 0 up to rounding: the scores are centred (about 0), not
    rounding noise divided by 1e-8 (which made 0.3 - mean(0.3, ...) into -0.75)."""
    from types import SimpleNamespace
    from trainer.onpolicy import RunningMoments
    from trainer.ppo import PPOTrainer
    fake = SimpleNamespace(cfg=SimpleNamespace(normalize_scores=True, missing_eos_penalty=1.0),
                           score_moments=RunningMoments(), accelerator=SimpleNamespace(gather=lambda x: x))
    scores = PPOTrainer.shape_scores(fake, torch.full((16,), 0.3), torch.ones(16, dtype=torch.bool))
    assert scores.abs().max() < 1e-6, scores
    later = PPOTrainer.shape_scores(fake, torch.tensor([0.0, 1.0] * 8), torch.ones(16, dtype=torch.bool))
    assert later.abs().max() < 10 and torch.isfinite(later).all()


def test_rl_defaults_critic_in_return_units_and_grpo_without_length_or_std_bias():
    """The defaults of train_rlhf.py: the critic starts with a zeroed head (values 0, the units of the
    normalised returns), GRPO's loss is token-level and its advantages are not divided by the group std."""
    import ast
    tree = ast.parse(open(os.path.join(ROOT, "train_rlhf.py")).read())
    defaults = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()
                and isinstance(node.value, ast.Constant)}
    assert defaults["CRITIC_INIT"] == "zero_head"
    assert defaults["GRPO_LOSS"] == "token" and defaults["GRPO_STD_SCALE"] is False


@pytest.mark.parametrize("which", ["actor", "critic"])
@pytest.mark.parametrize("shape", [dict(), dict(rollout_batch=8, ppo_epochs=1)], ids=["4-updates", "1-update"])
def test_an_overflowing_actor_or_critic_step_stops_before_any_save(sft_dir, tmp_path, which, shape):
    """A learning rate so large that AdamW's update overflows (the clipped gradient is finite): the
    weight check names it, exit 7 advises ACTOR_LR / CRITIC_LR, and no checkpoint exists. The weights are
    checked once per iteration: with 4 minibatch updates the next minibatch's non-finite loss is traced to
    them, with one update the check after the iteration's last update finds them."""
    from trainer.guard import NonFiniteError

    trainer = make_trainer(sft_dir, tmp_path, **{f"{which}_lr": float("inf")}, **shape)
    with pytest.raises(NonFiniteError, match="updated weights is non-finite.*ACTOR_LR / CRITIC_LR"):
        trainer.fit()
    assert not os.path.exists(tmp_path / "checkpoint")


def test_the_weights_are_checked_once_per_iteration_not_per_minibatch(sft_dir, tmp_path):
    """Each check reads every weight of actor and critic (2 x 17 ms at opt-125m's size): 2 iterations of 4
    minibatch updates each make 2 checks of the updated weights, not 8."""
    trainer = make_trainer(sft_dir, tmp_path, max_steps=2)
    checks, check = [], trainer.check_weights
    trainer.check_weights = lambda what="updated weights": (checks.append(what), check(what))
    trainer.fit()
    assert checks.count("updated weights") == 2 and trainer.step == 2


def test_sampled_evaluation_reports_samples_and_leaves_training_alone(sft_dir, tmp_path):
    """EVAL_SAMPLED: each evaluation also samples its answers (gold, RM score and KL of samples: the
    over-optimisation curve) under random numbers of its own, so the next rollout is the one a run
    without it draws."""
    results, rollouts = [], []
    for sampled in (False, True):
        trainer = make_trainer(sft_dir, tmp_path / str(sampled), eval_sampled=sampled)
        trainer.eval_prompts = PromptDataset("ds/prompts_val.jsonl", trainer.tokenizer, 72, limit=8,
                                             verbose=False).items
        torch.manual_seed(0)
        results.append(trainer.run_evaluation())
        rollouts.append(trainer.make_experience(trainer.get_batch(0)["items"]).sequences)
    plain, with_samples = results
    assert not any(k.startswith("eval/sampled_") for k in plain)
    for key in ("gold_score", "correct", "format", "reward", "kl"):
        assert with_samples[f"eval/{key}"] == plain[f"eval/{key}"]  # the greedy figures are unchanged
        assert math.isfinite(with_samples[f"eval/sampled_{key}"])
    assert with_samples["eval/sampled_kl"] == 0.0  # the actor is still the reference
    assert torch.equal(rollouts[0], rollouts[1])


def two_reward_models(sft_dir):
    """Two reward models on the SFT backbone whose score heads differ (seeds 1 and 2)."""
    tok = load_tokenizer(sft_dir)
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        members.append(load_reward_model(sft_dir, tok.pad_token_id).eval())
    return members


def test_reward_ensemble_standardises_then_combines(sft_dir):
    """Each member is standardised on the calibration sequences (mean 0, std 1 there); 'mean', 'min' and
    'mean_minus_std' combine the standardised scores; identical members disagree nowhere."""
    members = two_reward_models(sft_dir)
    tok = load_tokenizer(sft_dir)
    prompts = PromptDataset("ds/prompts_train.jsonl", tok, 72, limit=16, verbose=False).items
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(it["prompt_ids"]) for it in prompts], batch_first=True,
                                          padding_value=tok.pad_token_id)
    mask = (ids != tok.pad_token_id).long()
    ensemble = RewardEnsemble(members, "mean_minus_std", 0.5)
    ensemble.calibrate(ids, mask)
    z = ensemble.member_scores(ids, mask, position_ids_for(mask))  # (16, 2)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-5) and torch.allclose(z.std(0), torch.ones(2), atol=1e-5)
    assert not torch.allclose(z[:, 0], z[:, 1])  # the members differ
    assert torch.allclose(reward_scores(ensemble, ids, mask), z.mean(1) - 0.5 * z.std(1), atol=1e-6)
    ensemble.combine = "min"
    assert torch.allclose(reward_scores(ensemble, ids, mask), z.min(1).values, atol=1e-6)
    twins = RewardEnsemble([members[0], members[0]], "mean_minus_std", 1.0)
    twins.calibrate(ids, mask)
    assert torch.allclose(reward_scores(twins, ids, mask), twins.member_scores(ids, mask, position_ids_for(mask))[:, 0])


@pytest.mark.parametrize("bf16", [False, True])  # bf16: the members' matrices stored in bf16 (FROZEN_BF16)
def test_ppo_with_a_reward_ensemble_logs_disagreement_and_samples_as_without(sft_dir, tmp_path, bf16):
    """The ensemble is calibrated on the SFT policy's own samples under random numbers of its own: the
    first rollout is the one a single reward model's run draws, and the members' disagreement is logged."""
    rm = two_reward_models(sft_dir)[0]
    torch.manual_seed(0)  # as the script seeds before it builds the trainer
    single = make_trainer(sft_dir, tmp_path / "single", reward_model=rm, bf16=bf16)
    first = single.make_experience(single.get_batch(0)["items"]).sequences
    ensemble = RewardEnsemble(two_reward_models(sft_dir), "mean_minus_std", 1.0)
    torch.manual_seed(0)
    trainer = make_trainer(sft_dir, tmp_path / "ensemble", reward_model=ensemble, bf16=bf16)
    assert not torch.equal(ensemble.scale, torch.ones(2))  # calibrated when the trainer was built
    assert torch.equal(trainer.make_experience(trainer.get_batch(0)["items"]).sequences, first)
    metrics = trainer.training_step()
    assert metrics["ppo/rm_disagreement"] > 0 and math.isfinite(metrics["ppo/score"])


def test_stop_disagreement_compares_the_last_window_with_the_first():
    """STOP_DISAGREEMENT: the run ends at the first iteration whose last-window mean disagreement exceeds
    the threshold times the first window's; a flat disagreement never stops it."""
    from types import SimpleNamespace

    def iterations_run(values, threshold):
        fake = SimpleNamespace(cfg=SimpleNamespace(stop_disagreement=threshold), name="ppo", disagreements=[],
                               disagreement_window=2)
        for i, v in enumerate(values, 1):
            if PPOTrainer.stop_early(fake, {"ppo/rm_disagreement": v}):
                return i
        return None

    rising = [0.2, 0.2, 0.2, 0.3, 0.4, 0.5]  # windows of 2: (0.2, 0.2) against (0.3, 0.4) = 1.75x at 5
    assert iterations_run(rising, 1.5) == 5
    assert iterations_run(rising, 3.0) is None
    assert iterations_run([0.2] * 6, 1.01) is None
    assert iterations_run(rising, 0.0) is None  # 0: off


def test_ppo_ends_early_when_the_ensemble_disagrees_more(sft_dir, tmp_path, capsys):
    """Through the loop: a run told to stop at any rise ends before MAX_STEPS and says why."""
    ensemble = RewardEnsemble(two_reward_models(sft_dir), "mean", 1.0)
    trainer = make_trainer(sft_dir, tmp_path, reward_model=ensemble, max_steps=6, stop_disagreement=1e-6,
                           rollout_batch=8, mini_batch=8)
    trainer.disagreement_window = 1
    trainer.fit()
    assert trainer.step == 2 and len(trainer.disagreements) == 2
    assert "step 2: stopping before MAX_STEPS=6: the reward models' disagreement" in capsys.readouterr().out


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_the_number_of_test_prompts_never_changes_training(sft_dir, tmp_path, algo):
    """The SFT policy's sampled evaluation before the first rollout draws under random numbers of its own:
    the same seed trains the same weights, bit for bit, with 2 or 6 test prompts, with a reused SFT evaluation
    (--sft_eval) and with greedy evaluations during training. Fails if an evaluation draws from the stream
    training continues."""
    args = ["train_rlhf.py", "--algo", algo, "--sft_model", sft_dir, "--rm_model", sft_dir, "--iterations", "2",
            "--rollout_batch", "4", "--mini_batch", "4", "--ppo_epochs", "1", "--max_new_tokens", "8",
            "--eval_interval", "0", "--save_interval", "0", "--temperature", "1.0"]
    args += ["--group_size", "2"] * (algo == "grpo") + ["--eval_prompts", "none"]
    run_inline(*args, "--test_limit", "2", "--out_dir", str(tmp_path / "two"))
    run_inline(*args, "--test_limit", "6", "--out_dir", str(tmp_path / "six"))
    run_inline(*args, "--test_limit", "2", "--sft_eval", str(tmp_path / "two"), "--out_dir", str(tmp_path / "reused"))
    run_inline(*args[:-2], "--test_limit", "2", "--eval_prompts", "ds/prompts_val.jsonl", "--eval_limit", "2",
               "--eval_interval", "1", "--out_dir", str(tmp_path / "evaluated"))  # greedy evaluations draw nothing
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in ("two", "six", "reused", "evaluated")}
    for name, state in weights.items():
        assert all(torch.equal(state[k], weights["two"][k]) for k in weights["two"]), name
