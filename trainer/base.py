"""The training loop every stage uses. Nothing here knows about RLHF.

Owns: the accelerator (device, mixed precision, processes: `accelerate launch` and `torchrun` need
no new code; trainer/dist.py checks the processes really form one group), gradient accumulation and
clipping, evaluation cadence, a tqdm bar with the live loss, and one run at a time per out_dir (a
lock file). Around it, each in its own file: AdamW and the schedule
(trainer/optim.py), data order (trainer/data_order.py), exact resume and signals
(trainer/resume.py), what a stage leaves in out_dir (trainer/export.py), the numeric guards
(trainer/guard.py), metrics.jsonl and the trackers (trainer/tracking.py).

Subclasses fill in `compute_loss(batch) -> (loss, metrics)`, `loss_weight(batch)` (how many terms
the loss averages over: supervised tokens, pairs) and, if needed, `evaluate()`; on-policy trainers
replace `training_step` and extend `state_dict` / `load_state_dict` (trainer/onpolicy.py). Every
stage starts with `log_start` (the model before training is step 0 of metrics.jsonl) and ends with
`finish`.

Several processes equal one: each step's loss is the mean over the terms of the whole global batch
(all micro-batches of all ranks), so 2 processes x batch b take the step 1 process x batch 2b takes,
and the logged train metrics are the same global means.

Data order is a pure function of (seed, sample index) (trainer/data_order.py), so resuming at step s
needs no dataloader skipping and sees exactly the batches the uninterrupted run would have.
"""
import contextlib
import os
import time

import torch
from tqdm.auto import tqdm

from trainer import fsdp, guard, outdir
from trainer.checkpoint import StopOnSignal, candidates, lock_out_dir
from trainer.data_order import epoch_order
from trainer.dist import check_sharded_settings, make_accelerator, reduce_sum
from trainer.export import Exports
from trainer.optim import prepare_trained, warmup_cosine
from trainer.resume import Resumable
from trainer.settings import LoopConfig, OptimConfig
from trainer.tracking import MetricsLog, end_trackers, start_trackers
from utils import seed_everything

NonFiniteLossError = guard.NonFiniteError  # the name callers already catch
__all__ = ["LoopConfig", "OptimConfig", "Trainer", "NonFiniteLossError"]


