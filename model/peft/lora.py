"""LoRA: a trainable low-rank update beside each frozen weight matrix (Hu et al. 2021,
https://arxiv.org/abs/2106.09685, Eq. 3):

    h = W0 x + (alpha / r) * B A x        W0: (d_out, d_in) frozen,  A: (r, d_in),  B: (d_out, r)

A starts random (Kaiming-uniform) and B starts at zero, so at initialisation B A = 0 and the adapted model
computes exactly what the base model does. Trainable parameters: r * (d_in + d_out) per adapted matrix;
for opt-125m with r=4 on q_proj and v_proj (768 -> 768) in 12 layers: 12 * 2 * 4 * (768 + 768) = 147,456.
After training, W0 + (alpha / r) B A can be folded into one matrix (`merge_lora`): same outputs, no extra
cost at inference, and the result is a plain transformers model again.

Implemented by the peft library (`LoraConfig`); this file holds the settings this repo uses.
"""
from peft import LoraConfig

from model.peft.common import peft_task_type

# attention query and value projections, as in the LoRA paper
DEFAULT_TARGETS = ("q_proj", "v_proj")


def lora_config(task: str = "causal", r: int = 8, alpha: int = 16, dropout: float = 0.0,
                targets: tuple = DEFAULT_TARGETS, modules_to_save: list = None) -> LoraConfig:
    """LoRA of rank r on the linear layers named in `targets`. For a reward model or critic
    (task='reward') the new scalar head `score` is trained in full (it has no pretrained weights)."""
    if task == "reward" and modules_to_save is None:
        modules_to_save = ["score"]
    return LoraConfig(task_type=peft_task_type(task), r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=list(targets), modules_to_save=modules_to_save)


def lora_parameter_count(shapes: list[tuple[int, int]], r: int) -> int:
    """r * (d_in + d_out) summed over the adapted matrices, given as (d_out, d_in) shapes."""
    return sum(r * (d_in + d_out) for d_out, d_in in shapes)


def merge_lora(model):
    """Fold every B A into its W0 and drop the adapters: returns the plain transformers model, whose
    logits equal the adapted model's (up to float rounding)."""
    return model.merge_and_unload()
