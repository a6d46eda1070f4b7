"""What PPO and GRPO share: an on-policy iteration is a rollout, then several epochs over it.

`OnPolicyTrainer` owns the actor (the base trainer's model and AdamW), the frozen reference and reward
model, and every step both algorithms take alike:

1. rollout (`sample_and_score`, under no_grad): sample responses, log-probs under actor and reference,
   reward-model scores; `shape_scores` normalises them and penalises a missing EOS;
2. `learn()`: PPO_EPOCHS passes over minibatches of the rollout, the first in rollout order, stopping
   early once an epoch's mean approx KL passes STOP_APPROX_KL;
3. the same metrics under each algorithm's prefix (`ppo/...`, `grpo/...`), averaged over the ranks.

A subclass keeps only what differs: `make_experience` (advantages: GAE with a critic, or group
baselines), `update(minibatch)` (its losses and optimizer steps) and `extra_metrics`.
"""
import warnings
from dataclasses import dataclass, fields

import torch

from model.generate import (Responses, closed, decode_responses, position_ids_for, response_logprobs,
                            sample_responses)
from model.loss import masked_mean
from model.memory import chunkable_lm_head, direct_tied_grad, frozen_model
from model.reward import RewardEnsemble, reward_scores
from trainer import guard
from trainer.base import Trainer
from trainer.dist import mean_over_ranks
from trainer.evaluate import Evaluator, Judge, mean_judgement, reference_for
from trainer.fsdp import gathered
from trainer.settings import LoopConfig, OptimConfig
from trainer.tracking import markdown_table
from utils import ConfigError, own_random_numbers


def check_rollout_settings(cfg) -> None:
    """Checks every on-policy config (PPO, GRPO) shares: minibatches divide the rollout, the full
    distribution is sampled, the temperature is positive. Raises ConfigError naming the setting."""
    if cfg.rollout_batch % cfg.mini_batch:
        raise ConfigError(f"ROLLOUT_BATCH={cfg.rollout_batch}: must be a multiple of "
                          f"MINI_BATCH={cfg.mini_batch} (change one of them)")
    if cfg.top_k != 0 or cfg.top_p != 1.0:
        # The PPO ratio and the KL penalty need log-probs of the distribution that sampled. Under top-k /
        # top-p the reference gives probability 0 to tokens outside its own nucleus (an infinite KL),
        # so PPO here (as in lm-human-preferences) samples the full distribution at TEMPERATURE.
        raise ConfigError(f"TOP_K={cfg.top_k}, TOP_P={cfg.top_p}: PPO samples from the full distribution "
                          "(TOP_K=0, TOP_P=1.0), because the KL to the reference is infinite for tokens "
                          "outside the reference's top-k/top-p (set TOP_K=0 and TOP_P=1.0; use TEMPERATURE "
                          "to sharpen sampling)")
    if cfg.temperature <= 0:
        raise ConfigError(f"TEMPERATURE={cfg.temperature}: must be > 0 (use 1.0 for plain sampling)")


@dataclass
class Experience:
    """One rollout batch. B = responses, P = padded prompt length, N = response length."""
    sequences: torch.Tensor  # (B, P + N) left-padded prompt, then response (pad after EOS)
    attention_mask: torch.Tensor  # (B, P + N)
    action_mask: torch.Tensor  # (B, N) 1 on response tokens up to and including EOS
    logprobs: torch.Tensor  # (B, N) actor log-probs at rollout ("old")
    ref_logprobs: torch.Tensor  # (B, N) reference (SFT) log-probs
    advantages: torch.Tensor  # PPO: (B, N) GAE, whitened over the batch; GRPO: (B,) one per response
    scores: torch.Tensor  # (B,) reward-model score as used (normalised, EOS penalty)
    raw_scores: torch.Tensor  # (B,) reward-model score as the reward model gave it
    kl: torch.Tensor  # (B, N) logprobs - ref_logprobs on response tokens
    context_length: int  # P
    values: torch.Tensor | None = None  # (B, N) critic values at rollout (PPO)
    rewards: torch.Tensor | None = None  # (B, N) -beta * KL per token, + score on the last token (PPO)
    returns: torch.Tensor | None = None  # (B, N) GAE advantages (unwhitened) + values (PPO)

    def select(self, idx: torch.Tensor) -> "Experience":
        """The rows idx of every tensor."""
        return Experience(**{f.name: v[idx] if torch.is_tensor(v) else v
                             for f in fields(self) for v in [getattr(self, f.name)]})


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


