"""PPO for language models (InstructGPT step 3): two phases per iteration.

1. `make_experience()` under no_grad: sample responses from the actor, score them with the frozen
   reward model, take log-probs under actor and frozen reference (trainer/onpolicy.py, shared with
   GRPO), values from the critic, and turn them into per-token KL-penalised rewards, GAE advantages and
   returns (an `Experience`).
2. `learn()` (trainer/onpolicy.py): several epochs over minibatches of that experience; each `update`
   is a clipped policy loss (+ optional ptx LM loss on SFT data) for the actor, a clipped value loss for
   the critic, separate optimizers.

References: InstructGPT (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155) Eq. 2; PPO (Schulman et
al. 2017, https://arxiv.org/abs/1707.06347) Eqs. 7, 11-12; the adaptive KL controller of Ziegler et al.
2019 (https://arxiv.org/abs/1909.08593) Sec. 2.2.
"""
from dataclasses import dataclass

import torch

from dataset.sft import sft_collate
from model.loss import (compute_gae, kl_penalized_rewards, linear_cross_entropy, lm_loss, masked_mean,
                        masked_whiten, policy_loss, value_loss)
from model.memory import hidden_and_head
from model.reward import token_values
from trainer.base import LoopConfig
from trainer.dist import check_two_models, tensor_sum
from trainer.evaluate import Judge
from trainer.onpolicy import Experience, OnPolicyTrainer, check_rollout_settings
from utils import from_settings


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
    stop_disagreement: float  # > 0 (a reward ensemble): end the run once the members' disagreement on the rollouts rises this many times (OnPolicyTrainer.stop_early)
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
    eval_batch_size: int  # held-out prompts per generate call of the evaluation
    eval_sampled: bool  # each evaluation during training also samples: gold, RM score and KL of samples

    def __post_init__(self):
        check_rollout_settings(self)

    from_settings = classmethod(from_settings)  # from the script's constants: field f <- settings['F']


