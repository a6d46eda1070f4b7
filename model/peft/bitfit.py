"""BitFit: train only the bias terms (Ben Zaken et al. 2021, https://arxiv.org/abs/2106.10199).

    h = W0 x + b        W0 frozen, b: (d_out,) trainable; also the LayerNorm biases

Written here by hand (peft has no BitFit): freeze every parameter whose name does not end in "bias".
Trainable parameters on opt-125m: per layer 4 * 768 (q, k, v, out) + 3072 (fc1) + 768 (fc2)
+ 2 * 768 (two LayerNorms) = 8,448; 12 layers + the final LayerNorm: 12 * 8,448 + 768 = 102,144.
Llama-style models (SmolLM2) have no biases at all, so BitFit trains nothing there.

Unlike the peft methods, BitFit changes base weights in place: there is no adapter to switch off, so a
PPO reference model must be a separate copy. What is saved is the biases only (`save_bitfit`).
"""
import json
import os

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "bitfit_biases.safetensors"


def apply_bitfit(model: torch.nn.Module, task: str = "causal") -> torch.nn.Module:
    """Set requires_grad on biases only (and, for a reward model, on the new `score` head)."""
    for name, param in model.named_parameters():
        param.requires_grad = name.endswith("bias") or (
            task == "reward" and name.startswith("score.")
        )
    return model


def bitfit_parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))


def save_bitfit(model: torch.nn.Module, out_dir: str) -> None:
    """Write the trainable tensors (the biases) and a small config naming the method."""
    os.makedirs(out_dir, exist_ok=True)
    tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, os.path.join(out_dir, WEIGHTS))
    with open(os.path.join(out_dir, "bitfit_config.json"), "w") as f:
        json.dump({"method": "bitfit", "tensors": len(tensors)}, f)


def load_bitfit(model: torch.nn.Module, adapter_dir: str) -> torch.nn.Module:
    """Copy saved biases into a base model; every saved tensor must find its parameter."""
    tensors = load_file(os.path.join(adapter_dir, WEIGHTS))
    missing = set(tensors) - set(dict(model.named_parameters()))
    if missing:
        # imported here: model/load.py loads adapters through this package
        from model.load import ModelError

        raise ModelError(
            f"{adapter_dir}: {len(missing)} saved biases have no parameter in the model, "
            f"e.g. {sorted(missing)[:3]} (give the base model the adapter was trained on)"
        )
    model.load_state_dict(tensors, strict=False)
    return model
