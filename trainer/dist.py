"""Multi-process plumbing: one accelerator that really forms the process group, and the few collectives
the trainers need (sums, means, sharded work gathered back in order, every rank's RNG state).

Every function here is a collective when more than one process runs: all ranks must call it, in the
same order, with the same keys. With one process each is the identity, so single-process code pays nothing.
"""
import atexit
import os

import torch
import torch.distributed as dist
from accelerate import Accelerator

from utils import ConfigError, UserError


BF16_MIN_HIDDEN = 256  # below this width bf16 autocast gave no speed-up on CPU (none measured at 128)


def fast_bf16() -> str:
    """Why this machine runs bf16 matmuls natively ('' when it does not): a GPU that supports bf16, or a
    CPU with AVX-512 BF16 or AMX instructions (Linux /proc/cpuinfo; elsewhere a CPU counts as without)."""
    if torch.cuda.is_available():
        return "the GPU supports bf16" if torch.cuda.is_bf16_supported() else ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"the CPU has {', '.join(found)}" if found else ""


def resolve_bf16(setting, model, name: str = "BF16") -> bool:
    """The BF16 setting as a bool: True / False as given; 'auto' turns bf16 autocast on where it pays, the
    hardware running bf16 natively (fast_bf16) and the model at least BF16_MIN_HIDDEN wide (opt-125m: 768,
    SmolLM2-135M: 576; not the embedded model's 128). Prints what 'auto' chose and why."""
    if isinstance(setting, bool):
        return setting
    if str(setting).lower() in ("true", "false"):
        return str(setting).lower() == "true"
    if setting != "auto":
        raise ConfigError(f"{name}={setting!r}: expected True, False or 'auto'")
    config = getattr(model, "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or 0
    hardware = fast_bf16()
    on = bool(hardware) and width >= BF16_MIN_HIDDEN
    reason = (f"{hardware or 'no native bf16 matmuls here'}; hidden size {width}"
              f"{'' if width >= BF16_MIN_HIDDEN else f' < {BF16_MIN_HIDDEN}'}")
    print(f"{name}='auto': bf16 autocast {'on' if on else 'off'} ({reason})")
    return on


def close_process_group() -> None:
    """Destroy the process group if one is up (registered at exit by make_accelerator). A process that
    exits with its gloo group alive can abort in interpreter shutdown ("terminate called without an active
    exception", SIGABRT): gloo's worker threads still hold tensors when Python is torn down."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class LaunchError(UserError):
    """The launcher's processes did not form the process group it asked for."""


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An Accelerator whose process count matches the launcher's WORLD_SIZE.

    accelerate 1.15 on a machine without a GPU gives every process of `torchrun --nproc_per_node 2`
    its own single-process state (DistributedType.NO, each one "main"): two copies of the run racing
    on the same files. `cpu=True` makes it form a gloo process group instead (DistributedType.MULTI_CPU);
    with GPUs the default path forms an NCCL group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    if accelerator.num_processes != world:
        raise LaunchError(
            f"the launcher set WORLD_SIZE={world} but accelerate formed a group of {accelerator.num_processes} "
            f"process(es) ({accelerator.distributed_type}); refusing to run {world} independent copies. "
            "Launch with `torchrun --nproc_per_node N script.py` or `accelerate launch --num_processes N script.py`"
            " (on CPU add ACCELERATE_USE_CPU=1 if you build your own Accelerator).")
    for engine, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED")):
        if os.environ.get(flag, "false").lower() == "true" and accelerator.distributed_type.name != engine:
            raise LaunchError(  # accelerate 1.15 silently falls back to plain DDP (MULTI_CPU) on CPU
                f"the accelerate config asks for {engine} ({flag}=true) but the run got {accelerator.distributed_type}: "
                f"{engine} needs GPUs (accelerate 1.15 has no {engine} on CPU; DeepSpeed also needs the deepspeed "
                "package). Use `torchrun --nproc_per_node N` (DDP) on CPU.")
    if accelerator.num_processes > 1:
        atexit.unregister(close_process_group)  # once, however many trainers this process builds
        atexit.register(close_process_group)
    return accelerator


def is_sharded(accelerator: Accelerator) -> bool:
    """FSDP or DeepSpeed: weights, gradients or optimizer state split over ranks (ZeRO-2 splits the last two)."""
    return accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")


def check_two_models(accelerator: Accelerator) -> None:
    """PPO trains two models with two optimizers; accelerate's DeepSpeed path drives one engine per
    Accelerator (its backward() steps the last engine prepared), so it cannot train actor and critic."""
    if accelerator.distributed_type.name == "DEEPSPEED":
        raise LaunchError("PPO under DeepSpeed is not supported: accelerate 1.15 runs one DeepSpeed engine per "
                          "Accelerator and PPO trains two models (actor and critic). Use configs/fsdp.yaml or torchrun (DDP).")


def reduce_sum(accelerator: Accelerator, values: dict) -> dict:
    """{name: number} summed over ranks (float64, one all-reduce for the whole dict)."""
    if accelerator.num_processes == 1:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)  # the same order on every rank
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    dist.all_reduce(t)
    summed = dict(zip(keys, t.tolist()))
    return {k: summed[k] for k in values}


