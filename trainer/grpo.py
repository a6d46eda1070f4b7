"""GRPO (Shao et al. 2024, DeepSeekMath, https://arxiv.org/abs/2402.03300): PPO without a critic.

Each iteration samples G responses to each of ROLLOUT_BATCH / G prompts from the actor, scores them
with the same frozen reward model as PPO, and gives every token of response i the advantage
A_i = r_i - mean of its group (divided by the group's std with GRPO_STD_SCALE; `model/loss.py:
group_advantages`): the other samples of the same prompt are the baseline a critic would otherwise learn. Then several epochs of the
clipped objective over minibatches, with the KL to the reference (the k3 estimator, per token) in the
loss rather than in the reward (`grpo_loss`, DeepSeekMath Eqs. 3-4).

Sampling, truncation after EOS, reward-model scoring, the log-prob forward pass, the LoRA reference and
the held-out evaluation are PPOTrainer's own methods, inherited unchanged.
"""
from dataclasses import dataclass, fields

import torch

from model.loss import entropy_from_logits, group_advantages, grpo_loss, masked_mean
from trainer.base import LoopConfig, OptimConfig, Trainer
from trainer.dist import mean_over_ranks
from trainer.evaluate import Judge
from trainer.ppo import PPOTrainer, check_rollout_settings
from utils import ConfigError, from_settings


@dataclass
class GRPOConfig:
    """GRPO's settings, each documented once; train_rlhf.py builds it from its constants (no defaults here).
    The names PPO's inherited methods read (mini_batch, max_new_tokens, temperature, ...) mean the same."""
    actor_lr: float  # AdamW learning rate of the actor (warmup + cosine schedule of the base trainer)
    weight_decay: float  # AdamW weight decay on weight matrices
    rollout_batch: int  # responses sampled per iteration: rollout_batch / group_size prompts, group_size each
    group_size: int  # G: samples per prompt whose scores are normalised together
    mini_batch: int  # rows per gradient step; divides rollout_batch
    ppo_epochs: int  # passes over each rollout batch
    max_new_tokens: int  # response length limit
    temperature: float  # sampling temperature; the log-probs of actor and reference use the same one
    top_k: int  # must be 0, as for PPO: the k3 KL needs the reference's log-prob of every sampled token
    top_p: float  # must be 1.0, for the same reason
    grpo_beta: float  # weight of the k3 KL-to-reference term in the loss
    grpo_loss: str  # 'token': mean over every response token of the batch; 'sequence': DeepSeekMath's per-response mean
    grpo_std_scale: bool  # divide each group's advantages by the group's std (DeepSeekMath); off: mean baseline only
    stop_approx_kl: float  # > 0: skip the iteration's remaining epochs once an epoch's mean approx KL exceeds it
    clip_range: float  # epsilon of the clipped ratio
    missing_eos_penalty: float  # subtracted from the (normalised) score of a response that never emitted EOS
    normalize_scores: bool  # running mean/std normalisation of reward-model scores (before the group's)
    frozen_bf16: bool  # with bf16 autocast: the frozen reference and reward model keep bf16 matrices (PPOConfig)
    close_truncated: bool  # the reward model reads a cut response with EOS appended (PPOConfig)

    def __post_init__(self):
        if self.group_size < 2 or self.rollout_batch % self.group_size:
            raise ConfigError(f"GROUP_SIZE={self.group_size}: must be >= 2 and divide ROLLOUT_BATCH={self.rollout_batch}")
        if self.grpo_loss not in ("token", "sequence"):
            raise ConfigError(f"GRPO_LOSS={self.grpo_loss!r}: expected 'token' or 'sequence'")
        check_rollout_settings(self)

    from_settings = classmethod(from_settings)  # from the script's constants: field f <- settings['F']


@dataclass
class GroupExperience:
    """One rollout: B = prompts x G rows, each prompt's G samples next to each other."""
    sequences: torch.Tensor  # (B, P + N) left-padded prompt, then response (pad after EOS)
    attention_mask: torch.Tensor  # (B, P + N)
    action_mask: torch.Tensor  # (B, N) 1 on response tokens up to and including EOS
    logprobs: torch.Tensor  # (B, N) actor log-probs at rollout ("old")
    ref_logprobs: torch.Tensor  # (B, N) reference (SFT) log-probs
    advantages: torch.Tensor  # (B,) group-normalised score, one per response
    scores: torch.Tensor  # (B,) score as used (normalised, EOS penalty)
    raw_scores: torch.Tensor  # (B,) reward-model score as the reward model gave it
    kl: torch.Tensor  # (B, N) logprobs - ref_logprobs on response tokens (for logging, as PPO's)
    context_length: int  # P

    def select(self, idx: torch.Tensor) -> "GroupExperience":
        return GroupExperience(**{f.name: getattr(self, f.name)[idx] if f.name != "context_length" else self.context_length
                                  for f in fields(self)})


