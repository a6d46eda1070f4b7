"""Two ways to hold less of a model in memory, applied to it in place.

- `checkpoint_layers`: activation checkpointing; each layer keeps only its input and runs again in the
  backward pass (GRADIENT_CHECKPOINTING).
- `frozen_model`: a frozen model's matrices stored in bfloat16, with bit-identical outputs under bf16
  autocast (FROZEN_BF16: PPO's and GRPO's reference and reward model).
"""
import torch

from utils import UserError


def checkpoint_layers(model: torch.nn.Module) -> int:
    """Activation (gradient) checkpointing: each transformer layer keeps only its input for the
    backward pass and runs again there, so the activations held at once are one layer's, not every
    layer's (about one more forward pass of compute). Returns how many layers it wrapped.

    Hugging Face's own switch (`gradient_checkpointing_enable`) acts only in training mode, and PPO
    learns in eval mode (no dropout: the ratio is 1 before an update), so the layers are wrapped
    here instead, whatever the mode. Wherever gradients are recorded the layer runs under
    torch.utils.checkpoint (the random state is replayed, so dropout draws the same mask twice; the
    KV cache is not written, a replay would write it again); without gradients (generation, scoring)
    it runs as before."""
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise UserError(f"GRADIENT_CHECKPOINTING: {type(model).__name__} has no transformer layers to checkpoint")
    for layer in layers:
        if getattr(layer, "checkpointed", False):
            continue

        def forward(*args, _forward=layer.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            kwargs["use_cache"] = False
            if "cache" in kwargs:
                kwargs["cache"] = None
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
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
    return model
