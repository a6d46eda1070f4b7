"""P-tuning: virtual tokens produced by a small trainable network, the prompt encoder (Liu et al. 2021,
"GPT Understands, Too", https://arxiv.org/abs/2103.10385). peft's MLP encoder:

    P = W3 relu(W2 relu(W1 e + b1) + b2) + b3     e: (n_virtual, d) trainable embedding,
                                                  W1: (h, d), W2: (h, h), W3: (d, h)

and P goes in front of the input embeddings, as in prompt tuning. The encoder re-parameterises the
prompt, which makes it train more stably; it is only needed for training: after training P can be
computed once, and that (n_virtual, d) tensor is what peft saves.

Trainable parameters: n*d + (h*d + h) + (h*h + h) + (d*h + d). With peft's default h = d (the encoder
is as wide as the model) on opt-125m, n=10, d=768: 7,680 + 3 * (768*768 + 768) = 1,779,456, about 230x
prompt tuning's 7,680, because of the three d x d matrices of the encoder.
"""
from peft import PromptEncoderConfig

from model.peft.common import peft_task_type


def p_tuning_config(
    task: str = "causal", num_virtual_tokens: int = 10, encoder_hidden_size: int = None
) -> PromptEncoderConfig:
    """MLP prompt encoder; encoder_hidden_size None means d_model (peft's default)."""
    return PromptEncoderConfig(
        task_type=peft_task_type(task),
        num_virtual_tokens=num_virtual_tokens,
        encoder_reparameterization_type="MLP",
        encoder_hidden_size=encoder_hidden_size,
    )


def p_tuning_parameter_count(num_virtual_tokens: int, d_model: int, hidden: int = None) -> int:
    h = hidden or d_model
    return num_virtual_tokens * d_model + (h * d_model + h) + (h * h + h) + (d_model * h + d_model)