class GRPOTrainer(PPOTrainer):
    def __init__(self, actor, ref, reward_model, tokenizer, prompts, *, cfg: GRPOConfig, loop: LoopConfig,
                 run_config: dict, reward_fn, judge: Judge, eval_prompts):
        # PPOTrainer.__init__ builds a critic and its optimizer; GRPO has none, so the base loop is set up
        # directly, then PPO's rollout and evaluation (set_up_rollouts). A batch: rollout_batch / G prompts.
        optim = OptimConfig(lr=cfg.actor_lr, weight_decay=cfg.weight_decay, batch_size=cfg.rollout_batch // cfg.group_size,
                            grad_accum=1)
        Trainer.__init__(self, None, prompts, lambda items: {"items": items}, loop=loop, optim=optim, run_config=run_config)
        self.cfg = cfg
        self.actor, self.actor_opt = self.prepare_trained(actor, cfg.actor_lr, cfg.weight_decay)
        self.actor_sched = self.lr_schedule(self.actor_opt)
        self.model = self.actor  # what the base class evaluates and saves
        self.set_up_rollouts(ref, reward_model, tokenizer, reward_fn, judge, eval_prompts)

    # ------------------------------------------------------------------ phase 1: rollout
    @torch.no_grad()
    def make_experience(self, items: list[dict]) -> GroupExperience:
        """items: the rollout's prompts, each repeated G times in a row."""
        # eval mode and learn()'s autocast for every forward pass, as in PPO: before the first update the
        # recomputed log-probs are bit-identical, so the ratio is exactly 1
        out, logprobs, ref_logprobs, raw_scores = self.sample_and_score(items)  # 1-4: PPO's rollout steps
        sequences, attention_mask, action_mask, has_eos, P = (out.sequences, out.attention_mask, out.action_mask,
                                                              out.has_eos, out.context_length)
        # 5-6. PPO's running normalisation (the EOS penalty is then in units of the score's spread) and missing-EOS penalty
        scores = self.shape_scores(raw_scores, has_eos)
        # 7. advantages: each score against the other samples of its prompt; no KL here, it is in the loss
        advantages = group_advantages(scores.view(-1, self.cfg.group_size), self.cfg.grpo_std_scale).view(-1)  # (B,)
        kl = (logprobs - ref_logprobs) * action_mask  # (B, N)
        return GroupExperience(sequences, attention_mask, action_mask, logprobs, ref_logprobs, advantages, scores,
                               raw_scores, kl, P)

    # ------------------------------------------------------------------ phase 2: optimisation
    def learn(self, exp: GroupExperience) -> dict:
        self.actor.eval()  # dropout off, as in the rollout (see PPOTrainer.learn)
        B, P, stats, cfg = exp.sequences.size(0), exp.context_length, [], self.cfg
        for epoch in range(cfg.ppo_epochs):
            gen = torch.Generator().manual_seed(self.seed * 7919 + self.step * 31 + epoch)
            order = torch.arange(B) if epoch == 0 else torch.randperm(B, generator=gen)  # epoch 0 in rollout order
            for start in range(0, B, cfg.mini_batch):
                mb = exp.select(order[start: start + cfg.mini_batch].to(self.device))
                with self.accelerator.autocast():
                    logits, logprobs = self.policy_forward(self.actor, mb.sequences, mb.attention_mask, P)
                    loss, loss_stats = grpo_loss(logprobs, mb.logprobs, mb.ref_logprobs, mb.advantages, mb.action_mask,
                                                 cfg.clip_range, cfg.grpo_beta, token_level=cfg.grpo_loss == "token")
                self.check_finite(loss)
                self.accelerator.backward(loss)
                self.clip_and_check(self.actor)
                self.actor_opt.step()
                self.actor_opt.zero_grad(set_to_none=True)
                self.check_weights()
                entropy = masked_mean(entropy_from_logits(logits.detach()), mb.action_mask).item()
                stats.append({"policy_loss": loss.item(), "entropy": entropy, **loss_stats})
            epoch_kl = sum(s["approx_kl"] for s in stats[-(B // cfg.mini_batch):]) / (B // cfg.mini_batch)
            epoch_kl = mean_over_ranks(self.accelerator, {"kl": epoch_kl})["kl"]  # every rank stops at the same epoch
            if cfg.stop_approx_kl and epoch_kl > cfg.stop_approx_kl:  # as PPO: the policy moved far from the rollout's
                break
        self.actor_sched.step()
        self.first_minibatch_stats = stats[0]
        out = {f"grpo/{k}": sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        out.update({"grpo/epochs": epoch + 1, "grpo/lr": self.actor_sched.get_last_lr()[0]})
        return out

    def training_step(self) -> dict:
        prompts = self.get_batch(self.step)["items"]
        items = [it for it in prompts for _ in range(self.cfg.group_size)]  # G copies of each prompt, side by side
        exp = self.make_experience(items)
        metrics = self.learn(exp)
        mask = exp.action_mask.float()
        no_signal = (exp.advantages.view(-1, self.cfg.group_size) == 0).all(1).float().mean().item()
        metrics.update({
            "grpo/score": exp.raw_scores.mean().item(), "grpo/kl": exp.kl.sum(1).mean().item(),
            "grpo/response_length": mask.sum(1).mean().item(), "grpo/no_signal_groups": no_signal,
            "grpo/eos_frac": (exp.sequences[:, exp.context_length:] == self.tokenizer.eos_token_id).any(1).float().mean().item(),
        })
        gold = self.gold_of(items, exp)
        if gold is not None:
            metrics["grpo/gold_score"] = gold
        return mean_over_ranks(self.accelerator, metrics)  # ranks hold equal shares: the global batch's means

    # ------------------------------------------------------------------ state
    def trained_models(self) -> list:
        return [self.actor]  # no critic

    def state_dict(self) -> dict:
        return {"actor": self.unwrap(self.actor).state_dict(), "actor_opt": self.actor_opt.state_dict(),
                "actor_sched": self.actor_sched.state_dict(), "score_moments": vars(self.score_moments)}

    def sharded_state(self) -> dict:
        return {"actor": self.actor, "actor_opt": (self.actor, self.actor_opt)}

    def load_state_dict(self, state: dict) -> None:
        self.unwrap(self.actor).load_state_dict(state["actor"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.actor_sched.load_state_dict(state["actor_sched"])
        vars(self.score_moments).update(state["score_moments"])
