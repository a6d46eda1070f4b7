"""PPO for language models (InstructGPT step 3): two phases per iteration.

1. `make_experience()` under no_grad: sample responses from the actor, score them with the frozen
   reward model, take log-probs under actor and frozen reference, values from the critic, and turn
   them into per-token KL-penalised rewards, GAE advantages and returns (an `Experience`).
2. `learn()`: several epochs over minibatches of that experience: clipped policy loss (+ optional
   ptx LM loss on SFT data) for the actor, clipped value loss for the critic, separate optimizers.

References: InstructGPT (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155) Eq. 2; PPO (Schulman et
al. 2017, https://arxiv.org/abs/1707.06347) Eqs. 7, 11-12; the adaptive KL controller of Ziegler et al.
2019 (https://arxiv.org/abs/1909.08593) Sec. 2.2.
"""
import warnings
from dataclasses import dataclass, fields

import torch

from dataset.sft import sft_collate
from model.generate import Responses, closed, decode_responses, response_logprobs, sample_responses
from model.loss import (compute_gae, entropy_from_logits, kl_penalized_rewards, lm_loss, masked_mean, masked_whiten,
                        policy_loss, value_loss)
from model.reward import reward_scores, token_values
from trainer.base import LoopConfig, OptimConfig, Trainer
from trainer.dist import check_two_models, mean_over_ranks, tensor_sum
from trainer.evaluate import Evaluator, Judge, mean_judgement, reference_for
from trainer.fsdp import gathered
from trainer.tracking import markdown_table
from utils import ConfigError, from_settings


@dataclass
class PPOConfig:
    """PPO's settings, each documented once; train_rlhf.py builds it from its constants (no defaults here)."""
    actor_lr: float  # AdamW learning rate of the actor (warmup + cosine schedule of the base trainer)
    critic_lr: float  # AdamW learning rate of the critic
    weight_decay: float  # AdamW weight decay on weight matrices (never on LayerNorm weights or biases)
    rollout_batch: int  # prompts sampled per iteration (per process)
    mini_batch: int  # rows per gradient step; divides rollout_batch
    ppo_epochs: int  # passes over each rollout batch
    stop_approx_kl: float  # > 0: skip the iteration's remaining epochs once an epoch's mean approx KL exceeds it
    max_new_tokens: int  # response length limit
    temperature: float  # sampling temperature; the log-probs of actor and reference use the same one
    top_k: int  # must be 0: see __post_init__
    top_p: float  # must be 1.0: see __post_init__
    beta: float  # KL penalty coefficient (initial value when target_kl > 0)
    target_kl: float  # > 0: adapt beta toward this summed KL per response (nats); 0: fixed beta
    kl_horizon: int  # adaptive controller horizon, in rollouts (Ziegler et al. 2019 use 10,000 with far longer runs)
    gamma: float  # discount
    lam: float  # GAE lambda
    clip_range: float  # epsilon of the clipped policy objective
    value_clip: float  # clip of the value loss around rollout values
    ptx_coef: float  # weight of the LM loss on SFT data (InstructGPT's PPO-ptx); 0 = plain PPO
    ptx_batch: int  # SFT rows per ptx loss
    missing_eos_penalty: float  # subtracted from the (normalised) score of a response that never emitted EOS
    normalize_scores: bool  # running mean/std normalisation of reward-model scores
    frozen_bf16: bool  # with bf16 autocast: the frozen reference and reward model keep bf16 matrices (half their memory, same numbers)
    close_truncated: bool  # the reward model reads a response cut by max_new_tokens with EOS appended (model/generate.py closed)

    def __post_init__(self):
        check_rollout_settings(self)

    from_settings = classmethod(from_settings)  # from the script's constants: field f <- settings['F']


