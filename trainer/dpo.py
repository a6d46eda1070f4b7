"""DPO: the policy learns straight from comparisons, with no reward model and no sampling while training.

Rafailov et al. 2023 (https://arxiv.org/abs/2305.18290) show that the KL-regularised RL objective of
InstructGPT Eq. 2 is maximised by pi(y|x) proportional to pi_ref(y|x) exp(r(x, y) / beta). Turned around,
the policy defines an implicit reward r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) (+ a term of x alone,
which cancels in a comparison), and the reward model's pairwise loss on that reward trains the policy
itself (DPO Eq. 7, `model/loss.py: dpo_loss`).

One step: every response of a batch of ranked groups goes through the policy once; its sequence
log-prob is the sum over the response tokens (`sequence_logprobs`); every pair of the groups enters the
loss. The reference (SFT) log-probs never change, so they are computed once, before training, for every
training and held-out sequence. With a LoRA policy the reference is the same model with its adapters
off, which at the start (LoRA B = 0) is the policy itself.

Evaluation: the implicit reward's pairwise accuracy and margin on held-out comparisons, and the gold
score and KL of greedy answers to held-out prompts, measured by PPO's own code (`evaluate_policy`).
"""
import time
from types import SimpleNamespace

import torch

from dataset.rm import flatten_groups, rm_collate
from model.loss import dpo_loss, sequence_logprobs
from model.reward import position_ids_for
from trainer.base import Trainer
from trainer.ppo import PPOTrainer
from trainer.rm import pairwise_metrics


def dpo_collate(items: list, pad_id: int) -> dict:
    """rm_collate's batch (N sequences, P pairs, loss_mask on response tokens) plus each sequence's
    reference log-prob, ref_logprobs: (N,)."""
    batch = rm_collate(items, pad_id)
    batch["ref_logprobs"] = torch.tensor([lp for it in items for lp in it["ref_logprobs"]])  # (N,)
    return batch


def policy_sequence_logprobs(model, batch: dict) -> torch.Tensor:
    """log pi(y|x) of each of the batch's N sequences, summed over response tokens.  -> (N,)"""
    mask = batch["attention_mask"]
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids_for(mask)).logits  # (N, T, V)
    return sequence_logprobs(logits, batch["input_ids"], batch["loss_mask"])  # (N,)


class DPOTrainer(Trainer):
    # Held-out answers are sampled, judged and compared with the reference by PPO's own methods, so
    # DPO's gold score and KL figures measure exactly what PPO's do.
    sample = PPOTrainer.sample
    policy_forward = PPOTrainer.policy_forward
    reference_context = PPOTrainer.reference_context
    forward_in_chunks = PPOTrainer.forward_in_chunks
    score = PPOTrainer.score
    answer_rows = PPOTrainer.answer_rows
    evaluate_policy = PPOTrainer.evaluate_policy

    def __init__(self, model, ref, tokenizer, train_data, eval_data=None, eval_prompts=None, reward_model=None, *,
                 beta: float, max_new_tokens: int = 20, temperature: float = 1.0, eval_batch_size: int = 64, **kwargs):
        super().__init__(model, None, lambda items: dpo_collate(items, tokenizer.pad_token_id), **kwargs)
        self.actor = self.model  # the name PPO's evaluation methods use
        self.ref = ref.to(self.device).eval().requires_grad_(False) if ref is not None else None
        self.reward_model = reward_model.to(self.device).eval().requires_grad_(False) if reward_model is not None else None
        self.reward_fn = None if reward_model is not None else (lambda rows, responses: [float("nan")] * len(rows))
        self.tokenizer, self.beta, self.eval_prompts, self.eval_batch_size = tokenizer, beta, eval_prompts, eval_batch_size
        # the PPOConfig fields PPO's evaluation methods read; sampled answers use the full distribution, as PPO's
        self.cfg = SimpleNamespace(max_new_tokens=max_new_tokens, temperature=temperature, mini_batch=eval_batch_size)
        self.sampling = dict(do_sample=True, temperature=temperature)
        start = time.time()
        self.train_data = self.with_reference_logprobs(train_data.items)
        self.reference_seconds = time.time() - start  # part of DPO's training cost
        self.eval_data = self.with_reference_logprobs(eval_data.items) if eval_data is not None else None

    @torch.no_grad()
    def with_reference_logprobs(self, items: list) -> list:
        """Copies of the groups, each with 'ref_logprobs': log pi_ref(y|x) of its K sequences (one pass, once)."""
        out = []
        with self.reference_context():
            ref = self.ref if self.ref is not None else self.unwrap(self.actor).eval()
            for i in range(0, len(items), self.eval_batch_size):
                chunk = items[i: i + self.eval_batch_size]
                batch = {k: v.to(self.device) if torch.is_tensor(v) else v
                         for k, v in rm_collate(chunk, self.tokenizer.pad_token_id).items()}
                with self.accelerator.autocast():
                    logprobs = policy_sequence_logprobs(ref, batch).float().cpu().tolist()  # N floats
                for it in chunk:
                    k = len(it["sequences"])
                    out.append({**it, "ref_logprobs": logprobs[:k]})
                    logprobs = logprobs[k:]
        return out

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        # Dropout off, as the reference pass had it: with the policy equal to the reference the loss is
        # then exactly log 2 at step 0, and the implicit reward does not jitter (TRL disables it too).
        self.model.eval()
        logprobs = policy_sequence_logprobs(self.model, batch)  # (N,)
        ref, c, r = batch["ref_logprobs"], batch["chosen_index"], batch["rejected_index"]
        loss, stats = dpo_loss(logprobs[c], logprobs[r], ref[c], ref[r], self.beta)
        return loss, {f"dpo/{k}": v for k, v in stats.items()}

    def implicit_reward_metrics(self) -> dict:
        """Pairwise accuracy and margin of r = beta * log(pi / pi_ref) on the held-out comparisons,
        overall and on pairs that differ only in correctness or only in format."""
        rewards = []
        for i in range(0, len(self.eval_data), self.eval_batch_size):
            batch = self.collate(self.eval_data[i: i + self.eval_batch_size])
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logprobs = policy_sequence_logprobs(self.model, batch).float()  # (N,)
            rewards.append((self.beta * (logprobs - batch["ref_logprobs"])).cpu())  # (N,)
        rewards, flat = torch.cat(rewards), flatten_groups(self.eval_data)
        chosen, rejected = rewards[torch.tensor(flat["chosen"])], rewards[torch.tensor(flat["rejected"])]  # (P,), (P,)
        metrics = pairwise_metrics(chosen, rejected, flat["kinds"])
        return {f"dpo_{k}": v for k, v in metrics.items() if not k.startswith("pairs")}

    def evaluate(self) -> dict:
        out = self.implicit_reward_metrics() if self.eval_data else {}
        if self.eval_prompts:
            result = self.evaluate_policy(self.unwrap(self.model), self.eval_prompts, do_sample=False)
            out.update({k: v for k, v in result.items() if k != "rows" and "/" not in k and v == v})  # NaN: no RM given
        return out
