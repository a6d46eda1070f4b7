"""The settings of the training loop and of one trained model's optimizer, each documented once here.

A script keeps its constants at the top (users edit them or pass `--lr 3e-5`) and builds these with
`LoopConfig.from_settings(config)`: field f comes from the setting F, and there are no defaults to drift
from the script's.
"""
from dataclasses import dataclass

from utils import from_settings


@dataclass
class LoopConfig:
    """The loop's settings; a script builds it with LoopConfig.from_settings(config)."""
    out_dir: str  # checkpoint, metrics.jsonl, summary.json
    max_steps: int  # optimizer steps (PPO, GRPO: iterations, each one rollout + update)
    warmup_steps: int  # linear LR warmup, then cosine decay to 0.1x at max_steps
    grad_clip: float  # max global gradient norm
    eval_interval: int  # steps between evaluations (0: only at the end)
    log_interval: int  # steps between metrics.jsonl lines
    save_interval: int  # steps between resumable checkpoints (0: none; SIGTERM/SIGINT always write one)
    seed: int  # data order (and, in the scripts, weights' init and sampling)
    bf16: bool  # bfloat16 autocast
    resume: bool  # continue from out_dir/checkpoint if present (same stage and training settings)
    overwrite: bool  # start afresh over a checkpoint or finished run in out_dir (deletes them)
    log_with: str  # experiment trackers beside metrics.jsonl ('tensorboard', 'wandb', comma-separated, or 'none')
    group_by_length: bool  # batches of similar lengths (less padding); every item still once per epoch
    gradient_checkpointing: bool | str  # True or 'selective': recompute layers in the backward pass (checkpoint_layers)
    fsdp: bool  # shard trained weights, gradients, AdamW state over the ranks (trainer/fsdp.py)

    from_settings = classmethod(from_settings)


@dataclass
class OptimConfig:
    """What one optimizer step of the trained model is (PPO and GRPO derive theirs from their own config)."""
    lr: float  # peak AdamW learning rate
    weight_decay: float  # AdamW weight decay on weight matrices (never on LayerNorm weights or biases)
    batch_size: int  # items per micro-batch, per process (SFT rows, RM groups, PPO prompts)
    grad_accum: int  # micro-batches per optimizer step

    from_settings = classmethod(from_settings)