def mean_over_ranks(accelerator: Accelerator, values: dict) -> dict:
    """{name: number} averaged over ranks with equal weights (for ranks that hold equal shares)."""
    return {k: v / accelerator.num_processes for k, v in reduce_sum(accelerator, values).items()}


def tensor_sum(accelerator: Accelerator, x: torch.Tensor) -> torch.Tensor:
    """A tensor summed over ranks (a copy; x is untouched)."""
    x = x.detach().clone()
    if accelerator.num_processes > 1:
        dist.all_reduce(x)
    return x


def shard(accelerator: Accelerator, items: list) -> tuple[list, int]:
    """This rank's share of `items`, items[rank::world], and how many of them are real.

    Every rank gets the same count: a shorter share is topped up with copies of items[0], whose results
    the caller drops (keep the first `real`). Under FSDP and ZeRO-3 every forward pass is a collective,
    so a rank with one batch fewer would leave the others waiting forever."""
    mine = items[accelerator.process_index:: accelerator.num_processes]
    size = -(-len(items) // accelerator.num_processes)  # ceil
    return mine + items[:1] * (size - len(mine)), len(mine)


def gather_shards(accelerator: Accelerator, mine: list) -> list:
    """Undo `shard`: every rank gets all results back in the original item order."""
    if accelerator.num_processes == 1:
        return list(mine)
    parts = [None] * accelerator.num_processes
    dist.all_gather_object(parts, list(mine))
    out = []
    for i in range(max(len(p) for p in parts)):  # item k came from rank k % world, position k // world
        out += [p[i] for p in parts if i < len(p)]
    return out


def all_ranks(accelerator: Accelerator, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled objects, e.g. RNG states)."""
    if accelerator.num_processes == 1:
        return [obj]
    parts = [None] * accelerator.num_processes
    dist.all_gather_object(parts, obj)
    return parts


def check_sharded_settings(accelerator, save_interval: int, resume: bool, grad_accum: int) -> None:
    """Settings that FSDP / DeepSpeed runs do not support yet, refused before any work."""
    if is_sharded(accelerator) and (save_interval or resume):
        raise UserError(f"SAVE_INTERVAL / RESUME under {accelerator.distributed_type.name}: the resumable "
                        "checkpoint holds full (unsharded) states and is not written for sharded runs "
                        "(set --save_interval 0)")
    if accelerator.distributed_type.name == "DEEPSPEED" and grad_accum > 1:
        raise UserError("GRAD_ACCUM > 1 under DeepSpeed: its engine divides by its own "
                        "gradient_accumulation_steps (keep GRAD_ACCUM=1 and raise BATCH_SIZE or the number "
                        "of processes)")
