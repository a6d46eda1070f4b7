"""DPO: the policy learns straight from comparisons; no reward model, no sampling in training.

Rafailov et al. 2023 (https://arxiv.org/abs/2305.18290) show that the KL-regularised RL objective
of InstructGPT Eq. 2 is maximised by pi(y|x) proportional to pi_ref(y|x) exp(r(x, y) / beta).
Turned around, the policy defines an implicit reward r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) (+
a term of x alone, which cancels in a comparison), and the reward model's pairwise loss on that
reward trains the policy itself (DPO Eq. 7, `model/loss.py: dpo_loss`).

One step: every response of a batch of ranked groups goes through the policy once; its sequence
log-prob is the sum over the response tokens (`sequence_logprobs`); every pair of the groups enters
the loss. The reference (SFT) log-probs never change, so they are computed once, before training,
for every training and held-out sequence. With a LoRA policy the reference is the same model with
its adapters off, which at the start (LoRA B = 0) is the policy itself.

Evaluation: the implicit reward's pairwise accuracy and margin on held-out comparisons, and the
gold score and KL of greedy answers to held-out prompts, measured by the Evaluator PPO uses
(trainer/evaluate.py), so DPO's gold score and KL figures measure exactly what PPO's do.
"""
import math
import time
from dataclasses import dataclass

import torch

from dataset.rm import flatten_groups, rm_collate
from model.generate import position_ids_for
from model.loss import dpo_loss, sequence_logprobs
from model.reward import reward_scores
from trainer.base import LoopConfig, OptimConfig, Trainer
from trainer.evaluate import Evaluator, Judge, reference_for
from trainer.rm import pairwise_metrics
from utils import from_settings


@dataclass
class DPOConfig:
    """DPO's own settings (the loop's and optimizer's are LoopConfig / OptimConfig); train_dpo.py
    builds it."""
    beta: float  # implicit KL constraint's strength: r(x, y) = beta * log(pi(y|x) / pi_ref(y|x))
    max_new_tokens: int  # answer length limit of the held-out evaluation
    temperature: float  # sampling temperature of the held-out sampled answers (the KL figure)
    eval_batch_size: int  # comparison groups per forward pass of the reference and held-out passes
    eval_prompt_batch: int  # held-out prompts per generate call (the sampled answers depend on it)

    from_settings = classmethod(from_settings)


def dpo_collate(items: list, pad_id: int) -> dict:
    """rm_collate's batch (N sequences, P pairs, loss_mask on response tokens) plus each sequence's
    reference log-prob, ref_logprobs: (N,)."""
    batch = rm_collate(items, pad_id)
    batch["ref_logprobs"] = torch.tensor([lp for it in items for lp in it["ref_logprobs"]])  # (N,)
    return batch


def policy_sequence_logprobs(model, batch: dict) -> torch.Tensor:
    """log pi(y|x) of each of the batch's N sequences, summed over response tokens.  -> (N,)"""
    mask = batch["attention_mask"]
    logits = model(input_ids=batch["input_ids"], attention_mask=mask,
                   position_ids=position_ids_for(mask)).logits  # (N, T, V)
    return sequence_logprobs(logits, batch["input_ids"], batch["loss_mask"])  # (N,)


