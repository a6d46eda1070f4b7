"""What lets a run survive a cluster: checkpoints that a crash cannot break and that cannot run code,
one run per output directory (trainer/lock.py), and a clean stop on SIGTERM / SIGINT
(trainer/signals.py); the names of those two are importable from here as well.

A checkpoint is a directory (out_dir/checkpoint/) of three files:

    state.safetensors   every tensor of the training state: weights, optimizer moments, RNG states
    state.json          everything else (step, scheduler, hyperparameters, Python's RNG), with
                        {"__tensor__": key} where a tensor was; written last, so it marks the checkpoint complete
    run_config.json     the resolved settings
    shards/             sharded (FSDP) runs only: a safetensors file per rank (trainer/fsdp.py)

Loading reads them with safetensors and json only. A pickle (what `torch.load` reads by default) can
execute code from whoever wrote the file; a checkpoint directory holding one is refused.

Saving writes checkpoint.tmp/ (each file flushed to disk with fsync), renames checkpoint -> checkpoint.old
and checkpoint.tmp -> checkpoint, then deletes checkpoint.old. A crash at any moment leaves at least one
complete checkpoint among the three names; resume takes the newest complete one, and the next save
first finishes an interrupted swap.
"""
import json
import os
import shutil
import sys

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from trainer.lock import OutDirLocked, lock_out_dir  # noqa: F401 (re-exported)
from trainer.signals import Preempted, StopOnSignal, resume_command  # noqa: F401 (re-exported)
from utils import UserError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded safely; the message names the file."""
    exit_code = 5


# ------------------------------------------------------------------ state <-> (tensors, JSON)
def flatten(obj, tensors: dict, seen: dict):
    """A nest of dicts, lists, tuples, tensors and plain values -> JSON-able structure; tensors go to
    `tensors` under fresh keys (one key per distinct tensor: tied weights are stored once)."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident not in seen:
            # a view of a stored tensor: safetensors needs a copy
            shares = any(k[0] == ident[0] for k in seen)
            seen[ident] = key = str(len(tensors))
            tensors[key] = t.clone() if shares else t
        return {"__tensor__": seen[ident]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(x, tensors, seen) for x in obj]}
    if isinstance(obj, list):
        return [flatten(x, tensors, seen) for x in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: flatten(v, tensors, seen) for k, v in obj.items()}
        return {
            "__dict__": [
                [flatten(k, tensors, seen), flatten(v, tensors, seen)] for k, v in obj.items()
            ]
        }
    raise TypeError(
        f"cannot store a {type(obj).__name__} in a checkpoint (tensors and plain values only)"
    )


