"""Numeric guards: a step whose loss, gradient norm or updated weights are not finite stops the
run, and nothing non-finite ever reaches a checkpoint or a saved model.

Three checks, in the order a step meets them:
    loss           after each forward pass, before backward
    gradient norm  after clipping, before the optimizer step (a NaN/inf gradient is never applied)
    weights        after the optimizer step, and again before every save (checkpoint, best, final);
                   the on-policy trainers check once per iteration, after all their minibatch steps,
                   and a later minibatch's non-finite loss is first traced to the weights

A large LR can make AdamW's update overflow even with a finite, clipped gradient, so the gradient
norm alone does not protect the weights. Every check is agreed over all ranks (one all-reduce): a
rank that stopped alone would leave the others waiting forever. Sharded (FSDP) parameters are
DTensors; each rank checks its local shard and the all-reduce covers the rest.
"""
import torch
from torch.distributed.tensor import DTensor

from trainer.checkpoint import checkpoint_step
from trainer.dist import reduce_sum
from utils import UserError


class NonFiniteError(UserError, RuntimeError):
    """The loss, gradient norm or weights became NaN or inf; the run stopped, and the last good
    checkpoint (the only kind ever written) is untouched."""
    exit_code = 7


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of `t` (a DTensor's local shard; a plain tensor as it is)."""
    return t.to_local() if isinstance(t, DTensor) else t


def all_finite(tensors) -> bool:
    """Whether every element of `tensors` (this rank's parts) is finite; one device sync in all."""
    # the min and max of each tensor (a NaN makes both NaN, an inf shows in one), stacked: one check for all.
    # aminmax reads each element once; on CPU it is ~10x faster than the inf-norm over opt-125m's weights
    # (17 against 170 ms); PPO checks two models once per iteration
    extremes = [torch.stack(torch.aminmax(local(t).detach())).float() for t in tensors if local(t).numel()]
    return not extremes or bool(torch.isfinite(torch.cat(extremes)).all())


def last_good(ckpt_dir: str) -> str:
    """Where the last good checkpoint is, for the error message."""
    step = checkpoint_step(ckpt_dir)
    if step is None:
        return "no checkpoint was saved yet; nothing of this run was written"
    return f"the last good checkpoint, {ckpt_dir} (step {step}), is untouched"


def any_rank(accelerator, bad: bool) -> bool:
    """Whether `bad` holds on any rank (every rank gets the same answer)."""
    return bool(reduce_sum(accelerator, {"bad": float(bad)})["bad"])


def stop_if(accelerator, bad: bool, *, step: int, what: str, value, ckpt_dir: str,
            hint: str) -> None:
    """Raise NonFiniteError on every rank if `bad` holds on any rank."""
    if any_rank(accelerator, bad):
        raise NonFiniteError(f"step {step}: the {what} is {value}; the step was not applied and "
                             f"training stopped ({last_good(ckpt_dir)}). {hint}, then resume "
                             "from the checkpoint with --resume True")


def check_loss(accelerator, loss: torch.Tensor, **where) -> None:
    stop_if(accelerator, not all_finite([loss]), what="loss", value=loss.item(), **where)


def check_grad_norm(accelerator, grad_norm, **where) -> float:
    """The clipped gradient norm (clip_grad_norm_'s return: a global norm, equal on every rank)
    as a float; stops the run if it is not finite. None (DeepSpeed clips in its engine) passes."""
    if grad_norm is None:
        return None
    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    value = float(grad_norm)
    bad = not torch.isfinite(torch.tensor(value))
    stop_if(accelerator, bad, what="gradient norm", value=value, **where)
    return value


def check_weights(accelerator, models, what: str = "updated weights", **where) -> None:
    """Stop if any parameter of `models` holds NaN or inf (before a save: `what` says which)."""
    params = [p for m in models for p in m.parameters()]
    bad = not all_finite(params)
    count = sum(int((~torch.isfinite(local(p).detach())).sum()) for p in params) if bad else 0
    value = f"non-finite ({count:,} values on this rank)"
    stop_if(accelerator, bad, what=what, value=value, **where)


def where(trainer) -> dict:
    """The keyword arguments every check takes, from a trainer's state."""
    return {"step": trainer.step, "ckpt_dir": trainer.ckpt_dir, "hint": trainer.nonfinite_hint}
