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
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100
    )


def add_to_grad(weight: torch.Tensor, grad: torch.Tensor) -> None:
    """weight.grad += grad in place, or weight.grad = grad where there is none yet: what autograd does for a leaf,
    done by the chunked LM-head Functions below for a matrix marked `head_grad_direct` (model/memory.py
    direct_tied_grad), whose other gradient (the embedding's rows) autograd then adds into it in place."""
    if weight.grad is None:
        weight.grad = grad
    else:
        weight.grad.add_(grad)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits = hidden @ weight.T without (N, V) logits in memory: each chunk of rows
    gets its logits, its loss and the logits' gradient (softmax - one-hot) / N in fp32, and at once its share
    of the gradients of hidden (rows of an (N, H) buffer) and of weight (summed over chunks in fp32), so
    nothing of size N x V is ever whole. All of it runs in the forward pass; the backward pass only scales
    the two gradients. Under bf16 autocast the products run in bf16, as the LM head's would."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):  # (N, H), (V, H), (N,) all supervised
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        h, w = hidden.to(dtype), weight.to(dtype)
        n = labels.numel()
        grad_hidden = torch.empty_like(hidden)  # (N, H)
        grad_weight = part = None  # (V, H), weight's dtype: the sum of the chunks' products
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(device, enabled=False):
            for s in range(0, n, chunk):
                logits = (h[s: s + chunk] @ w.T).float()  # (c, V)
                y = labels[s: s + chunk]
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
                g = torch.exp_(logits.sub_(lse[:, None]))  # softmax, in place
                g[torch.arange(len(y)), y] -= 1.0
                g = g.div_(max(n, 1)).to(dtype)  # (c, V) d loss / d logits
                grad_hidden[s: s + chunk] = g @ w
                if weight.requires_grad:
                    rows = h[s: s + chunk]
                    if grad_weight is None:  # the first chunk's (V, H) product starts the sum
                        grad_weight = (g.T @ rows).to(weight.dtype)
                    else:  # each later chunk's product goes into one buffer (no new big block per chunk)
                        part = g.T @ rows if part is None else torch.mm(g.T, rows, out=part)
                        grad_weight.add_(part)
                del logits, g
        if weight.requires_grad and grad_weight is None:  # no supervised token
            grad_weight = torch.zeros_like(weight)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.grad_into = weight if getattr(weight, "head_grad_direct", False) else None  # memory.py direct_tied_grad
        return total / max(n, 1)

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        if not (grad_out.device.type == "cpu" and grad_out.item() == 1.0):  # 1: the loss itself (no pass, no copy)
            grad_hidden = grad_hidden * grad_out
            grad_weight = None if grad_weight is None else grad_weight * grad_out
        if ctx.grad_into is not None and grad_weight is not None:  # into .grad; the embedding's rows join it there
            add_to_grad(ctx.grad_into, grad_weight)
            grad_weight = None
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: int = 1024) -> torch.Tensor:
    """lm_loss(hidden @ weight.T, labels) without full-vocabulary logits: hidden (B, T, H) are the final
    hidden states (the LM head's input), weight (V, H) the LM head's; the loss reads only the supervised
    positions, `chunk` rows of logits at a time. Equal to lm_loss up to float rounding (tests/test_levers.py)."""
    labels = labels[:, 1:].reshape(-1)  # position t predicts token t+1
    hidden = hidden[:, :-1].reshape(-1, hidden.size(-1))
    supervised = labels != -100
    hidden, labels = hidden[supervised], labels[supervised]
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, labels, chunk)
    total = sum(F.cross_entropy((hidden[s: s + chunk] @ weight.T).float(), labels[s: s + chunk], reduction="sum")
                for s in range(0, len(labels), chunk))  # no gradients: the loss alone
    return total / max(len(labels), 1)


VOCAB_SLICE = 8192  # rows of the LM head's weight per product in linear_token_logprobs (opt-125m: 7 slices)


