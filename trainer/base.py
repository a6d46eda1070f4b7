"""The training loop every stage uses. Nothing here knows about RLHF.

Owns: device placement, mixed precision and multi-process (through `accelerate`, so `accelerate launch`
or `torchrun` need no new code), AdamW with linear warmup and cosine decay, gradient accumulation and
clipping, evaluation cadence, a tqdm bar with the live loss, `metrics.jsonl`, and atomic, exactly
resumable checkpoints.

Subclasses fill in `compute_loss(batch) -> (loss, metrics)` and, if needed, `evaluate()`; PPO replaces
`training_step` and extends `state_dict` / `load_state_dict`.

Data order is a pure function of (seed, sample index): sample k of the run is item perm_e[k % N] of the
dataset, with perm_e a seeded permutation for epoch e = k // N. Resuming at step s therefore needs no
dataloader skipping, and a resumed run sees exactly the batches the uninterrupted run would have.
"""
import contextlib
import math
import os
import shutil
import time

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from utils import append_jsonl, rng_state, set_rng_state, write_json


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped and the last good checkpoint is untouched."""


class Trainer:
    def __init__(self, model, train_data, collate, out_dir: str, run_config: dict, *, lr: float, max_steps: int,
                 batch_size: int, grad_accum: int = 1, warmup_steps: int = 0, weight_decay: float = 0.0,
                 grad_clip: float = 1.0, eval_interval: int = 0, log_interval: int = 10, save_interval: int = 0,
                 seed: int = 0, bf16: bool = False, resume: bool = False, best_metric: str = None):
        self.accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no")
        self.device = self.accelerator.device
        self.train_data, self.collate, self.out_dir, self.run_config = train_data, collate, out_dir, run_config
        self.max_steps, self.batch_size, self.grad_accum = max_steps, batch_size, grad_accum
        self.grad_clip, self.eval_interval, self.log_interval = grad_clip, eval_interval, log_interval
        self.save_interval, self.seed, self.resume, self.best_metric = save_interval, seed, resume, best_metric
        self.step, self.best_value, self._perms = 0, None, {}
        self.ckpt_dir = os.path.join(out_dir, "checkpoint")
        os.makedirs(out_dir, exist_ok=True)
        metrics_path = os.path.join(out_dir, "metrics.jsonl")
        if not (resume and os.path.exists(self.ckpt_dir)) and self.accelerator.is_main_process and os.path.exists(metrics_path):
            os.remove(metrics_path)  # a fresh run starts a fresh log; a resumed one appends
        self.warmup_steps = warmup_steps
        if model is not None:
            self.model, self.optimizer = self.accelerator.prepare(model, adamw(model, lr, weight_decay))
            self.scheduler = self.lr_schedule(self.optimizer)

    def lr_schedule(self, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, self.warmup_steps, self.max_steps))

    # ------------------------------------------------------------------ hooks for subclasses
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}

    def training_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns the step's metrics."""
        self.model.train()
        totals = {}
        for micro in range(self.grad_accum):
            batch = self.get_batch(self.step * self.grad_accum + micro)
            sync = micro == self.grad_accum - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model):
                with self.accelerator.autocast():
                    loss, metrics = self.compute_loss(batch)
                self.check_finite(loss)
                self.accelerator.backward(loss / self.grad_accum)
            for k, v in {"train/loss": loss.item(), **metrics}.items():
                totals[k] = totals.get(k, 0.0) + float(v) / self.grad_accum
        totals["train/grad_norm"] = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        totals["train/lr"] = self.scheduler.get_last_lr()[0]
        return totals

    def state_dict(self) -> dict:
        return {"model": self.unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        if self.resume and os.path.exists(self.ckpt_dir):
            self.load_checkpoint()
            self.log(f"resumed from {self.ckpt_dir} at step {self.step}")
        start, metrics = time.time(), {}
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not self.accelerator.is_main_process or bool(os.environ.get("TQDM_DISABLE")), dynamic_ncols=True)
        while self.step < self.max_steps:
            metrics = self.training_step()
            self.step += 1
            bar.update(1)
            bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in list(metrics.items())[:4]})
            if self.step == self.max_steps or (self.eval_interval and self.step % self.eval_interval == 0):
                metrics.update(self.run_evaluation())
            if self.step % self.log_interval == 0 or self.step == self.max_steps or any(k.startswith("eval/") for k in metrics):
                self.write_metrics(metrics)
            if self.save_interval and self.step % self.save_interval == 0 and self.step < self.max_steps:
                self.save_checkpoint()
        bar.close()
        metrics["train_seconds"] = time.time() - start
        return metrics

    def run_evaluation(self) -> dict:
        self.model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            metrics = {f"eval/{k}": v for k, v in self.evaluate().items()}
        self.model.train()
        key = self.best_metric
        if key and key in metrics and (self.best_value is None or metrics[key] > self.best_value):
            self.best_value = metrics[key]
            self.save_model(os.path.join(self.out_dir, "best"))
        return metrics

    # ------------------------------------------------------------------ data
    def get_batch(self, index: int) -> dict:
        """Micro-batch number `index` of this process (deterministic in seed and index)."""
        world, rank, n = self.accelerator.num_processes, self.accelerator.process_index, len(self.train_data)
        first = (index * world + rank) * self.batch_size
        items = []
        for k in range(first, first + self.batch_size):
            epoch = k // n
            if epoch not in self._perms:
                self._perms = {epoch: torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))}
            items.append(self.train_data[int(self._perms[epoch][k % n])])
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.collate(items).items()}

    # ------------------------------------------------------------------ checkpoints, logs
    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    def check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"step {self.step}: the loss is {loss.item()}; training stopped. The last good checkpoint "
                f"({self.ckpt_dir if os.path.exists(self.ckpt_dir) else 'none saved yet'}) is untouched. "
                "Lower LR or raise GRAD_CLIP's strictness, then resume with --resume True.")

    def save_checkpoint(self) -> None:
        """Write the full training state to checkpoint.tmp, then swap it in: a crash mid-write never
        leaves a half-written checkpoint under the real name."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tmp, old = self.ckpt_dir + ".tmp", self.ckpt_dir + ".old"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            torch.save({**self.state_dict(), "step": self.step, "rng": rng_state(), "best_value": self.best_value},
                       os.path.join(tmp, "trainer_state.pt"))
            write_json(os.path.join(tmp, "run_config.json"), self.run_config)
            if os.path.exists(self.ckpt_dir):
                os.replace(self.ckpt_dir, old)
            os.replace(tmp, self.ckpt_dir)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self) -> None:
        state = torch.load(os.path.join(self.ckpt_dir, "trainer_state.pt"), weights_only=False, map_location="cpu")
        self.load_state_dict(state)
        self.step, self.best_value = state["step"], state["best_value"]
        set_rng_state(state["rng"])

    def save_model(self, out_dir: str, tokenizer=None) -> None:
        """An HF-format checkpoint (save_pretrained) plus the resolved run config."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.unwrap(self.model).save_pretrained(out_dir)
            if tokenizer is not None:
                tokenizer.save_pretrained(out_dir)
            write_json(os.path.join(out_dir, "run_config.json"), self.run_config)

    def write_metrics(self, metrics: dict) -> None:
        if self.accelerator.is_main_process:
            append_jsonl(os.path.join(self.out_dir, "metrics.jsonl"), {"step": self.step, "time": time.time(), **metrics})
            if any(k.startswith("eval/") for k in metrics):
                self.log(f"step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("eval/")))

    def log(self, text: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(text)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only (never LayerNorm weights or biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0.1 at max_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