class DPOTrainer(Trainer):
    """policy (trained), ref (frozen; None for a LoRA policy: the policy with adapters off).
    reward_model (optional, never trained on) scores the held-out answers; judge(row, response) is
    the task's judgement."""
    nonfinite_hint = "Lower LR or BETA (BETA scales the log-ratios inside the loss), or GRAD_CLIP"
    # the reference log-probs of the training comparisons are computed in chunks of this size, and
    # another padding can round them differently
    shaping_settings = frozenset({"EVAL_BATCH_SIZE"})

    def __init__(self, model, ref, tokenizer, train_data, eval_data, eval_prompts, reward_model, *,
                 cfg: DPOConfig, loop: LoopConfig, optim: OptimConfig, run_config: dict,
                 judge: Judge):
        pad_id = tokenizer.pad_token_id
        super().__init__(model, None, lambda items: dpo_collate(items, pad_id), loop=loop,
                         optim=optim, run_config=run_config)

        def frozen(module):
            return module.to(self.device).eval().requires_grad_(False)

        def reward(items, out):  # the reward model's score of each answer
            return reward_scores(rm, out.sequences, out.attention_mask)

        self.ref = frozen(ref) if ref is not None else None
        self.reference = reference_for(self.ref)
        rm = frozen(reward_model) if reward_model is not None else None
        self.tokenizer, self.cfg, self.eval_prompts = tokenizer, cfg, eval_prompts
        self.evaluate_policy = Evaluator(self.accelerator, tokenizer,
                                         max_new_tokens=cfg.max_new_tokens,
                                         temperature=cfg.temperature,
                                         batch_size=cfg.eval_prompt_batch, judge=judge,
                                         reward=reward if rm is not None else None,
                                         reference=self.reference)
        start = time.time()
        self.train_data = self.with_reference_logprobs(train_data.items)
        self.reference_seconds = time.time() - start  # part of DPO's training cost
        self.eval_data = None
        if eval_data is not None:
            self.eval_data = self.with_reference_logprobs(eval_data.items)

    @torch.no_grad()
    def with_reference_logprobs(self, items: list) -> list:
        """Copies of the groups, each with 'ref_logprobs': log pi_ref(y|x) of its K sequences (one
        pass, once)."""
        out = []
        policy = self.unwrap(self.model).eval()
        with self.reference(policy) as ref:
            for i in range(0, len(items), self.cfg.eval_batch_size):
                chunk = items[i: i + self.cfg.eval_batch_size]
                batch = {k: v.to(self.device) if torch.is_tensor(v) else v
                         for k, v in rm_collate(chunk, self.tokenizer.pad_token_id).items()}
                with self.accelerator.autocast():
                    logprobs = policy_sequence_logprobs(ref, batch).float()  # (N,)
                logprobs = logprobs.cpu().tolist()
                for it in chunk:
                    k = len(it["sequences"])
                    out.append({**it, "ref_logprobs": logprobs[:k]})
                    logprobs = logprobs[k:]
        return out

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        # Dropout off, as the reference pass had it: with the policy equal to the reference the
        # loss is then exactly log 2 at step 0, and the implicit reward does not jitter (TRL
        # disables it too).
        self.model.eval()
        logprobs = policy_sequence_logprobs(self.model, batch)  # (N,)
        ref, c, r = batch["ref_logprobs"], batch["chosen_index"], batch["rejected_index"]
        loss, stats = dpo_loss(logprobs[c], logprobs[r], ref[c], ref[r], self.cfg.beta)
        return loss, {f"dpo/{k}": v for k, v in stats.items()}

    def loss_weight(self, batch: dict) -> float:
        """dpo_loss averages over the batch's pairs: a micro-batch of 6 pairs weighs 6 times one of
        1 in the step's loss (groups of K ranked replies give K(K-1)/2 pairs each, so micro-batches
        differ)."""
        return len(batch["chosen_index"])

    def implicit_reward_metrics(self) -> dict:
        """Pairwise accuracy and margin of r = beta * log(pi / pi_ref) on the held-out comparisons,
        overall and on pairs that differ only in correctness or only in format."""
        rewards = []
        for i in range(0, len(self.eval_data), self.cfg.eval_batch_size):
            batch = self.collate(self.eval_data[i: i + self.cfg.eval_batch_size])
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logprobs = policy_sequence_logprobs(self.model, batch).float()  # (N,)
            rewards.append((self.cfg.beta * (logprobs - batch["ref_logprobs"])).cpu())  # (N,)
        rewards, flat = torch.cat(rewards), flatten_groups(self.eval_data)
        chosen = rewards[torch.tensor(flat["chosen"])]  # (P,)
        rejected = rewards[torch.tensor(flat["rejected"])]  # (P,)
        metrics = pairwise_metrics(chosen, rejected, flat["kinds"], types=flat["types"])
        return {f"dpo_{k}": v for k, v in metrics.items() if not k.startswith("pairs")}

    def evaluate(self) -> dict:
        out = self.implicit_reward_metrics() if self.eval_data else {}
        if self.eval_prompts:
            result = self.evaluate_policy(self.unwrap(self.model), self.eval_prompts,
                                          do_sample=False)
            # overall figures only; the RM score is NaN when no reward model was given
            out.update({k: v for k, v in result.items()
                        if k != "rows" and "/" not in k and math.isfinite(v)})
        return out
