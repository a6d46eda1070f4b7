"""Reward model: the pairwise loss over ranked groups, and pairwise accuracy on held-out pairs.

A batch is several prompts, each with its K responses; all N responses go through the model in one
forward pass (each scored once), and every one of the batch's P pairs enters the loss together
(InstructGPT section 3.5: treating each ranking as one batch element avoids overfitting to the
responses that appear in many pairs).

Evaluation: pairwise accuracy (share of pairs with r_chosen > r_rejected) and mean margin
r_chosen - r_rejected on held-out pairs; on the shipped task also the accuracy on pairs that differ
only in correctness and only in format (the gold judge says which), and the spread of the scores.
"""
import time

import torch

from dataset.rm import flatten_groups, rm_collate
from dataset.tokens import pad
from model.generate import position_ids_for
from model.loss import pairwise_loss
from model.reward import reward_scores
from trainer.base import LoopConfig, OptimConfig, Trainer


def pair_scores(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score every sequence once; gather the pairs -> chosen (P,), rejected (P,), scores (N,)."""
    scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])  # (N,)
    return scores[batch["chosen_index"]], scores[batch["rejected_index"]], scores


def pairwise_metrics(chosen: torch.Tensor, rejected: torch.Tensor, kinds: list,
                     scores: torch.Tensor = None, types: list = None) -> dict:
    """accuracy = mean[r_chosen > r_rejected], margin = mean[r_chosen - r_rejected], per pair kind
    too, and the correctness-only accuracy per task type ('accuracy_correctness/add', ...): where
    the reward model can tell a right answer from a wrong one, which is where PPO can raise
    correctness. chosen, rejected: (P,); kinds, types: P labels or None; scores: (N,) every scored
    sequence."""
    margin = chosen - rejected  # (P,)
    out = {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item(),
           "pairs": len(margin)}
    for kind in ("correctness", "format", "trade"):
        sel = torch.tensor([k == kind for k in kinds], dtype=torch.bool)  # (P,)
        if sel.any():
            out[f"accuracy_{kind}"] = (margin[sel] > 0).float().mean().item()
            out[f"pairs_{kind}"] = int(sel.sum())
    for t in sorted({t for t in types or [] if t is not None}):
        sel = torch.tensor([k == "correctness" and u == t for k, u in zip(kinds, types)],
                           dtype=torch.bool)  # (P,)
        if sel.any():
            out[f"accuracy_correctness/{t}"] = (margin[sel] > 0).float().mean().item()
    if scores is not None:
        out.update(score_mean=scores.mean().item(), score_std=scores.std().item())
    return out


@torch.no_grad()
def evaluate_pairs(model, dataset, pad_id: int, batch_size: int) -> dict:
    """Pairwise metrics of `model` over every pair of an RMDataset, batch_size groups at a time."""
    device = next(model.parameters()).device
    # similar lengths together: less padding
    items = sorted(dataset.items, key=lambda it: max(map(len, it["sequences"])))
    chosen, rejected, scores, kinds, types = [], [], [], [], []
    for i in range(0, len(items), batch_size):
        batch = rm_collate(items[i: i + batch_size], pad_id)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        c, r, s = pair_scores(model, batch)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
        scores.append(s.cpu())
        kinds += batch["kinds"]
        types += batch["types"]
    return pairwise_metrics(torch.cat(chosen), torch.cat(rejected), kinds, torch.cat(scores),
                            types)


class RMTrainer(Trainer):
    best_metric = "eval/accuracy"  # out_dir/best keeps the most accurate reward model seen

    def __init__(self, model, tokenizer, train_data, eval_data, *, loop: LoopConfig,
                 optim: OptimConfig, run_config: dict, eval_batch_size: int):
        pad_id = tokenizer.pad_token_id
        super().__init__(model, train_data, lambda items: rm_collate(items, pad_id), loop=loop,
                         optim=optim, run_config=run_config)
        self.tokenizer, self.eval_data = tokenizer, eval_data
        self.eval_batch_size = eval_batch_size  # comparison groups per evaluation forward pass

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        chosen, rejected, _ = pair_scores(self.model, batch)  # (P,), (P,)
        with torch.no_grad():
            margin = (chosen - rejected).float()  # (P,)
        metrics = {"train/accuracy": (margin > 0).float().mean().item(),
                   "train/margin": margin.mean().item()}
        return pairwise_loss(chosen, rejected), metrics

    def loss_weight(self, batch: dict) -> float:
        """pairwise_loss averages over the batch's pairs."""
        return len(batch["chosen_index"])

    def evaluate(self) -> dict:
        if self.eval_data is None:
            return {}
        return evaluate_pairs(self.model, self.eval_data, self.tokenizer.pad_token_id,
                              self.eval_batch_size)


# --- Head only: a frozen backbone's features, the scalar head fitted by logistic regression
# --------- With the backbone frozen, the score is w . h, where h is the backbone's final hidden
# state at the last non-pad token. The pairwise loss -log sigmoid(w . (h_chosen - h_rejected)) is
# then a logistic regression on feature differences: compute h once for every sequence, fit w with
# L2 regularisation (its strength picked by cross-validation on the training pairs), and write w
# into the model's score head. On 2 CPU cores this costs one forward pass over the data instead of
# many training epochs through the backbone.


@torch.no_grad()
def last_token_features(model, dataset, pad_id: int, batch_size: int) -> tuple:
    """What the score head reads, for every sequence of an RMDataset.

    Returns features (N, H) float32 (the backbone's final hidden state at each sequence's last
    token), chosen and rejected (P,) row indices of the pairs, and group (P,) the group each pair
    comes from."""
    backbone = getattr(model, model.base_model_prefix)
    device = next(model.parameters()).device
    flat = flatten_groups(dataset.items)
    seqs = flat["sequences"]
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))  # similar lengths: less padding
    features = None
    for i in range(0, len(order), batch_size):
        rows = order[i: i + batch_size]
        ids = pad([seqs[k] for k in rows], pad_id).to(device)  # (B, T), right-padded
        mask = pad([[1] * len(seqs[k]) for k in rows], 0).to(device)  # (B, T)
        hidden = backbone(input_ids=ids, attention_mask=mask,
                          position_ids=position_ids_for(mask)).last_hidden_state  # (B, T, H)
        last = hidden[torch.arange(len(rows), device=device), mask.sum(-1) - 1]  # (B, H)
        last = last.float().cpu()
        if features is None:
            features = torch.zeros(len(seqs), last.shape[-1])
        features[rows] = last
    return (features, torch.tensor(flat["chosen"]), torch.tensor(flat["rejected"]),
            torch.tensor(flat["group"]))


