"""Prefix tuning: trainable key and value vectors for n virtual positions in every attention layer
(Li and Liang 2021, https://arxiv.org/abs/2101.00190). Each layer attends to them as if they were
earlier tokens already in the KV cache:

    attention(q, [K_prefix ; K], [V_prefix ; V])     K_prefix, V_prefix: (n_virtual, d) per layer

Trainable parameters without the reparameterising MLP: n_virtual * 2 * n_layers * d
(opt-125m, n=10: 10 * 2 * 12 * 768 = 184,320). The input length and the logits are unchanged: the
prefix lives in the cache, not in the sequence.

Implemented by the peft library (`PrefixTuningConfig`); generation goes through model/peft/generation.py.
"""
from peft import PrefixTuningConfig

from model.peft.common import peft_task_type


def prefix_tuning_config(
    task: str = "causal", num_virtual_tokens: int = 10, projection: bool = False
) -> PrefixTuningConfig:
    """projection=True trains an MLP that produces the prefix (the paper's reparameterisation)."""
    return PrefixTuningConfig(task_type=peft_task_type(task), num_virtual_tokens=num_virtual_tokens,
                              prefix_projection=projection)


def prefix_tuning_parameter_count(num_virtual_tokens: int, num_layers: int, d_model: int) -> int:
    return num_virtual_tokens * 2 * num_layers * d_model
