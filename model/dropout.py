"""Dropout on CPU with a cheaper random draw: the same Bernoulli(1 - p) mask and scaling as torch's dropout, from
a third of the time.

torch's CPU dropout draws its mask with `bernoulli_(1 - p)`, about 5 ns an element on these machines (0.1 s of an
opt-125m SFT step at batch 8, more with checkpointing, whose replay draws it again). Here the mask comes from
uniform 32-bit integers, two per 64-bit draw of the same generator (`random_` over the full int64 range), each
kept where it is below (1 - p) * 2^32: the keep probability is 1 - p to within 2^-32, as exact as
torch's own. Kept values are multiplied by 1 / (1 - p) rounded to the input's dtype, as torch's are, and the
backward pass multiplies the gradient by the same mask and scale; the mask is kept as one byte an element (torch
keeps it in the input's dtype). Only the random stream differs from torch's: another run of the same seed gives
the same masks, and a checkpoint's saved generator state resumes them exactly.

`fast_dropout_layers` puts it under every transformer layer of a model (Hugging Face's layers call
`torch.nn.functional.dropout`; a TorchFunctionMode catches those calls while a layer runs in training mode with
gradients on), before activation checkpointing wraps the layers, so a checkpoint's replay draws the same mask.
"""
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


_SCRATCH = {}  # device -> the largest int64 buffer of random bits drawn so far, reused by every call


def _scratch(size: int, device: torch.device) -> torch.Tensor:
    """`size` int64 elements of one buffer kept per device (grown when a larger draw comes): the random bits are
    read once, into the mask, so a new block for them on each call would only split the heap between the step's
    big tensors (SFT: about 100 MiB more peak RSS)."""
    buffer = _SCRATCH.get(device)
    if buffer is None or buffer.numel() < size:
        buffer = _SCRATCH[device] = torch.empty(size, dtype=torch.int64, device=device)
    return buffer[:size]


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        n = x.numel()
        bits = _scratch((n + 1) // 2, x.device).random_(-2**63, None)  # int64 over its full range
        keep = bits.view(torch.int32)[:n].view(x.shape) < round((1 - p) * 2**32) - 2**31  # P = 1 - p
        scale = torch.ones((), dtype=x.dtype, device=x.device).div_(1 - p)  # torch's: 1 / (1 - p) in x's dtype
        ctx.save_for_backward(keep, scale)
        return x.mul(scale).mul_(keep)

    @staticmethod
    def backward(ctx, grad):
        keep, scale = ctx.saved_tensors
        return grad.mul(scale).mul_(keep), None


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """torch.nn.functional.dropout with the cheaper mask above where it applies (training, 0 < p < 1, a
    floating-point tensor on the CPU, not in place); torch's own otherwise."""
    if not training or not 0 < p < 1 or inplace or x.device.type != "cpu" or not x.is_floating_point():
        return F.dropout(x, p, training, inplace)
    return _Dropout.apply(x, p)


class _CpuDropoutMode(TorchFunctionMode):
    """Inside: calls to torch.nn.functional.dropout run `dropout` above; every other call as it was."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:  # (the mode is off while this runs: F.dropout inside is torch's)
            return dropout(*args, **kwargs)
        return func(*args, **kwargs)


def has_dropout(model: torch.nn.Module) -> bool:
    """Whether the model's config sets any dropout above 0 (OPT's `dropout` 0.1; SmolLM2 has none): a model
    without any gets no wrapper, whose mode would only cost time."""
    config = getattr(model, "config", None)
    if config is None:
        return True
    return any(isinstance(v, float) and v > 0 for k, v in config.to_dict().items() if "dropout" in k or "pdrop" in k)


def fast_dropout_layers(model: torch.nn.Module) -> int:
    """Every transformer layer of `model` (Hugging Face's GradientCheckpointingLayer) draws its dropout masks with
    `dropout` above when it runs in training mode with gradients on, on the CPU; otherwise (evaluation,
    generation, PPO's eval-mode learning) it runs as before, without the mode's cost; a model without dropout is
    left as it is. In place, before checkpoint_layers (model/memory.py). Returns how many layers it wrapped."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not has_dropout(model):
        return 0
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        if getattr(layer, "fast_dropout", False):
            continue

        def forward(*args, _forward=layer.forward, _layer=layer, **kwargs):
            if not (_layer.training and torch.is_grad_enabled()):
                return _forward(*args, **kwargs)
            with _CpuDropoutMode():
                return _forward(*args, **kwargs)
        layer.forward, layer.fast_dropout = forward, True
    return len(layers)
