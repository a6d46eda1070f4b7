"""Parameter-efficient fine-tuning (PEFT) for every stage: one file per method, one entry point.

    model = apply_peft(model, "lora", task="causal", r=8, alpha=16, targets=("q_proj", "v_proj"))
    print(format_counts(*count_parameters(model)))

Methods (settings are keyword arguments of the config function in each file):
  none            full fine-tuning, the model is returned unchanged
  lora            lora.py           r, alpha, dropout, targets, modules_to_save
  prompt_tuning   prompt_tuning.py  num_virtual_tokens
  p_tuning        p_tuning.py       num_virtual_tokens, encoder_hidden_size
  prefix_tuning   prefix_tuning.py  num_virtual_tokens, projection
  bitfit          bitfit.py         (none; handwritten, peft has no BitFit)
task='causal' is a causal LM (SFT, PPO actor); task='reward' is an AutoModelForSequenceClassification
reward model or critic, whose new `score` head is always trained in full.

The peft methods return a `peft.PeftModel`: the base weights are frozen, `save_pretrained` writes the
adapter only, and `disabled_adapters(model)` runs the untouched base model (PPO's reference policy).
"""
import contextlib
import os

import torch
from peft import PeftModel, get_peft_model

from model.peft.bitfit import apply_bitfit, load_bitfit, save_bitfit
from model.peft.generation import generate_with_virtual_tokens
from model.peft.lora import lora_config, merge_lora
from model.peft.p_tuning import p_tuning_config
from model.peft.prefix_tuning import prefix_tuning_config
from model.peft.prompt_tuning import prompt_tuning_config
from utils import ConfigError

PEFT_CONFIGS = {
    "lora": lora_config,
    "prompt_tuning": prompt_tuning_config,
    "p_tuning": p_tuning_config,
    "prefix_tuning": prefix_tuning_config,
}
METHODS = ("none", "bitfit", *PEFT_CONFIGS)
SETTINGS = {
    "lora": ("r", "alpha", "dropout", "targets", "modules_to_save"),
    "prompt_tuning": ("num_virtual_tokens",),
    "p_tuning": ("num_virtual_tokens", "encoder_hidden_size"),
    "prefix_tuning": ("num_virtual_tokens", "projection"),
    "bitfit": (),
    "none": (),
}


def apply_peft(model, method: str, task: str = "causal", **settings):
    """Make `model` parameter-efficient with `method` (see the module docstring); returns the model to train.

    A script may pass all its PEFT settings whatever the method: those that do not apply to `method`
    are ignored (LoRA's rank for prompt tuning), names no method knows raise."""
    if method not in METHODS:
        raise ConfigError(f"PEFT={method!r}: unknown method (expected one of {', '.join(METHODS)})")
    unknown = set(settings) - {k for names in SETTINGS.values() for k in names}
    if unknown:
        raise ConfigError(f"unknown PEFT settings {sorted(unknown)} (known: {SETTINGS})")
    settings = {k: v for k, v in settings.items() if k in SETTINGS[method]}
    if method == "none":
        return model
    if method == "bitfit":
        return apply_bitfit(model, task)
    return _fix_generate(get_peft_model(model, PEFT_CONFIGS[method](task, **settings)))


def _fix_generate(model):
    """Route generate() of prompt-learning causal LMs through model/peft/generation.py (see its docstring)."""
    if (
        model.active_peft_config.is_prompt_learning
        and model.active_peft_config.task_type == "CAUSAL_LM"
    ):
        model.generate = (
            lambda input_ids, attention_mask, generation_config: generate_with_virtual_tokens(
                model,
                input_ids,
                attention_mask,
                generation_config.max_new_tokens,
                generation_config.eos_token_id,
                generation_config.pad_token_id,
                generation_config.do_sample,
                generation_config.temperature or 1.0,
                generation_config.top_k or 0,
                generation_config.top_p or 1.0,
            )
        )
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once. For the peft methods the total
    includes the new weights (virtual tokens, prefixes, LoRA matrices): base + trainable."""
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def format_counts(trainable: int, total: int) -> str:
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


@contextlib.contextmanager
def disabled_adapters(model):
    """Run the frozen base model inside the block (adapters off), e.g. PPO's reference log-probs from the
    LoRA actor itself, with no second copy of the weights. BitFit and full fine-tuning edit the base
    weights, so they have no base to return to: keep a separate reference model there."""
    if not isinstance(model, PeftModel):
        raise ConfigError("disabled_adapters needs a peft model (lora, prompt_tuning, p_tuning, "
                          "prefix_tuning); keep a separate reference model for bitfit and full")
    with model.disable_adapter():
        yield model


def save_adapter(model, out_dir: str) -> None:
    """Save only what was trained: the peft adapter (save_pretrained) or BitFit's biases."""
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir)
        return
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not all(n.endswith("bias") or n.startswith("score.") for n in trainable):
        raise ConfigError(
            "not a PEFT model (full fine-tuning?): save it whole with save_pretrained"
        )
    save_bitfit(model, out_dir)


def load_adapter(base_model, adapter_dir: str, trainable: bool = False):
    """Put a saved adapter (peft or BitFit) on a freshly loaded base model."""
    if os.path.exists(os.path.join(adapter_dir, "adapter_config.json")):
        return _fix_generate(
            PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=trainable)
        )
    return load_bitfit(base_model, adapter_dir)


def save_peft(model, out_dir: str, tokenizer=None) -> str:
    """End-of-stage save: the adapter in out_dir/adapter (loadable with `load_adapter`, or peft's
    `PeftModel.from_pretrained` for the peft methods) and, when the method can be folded into the weights,
    a plain merged model in out_dir that the next stage loads like any checkpoint. Returns a summary line."""
    adapter_dir = os.path.join(out_dir, "adapter")
    save_adapter(model, adapter_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    method = (
        "bitfit"
        if not isinstance(model, PeftModel)
        else model.active_peft_config.peft_type.value.lower()
    )
    if method in ("bitfit", "lora"):
        export_model(model).save_pretrained(out_dir)
        return f"{method}: adapter in {adapter_dir}/, merged full model in {out_dir}/"
    return f"{method}: adapter in {adapter_dir}/ (cannot be merged: load the base model, then load_adapter)"


def export_model(model):
    """A plain transformers model to save for the next stage: LoRA merged into the base weights, BitFit
    and full fine-tuning as they are. Prompt-learning methods cannot be folded into the weights.
    Merging changes the LoRA model in place: use the returned model afterwards."""
    if not isinstance(model, PeftModel):
        return model
    if model.active_peft_config.peft_type.value != "LORA":
        raise ConfigError(
            f"{model.active_peft_config.peft_type.value} cannot be merged into the base "
            "model (load the base model and the adapter with load_adapter instead)"
        )
    return merge_lora(model)
