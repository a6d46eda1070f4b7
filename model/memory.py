"""Ways to hold less of a model in memory, applied to it in place.

- `checkpoint_layers`: activation checkpointing; each layer keeps only its input and runs again in the
  backward pass (GRADIENT_CHECKPOINTING=True), or keeps its matrix products' outputs too and runs again only
  the cheap ops between them (GRADIENT_CHECKPOINTING='selective').
- `frozen_model`: a frozen model's matrices stored in bfloat16, with bit-identical outputs under bf16
  autocast (FROZEN_BF16: PPO's and GRPO's reference and reward model); the rest copied out of the mapped
  checkpoint file (`own_memory`), so the pages the cast read are not kept resident.
- `direct_tied_grad`: a tied LM head's gradient goes straight into the matrix's .grad and the embedding's lookup
  adds only its rows to it, so autograd never sums two full (V, H) gradients into a third.
- `lm_head_skipped` / `hidden_and_head` with `chunkable_lm_head`: the forward stops at the final hidden
  states, so SFT's loss and PPO's log-probs can take the LM head chunk by chunk (LM_HEAD_CHUNK, model/loss.py
  `linear_cross_entropy`, `linear_token_logprobs`) without full-vocabulary logits.
"""
import contextlib
import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy

from utils import ConfigError, UserError


# what selective checkpointing keeps: the outputs of the matrix products and of attention (the ops that cost
# FLOPs); everything between them (norms, casts, activations, dropout, residual adds) runs again
_KEPT_OPS = frozenset(("addmm", "mm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu",
                       "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                       "_scaled_dot_product_cudnn_attention", "_efficient_attention_forward",
                       "_flash_attention_forward"))


