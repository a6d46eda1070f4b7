"""The trainer's side of exact resume: what a checkpoint holds and how a run stops on a signal.

A checkpoint is the trainer's full state (its models, optimizers, schedulers and counters:
`state_dict`), every rank's random generators and the step; trainer/checkpoint.py writes it crash-
safe, without pickle. Loading refuses another stage's checkpoint or other training settings
(trainer/outdir.py). SIGTERM / SIGINT finish the current step on every rank, write a checkpoint and
exit with 128 + the signal number.
"""
import os

import torch

from trainer import fsdp, outdir
from trainer.checkpoint import (CheckpointError, Preempted, StopOnSignal, drop_rows_after, load_newest,
                                resume_command, save_checkpoint)
from trainer.dist import all_ranks
from utils import rng_state, set_rng_state


class Resumable:
    """Mixed into Trainer: uses its accelerator, step, ckpt_dir, run_config and state_dict()."""

    def save_checkpoint(self) -> None:
        """The full training state, written by the main process (every rank its shards under FSDP)."""
        self.check_weights("weights to checkpoint")
        self.accelerator.wait_for_everyone()
        # every rank's generators: dropout, sampling differ per rank
        rng = all_ranks(self.accelerator, rng_state())
        state = {"trainer": self.state_dict(), "rng": rng, "best_value": self.best_value,
                 "stage": type(self).__name__}  # resume refuses another stage's checkpoint
        if self.loop.fsdp:  # every rank writes its shards; the main process the rest, then swaps
            sharded = self.sharded_state()
            state["trainer"] = {k: v for k, v in state["trainer"].items() if k not in sharded}
            state["shards"] = fsdp.save_shards(self.ckpt_dir, sharded, self.accelerator.is_main_process)
        if self.accelerator.is_main_process:
            save_checkpoint(self.ckpt_dir, state, self.step, self.run_config, tmp_ready=self.loop.fsdp)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self) -> None:
        def check(path: str) -> None:
            outdir.check_resumable(path, type(self).__name__, self.run_config, self.shaping_settings)
        self.step, state, path = load_newest(self.ckpt_dir, check)
        fsdp.check_resumable(path, state, self.loop.fsdp)
        if self.loop.fsdp:
            state["trainer"].update(fsdp.load_shards(path, self.sharded_state(), state["shards"]))
        self.load_state_dict(state["trainer"])
        self.best_value = state["best_value"]
        set_rng_state(self.rank_rng_state(state["rng"]))
        # lines a killed run logged after its checkpoint are redone
        if self.accelerator.is_main_process:
            drop_rows_after(os.path.join(self.out_dir, "metrics.jsonl"), self.step)
        self.log(f"resumed from {path} at step {self.step}")

    def rank_rng_state(self, saved: list) -> dict:
        """This rank's RNG state from a checkpoint's list of per-rank states."""
        world = self.accelerator.num_processes
        if len(saved) != world:  # sample k of the run is placed by rank and world size too
            raise CheckpointError(f"{self.ckpt_dir} was written by {len(saved)} process(es); resume it with "
                                  f"the same number (torchrun --nproc_per_node {len(saved)}), not {world}")
        return saved[self.accelerator.process_index]

    def stop_requested(self, stop: StopOnSignal) -> int:
        """The signal number if any process received SIGTERM / SIGINT (all stop at the same step),
        else 0."""
        signum = stop.signum or 0
        if self.accelerator.num_processes > 1:
            signum = int(self.accelerator.gather(torch.tensor([signum], device=self.device)).max())
        return signum

    def stop_after_signal(self, signum: int) -> None:
        """After the checkpoint: say how to resume, then exit with 128 + signum (no step lost)."""
        self.log(f"stopped by signal {signum} after step {self.step}; checkpoint written to {self.ckpt_dir}. "
                 f"Resume with: {resume_command()}")
        raise Preempted(128 + signum)