def check_rollout_settings(cfg) -> None:
    """Checks every on-policy config (PPO, GRPO) shares: minibatches divide the rollout, the full
    distribution is sampled, the temperature is positive. Raises ConfigError naming the setting."""
    if cfg.rollout_batch % cfg.mini_batch:
        raise ConfigError(f"ROLLOUT_BATCH={cfg.rollout_batch}: must be a multiple of MINI_BATCH={cfg.mini_batch} "
                          "(change one of them)")
    if cfg.top_k != 0 or cfg.top_p != 1.0:
        # The PPO ratio and the KL penalty need log-probs of the distribution that sampled. Under top-k /
        # top-p the reference gives probability 0 to tokens outside its own nucleus (an infinite KL),
        # so PPO here (as in lm-human-preferences) samples the full distribution at TEMPERATURE.
        raise ConfigError(f"TOP_K={cfg.top_k}, TOP_P={cfg.top_p}: PPO samples from the full distribution "
                          "(TOP_K=0, TOP_P=1.0), because the KL to the reference is infinite for tokens outside "
                          "the reference's top-k/top-p (set TOP_K=0 and TOP_P=1.0; use TEMPERATURE to sharpen sampling)")
    if cfg.temperature <= 0:
        raise ConfigError(f"TEMPERATURE={cfg.temperature}: must be > 0 (use 1.0 for plain sampling)")


@dataclass
class Experience:
    """One rollout batch. B = prompts, P = padded prompt length, N = response length."""
    sequences: torch.Tensor  # (B, P + N) left-padded prompt, then response (pad after EOS)
    attention_mask: torch.Tensor  # (B, P + N)
    action_mask: torch.Tensor  # (B, N) 1 on response tokens up to and including EOS
    logprobs: torch.Tensor  # (B, N) actor log-probs at rollout ("old")
    ref_logprobs: torch.Tensor  # (B, N) reference (SFT) log-probs
    values: torch.Tensor  # (B, N) critic values at rollout
    rewards: torch.Tensor  # (B, N) -beta * KL per token, + score on the last token
    advantages: torch.Tensor  # (B, N) GAE, whitened over the batch
    returns: torch.Tensor  # (B, N) GAE advantages (unwhitened) + values
    scores: torch.Tensor  # (B,) reward-model score as used in the reward (normalised, EOS penalty)
    raw_scores: torch.Tensor  # (B,) reward-model score as the reward model gave it
    kl: torch.Tensor  # (B, N) logprobs - ref_logprobs on response tokens
    context_length: int  # P

    def select(self, idx: torch.Tensor) -> "Experience":
        return Experience(**{f.name: getattr(self, f.name)[idx] if f.name != "context_length" else self.context_length
                             for f in fields(self)})