def _in_slice(tokens: torch.Tensor, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns): the rows whose token lies in the vocabulary slice start .. start + size, and its column there."""
    y = tokens - start
    rows = ((y >= 0) & (y < size)).nonzero().squeeze(1)
    return rows, y[rows]


def _chunked_head_logprobs(hidden, weight, tokens, temperature, chunk):
    """The forward pass of linear_token_logprobs, over slices of the vocabulary (VOCAB_SLICE rows of the weight)
    and `chunk` rows of hidden at a time, so no tensor has the whole vocabulary as a dimension: each slice s gives
    its logsumexp L_s and the mean logit under its own softmax m_s, and then logsumexp L = logsumexp_s L_s, the
    entropy L - sum_s exp(L_s - L) m_s and the token's log-prob (its logit) - L. Returns (token log-probs (N,),
    entropies (N,), logsumexps (N,) of the logits at the temperature, the dtype of the products: autocast's where
    it is on, as the LM head's would be). The rollout (no gradient) and learn() call this one function: their
    log-probs agree bit for bit."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    wide = torch.promote_types(dtype, torch.float32)
    n, slices = len(tokens), range(0, weight.size(0), VOCAB_SLICE)
    lse_s = torch.empty(len(slices), n, dtype=wide, device=hidden.device)  # per slice: logsumexp, mean logit
    mean_s = torch.empty_like(lse_s)
    logit = torch.zeros(n, dtype=wide, device=hidden.device)  # each row's token's logit, from the slice holding it
    with torch.autocast(device, enabled=False):
        h = hidden.to(dtype)
        for k, v in enumerate(slices):
            w = weight[v: v + VOCAB_SLICE].to(dtype)  # (S', H)
            for s in range(0, n, chunk):
                z = (h[s: s + chunk] @ w.T).to(wide).div_(temperature)  # (c, S') logits at the temperature
                lse_s[k, s: s + chunk] = torch.logsumexp(z, dim=-1)
                mean_s[k, s: s + chunk] = torch.linalg.vecdot(torch.exp(z - lse_s[k, s: s + chunk, None]), z)
                rows, cols = _in_slice(tokens[s: s + chunk], v, len(w))
                logit[s + rows] = z[rows, cols]
                del z
    lse = torch.logsumexp(lse_s, dim=0)  # (N,)
    entropy = lse - (torch.exp(lse_s - lse) * mean_s).sum(0)
    return logit - lse, entropy, lse, dtype


