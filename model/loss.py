"""Loss functions: small and pure (tensors in, scalar out), importable with torch alone.

Shapes: B = batch, T = tokens, V = vocabulary. Per-token losses take a mask and reduce with
`masked_mean`, so padding and prompt tokens never count.
"""
import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1; equals x[mask.bool()].mean() when dim is None."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on supervised tokens: mean over t with labels[t] != -100 of
    -log p(labels[t] | tokens < t).  logits: (B, T, V); labels: (B, T), -100 = not supervised."""
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    labels = labels[:, 1:]  # (B, T-1)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[t]) under logits[t].  logits: (B, T, V) already aligned with tokens: (B, T)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
