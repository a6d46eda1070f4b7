"""Generation helpers: batched sampling from left-padded prompts, responses cut at their first EOS with
their masks, and the log-probs of those responses under a policy at the sampling temperature."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from dataset.chat import prompt_ids
from dataset.tokens import fit_lengths, pad
from model.loss import entropy_from_logprobs, linear_token_logprobs
from model.memory import hidden_and_head


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row gets the positions it would have
    unpadded (OPT derives the same from the mask; Llama-style models need them passed).  (B, T) -> (B, T)"""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    return_scores: bool = False,
):
    """Generate from left-padded prompts (KV cache, stop at EOS, no minimum length).

    Returns the full sequences (B, P + N): prompt left-padded to P, response right-padded with pad;
    with return_scores, also the sampler's processed next-token logits, (B, N, V).
    OPT derives positions from the attention mask, so passing it makes left padding exact. The
    generation config is built here from the arguments alone: a checkpoint's own generation_config
    (top_k=50, a repetition penalty, ...) would otherwise change the distribution that is sampled
    behind the back of whoever scores it (PPO's log-probs).
    """
    was_training = model.training
    model.eval()  # dropout off
    input_ids = pad(prompt_ids, tokenizer.pad_token_id, side="left").to(model.device)  # (B, P)
    # (B, P)
    attention_mask = pad([[1] * len(p) for p in prompt_ids], 0, side="left").to(model.device)
    sampling = (
        dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
        if do_sample
        else dict(do_sample=False)
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        output_scores=return_scores,
        return_dict_in_generate=return_scores,
        **sampling
    )
    # a PEFT model's base holds it
    holder = model.get_base_model() if hasattr(model, "get_base_model") else model
    # only `config` applies
    saved, holder.generation_config = holder.generation_config, GenerationConfig()
    try:
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config
        )
    finally:
        holder.generation_config = saved
        model.train(was_training)
    if return_scores:
        return out.sequences, torch.stack(out.scores, 1)  # (B, P + N), (B, N, V)
    return out  # (B, P + N)


def decode_responses(tokenizer, sequences: torch.Tensor, prompt_len: int) -> list[str]:
    """Response text of each row: tokens after the prompt, up to (not including) the first EOS.
    The search looks at the response only: OPT's prompt starts with EOS used as BOS."""
    texts = []
    for row in sequences[:, prompt_len:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        texts.append(
            tokenizer.decode(
                [t for t in row if t != tokenizer.pad_token_id], skip_special_tokens=True
            )
        )
    return texts


def answer(
    model,
    tokenizer,
    rows: list[dict],
    max_prompt_len: int,
    max_new_tokens: int,
    batch_size: int = 64,
    chat_template: bool = False,
    **sampling
) -> list[str]:
    """Answer each prompt row (greedy unless do_sample=True is passed)."""
    responses = []
    for i in range(0, len(rows), batch_size):
        ids = [
            fit_lengths(prompt_ids(tokenizer, r, chat_template), [], max_prompt_len)[0]
            for r in rows[i : i + batch_size]
        ]
        seqs = generate(model, tokenizer, ids, max_new_tokens, **sampling)
        responses += decode_responses(tokenizer, seqs, max(len(p) for p in ids))
    return responses


def respond(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int,
    batch_size: int = 16,
    **sampling
) -> list[str]:
    """The assistant's next turn in each conversation, rendered with the tokenizer's chat template."""
    return answer(
        model,
        tokenizer,
        [{"messages": c} for c in conversations],
        10**9,
        max_new_tokens,
        batch_size,
        **sampling
    )


@dataclass
class Responses:
    """Sampled responses after their left-padded prompts. B = rows, P = padded prompt length, N = response length."""
    sequences: torch.Tensor  # (B, P + N) prompt, then response; pad after the first EOS
    attention_mask: torch.Tensor  # (B, P + N)
    action_mask: torch.Tensor  # (B, N) 1 on response tokens up to and including the first EOS
    has_eos: torch.Tensor  # (B,) whether the response ended with EOS (False: cut by max_new_tokens)
    context_length: int  # P


def sample_responses(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, **sampling
) -> Responses:
    """Generate a response to each prompt (token ids) and cut it after its first EOS: later tokens become
    pad and leave every mask, so nothing after EOS is scored or trained on."""
    sequences = generate(model, tokenizer, prompts, max_new_tokens, **sampling)  # (B, P + N)
    P = max(len(p) for p in prompts)
    response = sequences[:, P:]  # (B, N)
    is_eos = response == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0  # (B, N): strictly after the first EOS
    action_mask = (~after_eos).long()  # (B, N)
    sequences[:, P:] = response.masked_fill(after_eos, tokenizer.pad_token_id)
    # (B, P)
    prompt_mask = pad([[1] * len(p) for p in prompts], 0, side="left").to(sequences.device)
    return Responses(
        sequences, torch.cat([prompt_mask, action_mask], 1), action_mask, is_eos.any(1), P
    )


def closed(out: Responses, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences, attention_mask) (B, P + N + 1): out's, with EOS appended to each response that max_new_tokens
    cut (has_eos False; it fills all N positions) and pad elsewhere. A reward model reads its score at the last
    real token; every reply it was trained on ended with EOS, so this reads a cut reply as if it ended there,
    not at a mid-sentence token it never scored in training."""
    cut = ~out.has_eos  # (B,)
    extra = torch.where(cut, eos_id, pad_id)[:, None].to(out.sequences.dtype)  # (B, 1)
    return (torch.cat([out.sequences, extra], 1),
            torch.cat([out.attention_mask, cut[:, None].to(out.attention_mask.dtype)], 1))


def response_logprobs(
    model,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    temperature: float,
    chunk: int = 0,
    unwrapped=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the response tokens under the sampling distribution (logits divided by
    `temperature`, as the sampler did), each read at the position that predicts it (one to the left), and the
    entropy of that distribution there (without gradient: a metric). Scoring actor and reference this way makes
    PPO's ratio and KL refer to the policy that produced the samples. Only the last N + 1 positions go through
    the LM head (`logits_to_keep`): the prompt's logits are never used.

    chunk > 0 (LM_HEAD_CHUNK): the forward pass stops at the final hidden states and the LM head runs on `chunk`
    tokens and a slice of the vocabulary at a time (model/loss.py linear_token_logprobs), so no (B, N, V) logits
    or log-probs exist; `unwrapped` is the model whose lm_head that is (a DDP wrapper's inner model; default: model), and it
    must be a plain head (model/memory.py chunkable_lm_head). chunk 0: the full-vocabulary log-softmax.
    Returns (token log-probs (B, N), entropies (B, N)), fp32."""
    n = sequences.size(1) - context_length  # N
    tokens = sequences[:, context_length:]  # (B, N)
    inputs = dict(input_ids=sequences, attention_mask=attention_mask,
                  position_ids=position_ids_for(attention_mask), logits_to_keep=n + 1)
    if chunk:
        hidden, head = hidden_and_head(model, inputs, unwrapped)
        # (B, N, H): positions P-1 .. P+N-2
        return linear_token_logprobs(hidden[:, :-1], head.weight, tokens, temperature, chunk)
    logits = model(**inputs).logits[:, :-1]  # (B, N, V): positions P-1 .. P+N-2
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, N, V)
    return (torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1),
            entropy_from_logprobs(logp.detach()))