class OnPolicyTrainer(Trainer):
    """actor (trained), ref (frozen; None for a LoRA actor: the actor with adapters off), reward_model
    (frozen; unused when reward_fn(rows, responses) -> scores is given). judge(row, response) is the
    task's judgement (the gold score of rollouts and held-out answers), or None. prompts_per_step:
    prompts each process draws per iteration."""
    name = ""  # the metrics' prefix: 'ppo', 'grpo'
    eval_rows_shown = 4  # held-out answers printed (and sent to the trackers) at each evaluation
    disagreement_window = 5  # iterations averaged on each side of STOP_DISAGREEMENT's comparison
    nonfinite_hint = "Lower ACTOR_LR (or GRAD_CLIP)"

    def __init__(self, actor, ref, reward_model, tokenizer, prompts, *, cfg, loop: LoopConfig,
                 run_config: dict, reward_fn, judge: Judge, eval_prompts, prompts_per_step: int,
                 lm_head_chunk: int = 0):
        optim = OptimConfig(lr=cfg.actor_lr, weight_decay=cfg.weight_decay, batch_size=prompts_per_step,
                            grad_accum=1)  # the actor's: the base trainer's model is the actor
        super().__init__(actor, prompts, lambda items: {"items": items}, loop=loop, optim=optim,
                         run_config=run_config)
        self.cfg = cfg
        self.actor, self.actor_opt, self.actor_sched = self.model, self.optimizer, self.scheduler
        frozen = frozen_model if loop.bf16 and cfg.frozen_bf16 else lambda m: m
        self.ref = frozen(ref.to(self.device).eval().requires_grad_(False)) if ref is not None else None
        self.reward_model = (frozen(reward_model.to(self.device).eval().requires_grad_(False))
                             if reward_model is not None else None)
        self.reward_fn, self.judge, self.tokenizer = reward_fn, judge, tokenizer
        self.eval_prompts = eval_prompts
        self.sampling = dict(do_sample=True, temperature=cfg.temperature)  # the full distribution
        # LM_HEAD_CHUNK: the policy log-probs without (B, N, V) logits; actor and reference the same way (the
        # KL of a copied reference is then exactly 0), so only where both have a plain head, and not under FSDP
        heads = [chunkable_lm_head(m) for m in (self.unwrap(self.actor), self.ref) if m is not None]
        self.lm_head_chunk = lm_head_chunk if not loop.fsdp and None not in heads else 0
        if self.lm_head_chunk and self.accelerator.num_processes == 1:  # the actor's tied matrix: in place
            direct_tied_grad(self.unwrap(self.actor))
        if lm_head_chunk and not self.lm_head_chunk:
            self.log(f"LM_HEAD_CHUNK={lm_head_chunk}: the full-vocabulary log-probs "
                     f"({'FSDP shards the head' if loop.fsdp else 'no plain lm_head on this model: a wrapper'})")
        self.reference = reference_for(self.ref)  # policy -> context yielding the reference model
        self.evaluate_policy = Evaluator(self.accelerator, tokenizer, max_new_tokens=cfg.max_new_tokens,
                                         temperature=cfg.temperature, batch_size=cfg.eval_batch_size,
                                         judge=judge, reward=self.reward, reference=self.reference,
                                         lm_head_chunk=self.lm_head_chunk)
        self.score_moments, self.last_rows, self.warned_truncation = RunningMoments(), [], False
        self.last_eval = None  # the latest greedy evaluation, rows included (evaluate)
        self.last_disagreement = None  # a reward ensemble's mean std across members on the latest rollout
        self.disagreements = []  # its value at every iteration so far (STOP_DISAGREEMENT)
        if isinstance(self.reward_model, RewardEnsemble):
            self.calibrate_ensemble()

    # ------------------------------------------------------------------ forward passes
    def forward_in_chunks(self, fn, sequences, attention_mask) -> torch.Tensor:
        """Apply fn(sequences, attention_mask) in chunks of MINI_BATCH rows: the rollout sees the same
        shapes as learn()'s first, unshuffled epoch, so before any update the ratio is exactly 1."""
        size = self.cfg.mini_batch
        return torch.cat([fn(sequences[i: i + size], attention_mask[i: i + size])
                          for i in range(0, sequences.size(0), size)])

    def policy_forward(self, model, sequences, attention_mask, context_length):
        """(log-probs (B, N), entropies (B, N), without gradient) of the response tokens at the sampling
        temperature (model/generate.py: response_logprobs): actor and reference are scored by the policy that
        sampled; with LM_HEAD_CHUNK, a chunk of tokens at a time through the LM head."""
        return response_logprobs(model, sequences, attention_mask, context_length, self.cfg.temperature,
                                 self.lm_head_chunk, self.unwrap(model))

    def rollout_logprobs(self, model, out: Responses) -> torch.Tensor:
        """(B, N) log-probs of the rollout's responses, in learn()'s minibatch shapes."""
        P = out.context_length
        return self.forward_in_chunks(lambda s, m: self.policy_forward(model, s, m, P)[0],
                                      out.sequences, out.attention_mask)

    def reward(self, items, out: Responses) -> torch.Tensor:
        """(B,) reward of each (prompt, response): the reward model's score at the last response token, or
        reward_fn(rows, responses) when one is given (tests; `--reward gold`, an upper bound)."""
        if self.reward_fn is not None:
            responses = decode_responses(self.tokenizer, out.sequences, out.context_length)
            scores = self.reward_fn([it["row"] for it in items], responses)
            return torch.tensor(scores, dtype=torch.float, device=self.device)
        sequences, attention_mask = self.scored_sequences(out)
        if isinstance(self.reward_model, RewardEnsemble):  # the members' own scores: their disagreement is logged
            members = self.forward_in_chunks(
                lambda s, m: self.reward_model.member_scores(s, m, position_ids_for(m)), sequences,
                attention_mask)  # (B, k)
            self.last_disagreement = members.std(-1).mean().item()
            return self.reward_model.combined(members)
        return self.forward_in_chunks(lambda s, m: reward_scores(self.reward_model, s, m), sequences,
                                      attention_mask)

    @torch.no_grad()
    def calibrate_ensemble(self) -> None:
        """Standardise each member of a reward ensemble on the SFT policy's samples for the first ROLLOUT_BATCH
        training prompts. Its own seeded random numbers: the same on every rank and on resume, and training
        draws what it would draw without an ensemble."""
        actor = self.unwrap(self.actor).eval()
        items = [self.train_data[i] for i in range(min(len(self.train_data), self.cfg.rollout_batch))]
        with own_random_numbers(self.device), self.accelerator.autocast(), gathered(actor):
            torch.manual_seed(self.seed)
            out = sample_responses(actor, self.tokenizer, [it["prompt_ids"] for it in items],
                                   self.cfg.max_new_tokens, **self.sampling)
            self.reward_model.calibrate(*self.scored_sequences(out))

    def scored_sequences(self, out: Responses) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequences, attention_mask) as the reward model reads them: with CLOSE_TRUNCATED, a cut response
        closed with EOS."""
        if self.cfg.close_truncated:
            return closed(out, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        return out.sequences, out.attention_mask

    # ------------------------------------------------------------------ phase 1: rollout
    # Every forward pass (sampling, actor, reference, critic, reward model) runs in eval mode (no dropout)
    # under the same autocast as learn(): the numbers learn() recomputes before its first update are then
    # bit-identical, so the ratio is exactly 1 and the KL to a copied reference 0.
    @torch.no_grad()
    def sample_and_score(self, items: list[dict]):
        """Steps 1-4 of a rollout -> (responses, logprobs (B, N), ref_logprobs (B, N), raw_scores (B,))."""
        actor = self.unwrap(self.actor).eval()
        with self.accelerator.autocast(), gathered(actor):  # FSDP: gathered once per rollout
            # 1-2. sample (left-padded prompts, KV cache, stop at EOS, no minimum length); truncate after
            # the first EOS
            out = sample_responses(actor, self.tokenizer, [it["prompt_ids"] for it in items],
                                   self.cfg.max_new_tokens, **self.sampling)
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

    def make_experience(self, items: list[dict]) -> Experience:
        raise NotImplementedError

    # ------------------------------------------------------------------ phase 2: optimisation
    def update(self, mb: Experience, epoch: int, start: int) -> dict:
        """One gradient step of every trained model on minibatch mb (rows start.. of the epoch's order);
        returns its statistics (approx_kl among them)."""
        raise NotImplementedError

    def learn(self, exp: Experience) -> dict:
        # eval mode: dropout off, as in the rollout (opt-125m's config has dropout 0.1; with it on, the
        # ratio is not 1 before any update and clipping fires on dropout noise)
        for model in self.trained_models():
            model.eval()
        B, stats, cfg = exp.sequences.size(0), [], self.cfg
        per_epoch = B // cfg.mini_batch
        for epoch in range(cfg.ppo_epochs):
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.step * 31 + epoch)
            # epoch 0 in rollout order
            order = torch.arange(B) if epoch == 0 else torch.randperm(B, generator=gen)
            for start in range(0, B, cfg.mini_batch):
                stats.append(self.update(exp.select(order[start: start + cfg.mini_batch].to(self.device)),
                                         epoch, start))
            epoch_kl = sum(s["approx_kl"] for s in stats[-per_epoch:]) / per_epoch
            # every rank stops at the same epoch
            epoch_kl = mean_over_ranks(self.accelerator, {"kl": epoch_kl})["kl"]
            if cfg.stop_approx_kl and epoch_kl > cfg.stop_approx_kl:  # moved far from the rollout's policy
                break
        # the trained models' weights, once per iteration (each check reads every weight: 17 ms per opt-125m),
        # before anything samples from them or saves them; a minibatch after an overflowing step meets
        # a non-finite loss first, and check_finite traces it to the weights
        self.check_weights()
        for scheduler in self.schedulers():
            scheduler.step()
        self.first_minibatch_stats = stats[0]  # this rank's
        out = {f"{self.name}/{k}": sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        out.update({f"{self.name}/epochs": epoch + 1, f"{self.name}/lr": self.actor_sched.get_last_lr()[0]})
        return out

    def check_finite(self, loss: torch.Tensor) -> None:
        """As the base trainer's, but the weights are checked once per iteration (learn), so a non-finite
        loss is first traced to them: an earlier minibatch's step that overflowed is named as the cause."""
        if guard.any_rank(self.accelerator, not guard.all_finite([loss])):  # one all-reduce, as the base check
            self.check_weights()
            super().check_finite(loss)  # the weights are finite: the loss itself stops the run

    def step_model(self, loss: torch.Tensor, model, optimizer) -> None:
        """Backward, clip, step and clear the gradients of one trained model (its loss checked first)."""
        self.check_finite(loss)
        self.accelerator.backward(loss)
        self.clip_and_check(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def schedulers(self) -> list:
        return [self.actor_sched]

    def trained_models(self) -> list:
        return [self.actor]

    # ------------------------------------------------------------------ one iteration
    def rollout_items(self, prompts: list[dict]) -> list[dict]:
        """The rollout's rows for this iteration's prompts (GRPO repeats each one)."""
        return prompts

    def training_step(self) -> dict:
        items = self.rollout_items(self.get_batch(self.step)["items"])
        exp = self.make_experience(items)
        metrics = self.learn(exp)
        mask = exp.action_mask.float()
        has_eos = (exp.sequences[:, exp.context_length:] == self.tokenizer.eos_token_id).any(1).float()
        rollout = {"score": exp.raw_scores.mean().item(), "kl": exp.kl.sum(1).mean().item(),
                   "kl_per_token": masked_mean(exp.kl, mask).item(), **self.extra_metrics(exp),
                   "response_length": mask.sum(1).mean().item(), "truncated_frac": 1 - has_eos.mean().item()}
        if self.last_disagreement is not None:
            rollout["rm_disagreement"] = self.last_disagreement
        gold = None
        if self.judge is not None:  # the rollouts' gold score (a measurement: it never enters the loss)
            gold = mean_judgement(self.judge, [it["row"] for it in items],
                                  decode_responses(self.tokenizer, exp.sequences, exp.context_length))
        if gold is not None:
            rollout["gold_score"] = gold
        metrics.update({f"{self.name}/{k}": v for k, v in rollout.items()})
        # ranks hold equal shares: the global batch's means
        metrics = mean_over_ranks(self.accelerator, metrics)
        self.warn_truncation(metrics[f"{self.name}/truncated_frac"])
        return metrics

    def extra_metrics(self, exp: Experience) -> dict:
        """The algorithm's own rollout metrics (names without the prefix)."""
        return {}

    def warn_truncation(self, truncated_frac: float) -> None:
        if truncated_frac <= 0.25 or self.warned_truncation or not self.accelerator.is_main_process:
            return
        self.warned_truncation = True
        how = ("the reward model scores them closed with EOS (CLOSE_TRUNCATED)" if self.cfg.close_truncated
               else "the reward model scores them at a token it was not trained to score there (or set "
                    "CLOSE_TRUNCATED)")
        warnings.warn(f"{truncated_frac:.0%} of the responses reached MAX_NEW_TOKENS="
                      f"{self.cfg.max_new_tokens} without EOS: {how}, minus MISSING_EOS_PENALTY="
                      f"{self.cfg.missing_eos_penalty:g}; raise MAX_NEW_TOKENS")

    # ------------------------------------------------------------------ evaluation, state
    def evaluate(self) -> dict:
        if not self.eval_prompts:
            return {}
        result = self.evaluate_policy(self.unwrap(self.actor), self.eval_prompts, do_sample=False)
        self.last_eval = dict(result)  # with its rows: the script's figures after the run (not computed twice)
        self.last_rows = result.pop("rows")
        for row in self.last_rows[: self.eval_rows_shown]:
            self.log(f"  {row['input']!r:24} -> {row['response']!r:32} rm={row['reward']:+.2f} "
                     f"gold={row['gold']:.1f} kl={row['kl']:.2f}")
        self.log_text("eval/samples", markdown_table(self.last_rows[: self.eval_rows_shown]))
        out = {k: v for k, v in result.items() if "/" not in k}
        if self.cfg.eval_sampled:  # gold, RM score and KL of samples: the over-optimisation curve
            with own_random_numbers(self.device):  # training draws the same random numbers either way
                sampled = self.evaluate_policy(self.unwrap(self.actor), self.eval_prompts, do_sample=True)
            out.update({f"sampled_{k}": v for k, v in sampled.items() if k != "rows" and "/" not in k})
        return out

    def stop_early(self, metrics: dict) -> str:
        """STOP_DISAGREEMENT (a reward ensemble): end the run once the members' disagreement on the rollouts,
        averaged over the last `disagreement_window` iterations, exceeds STOP_DISAGREEMENT times its average
        over the first ones. The policy has then left the samples the reward models agree on; the gold judge
        plays no part."""
        key = f"{self.name}/rm_disagreement"
        if not self.cfg.stop_disagreement or key not in metrics:
            return ""
        self.disagreements.append(metrics[key])  # averaged over the ranks: every rank stops together
        w = self.disagreement_window
        if len(self.disagreements) < 2 * w:
            return ""
        first, last = sum(self.disagreements[:w]) / w, sum(self.disagreements[-w:]) / w
        if last <= self.cfg.stop_disagreement * first:
            return ""
        return (f"the reward models' disagreement on the rollouts rose {last / first:.2f}x "
                f"({first:.3f} -> {last:.3f}; STOP_DISAGREEMENT={self.cfg.stop_disagreement:g})")

    def state_dict(self) -> dict:
        return {"actor": self.unwrap(self.actor).state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "actor_sched": self.actor_sched.state_dict(), "score_moments": vars(self.score_moments),
                "disagreements": list(self.disagreements)}

    def sharded_state(self) -> dict:
        return {"actor": self.actor, "actor_opt": (self.actor, self.actor_opt)}

    def load_state_dict(self, state: dict) -> None:
        self.unwrap(self.actor).load_state_dict(state["actor"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.actor_sched.load_state_dict(state["actor_sched"])
        vars(self.score_moments).update(state["score_moments"])
        self.disagreements = list(state.get("disagreements", []))
