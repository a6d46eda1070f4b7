"""Prompt tuning: n trainable "virtual token" embeddings put in front of every input (Lester et al. 2021,
https://arxiv.org/abs/2104.08691). The whole model stays frozen:

    inputs_embeds = [P ; E x]        P: (n_virtual, d_model) trainable,  E x: (T, d_model) frozen embeddings

Trainable parameters: n_virtual * d_model (opt-125m, n=10: 10 * 768 = 7,680). The model sees n more
positions, so its logits have n more rows: (B, n + T, V); callers keep the last T (see trainer/sft.py).
Needs a high learning rate (1e-2 to 3e-2): the embeddings start far from anything useful.

Implemented by the peft library (`PromptTuningConfig`); generation goes through model/peft/generation.py.
"""
import torch
from peft import PromptTuningConfig

from model.peft.common import peft_task_type


def prompt_tuning_config(task: str = "causal", num_virtual_tokens: int = 10) -> PromptTuningConfig:
    """Randomly initialised virtual tokens (peft's default init)."""
    return PromptTuningConfig(task_type=peft_task_type(task), num_virtual_tokens=num_virtual_tokens)


def prompt_tuning_parameter_count(num_virtual_tokens: int, d_model: int) -> int:
    return num_virtual_tokens * d_model


def text_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The logits of the input's own T tokens: prompt tuning and p-tuning put n virtual tokens in front,
    giving (B, n + T, V); keep the last T. A no-op for every other model (prefix tuning included)."""
    return logits[:, -input_ids.shape[1]:]  # (B, T, V)
