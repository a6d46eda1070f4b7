"""What a run may do with what it finds in its out_dir.

- A fresh run never starts over an earlier run's checkpoint or finished model: it would mix the
  two (a later --resume True would continue the earlier run). --resume True continues it;
  --overwrite True deletes it and starts afresh; nothing is ever deleted silently.
- A resumed run continues only a checkpoint of the same stage written with the same settings that
  shape training (LR, batch size, seed, data files, ...): otherwise the old schedule would go on
  while run_config.json recorded the new values. Settings that only change what is logged or
  saved may differ.
"""
import contextlib
import json
import os
import shutil

from trainer.checkpoint import CheckpointError, candidates, fsync_path
from trainer.lock import OutDirLocked
from utils import UserError

# settings that do not change the trained weights: a resumed run may change them
# (a stage where one of them does shape training says so: Trainer.shaping_settings)
NOT_SHAPING = {"RESUME", "OVERWRITE", "OUT_DIR", "EVAL_INTERVAL", "LOG_INTERVAL", "LOG_WITH",
               "SAVE_INTERVAL", "EVAL_LIMIT", "EVAL_DATA", "EVAL_PROMPTS", "EVAL_BATCH_SIZE",
               "EVAL_PROMPT_BATCH", "EVAL_SAMPLED", "TEST_LIMIT", "TEST_DATA", "TEST_PROMPTS"}
OVERRIDE = "--overwrite True starts afresh (deleting the checkpoint)"


def earlier_run(out_dir: str, ckpt_dir: str) -> str:
    """What an earlier run left in out_dir that a fresh run would destroy or mix with, or ''."""
    found = candidates(ckpt_dir, refuse=False)
    if found:
        return f"a checkpoint (step {found[0][0]}, {found[0][1]})"
    if os.path.exists(os.path.join(out_dir, "summary.json")):
        return "a finished run (summary.json and its model)"
    return ""


def check_fresh_start(out_dir: str, ckpt_dir: str, resume: bool, overwrite: bool,
                      is_main: bool) -> None:
    """Before a run that starts from step 0: refuse an out_dir holding an earlier run unless
    overwrite, and then (main process) delete its checkpoint and summary."""
    found = earlier_run(out_dir, ckpt_dir)
    if not found:
        return
    if not overwrite:
        how = ("it holds no checkpoint to resume" if resume else
               "continue it with --resume True")
        raise OutDirLocked(f"{out_dir}: holds {found} of an earlier run ({how}; --overwrite True "
                           "deletes it and starts afresh; or give another --out_dir)")
    if is_main:
        for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp", "summary.json",
                     "metrics.jsonl"):
            path = os.path.join(out_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        print(f"--overwrite True: removed {found} from {out_dir}; starting afresh")


def saved_stage(path: str):
    """The stage (trainer class name) a checkpoint records, or None (a checkpoint without one)."""
    try:
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)["state"]
        return state.get("stage") if isinstance(state, dict) else None
    except (OSError, ValueError, KeyError):
        return None


def check_resumable(path: str, stage: str, run_config: dict, shaping: frozenset = frozenset()) -> None:
    """Refuse to resume the checkpoint at `path` if another stage wrote it or a setting that shapes
    training differs (those outside NOT_SHAPING, and `shaping`); the one-line error names every
    difference."""
    written_by = saved_stage(path)
    if written_by is not None and written_by != stage:
        raise CheckpointError(f"{path}: a checkpoint of {written_by}, not of {stage}: this stage "
                              f"cannot continue it (give another --out_dir, or {OVERRIDE})")
    try:
        with open(os.path.join(path, "run_config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return  # no settings recorded: nothing to compare (load_state names what is unreadable)
    now = json.loads(json.dumps(run_config, default=str))  # as saved: tuples -> lists, ...
    def show(settings: dict, key: str) -> str:
        return repr(settings[key]) if key in settings else "(none)"

    diffs = [f"{k} {show(saved, k)} -> {show(now, k)}" for k in sorted(set(saved) | set(now))
             if (k not in NOT_SHAPING or k in shaping) and show(saved, k) != show(now, k)]
    if diffs:
        raise CheckpointError(f"{path}: written with other settings than this run's: "
                              f"{'; '.join(diffs)} (resume with the checkpoint's settings, e.g. "
                              f"--config {path}/run_config.json --resume True; or {OVERRIDE})")


@contextlib.contextmanager
def staged(out_dir: str):
    """A directory to write a stage's final files into; on success each is fsync'd and renamed
    into out_dir (summary.json last: it marks the run finished), so a crash or a full disk never
    leaves a cut model.safetensors. A failed write is one line (UserError); out_dir keeps what it
    held."""
    staging = os.path.join(out_dir, ".final.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        yield staging
        names = sorted(os.listdir(staging), key=lambda n: n == "summary.json")
        for name in names:
            path = os.path.join(staging, name)
            if os.path.isfile(path):
                fsync_path(path)
        for name in names:
            target = os.path.join(out_dir, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
        fsync_path(out_dir)
    except OSError as e:
        raise UserError(f"{out_dir}: writing the trained model failed ({type(e).__name__}: {e}); "
                        "the checkpoint in checkpoint/, if any, is kept (free disk space, then "
                        "rerun with --resume True)") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
