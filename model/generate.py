"""Generation helpers: batched sampling from left-padded prompts, and the gold-score evaluation."""
import torch
from transformers import GenerationConfig

from dataset.sft import encode_prompt, fit_lengths, pad, render_prompt


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, return_scores: bool = False):
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
    attention_mask = pad([[1] * len(p) for p in prompt_ids], 0, side="left").to(model.device)  # (B, P)
    sampling = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p) if do_sample else dict(do_sample=False)
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                              output_scores=return_scores, return_dict_in_generate=return_scores, **sampling)
    holder = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's base holds it
    saved, holder.generation_config = holder.generation_config, GenerationConfig()  # only `config` applies
    try:
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
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
        texts.append(tokenizer.decode([t for t in row if t != tokenizer.pad_token_id], skip_special_tokens=True))
    return texts


def answer(model, tokenizer, rows: list[dict], max_prompt_len: int, max_new_tokens: int, batch_size: int = 64,
           **sampling) -> list[str]:
    """Answer each prompt row (greedy unless do_sample=True is passed)."""
    responses = []
    for i in range(0, len(rows), batch_size):
        ids = [fit_lengths(encode_prompt(tokenizer, render_prompt(r)), [], max_prompt_len)[0] for r in rows[i: i + batch_size]]
        seqs = generate(model, tokenizer, ids, max_new_tokens, **sampling)
        responses += decode_responses(tokenizer, seqs, max(len(p) for p in ids))
    return responses


def gold_eval(model, tokenizer, rows: list[dict], max_prompt_len: int, max_new_tokens: int, **sampling) -> dict:
    """Mean gold-judge score, correctness and format of the model's answers, overall and per type."""
    from dataset.task import judge

    responses = answer(model, tokenizer, rows, max_prompt_len, max_new_tokens, **sampling)
    judged = [judge(render_prompt(r), resp) for r, resp in zip(rows, responses)]
    out = {k: sum(j[k] for j in judged) / len(judged) for k in ("score", "correct", "format")}
    for kind in sorted({r.get("type", "all") for r in rows}):
        sel = [j for r, j in zip(rows, judged) if r.get("type", "all") == kind]
        out[f"{kind}/score"] = sum(j["score"] for j in sel) / len(sel)
        out[f"{kind}/correct"] = sum(j["correct"] for j in sel) / len(sel)
        out[f"{kind}/format"] = sum(j["format"] for j in sel) / len(sel)
    return {"responses": responses, "judged": judged, **out}