def unflatten(obj, tensors: dict):
    """The inverse of `flatten`."""
    if isinstance(obj, list):
        return [unflatten(x, tensors) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(unflatten(x, tensors) for x in obj["__tuple__"])
    if "__dict__" in obj:
        return {unflatten(k, tensors): unflatten(v, tensors) for k, v in obj["__dict__"]}
    return {k: unflatten(v, tensors) for k, v in obj.items()}


# ------------------------------------------------------------------ crash-safe save, newest complete load
def fsync_path(path: str) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_synced(path: str, obj) -> None:
    with open(path + ".part", "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".part", path)


def checkpoint_step(path: str):
    """The step of a complete checkpoint directory, or None (missing, incomplete or unreadable)."""
    try:
        with open(os.path.join(path, "state.json")) as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def refuse_pickles(path: str) -> None:
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            if name.endswith(PICKLE_SUFFIXES):
                raise CheckpointError(
                    f"{os.path.join(path, name)}: a pickle file in a checkpoint is never loaded, because loading a pickle "
                    "can run any code its author put in it (checkpoints of this version are state.safetensors + "
                    "state.json; delete the directory, or train without --resume True)"
                )


def candidates(ckpt_dir: str, refuse: bool = True) -> list[tuple[int, str]]:
    """Complete checkpoints among ckpt_dir, ckpt_dir.tmp and ckpt_dir.old as (step, path), newest first.
    refuse: raise CheckpointError on a directory holding a pickle (else it counts as incomplete)."""
    found = []
    for rank, path in enumerate((ckpt_dir, ckpt_dir + ".tmp", ckpt_dir + ".old")):
        if refuse:
            refuse_pickles(path)
        step = checkpoint_step(path)
        if step is not None:
            found.append((step, -rank, path))
    return [(step, path) for step, _, path in sorted(found, reverse=True)]


def finish_interrupted_swap(ckpt_dir: str) -> None:
    """Bring the three names back to one complete `ckpt_dir` (the newest), never deleting the only
    complete copy: a save that crashed between its renames is completed here."""
    tmp, old = ckpt_dir + ".tmp", ckpt_dir + ".old"
    found = candidates(ckpt_dir, refuse=False)
    if found and found[0][1] != ckpt_dir:
        newest = found[0][1]
        # an older complete checkpoint (or an incomplete one) moves aside
        if os.path.exists(ckpt_dir):
            shutil.rmtree(old if newest != old else tmp, ignore_errors=True)
            os.replace(ckpt_dir, old if newest != old else tmp)
        os.replace(newest, ckpt_dir)
        fsync_path(os.path.dirname(ckpt_dir) or ".")
    shutil.rmtree(tmp, ignore_errors=True)
    # checkpoint.old stays: `checkpoint` may be complete by its state.json yet unreadable (resume
    # then fell back to .old); save_checkpoint deletes .old only once the new one is verified


def begin_save(ckpt_dir: str) -> str:
    """Finish any interrupted swap, then make the empty ckpt_dir.tmp a save writes into."""
    finish_interrupted_swap(ckpt_dir)
    os.makedirs(ckpt_dir + ".tmp")
    return ckpt_dir + ".tmp"


def save_checkpoint(ckpt_dir: str, state: dict, step: int, run_config: dict,
                    tmp_ready: bool = False) -> None:
    """Write `state` (tensors and plain values) as the checkpoint of `step`; see the module
    docstring. tmp_ready: begin_save already made ckpt_dir.tmp and other files are in it (a sharded
    run's per-rank shards, trainer/fsdp.py); they are swapped in with the rest. A failed write (a
    full disk) is a one-line CheckpointError: the newest complete checkpoint is kept."""
    try:
        write_and_swap(ckpt_dir, state, step, run_config, tmp_ready)
    except (OSError, SafetensorError) as e:
        found = candidates(ckpt_dir, refuse=False)
        kept = f"{found[0][1]} (step {found[0][0]}) is kept" if found else "none was saved before"
        raise CheckpointError(f"{ckpt_dir}: saving the checkpoint of step {step} failed "
                              f"({type(e).__name__}: {e}); {kept} (free disk space, then resume "
                              "with --resume True)") from e


def write_and_swap(ckpt_dir: str, state: dict, step: int, run_config: dict,
                   tmp_ready: bool) -> None:
    if not tmp_ready:
        begin_save(ckpt_dir)
    tmp, old = ckpt_dir + ".tmp", ckpt_dir + ".old"
    tensors = {}
    meta = {"step": step, "state": flatten(state, tensors, {})}
    save_file(tensors, os.path.join(tmp, "state.safetensors"))
    fsync_path(os.path.join(tmp, "state.safetensors"))
    write_json_synced(
        os.path.join(tmp, "run_config.json"), json.loads(json.dumps(run_config, default=str))
    )
    # last: the checkpoint is complete from here on
    write_json_synced(os.path.join(tmp, "state.json"), meta)
    fsync_path(tmp)
    verify(tmp, tensors)
    if os.path.exists(ckpt_dir):
        # never the only complete copy: finish_interrupted_swap saw to it
        shutil.rmtree(old, ignore_errors=True)
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    fsync_path(os.path.dirname(ckpt_dir) or ".")
    shutil.rmtree(old, ignore_errors=True)


def verify(path: str, tensors: dict) -> None:
    """Read back a written checkpoint's header and JSON: every tensor is there with its shape and
    the file is as long as the header says (safe_open checks that), before an older copy goes."""
    with safe_open(os.path.join(path, "state.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if shapes != {k: tuple(t.shape) for k, t in tensors.items()} or checkpoint_step(path) is None:
        raise OSError(f"{path}: the checkpoint read back differs from what was written")


def load_state(path: str) -> tuple[int, dict]:
    """(step, state) of one checkpoint directory, read with safetensors and json only."""
    refuse_pickles(path)
    try:
        with open(os.path.join(path, "state.json")) as f:
            meta = json.load(f)
        tensors = load_file(os.path.join(path, "state.safetensors"))
        return int(meta["step"]), unflatten(meta["state"], tensors)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e}; delete it to start "
            "fresh)"
        ) from None


def load_newest(ckpt_dir: str, check=None) -> tuple[int, dict, str]:
    """(step, state, path) of the newest complete checkpoint that loads; an unreadable one is skipped
    with a warning. Raises CheckpointError when none loads. check(path), before loading: raises
    CheckpointError if this run must not continue it (another stage, other settings)."""
    errors = []
    for _, path in candidates(ckpt_dir):
        if check is not None:
            check(path)
        try:
            return (*load_state(path), path)
        except CheckpointError as e:
            print(f"warning: {e}; trying an older checkpoint", file=sys.stderr)
            errors.append(str(e))
    raise CheckpointError(
        f"{ckpt_dir}: no loadable checkpoint ({'; '.join(errors) or 'none found'})"
    )


def row_step(line: str) -> float:
    """A metrics.jsonl line's step; inf for a line a killed run left half-written (dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return float("inf")


def drop_rows_after(metrics_path: str, step: int) -> None:
    """Keep only the metrics.jsonl rows of steps <= step (a resumed run logs the later ones again)."""
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            rows = [line for line in f if line.strip() and row_step(line) <= step]
        with open(metrics_path + ".part", "w") as f:
            f.writelines(rows)
        os.replace(metrics_path + ".part", metrics_path)