class RunningMoments:
    """Running mean and standard deviation of every score seen (Chan et al. parallel update)."""

    def __init__(self):
        self.count, self.mean, self.var = 0, 0.0, 1.0

    def update(self, x: torch.Tensor) -> None:
        n, mean, var = x.numel(), x.mean().item(), x.var(unbiased=False).item()
        total = self.count + n
        delta = mean - self.mean
        self.var = (self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total
        self.mean, self.count = self.mean + delta * n / total, total


class PPOTrainer(Trainer):
    """actor (trained), ref (frozen; None for a LoRA actor: the actor with adapters off), critic (trained),
    reward_model (frozen; unused when reward_fn(rows, responses) -> scores is given). judge(row, response)
    is the task's judgement (the gold score of rollouts and held-out answers), or None."""
    eval_rows_shown = 4  # held-out answers printed (and sent to the trackers) at each evaluation

    def __init__(self, actor, ref, critic, reward_model, tokenizer, prompts, *, cfg: PPOConfig, loop: LoopConfig,
                 run_config: dict, ptx_data, reward_fn, judge: Judge, eval_prompts):
        optim = OptimConfig(lr=cfg.actor_lr, weight_decay=cfg.weight_decay, batch_size=cfg.rollout_batch, grad_accum=1)
        super().__init__(None, prompts, lambda items: {"items": items}, loop=loop, optim=optim, run_config=run_config)
        self.cfg = cfg
        check_two_models(self.accelerator)
        self.actor, self.actor_opt = self.prepare_trained(actor, cfg.actor_lr, cfg.weight_decay)
        self.critic, self.critic_opt = self.prepare_trained(critic, cfg.critic_lr, cfg.weight_decay)
        self.actor_sched, self.critic_sched = self.lr_schedule(self.actor_opt), self.lr_schedule(self.critic_opt)
        self.model = self.actor  # what the base class evaluates and saves
        self.set_up_rollouts(ref, reward_model, tokenizer, reward_fn, judge, eval_prompts)
        self.ptx_data, self.beta = ptx_data, cfg.beta

    def set_up_rollouts(self, ref, reward_model, tokenizer, reward_fn, judge: Judge, eval_prompts) -> None:
        """What the rollout and the held-out evaluation need (GRPO shares it)."""
        frozen = frozen_model if self.loop.bf16 and self.cfg.frozen_bf16 else lambda m: m
        self.ref = frozen(ref.to(self.device).eval().requires_grad_(False)) if ref is not None else None
        self.reward_model = (frozen(reward_model.to(self.device).eval().requires_grad_(False))
                             if reward_model is not None else None)
        self.reward_fn, self.judge, self.tokenizer, self.eval_prompts = reward_fn, judge, tokenizer, eval_prompts
        self.sampling = dict(do_sample=True, temperature=self.cfg.temperature)  # top_k=0, top_p=1: the full distribution
        self.reference = reference_for(self.ref)  # policy -> context yielding the reference model
        self.evaluate_policy = Evaluator(self.accelerator, tokenizer, max_new_tokens=self.cfg.max_new_tokens,
                                         temperature=self.cfg.temperature, batch_size=100, judge=judge,
                                         reward=self.reward, reference=self.reference)
        self.score_moments, self.last_rows, self.warned_truncation = RunningMoments(), [], False
        self.last_eval = None  # the latest greedy evaluation, rows included (evaluate)

    # ------------------------------------------------------------------ forward passes
    def forward_in_chunks(self, fn, sequences, attention_mask) -> torch.Tensor:
        """Apply fn(sequences, attention_mask) in chunks of MINI_BATCH rows: the rollout sees the same
        shapes as learn()'s first, unshuffled epoch, so before any update the ratio is exactly 1."""
        return torch.cat([fn(sequences[i: i + self.cfg.mini_batch], attention_mask[i: i + self.cfg.mini_batch])
                          for i in range(0, sequences.size(0), self.cfg.mini_batch)])

    def policy_forward(self, model, sequences, attention_mask, context_length):
        """(logits (B, N, V), logprobs (B, N)) of the response tokens at the sampling temperature
        (model/generate.py: response_logprobs): actor and reference are scored by the policy that sampled."""
        return response_logprobs(model, sequences, attention_mask, context_length, self.cfg.temperature)

    def rollout_logprobs(self, model, out: Responses) -> torch.Tensor:
        """(B, N) log-probs of the rollout's responses, in learn()'s minibatch shapes."""
        P = out.context_length
        return self.forward_in_chunks(lambda s, m: self.policy_forward(model, s, m, P)[1], out.sequences, out.attention_mask)

    def reward(self, items, out: Responses) -> torch.Tensor:
        """(B,) reward of each (prompt, response): the reward model's score at the last response token, or
        reward_fn(rows, responses) when one is given (tests; `--reward gold`, an upper bound)."""
        if self.reward_fn is not None:
            responses = decode_responses(self.tokenizer, out.sequences, out.context_length)
            return torch.tensor(self.reward_fn([it["row"] for it in items], responses), dtype=torch.float, device=self.device)
        sequences, attention_mask = (closed(out, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
                                     if self.cfg.close_truncated else (out.sequences, out.attention_mask))
        return self.forward_in_chunks(lambda s, m: reward_scores(self.reward_model, s, m), sequences, attention_mask)

    # ------------------------------------------------------------------ phase 1: rollout
    # Every forward pass (sampling, actor, reference, critic, reward model) runs in eval mode (no dropout)
    # under the same autocast as learn(): the numbers learn() recomputes before its first update are then
    # bit-identical, so the ratio is exactly 1 and the KL to a copied reference 0.
    @torch.no_grad()
    def sample_and_score(self, items: list[dict]) -> tuple[Responses, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1-4 of a rollout, shared with GRPO -> (responses, logprobs (B, N), ref_logprobs (B, N), raw_scores (B,))."""
        actor = self.unwrap(self.actor).eval()
        with self.accelerator.autocast(), gathered(actor):  # FSDP: gathered once per rollout
            # 1-2. sample (left-padded prompts, KV cache, stop at EOS, no minimum length); truncate after the first EOS
            out = sample_responses(actor, self.tokenizer, [it["prompt_ids"] for it in items], self.cfg.max_new_tokens,
                                   **self.sampling)
            # 3. log-probs under actor and reference
            logprobs = self.rollout_logprobs(actor, out)
            with self.reference(actor) as ref_model:
                ref_logprobs = self.rollout_logprobs(ref_model, out)
            # 4. score the whole response
            raw_scores = self.reward(items, out)  # (B,)
        return out, logprobs, ref_logprobs, raw_scores

    def shape_scores(self, raw_scores: torch.Tensor, has_eos: torch.Tensor) -> torch.Tensor:
        """5. normalise by the running mean and std of every score seen (on every rank: the same moments
        everywhere); 6. penalise responses that never produced EOS (cut by MAX_NEW_TOKENS: the score was read
        at a token that is not the EOS the reward model was trained on). (B,) -> (B,)"""
        scores = raw_scores
        if self.cfg.normalize_scores:
            self.score_moments.update(self.accelerator.gather(raw_scores))
            std = self.score_moments.var ** 0.5
            # a first batch whose scores are all equal has std 0 (up to rounding): centre it, do not divide
            # rounding noise by 1e-8
            scores = (raw_scores - self.score_moments.mean) / (std if std > 1e-6 else 1.0)
        return scores - self.cfg.missing_eos_penalty * (~has_eos).float()

    @torch.no_grad()
    def make_experience(self, items: list[dict]) -> Experience:
        critic = self.unwrap(self.critic).eval()
        out, logprobs, ref_logprobs, raw_scores = self.sample_and_score(items)  # 1-4
        sequences, attention_mask, action_mask, has_eos, P = (out.sequences, out.attention_mask, out.action_mask,
                                                              out.has_eos, out.context_length)
        with self.accelerator.autocast():  # 4b. values from the critic
            values = self.forward_in_chunks(lambda s, m: token_values(critic, s, m)[:, P - 1: -1], sequences, attention_mask)
        scores = self.shape_scores(raw_scores, has_eos)  # 5-6
        # 7. per-token reward: -beta * KL everywhere, + score on the last response token
        rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, action_mask, self.beta)
        # 8. GAE advantages and returns; whiten advantages over the batch's response tokens
        advantages, returns = compute_gae(rewards, values, action_mask, self.cfg.gamma, self.cfg.lam)
        advantages = masked_whiten(advantages, action_mask, all_reduce=lambda t: tensor_sum(self.accelerator, t))
        return Experience(sequences, attention_mask, action_mask, logprobs, ref_logprobs, values * action_mask,
                          rewards, advantages, returns, scores, raw_scores, kl, P)

    # ------------------------------------------------------------------ phase 2: optimisation
    def learn(self, exp: Experience) -> dict:
        # eval mode: dropout off, as in the rollout (opt-125m's config has dropout 0.1; with it on, the
        # ratio is not 1 before any update and clipping fires on dropout noise)
        self.actor.eval()
        self.critic.eval()
        B, P, stats, cfg = exp.sequences.size(0), exp.context_length, [], self.cfg
        for epoch in range(cfg.ppo_epochs):
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.step * 31 + epoch)
            order = torch.arange(B) if epoch == 0 else torch.randperm(B, generator=gen)  # epoch 0 in rollout order
            for start in range(0, B, cfg.mini_batch):
                mb = exp.select(order[start: start + cfg.mini_batch].to(self.device))
                with self.accelerator.autocast():
                    logits, logprobs = self.policy_forward(self.actor, mb.sequences, mb.attention_mask, P)
                    pg_loss, pg_stats = policy_loss(logprobs, mb.logprobs, mb.advantages, mb.action_mask, cfg.clip_range)
                    ptx = self.ptx_loss(epoch, start) if cfg.ptx_coef > 0 else torch.zeros((), device=self.device)
                    actor_loss = pg_loss + cfg.ptx_coef * ptx  # InstructGPT Eq. 2: RL objective + gamma * pretraining LM
                self.check_finite(actor_loss)
                self.accelerator.backward(actor_loss)
                self.clip_and_check(self.actor)
                self.actor_opt.step()
                self.actor_opt.zero_grad(set_to_none=True)
                with self.accelerator.autocast():
                    values = token_values(self.critic, mb.sequences, mb.attention_mask)[:, P - 1: -1]  # (mb, N)
                    vf_loss, vf_stats = value_loss(values, mb.values, mb.returns, mb.action_mask, cfg.value_clip)
                self.check_finite(vf_loss)
                self.accelerator.backward(vf_loss)
                self.clip_and_check(self.critic)
                self.critic_opt.step()
                self.critic_opt.zero_grad(set_to_none=True)
                self.check_weights()  # actor and critic (trained_models)
                entropy = masked_mean(entropy_from_logits(logits.detach()), mb.action_mask).item()
                stats.append({"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "ptx_loss": ptx.item(),
                              "entropy": entropy, **pg_stats, **vf_stats})
            epoch_kl = sum(s["approx_kl"] for s in stats[-(B // cfg.mini_batch):]) / (B // cfg.mini_batch)
            epoch_kl = mean_over_ranks(self.accelerator, {"kl": epoch_kl})["kl"]  # every rank stops at the same epoch
            if cfg.stop_approx_kl and epoch_kl > cfg.stop_approx_kl:  # the policy moved far from the rollout's
                break
        self.actor_sched.step()
        self.critic_sched.step()
        self.first_minibatch_stats = stats[0]  # this rank's
        out = {f"ppo/{k}": sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        out.update({"ppo/epochs": epoch + 1, "ppo/lr": self.actor_sched.get_last_lr()[0]})
        return out

    def ptx_loss(self, epoch: int, start: int) -> torch.Tensor:
        """LM loss on an SFT batch (InstructGPT's PPO-ptx), drawn deterministically from (step, epoch, start)."""
        gen = torch.Generator().manual_seed(self.seed * 104729 + self.step * 977 + epoch * 13 + start)
        idx = torch.randint(len(self.ptx_data), (self.cfg.ptx_batch,), generator=gen).tolist()
        batch = {k: v.to(self.device) for k, v in sft_collate([self.ptx_data[i] for i in idx], self.tokenizer.pad_token_id).items()}
        logits = self.actor(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return lm_loss(logits, batch["labels"])

    def training_step(self) -> dict:
        items = self.get_batch(self.step)["items"]
        exp = self.make_experience(items)
        metrics = self.learn(exp)
        mask = exp.action_mask.float()
        kl_per_seq = exp.kl.sum(1).mean().item()
        has_eos = (exp.sequences[:, exp.context_length:] == self.tokenizer.eos_token_id).any(1).float()
        metrics.update({
            "ppo/score": exp.raw_scores.mean().item(), "ppo/kl": kl_per_seq, "ppo/kl_per_token": masked_mean(exp.kl, mask).item(),
            "ppo/beta": self.beta, "ppo/response_length": mask.sum(1).mean().item(),
            "ppo/truncated_frac": 1 - has_eos.mean().item(),
            "ppo/explained_variance": explained_variance(exp.values, exp.returns, mask),
        })
        gold = self.gold_of(items, exp)
        if gold is not None:
            metrics["ppo/gold_score"] = gold
        metrics = mean_over_ranks(self.accelerator, metrics)  # ranks hold equal shares: the global batch's means
        if metrics["ppo/truncated_frac"] > 0.25 and not self.warned_truncation and self.accelerator.is_main_process:
            self.warned_truncation = True
            how = ("the reward model scores them closed with EOS (CLOSE_TRUNCATED)" if self.cfg.close_truncated else
                   "the reward model scores them at a token it was not trained to score there (or set CLOSE_TRUNCATED)")
            warnings.warn(f"{metrics['ppo/truncated_frac']:.0%} of the responses reached MAX_NEW_TOKENS="
                          f"{self.cfg.max_new_tokens} without EOS: {how}, minus MISSING_EOS_PENALTY="
                          f"{self.cfg.missing_eos_penalty:g}; raise MAX_NEW_TOKENS")
        if self.cfg.target_kl:  # the global KL and batch: one beta on every rank
            self.beta = adaptive_beta(self.beta, metrics["ppo/kl"], self.cfg.target_kl,
                                      exp.sequences.size(0) * self.accelerator.num_processes, self.cfg.kl_horizon)
        return metrics

    def gold_of(self, items, exp):
        """Mean judged score of the rollout's responses (None without a judge, or where it does not apply)."""
        responses = decode_responses(self.tokenizer, exp.sequences, exp.context_length)
        return mean_judgement(self.judge, [it["row"] for it in items], responses)

    # ------------------------------------------------------------------ evaluation, state
    def evaluate(self) -> dict:
        if not self.eval_prompts:
            return {}
        result = self.evaluate_policy(self.unwrap(self.actor), self.eval_prompts, do_sample=False)
        self.last_eval = dict(result)  # with its rows: train_rlhf.py's greedy figures after the run (not computed twice)
        self.last_rows = result.pop("rows")
        for row in self.last_rows[: self.eval_rows_shown]:
            self.log(f"  {row['input']!r:24} -> {row['response']!r:32} rm={row['reward']:+.2f} gold={row['gold']:.1f} kl={row['kl']:.2f}")
        self.log_text("eval/samples", markdown_table(self.last_rows[: self.eval_rows_shown]))  # sample completions to the trackers
        return {k: v for k, v in result.items() if "/" not in k}

    nonfinite_hint = "Lower ACTOR_LR / CRITIC_LR (or GRAD_CLIP)"

    def trained_models(self) -> list:
        return [self.actor, self.critic]

    def state_dict(self) -> dict:
        return {"actor": self.unwrap(self.actor).state_dict(), "critic": self.unwrap(self.critic).state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "actor_sched": self.actor_sched.state_dict(), "critic_sched": self.critic_sched.state_dict(),
                "beta": self.beta, "score_moments": vars(self.score_moments)}

    def sharded_state(self) -> dict:
        return {"actor": self.actor, "critic": self.critic, "actor_opt": (self.actor, self.actor_opt),
                "critic_opt": (self.critic, self.critic_opt)}

    def load_state_dict(self, state: dict) -> None:
        self.unwrap(self.actor).load_state_dict(state["actor"])
        self.unwrap(self.critic).load_state_dict(state["critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.actor_sched.load_state_dict(state["actor_sched"])
        self.critic_sched.load_state_dict(state["critic_sched"])
        self.beta = state["beta"]
        vars(self.score_moments).update(state["score_moments"])


def frozen_model(model: torch.nn.Module) -> torch.nn.Module:
    """Store the frozen model's Linear weights (not biases, norms or embeddings) in bfloat16, in place.

    Under bf16 autocast a Linear casts its fp32 weight to bf16 on every call; a weight stored already
    rounded is the same bf16 tensor, so every output is bit-identical (the reference's KL to a copied actor
    stays exactly 0) while the matrices take half the memory and skip the cast. Embeddings and a tied LM
    head stay fp32: an embedding lookup is not autocast, so rounding it would change the numbers. Only valid
    under autocast (an fp32 input meets a bf16 weight otherwise)."""
    tied = {id(p) for m in (model.get_input_embeddings(),) if m is not None for p in m.parameters()}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in tied:
            module.weight = torch.nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
    return model


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over response tokens (1 = perfect critic, <= 0 = useless)."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return (1 - var_residual / var_returns.clamp(min=1e-8)).item()


def adaptive_beta(beta: float, kl: float, target_kl: float, batch: int, horizon: int) -> float:
    """Adaptive KL controller (Ziegler et al. 2019, Sec. 2.2): beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * batch / horizon.
    KL above the target raises beta, below lowers it; one call moves it by at most 20% * batch / horizon."""
    error = min(max(kl / target_kl - 1, -0.2), 0.2)
    return beta * (1 + error * batch / horizon)
