"""Generation for prompt-learning models (prompt tuning, p-tuning, prefix tuning).

peft 0.21's own `generate()` for these methods breaks under transformers 5.24: the KV cache argument
was renamed `cache`, so peft does not see it and re-inserts the virtual tokens at every step (a shape
error for OPT). This loop does the same job explicitly:

1. prefill: the virtual tokens (prompt / p-tuning: n embeddings in front of the prompt; prefix tuning: a
   KV cache pre-filled with n positions), the prompt, and an attention mask of ones over the n virtual
   positions, in one forward pass of the frozen base model;
2. decode: one token per step through the base model with the cache, greedy or sampled.

Positions are cumsum(attention_mask) - 1, as OPT computes them and as training saw them (virtual tokens
at 0..n-1, the prompt after them), so left padding is exact for Llama-style models too.
"""
import torch


def _pick(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """Next token from logits (B, V) -> (B,): argmax, or a sample after temperature, top-k and top-p."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)  # (B, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # keep the smallest set whose mass reaches top_p
        drop = cum - sorted_logits.softmax(-1) > top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


@torch.no_grad()
def generate_with_virtual_tokens(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Same contract as `transformers` generate on left-padded prompts: input_ids, attention_mask (B, P)
    -> sequences (B, P + N), finished rows padded with pad_token_id, stopping early once all have EOS."""
    config, base = model.active_peft_config, model.get_base_model()
    B, n = input_ids.shape[0], config.num_virtual_tokens
    mask = torch.cat([attention_mask.new_ones(B, n), attention_mask], dim=1)  # (B, n + P)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, n + P)
    if config.peft_type.value == "PREFIX_TUNING":
        out = base(
            input_ids=input_ids,
            attention_mask=mask,
            cache=model.get_prompt(B),
            position_ids=positions[:, n:],
            use_cache=True,
        )
    else:
        embeds = torch.cat(
            [model.get_prompt(B).to(base.dtype), base.get_input_embeddings()(input_ids)], dim=1
        )  # (B, n + P, d)
        out = base(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True
        )
    new_tokens, done = [], torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        token = _pick(out.logits[:, -1], do_sample, temperature, top_k, top_p)  # (B,)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)
        new_tokens.append(token)
        done |= token == eos_token_id
        if done.all() or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)  # (B, n + P + step + 1)
        out = base(input_ids=token[:, None], attention_mask=mask, cache=out.past_key_values,
                   position_ids=mask.sum(1, keepdim=True) - 1, use_cache=True)
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)  # (B, P + N)