class PPOTrainer(OnPolicyTrainer):
    """The on-policy trainer's actor, reference and reward model (trainer/onpolicy.py), plus critic
    (trained, from the reward model or a zero head) and ptx_data (SFT rows for the ptx loss)."""
    name = "ppo"
    nonfinite_hint = "Lower ACTOR_LR / CRITIC_LR (or GRAD_CLIP)"

    def __init__(self, actor, ref, critic, reward_model, tokenizer, prompts, *, cfg: PPOConfig,
                 loop: LoopConfig, run_config: dict, ptx_data, reward_fn, judge: Judge, eval_prompts,
                 lm_head_chunk: int = 0):
        super().__init__(actor, ref, reward_model, tokenizer, prompts, cfg=cfg, loop=loop,
                         run_config=run_config, reward_fn=reward_fn, judge=judge, eval_prompts=eval_prompts,
                         prompts_per_step=cfg.rollout_batch, lm_head_chunk=lm_head_chunk)
        check_two_models(self.accelerator)
        self.critic, self.critic_opt = self.prepare_trained(critic, cfg.critic_lr, cfg.weight_decay)
        self.critic_sched = self.lr_schedule(self.critic_opt)
        self.ptx_data, self.beta = ptx_data, cfg.beta

    # ------------------------------------------------------------------ phase 1: rollout
    @torch.no_grad()
    def make_experience(self, items: list[dict]) -> Experience:
        critic = self.unwrap(self.critic).eval()
        out, logprobs, ref_logprobs, raw_scores = self.sample_and_score(items)  # 1-4
        sequences, attention_mask, action_mask, P = (out.sequences, out.attention_mask, out.action_mask,
                                                     out.context_length)
        with self.accelerator.autocast():  # 4b. values from the critic
            values = self.forward_in_chunks(lambda s, m: token_values(critic, s, m)[:, P - 1: -1],
                                            sequences, attention_mask)
        scores = self.shape_scores(raw_scores, out.has_eos)  # 5-6
        # 7. per-token reward: -beta * KL everywhere, + score on the last response token
        rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, action_mask, self.beta)
        # 8. GAE advantages and returns; whiten advantages over the batch's response tokens
        advantages, returns = compute_gae(rewards, values, action_mask, self.cfg.gamma, self.cfg.lam)
        advantages = masked_whiten(advantages, action_mask, all_reduce=lambda t: tensor_sum(self.accelerator, t))
        return Experience(sequences, attention_mask, action_mask, logprobs, ref_logprobs, advantages, scores,
                          raw_scores, kl, P, values=values * action_mask, rewards=rewards, returns=returns)

    # ------------------------------------------------------------------ phase 2: optimisation
    def update(self, mb: Experience, epoch: int, start: int) -> dict:
        cfg, P = self.cfg, mb.context_length
        with self.accelerator.autocast():
            logprobs, entropy = self.policy_forward(self.actor, mb.sequences, mb.attention_mask, P)
            pg_loss, pg_stats = policy_loss(logprobs, mb.logprobs, mb.advantages, mb.action_mask,
                                            cfg.clip_range)
            ptx = self.ptx_loss(epoch, start) if cfg.ptx_coef > 0 else torch.zeros((), device=self.device)
            actor_loss = pg_loss + cfg.ptx_coef * ptx  # InstructGPT Eq. 2: RL objective + gamma * pretraining LM
        self.step_model(actor_loss, self.actor, self.actor_opt)
        with self.accelerator.autocast():
            values = token_values(self.critic, mb.sequences, mb.attention_mask)[:, P - 1: -1]  # (mb, N)
            vf_loss, vf_stats = value_loss(values, mb.values, mb.returns, mb.action_mask, cfg.value_clip)
        self.step_model(vf_loss, self.critic, self.critic_opt)
        return {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), "ptx_loss": ptx.item(),
                "entropy": masked_mean(entropy, mb.action_mask).item(), **pg_stats, **vf_stats}

    def ptx_loss(self, epoch: int, start: int) -> torch.Tensor:
        """LM loss on an SFT batch (InstructGPT's PPO-ptx), drawn deterministically from (step, epoch, start)."""
        gen = torch.Generator().manual_seed(self.seed * 104729 + self.step * 977 + epoch * 13 + start)
        idx = torch.randint(len(self.ptx_data), (self.cfg.ptx_batch,), generator=gen).tolist()
        rows = sft_collate([self.ptx_data[i] for i in idx], self.tokenizer.pad_token_id)
        batch = {k: v.to(self.device) for k, v in rows.items()}
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if self.lm_head_chunk:  # the head on the supervised tokens only, a chunk at a time (as SFT's loss)
            hidden, head = hidden_and_head(self.actor, inputs, self.unwrap(self.actor))  # (B, T, H)
            return linear_cross_entropy(hidden, head.weight, batch["labels"], self.lm_head_chunk)
        return lm_loss(self.actor(**inputs).logits, batch["labels"])

    def schedulers(self) -> list:
        return [self.actor_sched, self.critic_sched]

    # ------------------------------------------------------------------ one iteration
    def extra_metrics(self, exp: Experience) -> dict:
        return {"beta": self.beta,
                "explained_variance": explained_variance(exp.values, exp.returns, exp.action_mask.float())}

    def training_step(self) -> dict:
        metrics = super().training_step()
        if self.cfg.target_kl:  # the global KL and batch: one beta on every rank
            self.beta = adaptive_beta(self.beta, metrics["ppo/kl"], self.cfg.target_kl,
                                      self.cfg.rollout_batch * self.accelerator.num_processes,
                                      self.cfg.kl_horizon)
        return metrics

    # ------------------------------------------------------------------ state
    def trained_models(self) -> list:
        return [self.actor, self.critic]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "critic": self.unwrap(self.critic).state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "critic_sched": self.critic_sched.state_dict(),
                "beta": self.beta}

    def sharded_state(self) -> dict:
        return {**super().sharded_state(), "critic": self.critic, "critic_opt": (self.critic, self.critic_opt)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.unwrap(self.critic).load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.critic_sched.load_state_dict(state["critic_sched"])
        self.beta = state["beta"]


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