class _LinearTokenLogprobs(torch.autograd.Function):
    """log p(tokens) under softmax(hidden @ weight.T / temperature) without (N, V) logits kept for the backward
    pass: it keeps hidden, weight and each row's logsumexp, and computes the logits again there, a slice of
    the vocabulary at a time (one more LM-head product), so the only large tensor it makes is the weight's
    gradient itself (the one autograd would hold anyway). The entropies come out beside the log-probs, without
    gradient. Under bf16 autocast the products run in bf16, as the LM head's would."""
    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, chunk):  # (N, H), (V, H), (N,)
        token, entropy, lse, dtype = _chunked_head_logprobs(hidden, weight, tokens, temperature, chunk)
        ctx.save_for_backward(hidden, weight, tokens, lse)
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        ctx.mark_non_differentiable(entropy)
        return token, entropy

    @staticmethod
    def backward(ctx, grad_token, _grad_entropy):
        hidden, weight, tokens, lse = ctx.saved_tensors
        T, chunk, device, S = ctx.temperature, ctx.chunk, hidden.device.type, VOCAB_SLICE
        wide = torch.promote_types(weight.dtype, torch.float32)  # the gradients' sums: fp32 or wider
        grad_hidden = torch.zeros(hidden.shape, dtype=wide, device=hidden.device)  # (N, H)
        grad_weight = torch.empty(weight.shape, dtype=wide, device=weight.device) \
            if ctx.needs_input_grad[1] else None  # (V, H)
        g = grad_token.to(wide) / T  # d log p(y) / d logits = (one-hot(y) - softmax) / T, times the gradient
        with torch.autocast(device, enabled=False):
            h = hidden.to(ctx.dtype)
            for v in range(0, weight.size(0), S):  # a slice of the vocabulary: v .. v + S
                w = weight[v: v + S].to(ctx.dtype)  # (S', H)
                for s in range(0, len(tokens), chunk):
                    p = h[s: s + chunk] @ w.T  # (c, S'): these logits, then their softmax
                    p = p.to(wide).div_(T).sub_(lse[s: s + chunk, None]).exp_()
                    d = p.mul_(-g[s: s + chunk, None])  # (c, S')
                    rows, cols = _in_slice(tokens[s: s + chunk], v, len(w))
                    d[rows, cols] += g[s: s + chunk][rows]
                    d = d.to(ctx.dtype)
                    grad_hidden[s: s + chunk] += d @ w
                    if grad_weight is not None:
                        part = d.T @ h[s: s + chunk]  # (S', H)
                        grad_weight[v: v + S].copy_(part) if s == 0 else grad_weight[v: v + S].add_(part)
                    del p, d
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        if grad_weight is not None and getattr(weight, "head_grad_direct", False):  # memory.py direct_tied_grad
            add_to_grad(weight, grad_weight)
            grad_weight = None
        return grad_hidden.to(hidden.dtype), grad_weight, None, None, None


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, temperature: float,
                          chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(tokens), entropy) under logits = hidden @ weight.T / temperature, `chunk` rows of hidden and
    VOCAB_SLICE rows of weight at a time: equal to token_logprobs(logits / temperature, tokens) and
    entropy_from_logprobs up to float rounding, without full-vocabulary logits in memory (PPO's and GRPO's
    policy log-probs; tests/test_levers.py). The token log-probs carry gradient to hidden and weight, the
    entropies none. hidden (..., H) are the LM head's inputs, weight (V, H) its matrix, tokens (...) the ids
    whose log-probs are wanted. Returns two (...) tensors in fp32 (or wider, for wider inputs)."""
    shape = tokens.shape
    hidden, tokens = hidden.reshape(-1, hidden.size(-1)), tokens.reshape(-1)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        token, entropy = _LinearTokenLogprobs.apply(hidden, weight, tokens, temperature, chunk)
    else:  # no gradients (the rollout): the same chunks, the same numbers
        token, entropy, _, _ = _chunked_head_logprobs(hidden, weight, tokens, temperature, chunk)
    return token.view(shape), entropy.view(shape)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[t]) under logits[t].  logits: (B, T, V) already aligned with tokens: (B, T)."""
    # (B, T)
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def pairwise_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Reward-model loss, InstructGPT Eq. 1 (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155):

        loss = -mean over pairs of log sigmoid(r(x, y_w) - r(x, y_l))

    averaged over every pair of the batch (a ranking of K gives K(K-1)/2 pairs that enter together).
    It equals log 2 when the two scores are equal. F.logsigmoid stays finite for large margins, where
    log(sigmoid(x)) underflows to -inf.  chosen_scores, rejected_scores: (P,) -> scalar.
    """
    return -F.logsigmoid(chosen_scores.float() - rejected_scores.float()).mean()


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, all_reduce=None
) -> torch.Tensor:
    """(x - mean) / std over the masked positions; masked-out positions come back as 0.  x, mask: (B, T)

    all_reduce: a function that sums a tensor over processes; with it, mean and std are those of the
    global batch (every process's masked positions), not of this process's share."""
    total = all_reduce or (lambda t: t)
    mask = mask.to(x.dtype)
    count, sum_x = total(torch.stack([mask.sum(), (x * mask).sum()])).unbind()
    mean = sum_x / count.clamp(min=1)
    var = total(((x - mean) ** 2 * mask).sum()) / count.clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
):
    """Generalised advantage estimation, PPO Eqs. 11-12 (Schulman et al. 2017, https://arxiv.org/abs/1707.06347):

        delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last response token = 0)
        A_t     = sum_l (gamma * lam)^l * delta_{t+l}
        returns = A + V

    rewards, values, mask: (B, N) over response tokens, mask 1 up to and including EOS. Returns
    (advantages, returns), both (B, N) and 0 where mask is 0.
    """
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])  # A_{t+1}, (B,)
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate objective, PPO Eq. 7, as a loss to minimise:

        rho = exp(logprobs - old_logprobs)
        loss = -mean_t min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)

    All arguments (B, N). Also returns clipfrac (share of tokens where the clip is active) and
    approx_kl, the k3 estimator (rho - 1) - log rho of KL(old || new) (http://joschu.net/blog/kl-approx.html).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return loss, {
        "clipfrac": clipfrac.item(),
        "approx_kl": approx_kl.item(),
        "ratio": masked_mean(ratio, mask).item(),
    }


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict]:
    """Clipped value loss (PPO2 / InstructGPT-style critic):

        V_clip = old_V + clip(V - old_V, -eps, eps)
        loss = 0.5 * mean_t max((V - R)^2, (V_clip - R)^2)

    All arguments (B, N). The clip keeps the critic near the values the advantages were computed with.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        clipfrac = masked_mean(((values - returns) ** 2 < (clipped - returns) ** 2).float(), mask)
        # how far the critic moved from the rollout's values
        drift = masked_mean((values - old_values).abs(), mask)
    return loss, {"value_clipfrac": clipfrac.item(), "value_drift": drift.item()}


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of the RL objective, InstructGPT Eq. 2 without the ptx term:

        r_t = -beta * (log pi_RL(y_t) - log pi_SFT(y_t))  on every response token
        r_T += score                                       on the last response token T (EOS if produced)

    scores: (B,); logprobs, ref_logprobs, mask: (B, N). Returns (rewards, kl), both (B, N), 0 outside mask.
    """
    kl = (logprobs - ref_logprobs) * mask  # (B, N)
    rewards = -beta * kl
    # (B, N): True only at the last token
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & mask.bool()
    # equivalent loop: for i in range(B): rewards[i, mask[i].nonzero().max()] += scores[i]
    return rewards + last * scores[:, None], kl


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position, from its log-probabilities (a log-softmax
    over the vocabulary, as model/generate.py: response_logprobs computes without LM_HEAD_CHUNK).  (B, T, V) -> (B, T)"""
    return -(logp.exp() * logp).sum(-1)


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """log pi(y|x) = sum over response tokens t of log pi(y_t | x, y_<t): prompt and pad tokens add nothing.

    logits: (B, T, V) of the model on input_ids: (B, T); loss_mask: (B, T), 1 on the response tokens
    (EOS included). Position t of the logits predicts token t + 1. Returns (B,)."""
    logprobs = token_logprobs(logits[:, :-1], input_ids[:, 1:])  # (B, T-1): log p(token t+1)
    return (logprobs * loss_mask[:, 1:].to(logprobs.dtype)).sum(-1)  # (B,)


def dpo_loss(
    chosen_logprobs: torch.Tensor,
    rejected_logprobs: torch.Tensor,
    ref_chosen_logprobs: torch.Tensor,
    ref_rejected_logprobs: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict]:
    """Direct preference optimisation, DPO Eq. 7 (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290):

        loss = -mean over pairs of log sigmoid(beta * ((log pi(y_w|x) - log pi_ref(y_w|x))
                                                      - (log pi(y_l|x) - log pi_ref(y_l|x))))

    the reward-model loss (InstructGPT Eq. 1) with the implicit reward r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)).
    It equals log 2 when the policy is the reference. All arguments: (P,) summed sequence log-probs.
    Also returns the implicit rewards' accuracy (share of pairs with r_w > r_l), their mean margin
    r_w - r_l, and the mean chosen and rejected rewards.
    """
    chosen_rewards = beta * (chosen_logprobs.float() - ref_chosen_logprobs.float())  # (P,)
    rejected_rewards = beta * (rejected_logprobs.float() - ref_rejected_logprobs.float())  # (P,)
    margin = chosen_rewards - rejected_rewards  # (P,)
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {
            "accuracy": (margin > 0).float().mean().item(),
            "margin": margin.mean().item(),
            "chosen_reward": chosen_rewards.mean().item(),
            "rejected_reward": rejected_rewards.mean().item(),
        }
    return loss, stats


def group_advantages(
    rewards: torch.Tensor, scale_std: bool = False, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO's outcome advantages, DeepSeekMath Sec. 4.1.2 (Shao et al. 2024, https://arxiv.org/abs/2402.03300):

        A_i = r_i - mean(r_1..r_G)                        within each group of G samples of one prompt
        A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)      with scale_std (DeepSeekMath's form)

    the group mean is the baseline a critic would otherwise learn. Dividing by the group's std turns a
    group whose rewards differ by 1e-3 (noise in a reward model's score) into unit advantages, as large
    as a group with a real difference, so it is off by default (Dr. GRPO, Liu et al. 2025,
    https://arxiv.org/abs/2503.20783, Sec. 3.1). A group whose rewards are all equal (std < eps) carries no
    signal and gets exactly 0.  rewards: (B, G) -> (B, G)
    """
    rewards = rewards.float()
    std = rewards.std(dim=1, unbiased=False, keepdim=True)  # (B, 1)
    advantages = rewards - rewards.mean(dim=1, keepdim=True)  # (B, G)
    if scale_std:
        advantages = advantages / std.clamp(min=eps)
    return advantages.masked_fill(std < eps, 0.0)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    beta: float,
    token_level: bool = True,
) -> tuple[torch.Tensor, dict]:
    """GRPO objective, DeepSeekMath Eq. 3, as a loss to minimise:

        rho_t = pi(o_t) / pi_old(o_t)
        kl_t  = pi_ref(o_t) / pi(o_t) - log(pi_ref(o_t) / pi(o_t)) - 1       (Eq. 4: the k3 estimator)
        loss  = -1/sum_i |o_i| sum_i sum_t [ min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i) - beta * kl_t ]

    token_level (the default) averages over every response token of the batch, so each token counts the
    same. token_level=False is Eq. 3 as written, -mean_i 1/|o_i| sum_t [...]: a 1-token reply then gets 4x
    the per-token gradient of a 4-token one, which favours short right answers and long wrong ones (the
    length bias of Dr. GRPO, https://arxiv.org/abs/2503.20783, Sec. 3.1; DAPO's token-level loss,
    https://arxiv.org/abs/2503.14476, Sec. 3.3).

    The KL to the reference enters the loss, per token, not the reward as in PPO. k3 is unbiased for
    KL(pi || pi_ref) on samples of pi and never negative (http://joschu.net/blog/kl-approx.html).
    logprobs, old_logprobs, ref_logprobs, mask: (B, N); advantages: (B,), one per sampled response.
    """
    log_ratio = logprobs - old_logprobs  # (B, N)
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None]  # (B, 1): every token of response i gets A_i
    # (B, N)
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * adv
    surrogate = torch.min(unclipped, clipped)
    ref_log_ratio = ref_logprobs - logprobs  # log(pi_ref / pi)
    kl = torch.expm1(ref_log_ratio) - ref_log_ratio  # (B, N), k3 >= 0
    if token_level:
        loss = -masked_mean(surrogate - beta * kl, mask)  # over every response token of the batch
    else:
        # over each response's tokens, then responses
        loss = -masked_mean(surrogate - beta * kl, mask, dim=1).mean()
    with torch.no_grad():
        # share of tokens where the clip is active
        clipfrac = masked_mean((clipped < unclipped).float(), mask)
        stats = {
            "clipfrac": clipfrac.item(),
            "kl_k3": masked_mean(kl, mask).item(),
            "ratio": masked_mean(ratio, mask).item(),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask).item(),
        }
    return loss, stats