def logistic_fit(diff: torch.Tensor, l2: float, max_iter: int = 200) -> torch.Tensor:
    """w minimising mean(-log sigmoid(diff @ w)) + l2 * |w|^2 (L-BFGS, full batch).
    diff: (P, H) -> (H,)"""
    w = torch.zeros(diff.shape[1], dtype=torch.float64, requires_grad=True)
    diff = diff.double()
    opt = torch.optim.LBFGS([w], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        zeros = torch.zeros(len(diff), dtype=diff.dtype)  # the pairwise loss of diff @ w against 0
        loss = pairwise_loss(diff @ w, zeros) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float()


def fit_linear_head(features, chosen, rejected, group, l2s: list, folds: int, seed: int,
                    tie_tol: float = 1e-4) -> dict:
    """Fit the score head w on frozen features. The L2 strength is the one with the lowest
    `folds`-fold cross-validated log-loss, the mean of -log sigmoid(margin) over held-out pairs
    (folds split by group: pairs of one ranking stay together); strengths within `tie_tol` of the
    lowest tie, and the strongest wins. Not accuracy: it moves in steps of one pair, so on HH three
    strengths tied exactly and float-level noise in the bf16 features flipped the pick.

    Features are standardised for the fit, so the returned raw-feature weight is w / std. Returns
    {'weight' (H,), 'l2', 'cv_log_loss' {l2: loss}, 'cv_accuracy' {l2: accuracy}, 'train_accuracy',
    'train_loss'}."""
    std = features.std(0) + 1e-4  # (H,)
    diff = (features[chosen] - features[rejected]) / std  # (P, H)
    num_groups = int(group.max()) + 1  # groups are numbered 0..G-1
    # each group to one fold, in a seeded random order
    fold_of = torch.empty(num_groups, dtype=torch.long)
    shuffled = torch.randperm(num_groups, generator=torch.Generator().manual_seed(seed))
    fold_of[shuffled] = torch.arange(num_groups) % folds
    pair_fold = fold_of[group]  # (P,)
    cv_loss, cv_accuracy = {}, {}
    for l2 in l2s:
        loss_sum, right = 0.0, 0.0
        for f in range(folds):
            held = pair_fold == f
            margin = diff[held].double() @ logistic_fit(diff[~held], l2).double()  # (P_f,)
            loss_sum += -torch.nn.functional.logsigmoid(margin).sum().item()
            right += (margin > 0).sum().item()
        cv_loss[l2], cv_accuracy[l2] = loss_sum / len(diff), right / len(diff)
    lowest = min(cv_loss.values())
    # ties: the strongest regularisation
    best = max(l2 for l2 in l2s if cv_loss[l2] <= lowest + tie_tol)
    w = logistic_fit(diff, best)
    margin = diff @ w
    return {"weight": w / std, "l2": best, "cv_log_loss": cv_loss, "cv_accuracy": cv_accuracy,
            "train_accuracy": (margin > 0).float().mean().item(),
            "train_loss": pairwise_loss(margin, torch.zeros_like(margin)).item()}


def fit_head(model, train, eval_data, pad_id: int, l2s: list, folds: int, seed: int,
             batch_size: int, bf16: bool, log=print) -> tuple[dict, dict, dict]:
    """The head of a frozen reward model by logistic regression on its last-token features; the
    head is written into `model.score`. Returns (fit from fit_linear_head, before, after), where
    before and after are the pairwise metrics of `eval_data` under the untrained and the fitted
    head ({} if None)."""
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    start = time.time()
    with autocast:
        features, chosen, rejected, group = last_token_features(model, train, pad_id, batch_size)
    log(f"features of {len(features)} training sequences: {time.time() - start:.0f} s")
    fit = fit_linear_head(features, chosen, rejected, group, l2s, folds, seed)
    cv = ", ".join(f"{k:g}: {v:.4f} / {fit['cv_accuracy'][k]:.4f}"
                   for k, v in fit["cv_log_loss"].items())
    log(f"cross-validated log-loss / accuracy by L2: {cv}; using {fit['l2']:g} "
        f"(training accuracy {fit['train_accuracy']:.4f})")
    before, after = {}, {}
    if eval_data is not None:
        with autocast:
            ev, c, r, _ = last_token_features(model, eval_data, pad_id, batch_size)
        flat = flatten_groups(eval_data.items)
        lengths = torch.tensor([len(q) - p for q, p in zip(flat["sequences"],
                                                           flat["prompt_lengths"])],
                               dtype=torch.float)  # (N,) response tokens
        fresh = model.score.weight.detach().float().cpu()[0]  # the untrained head (before)
        before = pairwise_metrics(ev[c] @ fresh, ev[r] @ fresh, flat["kinds"])
        w = fit["weight"]
        after = pairwise_metrics(ev[c] @ w, ev[r] @ w, flat["kinds"], ev @ w, flat["types"])
        margin = (ev[c] - ev[r]) @ w  # (P,)
        both = torch.stack([margin, lengths[c] - lengths[r]])  # (2, P)
        after["length_corr"] = torch.corrcoef(both)[0, 1].item()
        log(f"held-out accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} "
            f"({after['pairs']} pairs); correlation of the margin with the length difference "
            f"{after['length_corr']:+.3f}")
    with torch.no_grad():
        model.score.weight.copy_(fit["weight"][None].to(device))
        if getattr(model.score, "bias", None) is not None:
            model.score.bias.zero_()
    return fit, before, after
