"""Sharded training with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`): the same code
on CPU (gloo) and GPU (NCCL).

With FSDP=True each transformer layer, and then the whole model, becomes one FSDP unit: every rank
keeps 1/world of each weight, of its gradient and of the AdamW moments (DTensors). A forward pass
gathers one unit's full weights, uses them and frees them again; backward reduce-scatters the
gradients (averaged over ranks, as DDP's all-reduce is, so trainer/base.py's loss scaling holds).

accelerate 1.15 on a machine without a GPU ignores its FSDP plugin and builds DDP, so sharding is
done here with torch directly; accelerate only provides the process group and autocast.

Also here: gathering the weights once for many forward passes (generation), the full state dict for
the Hugging Face checkpoint, and resumable checkpoints in which every rank writes its own shards
(`torch.distributed.checkpoint` with its safetensors storage: no pickle).
"""
import contextlib
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.hf_storage import (HuggingFaceStorageReader,
                                                     HuggingFaceStorageWriter)
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from trainer.checkpoint import CheckpointError, begin_save
from utils import UserError

SHARDS = "shards"  # the checkpoint's subdirectory holding one safetensors file per rank


def shard_model(model: torch.nn.Module, name: str = "model") -> torch.nn.Module:
    """`model` sharded in place over all ranks: each transformer layer one FSDP unit, then the root
    (the embeddings, final norm and heads). Prints what each rank holds.

    Mixed precision stays bf16 autocast, as in the unsharded path: weights are gathered in float32
    and autocast rounds the matmul inputs. FSDP2's MixedPrecisionPolicy(param_dtype=bfloat16)
    would halve the gathered bytes but also round embeddings and LayerNorm weights, which autocast
    keeps in float32: the numbers would differ from the unsharded run's and from the replicated
    frozen reference's (PPO's KL to a copied reference would not start at 0)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if hasattr(model, "peft_config") or not all(p.requires_grad for p in model.parameters()):
        raise UserError("FSDP=True with frozen parameters (PEFT, TRAIN_LAYERS) is not supported: "
                        "the checkpoints save whole sharded models; set --peft none and "
                        "TRAIN_LAYERS None, or train with --fsdp False (DDP)")
    if not dist.is_initialized():
        raise UserError("FSDP=True in a single process: sharding needs several; launch with "
                        "`torchrun --nproc_per_node N script.py --fsdp True`, or set --fsdp False")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()  # float32 weights, gradients reduced in float32
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise UserError(f"FSDP=True: {type(model).__name__} has no transformer layers to shard "
                        "(set --fsdp False)")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    held = local_numel(model.parameters())
    total = sum(p.numel() for p in model.parameters())
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, held)
    if dist.get_rank() == 0:
        print(f"FSDP: {name} parameters sharded over {len(counts)} ranks ({len(layers)} layers "
              f"+ root); each rank holds {', '.join(f'{c:,}' for c in counts)} of {total:,}")
    return model


def local_numel(tensors) -> int:
    """Elements this rank stores of `tensors` (a DTensor counts its local shard only)."""
    return sum((t.to_local() if isinstance(t, DTensor) else t).numel() for t in tensors)


def local_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Bytes this rank holds of the model's parameters, their gradients and the optimizer state."""
    def size(t):
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()
    params = list(model.parameters())
    return {"params": sum(size(p) for p in params),
            "grads": sum(size(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(size(v) for s in optimizer.state.values() for v in s.values()
                             if torch.is_tensor(v))}


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """Inside: the full weights of a sharded model stay gathered, so generation's forward pass per
    token needs no collective (one all-gather per unit on entry instead of one per unit per token;
    ranks that stop generating at different steps cannot wait on each other). Outside: sharded
    again, the root unit kept whole after its forward as FSDP2 does by default (backward needs it
    next). A model that is not sharded passes through."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield model
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model, recurse=False)


def is_sharded_model(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module) -> dict:
    """The full (unsharded) state dict on the main process, on CPU; {} elsewhere. A collective:
    the weights are gathered once, unit by unit, for the Hugging Face checkpoint."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


# ------------------------------------------------------------------ resumable sharded checkpoints
def unique_by_storage(state: dict) -> dict:
    """Drop entries whose local shard shares memory with an earlier one (tied input and output
    embeddings: safetensors stores a tensor once)."""
    seen, out = set(), {}
    for key, value in state.items():
        ptr = (value.to_local() if isinstance(value, DTensor) else value).data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            out[key] = value
    return out


def split_sharded(parts: dict) -> tuple[dict, dict]:
    """{name: model or (model, optimizer)} -> (each DTensor under a flat key, the rest by name)."""
    tensors, plain = {}, {}
    for name, part in parts.items():
        if isinstance(part, tuple):
            state = get_optimizer_state_dict(*part)  # by parameter name; moments are DTensors
            rest = {}
            for fqn, entry in state["state"].items():
                rest[fqn] = {k: v for k, v in entry.items() if not isinstance(v, DTensor)}  # step
                tensors.update({f"{name}.{fqn}.{k}": v for k, v in entry.items()
                                if isinstance(v, DTensor)})
            plain[name] = {"state": rest, "param_groups": state["param_groups"]}
        else:
            state = unique_by_storage(get_model_state_dict(part))
            tensors.update({f"{name}.{k}": v for k, v in state.items()})
    return tensors, plain


def save_shards(ckpt_dir: str, parts: dict, is_main: bool) -> dict:
    """Write the sharded part of a checkpoint: a collective. The main process opens ckpt_dir.tmp
    (after finishing any interrupted swap), then every rank writes its shards of every DTensor of
    `parts` into ckpt_dir.tmp/shards/. Returns what is not sharded (optimizer steps, param groups,
    the world size) for the main process to add to the checkpoint's state; it then completes and
    swaps ckpt_dir.tmp (save_checkpoint with tmp_ready=True): a crash leaves a complete one."""
    if is_main:
        begin_save(ckpt_dir)
    dist.barrier()
    tensors, plain = split_sharded(parts)
    path = os.path.join(ckpt_dir + ".tmp", SHARDS)
    writer = HuggingFaceStorageWriter(path, save_distributed=True)
    dcp.save(tensors, storage_writer=writer)
    dist.barrier()
    return {"world": dist.get_world_size(), "plain": plain}


def check_resumable(path: str, state: dict, fsdp: bool) -> None:
    """A checkpoint resumes as it was written: sharded by as many processes, or unsharded."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    if "shards" in state and (not fsdp or state["shards"]["world"] != world):
        n = state["shards"]["world"]
        raise CheckpointError(f"{path} holds FSDP shards of {n} processes; resume it as it was "
                              f"written (torchrun --nproc_per_node {n} ... --fsdp True), not "
                              f"{world} process(es){'' if fsdp else ' without FSDP'}")
    if "shards" not in state and fsdp:
        raise CheckpointError(f"{path} was written without FSDP; resume it with --fsdp False")


def load_shards(path: str, parts: dict, saved: dict) -> dict:
    """Load the sharded part of checkpoint `path` into `parts` ({name: model or (model,
    optimizer)}, as saved; check_resumable first); a collective. Returns {name: state_dict()} of
    the loaded models and optimizers, for the trainer's own load_state_dict."""
    tensors, _ = split_sharded(parts)  # this rank's current shards, the shapes to load into
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(os.path.join(path, SHARDS)))
    loaded = {}
    for name, part in parts.items():
        prefix = name + "."
        if isinstance(part, tuple):
            model, optimizer = part
            plain = saved["plain"][name]
            state = {}
            for fqn, entry in plain["state"].items():  # the step counters, then the moments
                key = prefix + fqn + "."
                state[fqn] = {**entry, **{k[len(key):]: v for k, v in tensors.items()
                                          if k.startswith(key)}}
            set_optimizer_state_dict(model, optimizer,
                                     {"state": state, "param_groups": plain["param_groups"]})
            loaded[name] = optimizer.state_dict()
        else:
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            options = StateDictOptions(strict=False)  # a tied copy was not stored: shares memory
            set_model_state_dict(part, own, options=options)
            loaded[name] = part.state_dict()
    return loaded
