"""Reward model: the pairwise loss over ranked groups, and pairwise accuracy on held-out comparisons.

A batch is several prompts, each with its K responses; all N responses go through the model in one
forward pass (each scored once), and every one of the batch's P pairs enters the loss together
(InstructGPT section 3.5: treating each ranking as one batch element avoids overfitting to the
responses that appear in many pairs).

Evaluation: pairwise accuracy (share of pairs with r_chosen > r_rejected) and mean margin
r_chosen - r_rejected on held-out pairs; on the shipped task also the accuracy on pairs that differ
only in correctness and only in format (the gold judge says which), and the spread of the scores.
"""
import torch

from dataset.rm import rm_collate
from model.loss import pairwise_loss
from model.reward import reward_scores
from trainer.base import Trainer


def pair_scores(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score each sequence once, then gather the pairs -> (chosen (P,), rejected (P,), scores (N,))."""
    scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])  # (N,)
    return scores[batch["chosen_index"]], scores[batch["rejected_index"]], scores  # (P,), (P,), (N,)


def pairwise_metrics(chosen: torch.Tensor, rejected: torch.Tensor, kinds: list, scores: torch.Tensor = None) -> dict:
    """accuracy = mean[r_chosen > r_rejected], margin = mean[r_chosen - r_rejected], per pair kind too.
    chosen, rejected: (P,); kinds: P labels or None; scores: (N,) every scored sequence."""
    margin = chosen - rejected  # (P,)
    out = {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item(), "pairs": len(margin)}
    for kind in ("correctness", "format"):
        sel = torch.tensor([k == kind for k in kinds], dtype=torch.bool)  # (P,)
        if sel.any():
            out[f"accuracy_{kind}"] = (margin[sel] > 0).float().mean().item()
            out[f"pairs_{kind}"] = int(sel.sum())
    if scores is not None:
        out.update(score_mean=scores.mean().item(), score_std=scores.std().item())
    return out


@torch.no_grad()
def evaluate_pairs(model, dataset, pad_id: int, batch_size: int = 64) -> dict:
    """Pairwise metrics of `model` over every pair of an RMDataset (batch_size groups at a time)."""
    device = next(model.parameters()).device
    items = sorted(dataset.items, key=lambda it: max(map(len, it["sequences"])))  # similar lengths: less padding
    chosen, rejected, scores, kinds = [], [], [], []
    for i in range(0, len(items), batch_size):
        batch = rm_collate(items[i: i + batch_size], pad_id)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        c, r, s = pair_scores(model, batch)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
        scores.append(s.cpu())
        kinds += batch["kinds"]
    return pairwise_metrics(torch.cat(chosen), torch.cat(rejected), kinds, torch.cat(scores))


class RMTrainer(Trainer):
    def __init__(self, model, tokenizer, train_data, eval_data=None, *, eval_batch_size: int = 64, **kwargs):
        super().__init__(model, train_data, lambda items: rm_collate(items, tokenizer.pad_token_id), **kwargs)
        self.tokenizer, self.eval_data, self.eval_batch_size = tokenizer, eval_data, eval_batch_size

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        chosen, rejected, _ = pair_scores(self.model, batch)  # (P,), (P,)
        with torch.no_grad():
            margin = (chosen - rejected).float()  # (P,)
        metrics = {"train/accuracy": (margin > 0).float().mean().item(), "train/margin": margin.mean().item()}
        return pairwise_loss(chosen, rejected), metrics

    def evaluate(self) -> dict:
        if self.eval_data is None:
            return {}
        return evaluate_pairs(self.model, self.eval_data, self.tokenizer.pad_token_id, self.eval_batch_size)