class Trainer(Resumable, Exports, MetricsLog):
    # an eval metric to maximise: each new best is saved to out_dir/best (the RM sets it)
    best_metric = None
    nonfinite_hint = "Lower LR (or GRAD_CLIP)"  # what exit 7 advises; DPO adds BETA
    shaping_settings = frozenset()  # evaluation settings that shape this stage's training (outdir.py)

    def __init__(self, model, train_data, collate, *, loop: LoopConfig, optim: OptimConfig, run_config: dict):
        """model: the trained model, with optim its AdamW and batch (None: a test of the loop
        alone)."""
        self.accelerator = make_accelerator("bf16" if loop.bf16 else "no")
        self.device = self.accelerator.device
        self.train_data, self.collate, self.loop, self.run_config = train_data, collate, loop, run_config
        self.out_dir, self.max_steps, self.seed = loop.out_dir, loop.max_steps, loop.seed
        self.batch_size, self.grad_accum = optim.batch_size, optim.grad_accum
        self.step, self.best_value, self._perms = 0, None, {}
        self.train_tokens = self.train_tokens_padded = 0  # all processes, the steps this run took
        check_sharded_settings(self.accelerator, loop.save_interval, loop.resume, optim.grad_accum)
        self.ckpt_dir = os.path.join(self.out_dir, "checkpoint")
        is_main = self.accelerator.is_main_process
        if is_main:
            # before touching anything in it: a second run on out_dir stops here
            lock_out_dir(self.out_dir)
        # candidates refuses pickle checkpoints
        self.resuming = loop.resume and bool(candidates(self.ckpt_dir))
        if not self.resuming:  # never over an earlier run's checkpoint or model (unless overwrite)
            outdir.check_fresh_start(self.out_dir, self.ckpt_dir, loop.resume, loop.overwrite, is_main)
        else:  # another stage's checkpoint, or other training settings: refused before any work
            outdir.check_resumable(candidates(self.ckpt_dir)[0][1], type(self).__name__, run_config,
                                   self.shaping_settings)
        if loop.resume and not self.resuming:
            self.log(f"--resume True: no checkpoint in {self.ckpt_dir}; starting from step 0")
        metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        if not self.resuming and is_main and os.path.exists(metrics_path):
            os.remove(metrics_path)  # a fresh run starts a fresh log; a resumed one appends
        start_trackers(self.accelerator, loop.log_with, self.out_dir, run_config)
        if model is not None:
            self.model, self.optimizer = self.prepare_trained(model, optim.lr, optim.weight_decay)
            self.scheduler = self.lr_schedule(self.optimizer)
        # own random numbers per rank (dropout, sampling); rank 0 keeps the 1-process stream
        if self.accelerator.process_index > 0:
            seed_everything(loop.seed + 1000003 * self.accelerator.process_index)

    def prepare_trained(self, model, lr: float, weight_decay: float):
        """(model, its AdamW), ready for the accelerator (trainer/optim.py)."""
        return prepare_trained(self.accelerator, model, lr, weight_decay, fsdp=self.loop.fsdp,
                               gradient_checkpointing=self.loop.gradient_checkpointing)

    def lr_schedule(self, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return warmup_cosine(optimizer, self.loop.warmup_steps, self.max_steps)

    # ------------------------------------------------------------------ hooks for subclasses
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}

    def stop_early(self, metrics: dict) -> str:
        """After each step: '' to go on, or the reason to end the run at this step (with its last
        evaluation, and the model written as at the last step)."""
        return ""

    def loss_weight(self, batch: dict) -> float:
        """How many terms compute_loss(batch) averages over (1: every micro-batch counts the same)."""
        return 1.0

    def trained_models(self) -> list:
        """The models this trainer updates (PPO: actor and critic)."""
        return [self.model]

    def training_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns the step's metrics.

        The step's loss is sum over all terms of the global batch / their total count W
        (all-reduced): micro-batch j of rank r, with mean loss L_rj over its w_rj terms, back-propagates
        L_rj * w_rj * world / W, and DDP's gradient average over ranks divides the world back out."""
        self.model.train()
        batches = [self.get_batch(self.step * self.grad_accum + micro) for micro in range(self.grad_accum)]
        weights = [float(self.loss_weight(b)) for b in batches]
        masks = [b["attention_mask"] for b in batches if "attention_mask" in b]
        counts = reduce_sum(self.accelerator, {"w": sum(weights), "tokens": float(sum(m.sum() for m in masks)),
                                               "padded": float(sum(m.numel() for m in masks))})
        # non-pad tokens; padded: what the forward passes computed
        self.train_tokens += int(counts["tokens"])
        self.train_tokens_padded += int(counts["padded"])
        total = max(counts["w"], 1e-12)  # W
        sums = {}
        for micro, (batch, weight) in enumerate(zip(batches, weights)):
            sync = micro == self.grad_accum - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model):
                with self.accelerator.autocast():
                    loss, metrics = self.compute_loss(batch)
                self.check_finite(loss)
                self.accelerator.backward(loss * (weight * self.accelerator.num_processes / total))
            for k, v in {"train/loss": loss.item(), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * weight
        # global means
        totals = {k: v / total for k, v in reduce_sum(self.accelerator, sums).items()}
        grad_norm = self.clip_and_check(self.model)
        if grad_norm is not None:  # DeepSpeed clips inside its engine and returns None
            totals["train/grad_norm"] = grad_norm
        self.optimizer.step()
        self.check_weights()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        totals["train/lr"] = self.scheduler.get_last_lr()[0]
        return totals

    def get_batch(self, index: int) -> dict:
        """Micro-batch number `index` of this process: samples (index * world + rank) * batch_size
        onward of the run (trainer/data_order.py), collated and on the device."""
        world, rank, n = self.accelerator.num_processes, self.accelerator.process_index, len(self.train_data)
        first = (index * world + rank) * self.batch_size
        items = []
        for k in range(first, first + self.batch_size):
            if k // n not in self._perms:
                self._perms = {k // n: self.epoch_order(k // n)}
            items.append(self.train_data[int(self._perms[k // n][k % n])])
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.collate(items).items()}

    def epoch_order(self, epoch: int) -> torch.Tensor:
        group = self.batch_size * self.accelerator.num_processes if self.loop.group_by_length else 0
        return epoch_order(self.train_data, self.seed, epoch, group)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        if self.resuming:
            self.load_checkpoint()
        start, metrics, loop = time.time(), {}, self.loop
        quiet = not self.accelerator.is_main_process or bool(os.environ.get("TQDM_DISABLE"))
        bar = tqdm(total=self.max_steps, initial=self.step, disable=quiet, dynamic_ncols=True)
        with StopOnSignal() as stop:
            while self.step < self.max_steps:
                metrics = self.training_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in list(metrics.items())[:4]})
                stop_early = self.stop_early(metrics)  # '' to go on, else why the run ends here
                last = self.step == self.max_steps or bool(stop_early)
                if last or (loop.eval_interval and self.step % loop.eval_interval == 0):
                    metrics.update(self.run_evaluation())
                if self.step % loop.log_interval == 0 or last or any(k.startswith("eval/") for k in metrics):
                    self.write_metrics(metrics)
                signum = self.stop_requested(stop)
                if signum or (loop.save_interval and self.step % loop.save_interval == 0 and not last):
                    self.save_checkpoint()
                if signum:
                    bar.close()
                    self.stop_after_signal(signum)
                if stop_early:
                    self.log(f"step {self.step}: stopping before MAX_STEPS={self.max_steps}: {stop_early}")
                    break
        bar.close()
        end_trackers(self.accelerator)
        metrics["train_seconds"] = time.time() - start
        return metrics

    def run_evaluation(self) -> dict:
        self.model.eval()
        with torch.no_grad(), self.accelerator.autocast(), fsdp.gathered(self.model):
            metrics = {f"eval/{k}": v for k, v in self.evaluate().items()}
        self.model.train()
        key = self.best_metric
        if key and key in metrics and (self.best_value is None or metrics[key] > self.best_value):
            self.best_value = metrics[key]
            self.save_model(os.path.join(self.out_dir, "best"))
        return metrics

    # ------------------------------------------------------------------ state (trainer/resume.py saves it)
    def state_dict(self) -> dict:
        return {"model": self.unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def sharded_state(self) -> dict:
        """The entries of state_dict() that FSDP shards: key -> model, or (model, optimizer)."""
        return {"model": self.model, "optimizer": (self.model, self.optimizer)}

    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    # ------------------------------------------------------------------ numeric guards (trainer/guard.py)
    def check_finite(self, loss: torch.Tensor) -> None:
        guard.check_loss(self.accelerator, loss, **guard.where(self))

    def clip_and_check(self, model) -> float:
        """Clip `model`'s gradients to GRAD_CLIP; stop before the optimizer step if their norm is
        not finite."""
        norm = self.accelerator.clip_grad_norm_(model.parameters(), self.loop.grad_clip)
        return guard.check_grad_norm(self.accelerator, norm, **guard.where(self))

    def check_weights(self, what: str = "updated weights") -> None:
        guard.check_weights(self.accelerator, self.trained_models(), what, **guard.where(self))