def _keep_products(ctx, op, *args, **kwargs):
    """The policy of selective checkpointing (torch.utils.checkpoint.create_selective_checkpoint_contexts),
    asked for every op a checkpointed layer runs."""
    kept = op.overloadpacket.__name__ in _KEPT_OPS
    return CheckpointPolicy.MUST_SAVE if kept else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_layers(model: torch.nn.Module, selective: bool = False) -> int:
    """Activation (gradient) checkpointing: each transformer layer keeps only its input for the
    backward pass and runs again there, so the activations held at once are one layer's, not every
    layer's (about one more forward pass of compute). selective: each layer also keeps the outputs of its
    matrix products and attention (`_KEPT_OPS`), and the replay runs only the ops between them (norms, casts,
    ReLU, dropout, adds): faster than full checkpointing, for memory between it and none (SFT on opt-125m:
    docs/throughput.md). Returns how many layers it wrapped.

    Hugging Face's own switch (`gradient_checkpointing_enable`) acts only in training mode, and PPO
    learns in eval mode (no dropout: the ratio is 1 before an update), so the layers are wrapped
    here instead, whatever the mode. Wherever gradients are recorded the layer runs under
    torch.utils.checkpoint (the random state is replayed, so dropout draws the same mask twice; the
    KV cache is not written, a replay would write it again); without gradients (generation, scoring)
    it runs as before."""
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise UserError(f"GRADIENT_CHECKPOINTING: {type(model).__name__} has no transformer layers to checkpoint")
    options = {"context_fn": functools.partial(create_selective_checkpoint_contexts, _keep_products)} if selective else {}
    for layer in layers:
        if getattr(layer, "checkpointed", False):
            continue

        def forward(*args, _forward=layer.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            kwargs["use_cache"] = False
            if "cache" in kwargs:
                kwargs["cache"] = None
            return checkpoint(_forward, *args, use_reentrant=False, **options, **kwargs)
        layer.forward, layer.checkpointed = forward, True
    return len(layers)


def frozen_model(model: torch.nn.Module) -> torch.nn.Module:
    """Store the frozen model's Linear weights (not biases, norms or embeddings) in bfloat16, in
    place.

    Under bf16 autocast a Linear casts its fp32 weight to bf16 on every call; a weight stored
    already rounded is the same bf16 tensor, so every output is bit-identical (the reference's KL to
    a copied actor stays exactly 0) while the matrices take half the memory and skip the cast.
    Embeddings and a tied LM head stay fp32: an embedding lookup is not autocast, so rounding it
    would change the numbers. Only valid under autocast (an fp32 input meets a bf16 weight
    otherwise)."""
    tied = {id(p) for m in (model.get_input_embeddings(),) if m is not None for p in m.parameters()}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in tied:
            module.weight = torch.nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
    own_memory(model)
    return model


def own_memory(model: torch.nn.Module) -> None:
    """Give every parameter and buffer on the CPU a copy in memory of its own, in place (a tied weight
    stays tied: its Parameter object is kept), so none points into a mapped checkpoint file.
    from_pretrained maps the safetensors file into the process, and every page of it that was read stays
    resident as long as one tensor still points into the mapping. After frozen_model's cast only the
    embeddings, biases and norms do, yet the cast has read the whole file: for opt-125m's reward model
    440 MiB resident for 160 MiB of tensors. Copied, the mapping is released."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "cpu":
            t.data = t.data.clone()


def chunkable_lm_head(model: torch.nn.Module):
    """The model's LM head where linear_cross_entropy (model/loss.py) can stand in for it and the
    cross-entropy after it: a bias-free nn.Linear at `model.lm_head` (OPT, Llama and most causal LMs,
    BitFit included) and no scaling of the logits after it. None otherwise: a wrapper (peft's PeftModel reaches
    its base model's head through attribute lookup, and prompt tuning adds positions) or a model that scales
    or caps its logits; the ordinary path then."""
    head = dict(model.named_children()).get("lm_head")  # the model's own child, not a wrapped model's
    scaled = any(getattr(getattr(model, "config", None), k, None)
                 for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return head if type(head) is torch.nn.Linear and head.bias is None and not scaled else None


def direct_tied_grad(model: torch.nn.Module) -> bool:
    """Where the input embedding and the LM head share one trainable matrix (OPT, SmolLM2) and the loss takes the
    head through model/loss.py's chunked functions: those add the head's (V, H) gradient straight into the
    matrix's .grad, and the embedding lookup's gradient is made sparse (the batch's rows only), which autograd
    then adds into that .grad in place. Without it autograd holds three (V, H) fp32 matrices at the end of the
    backward pass: the head's gradient, the lookup's (zeros but for the batch's rows) and their sum, made out of
    place (opt-125m: 147 MiB each, and a pass over each). The gradient is the same up to float rounding
    (tests/test_levers.py). In place, before the model is wrapped; one process only (DDP reduces the gradients
    autograd accumulates, and would take the lookup's for a sparse one). Returns whether it applied."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if (head is None or type(emb) is not torch.nn.Embedding or emb.weight is not getattr(head, "weight", None)
            or not emb.weight.requires_grad or emb.max_norm is not None):
        return False
    emb.sparse = True
    emb.weight.head_grad_direct = True  # read by model/loss.py's Functions: add into .grad, return None
    return True


LM_HEAD_CHUNK_MIN_VOCAB = 8192  # 'auto' chunks the LM head from this vocabulary size up
LM_HEAD_CHUNK_AUTO = 256  # supervised tokens per chunk under 'auto'


def resolve_lm_head_chunk(setting, model: torch.nn.Module) -> int:
    """LM_HEAD_CHUNK as tokens per chunk (0: the ordinary LM head and loss). 'auto': LM_HEAD_CHUNK_AUTO where
    the vocabulary has at least LM_HEAD_CHUNK_MIN_VOCAB tokens (opt-125m 50,272, SmolLM2 49,152: the
    full-vocabulary logits are then a large share of a step's memory), 0 for the embedded model's 512. Prints
    what 'auto' chose and why."""
    if setting != "auto":
        try:
            chunk = int(setting)
        except (TypeError, ValueError):
            chunk = -1
        if chunk < 0 or isinstance(setting, bool):
            raise ConfigError(f"LM_HEAD_CHUNK={setting!r}: expected 'auto', 0 (off) or tokens per chunk")
        return chunk
    vocab = getattr(getattr(model, "config", None), "vocab_size", 0) or 0
    chunk = LM_HEAD_CHUNK_AUTO if vocab >= LM_HEAD_CHUNK_MIN_VOCAB else 0
    print(f"LM_HEAD_CHUNK='auto': {chunk or 'off'} (vocabulary {vocab}"
          f"{'' if chunk else f' < {LM_HEAD_CHUNK_MIN_VOCAB}'})")
    return chunk


@contextlib.contextmanager
def lm_head_skipped(model: torch.nn.Module):
    """Inside, the model's forward returns its final hidden states where it returned logits (its
    `lm_head` is an identity); the head is back on the way out, errors included."""
    head = model.lm_head
    model.lm_head = torch.nn.Identity()
    try:
        yield head
    finally:
        model.lm_head = head


def hidden_and_head(model, inputs: dict, unwrapped=None) -> tuple:
    """(final hidden states, LM head) of model(**inputs): the forward pass without the head, for a loss that
    takes the head in chunks (model/loss.py linear_cross_entropy, linear_token_logprobs). `unwrapped` is the
    module that owns `lm_head` when model is a wrapper around it (DDP); default: model itself."""
    with lm_head_skipped(unwrapped if unwrapped is not None else model) as head:
        return model(**inputs).logits, head
