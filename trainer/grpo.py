"""GRPO (Shao et al. 2024, DeepSeekMath, https://arxiv.org/abs/2402.03300): PPO without a critic.

Each iteration samples G responses to each of ROLLOUT_BATCH / G prompts from the actor, scores them
with the same frozen reward model as PPO, and gives every token of response i the advantage
A_i = r_i - mean of its group (divided by the group's std with GRPO_STD_SCALE; `model/loss.py:
group_advantages`): the other samples of the same prompt are the baseline a critic would otherwise
learn. Then several epochs of the clipped objective over minibatches, with the KL to the reference (the
k3 estimator, per token) in the loss rather than in the reward (`grpo_loss`, DeepSeekMath Eqs. 3-4).

Sampling, scoring, the minibatch loop, the metrics and the state are trainer/onpolicy.py's, shared with
PPO; this file keeps what differs: group advantages and the loss.
"""
from dataclasses import dataclass

import torch

from model.loss import group_advantages, grpo_loss, masked_mean
from trainer.base import LoopConfig
from trainer.evaluate import Judge
from trainer.onpolicy import Experience, OnPolicyTrainer, check_rollout_settings
from utils import ConfigError, from_settings


@dataclass
class GRPOConfig:
    """GRPO's settings, each documented once; train_rlhf.py builds it from its constants (no defaults
    here). The names the shared on-policy methods read (mini_batch, max_new_tokens, ...) mean the same."""
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
    stop_disagreement: float  # > 0: end the run once the reward ensemble disagrees this many times more (PPOConfig)
    clip_range: float  # epsilon of the clipped ratio
    missing_eos_penalty: float  # subtracted from the (normalised) score of a response that never emitted EOS
    normalize_scores: bool  # running mean/std normalisation of reward-model scores (before the group's)
    frozen_bf16: bool  # with bf16 autocast: the frozen reference and reward model keep bf16 matrices (PPOConfig)
    close_truncated: bool  # the reward model reads a cut response with EOS appended (PPOConfig)
    eval_batch_size: int  # held-out prompts per generate call of the evaluation
    eval_sampled: bool  # evaluations also sample (PPOConfig)

    def __post_init__(self):
        if self.group_size < 2 or self.rollout_batch % self.group_size:
            raise ConfigError(f"GROUP_SIZE={self.group_size}: must be >= 2 and divide ROLLOUT_BATCH={self.rollout_batch}")
        if self.grpo_loss not in ("token", "sequence"):
            raise ConfigError(f"GRPO_LOSS={self.grpo_loss!r}: expected 'token' or 'sequence'")
        check_rollout_settings(self)

    from_settings = classmethod(from_settings)  # from the script's constants: field f <- settings['F']


class GRPOTrainer(OnPolicyTrainer):
    """The on-policy trainer's actor, reference and reward model (trainer/onpolicy.py); no critic."""
    name = "grpo"

    def __init__(self, actor, ref, reward_model, tokenizer, prompts, *, cfg: GRPOConfig, loop: LoopConfig,
                 run_config: dict, reward_fn, judge: Judge, eval_prompts, lm_head_chunk: int = 0):
        super().__init__(actor, ref, reward_model, tokenizer, prompts, cfg=cfg, loop=loop,
                         run_config=run_config, reward_fn=reward_fn, judge=judge, eval_prompts=eval_prompts,
                         prompts_per_step=cfg.rollout_batch // cfg.group_size, lm_head_chunk=lm_head_chunk)

    def rollout_items(self, prompts: list[dict]) -> list[dict]:
        return [it for it in prompts for _ in range(self.cfg.group_size)]  # G copies, side by side

    # ------------------------------------------------------------------ phase 1: rollout
    @torch.no_grad()
    def make_experience(self, items: list[dict]) -> Experience:
        """items: the rollout's prompts, each repeated G times in a row."""
        out, logprobs, ref_logprobs, raw_scores = self.sample_and_score(items)  # 1-4, as PPO's
        # 5-6. normalisation (the EOS penalty is then in units of the score's spread), missing-EOS penalty
        scores = self.shape_scores(raw_scores, out.has_eos)
        # 7. advantages: each score against the other samples of its prompt; no KL here, it is in the loss
        groups = scores.view(-1, self.cfg.group_size)
        advantages = group_advantages(groups, self.cfg.grpo_std_scale).view(-1)  # (B,)
        kl = (logprobs - ref_logprobs) * out.action_mask  # (B, N)
        return Experience(out.sequences, out.attention_mask, out.action_mask, logprobs, ref_logprobs,
                          advantages, scores, raw_scores, kl, out.context_length)

    # ------------------------------------------------------------------ phase 2: optimisation
    def update(self, mb: Experience, epoch: int, start: int) -> dict:
        cfg = self.cfg
        with self.accelerator.autocast():
            logprobs, entropy = self.policy_forward(self.actor, mb.sequences, mb.attention_mask,
                                                    mb.context_length)
            loss, loss_stats = grpo_loss(logprobs, mb.logprobs, mb.ref_logprobs, mb.advantages, mb.action_mask,
                                         cfg.clip_range, cfg.grpo_beta, token_level=cfg.grpo_loss == "token")
        self.step_model(loss, self.actor, self.actor_opt)
        return {"policy_loss": loss.item(), "entropy": masked_mean(entropy, mb.action_mask).item(), **loss_stats}

    def extra_metrics(self, exp: Experience) -> dict:
        no_signal = (exp.advantages.view(-1, self.cfg.group_size) == 0).all(1).float().mean().item()
        return {"no_signal_groups": no_signal}
