"""The training loop every stage uses. Nothing here knows about RLHF.

Owns: device placement, mixed precision and multi-process (through `accelerate`, so `accelerate launch`
or `torchrun` need no new code; trainer/dist.py makes sure the processes really form one group), AdamW
with linear warmup and cosine decay, gradient accumulation and clipping, evaluation cadence, a tqdm
bar with the live loss, `metrics.jsonl`, and exactly resumable checkpoints (crash-safe, no pickle;
`trainer/checkpoint.py`). SIGTERM / SIGINT finish the current step, write a checkpoint and exit with
128 + the signal number; one run at a time holds `out_dir` (a lock file).

Subclasses fill in `compute_loss(batch) -> (loss, metrics)`, `loss_weight(batch)` (how many terms the
loss averages over: supervised tokens, pairs) and, if needed, `evaluate()`; PPO replaces `training_step`
and extends `state_dict` / `load_state_dict`. Every stage starts with `log_start` (the model before
training is step 0 of metrics.jsonl) and ends with `finish` (model, tokenizer, run_config.json and
summary.json in out_dir), so a stage's script is settings and wiring only.

Settings arrive as two dataclasses built from the script's constants (`LoopConfig`, `OptimConfig`,
`from_settings`), each field documented once, with no defaults to drift from the script's.

Several processes equal one: each step's loss is the mean over the terms of the whole global batch
(all micro-batches of all ranks), so 2 processes x batch b take the step 1 process x batch 2b takes,
and the logged train metrics are the same global means.

Data order is a pure function of (seed, sample index): sample k of the run is item perm_e[k % N] of the
dataset, with perm_e a seeded permutation for epoch e = k // N. Resuming at step s therefore needs no
dataloader skipping, and a resumed run sees exactly the batches the uninterrupted run would have.
"""
import contextlib
import math
import os
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from trainer import fsdp, guard, outdir
from trainer.dist import all_ranks, is_sharded, make_accelerator, reduce_sum
from trainer.tracking import end_trackers, start_trackers
from trainer.checkpoint import (CheckpointError, Preempted, StopOnSignal, candidates, drop_rows_after, load_newest, lock_out_dir,
                                resume_command, save_checkpoint)
from model.peft import save_peft
from utils import UserError, append_jsonl, from_settings, peak_rss_mb, rng_state, seed_everything, set_rng_state, write_json


NonFiniteLossError = guard.NonFiniteError  # the name callers already catch


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
    gradient_checkpointing: bool  # keep only each layer's input; recompute the layer in the backward pass (checkpoint_layers)
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


class Trainer:
    best_metric = None  # an eval metric to maximise: each new best is saved to out_dir/best (the RM sets it)
    nonfinite_hint = "Lower LR (or GRAD_CLIP)"  # what exit 7 advises; DPO adds BETA

    def __init__(self, model, train_data, collate, *, loop: LoopConfig, optim: OptimConfig, run_config: dict):
        self.accelerator = make_accelerator("bf16" if loop.bf16 else "no")
        self.device = self.accelerator.device
        self.train_data, self.collate, self.loop, self.run_config = train_data, collate, loop, run_config
        self.out_dir, self.max_steps, self.seed = loop.out_dir, loop.max_steps, loop.seed
        self.batch_size, self.grad_accum = optim.batch_size, optim.grad_accum
        self.step, self.best_value, self._perms = 0, None, {}
        self.train_tokens = self.train_tokens_padded = 0  # all processes, the steps this run took
        check_sharded_settings(self.accelerator, loop.save_interval, loop.resume, optim.grad_accum)
        self.ckpt_dir = os.path.join(self.out_dir, "checkpoint")
        if self.accelerator.is_main_process:
            lock_out_dir(self.out_dir)  # before touching anything in it: a second run on out_dir stops here
        self.resuming = loop.resume and bool(candidates(self.ckpt_dir))  # candidates refuses pickle checkpoints
        if not self.resuming:  # never over an earlier run's checkpoint or model (unless overwrite)
            outdir.check_fresh_start(self.out_dir, self.ckpt_dir, loop.resume, loop.overwrite,
                                     self.accelerator.is_main_process)
        else:  # another stage's checkpoint, or other training settings: refused before any work
            newest = candidates(self.ckpt_dir)[0][1]
            outdir.check_resumable(newest, type(self).__name__, run_config)
        if loop.resume and not self.resuming:
            self.log(f"--resume True: no checkpoint in {self.ckpt_dir}; starting from step 0")
        metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        if not self.resuming and self.accelerator.is_main_process and os.path.exists(metrics_path):
            os.remove(metrics_path)  # a fresh run starts a fresh log; a resumed one appends
        start_trackers(self.accelerator, loop.log_with, self.out_dir, run_config)
        if model is not None:
            self.model, self.optimizer = self.prepare_trained(model, optim.lr, optim.weight_decay)
            self.scheduler = self.lr_schedule(self.optimizer)
        if self.accelerator.process_index > 0:  # own random numbers per rank (dropout, sampling); rank 0 keeps
            seed_everything(loop.seed + 1000003 * self.accelerator.process_index)  # the single-process stream

    def prepare_trained(self, model, lr: float, weight_decay: float):
        """A model this trainer updates, and its AdamW, ready for the accelerator (one model per prepare():
        FSDP2 needs that); its layers checkpointed first if loop.gradient_checkpointing."""
        if self.loop.gradient_checkpointing:
            checkpoint_layers(model)
        if self.loop.fsdp:  # torch's FSDP2 directly: accelerate would wrap it in DDP on CPU
            model = fsdp.shard_model(model.to(self.device), type(model).__name__)
            return model, adamw(model, lr, weight_decay)
        return self.accelerator.prepare(model, adamw(model, lr, weight_decay))

    def lr_schedule(self, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, self.loop.warmup_steps, self.max_steps))

    # ------------------------------------------------------------------ hooks for subclasses
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def evaluate(self) -> dict:
        return {}

    def loss_weight(self, batch: dict) -> float:
        """How many terms compute_loss(batch) averages over (1: every micro-batch counts the same)."""
        return 1.0

    def training_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns the step's metrics.

        The step's loss is sum over all terms of the global batch / their total count W (all-reduced):
        micro-batch j of rank r, with mean loss L_rj over its w_rj terms, back-propagates
        L_rj * w_rj * world / W, and DDP's gradient average over ranks divides the world back out."""
        self.model.train()
        batches = [self.get_batch(self.step * self.grad_accum + micro) for micro in range(self.grad_accum)]
        weights = [float(self.loss_weight(b)) for b in batches]
        masks = [b["attention_mask"] for b in batches if "attention_mask" in b]
        counts = reduce_sum(self.accelerator, {"w": sum(weights), "tokens": float(sum(m.sum() for m in masks)),
                                               "padded": float(sum(m.numel() for m in masks))})
        self.train_tokens += int(counts["tokens"])  # non-pad tokens; padded: what the forward passes computed
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
        totals = {k: v / total for k, v in reduce_sum(self.accelerator, sums).items()}  # global means
        grad_norm = self.clip_and_check(self.model)
        if grad_norm is not None:  # DeepSpeed clips inside its engine (gradient_clipping in the config) and returns None
            totals["train/grad_norm"] = grad_norm
        self.optimizer.step()
        self.check_weights()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        totals["train/lr"] = self.scheduler.get_last_lr()[0]
        return totals

    def token_counts(self, seconds: float) -> dict:
        """summary.json's throughput: tokens the training steps processed (non-pad, and padded) per second."""
        return {"train_tokens": self.train_tokens, "train_tokens_padded": self.train_tokens_padded,
                "tokens_per_second": self.train_tokens / max(seconds, 1e-9),
                "padded_tokens_per_second": self.train_tokens_padded / max(seconds, 1e-9)}

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

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        if self.resuming:
            self.load_checkpoint()
        start, metrics = time.time(), {}
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not self.accelerator.is_main_process or bool(os.environ.get("TQDM_DISABLE")), dynamic_ncols=True)
        with StopOnSignal() as stop:
            while self.step < self.max_steps:
                metrics = self.training_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in list(metrics.items())[:4]})
                loop = self.loop
                if self.step == self.max_steps or (loop.eval_interval and self.step % loop.eval_interval == 0):
                    metrics.update(self.run_evaluation())
                if self.step % loop.log_interval == 0 or self.step == self.max_steps or any(k.startswith("eval/") for k in metrics):
                    self.write_metrics(metrics)
                signum = self.stop_requested(stop)
                if signum or (loop.save_interval and self.step % loop.save_interval == 0 and self.step < self.max_steps):
                    self.save_checkpoint()
                if signum:
                    bar.close()
                    self.stop_after_signal(signum)
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

    # ------------------------------------------------------------------ data
    def get_batch(self, index: int) -> dict:
        """Micro-batch number `index` of this process (deterministic in seed and index)."""
        world, rank, n = self.accelerator.num_processes, self.accelerator.process_index, len(self.train_data)
        first = (index * world + rank) * self.batch_size
        items = []
        for k in range(first, first + self.batch_size):
            epoch = k // n
            if epoch not in self._perms:
                self._perms = {epoch: self.epoch_order(epoch)}
            items.append(self.train_data[int(self._perms[epoch][k % n])])
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in self.collate(items).items()}

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The order of the items in `epoch`: a permutation seeded by (seed, epoch); with GROUP_BY_LENGTH,
        rearranged so that each batch holds items of similar length (group_by_length)."""
        gen = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(len(self.train_data), generator=gen)
        if self.loop.group_by_length:
            lengths = [item_length(self.train_data[int(i)]) for i in order]
            order = group_by_length(order, lengths, self.batch_size * self.accelerator.num_processes, gen)
        return order

    # ------------------------------------------------------------------ checkpoints, logs
    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    # numeric guards (trainer/guard.py): every rank stops together, nothing non-finite is saved
    def trained_models(self) -> list:
        """The models this trainer updates (PPO: actor and critic)."""
        return [self.model]

    def check_finite(self, loss: torch.Tensor) -> None:
        guard.check_loss(self.accelerator, loss, **guard.where(self))

    def clip_and_check(self, model) -> float:
        """Clip `model`'s gradients to GRAD_CLIP; stop before the optimizer step if their norm is
        not finite."""
        norm = self.accelerator.clip_grad_norm_(model.parameters(), self.loop.grad_clip)
        return guard.check_grad_norm(self.accelerator, norm, **guard.where(self))

    def check_weights(self, what: str = "updated weights") -> None:
        guard.check_weights(self.accelerator, self.trained_models(), what, **guard.where(self))

    def save_checkpoint(self) -> None:
        """The full training state (safetensors + JSON, crash-safe swap: trainer/checkpoint.py), main process only."""
        self.check_weights("weights to checkpoint")
        self.accelerator.wait_for_everyone()
        rng = all_ranks(self.accelerator, rng_state())  # every rank's generators: dropout and sampling differ per rank
        state = {"trainer": self.state_dict(), "rng": rng, "best_value": self.best_value,
                 "stage": type(self).__name__}  # resume refuses another stage's checkpoint
        if self.loop.fsdp:  # every rank writes its shards; the main process the rest, then swaps
            sharded = self.sharded_state()
            state["trainer"] = {k: v for k, v in state["trainer"].items() if k not in sharded}
            is_main = self.accelerator.is_main_process
            state["shards"] = fsdp.save_shards(self.ckpt_dir, sharded, is_main)
        if self.accelerator.is_main_process:
            save_checkpoint(self.ckpt_dir, state, self.step, self.run_config,
                            tmp_ready=self.loop.fsdp)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self) -> None:
        def check(path: str) -> None:
            outdir.check_resumable(path, type(self).__name__, self.run_config)
        self.step, state, path = load_newest(self.ckpt_dir, check)
        fsdp.check_resumable(path, state, self.loop.fsdp)
        if self.loop.fsdp:
            state["trainer"].update(fsdp.load_shards(path, self.sharded_state(), state["shards"]))
        self.load_state_dict(state["trainer"])
        self.best_value = state["best_value"]
        set_rng_state(self.rank_rng_state(state["rng"]))
        if self.accelerator.is_main_process:  # lines a killed run logged after its checkpoint are redone
            drop_rows_after(os.path.join(self.out_dir, "metrics.jsonl"), self.step)
        self.log(f"resumed from {path} at step {self.step}")

    def stop_requested(self, stop: StopOnSignal) -> int:
        """The signal number if any process received SIGTERM / SIGINT (all processes stop at the same step), else 0."""
        signum = stop.signum or 0
        if self.accelerator.num_processes > 1:
            signum = int(self.accelerator.gather(torch.tensor([signum], device=self.device)).max())
        return signum

    def stop_after_signal(self, signum: int) -> None:
        """After the checkpoint: say how to resume, then exit with 128 + signum (no step lost)."""
        self.log(f"stopped by signal {signum} after step {self.step}; checkpoint written to {self.ckpt_dir}. "
                 f"Resume with: {resume_command()}")
        raise Preempted(128 + signum)

    def rank_rng_state(self, saved) -> dict:
        """This rank's RNG state from a checkpoint's list of per-rank states (a single state: older format)."""
        if isinstance(saved, dict):
            return saved
        if len(saved) != self.accelerator.num_processes:  # sample k of the run is placed by rank and world size too
            raise CheckpointError(f"{self.ckpt_dir} was written by {len(saved)} process(es); resume it with the same "
                               f"number (torchrun --nproc_per_node {len(saved)}), not {self.accelerator.num_processes}")
        return saved[self.accelerator.process_index]

    def save_model(self, out_dir: str, tokenizer=None) -> None:
        """An HF-format checkpoint (save_pretrained) plus the resolved run config."""
        self.check_weights("weights to save")
        state = self.full_state(self.model)  # a collective under FSDP / ZeRO-3: gathers the shards
        if self.accelerator.is_main_process:
            self.unwrap(self.model).save_pretrained(out_dir, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(out_dir)
            write_json(os.path.join(out_dir, "run_config.json"), self.run_config)
        self.accelerator.wait_for_everyone()  # other ranks may read it next (train_rm.py reloads out_dir/best)

    def log_start(self, metrics: dict) -> None:
        """Step 0 of metrics.jsonl (and of the curves): the model before training. A resumed run has it already."""
        if not self.resuming:
            self.write_metrics(metrics)

    def finish(self, tokenizer, peft: str, summary: dict) -> None:
        """The end of every stage: the trained model in out_dir with its tokenizer and run_config.json
        (full weights, or with PEFT the adapter plus, where it merges, the merged model), then summary.json
        with the peak memory. A collective under FSDP / ZeRO-3 (the state dict is gathered); the main process writes."""
        self.check_weights("final weights")
        state = self.full_state(self.model) if peft == "none" else None
        if self.accelerator.is_main_process:
            print(save_stage(self.out_dir, self.unwrap(self.model), tokenizer, self.run_config, peft, summary, state))
        self.accelerator.wait_for_everyone()

    def full_state(self, model) -> dict:
        """The model's full state dict for an HF checkpoint (gathered once under FSDP / ZeRO-3)."""
        if self.loop.fsdp:
            return fsdp.full_state_dict(model)
        return self.accelerator.get_state_dict(model)

    def write_metrics(self, metrics: dict) -> None:
        if self.accelerator.is_main_process:
            append_jsonl(os.path.join(self.out_dir, "metrics.jsonl"), {"step": self.step, "time": time.time(), **metrics})
            if self.accelerator.trackers:  # the same keys and values, x = step
                self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self.step)
            if any(k.startswith("eval/") for k in metrics):
                self.log(f"step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("eval/")))

    def log(self, text: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(text)

    def log_text(self, key: str, text: str) -> None:
        """Text (e.g. a markdown table of sample completions) to the experiment trackers, at this step."""
        if self.accelerator.trackers:
            self.accelerator.log({key: text}, step=self.step)


def save_stage(out_dir: str, model, tokenizer, run_config: dict, peft: str, summary: dict, state_dict=None) -> str:
    """Write what a stage leaves in out_dir: the model as an HF checkpoint (peft != 'none': model/peft's
    save_peft, the adapter in out_dir/adapter and the merged model where the method merges), the tokenizer,
    run_config.json and summary.json (peak_rss_mb added). Returns a line saying what was written.
    Trainer.finish and the head-only reward model (train_rm.py) both end here."""
    tensors = state_dict.values() if state_dict is not None else model.parameters()
    if not guard.all_finite([t for t in tensors if t.is_floating_point()]):
        raise guard.NonFiniteError(f"{out_dir}: the weights to save hold NaN or inf; nothing was "
                                   "written (lower LR, or check the data)")
    with outdir.staged(out_dir) as staging:  # written aside, renamed in: never a cut model file
        if peft == "none":
            model.save_pretrained(staging, state_dict=state_dict)
            tokenizer.save_pretrained(staging)
            what = "HF checkpoint"
        else:
            what = save_peft(model, staging, tokenizer).replace(staging, out_dir)
        write_json(os.path.join(staging, "run_config.json"), run_config)
        summary = {**summary, "peak_rss_mb": peak_rss_mb()}
        write_json(os.path.join(staging, "summary.json"), summary)
    return f"wrote {out_dir}/ ({what}, run_config.json, summary.json)"


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


def item_length(item: dict) -> int:
    """Tokens an item puts in a batch: an SFT row's ids, a PPO prompt, or all the sequences of an RM group."""
    if "input_ids" in item:
        return len(item["input_ids"])
    if "prompt_ids" in item:
        return len(item["prompt_ids"])
    return sum(len(s) for s in item["sequences"])


def group_by_length(order: torch.Tensor, lengths: list, batch: int, gen: torch.Generator, chunk_batches: int = 50) -> torch.Tensor:
    """Rearrange `order` (lengths[i]: the length of order[i]) so that consecutive runs of `batch` items have
    similar lengths: within each chunk of chunk_batches * batch items (random, as `order` is), sort by length,
    cut into batches, and shuffle those batches. Padding drops while data order stays random at the chunk
    scale (as in the length-grouped samplers of common trainers). Returns a permutation of `order`."""
    out, size = [], chunk_batches * batch
    for start in range(0, len(order), size):
        idx = sorted(range(start, min(start + size, len(order))), key=lambda i: -lengths[i])  # stable
        batches = [idx[i: i + batch] for i in range(0, len(idx), batch)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            out += batches[b]
    return order[torch.tensor(out, dtype=torch.long)]


def checkpoint_layers(model: torch.nn.Module) -> int:
    """Activation (gradient) checkpointing: each transformer layer keeps only its input for the backward
    pass and runs again there, so the activations held at once are one layer's, not every layer's (about
    one more forward pass of compute). Returns how many layers it wrapped.

    Hugging Face's own switch (`gradient_checkpointing_enable`) acts only in training mode, and PPO learns
    in eval mode (no dropout: the ratio is 1 before an update), so the layers are wrapped here instead,
    whatever the mode. Wherever gradients are recorded the layer runs under torch.utils.checkpoint (the
    random state is replayed, so dropout draws the same mask twice; the KV cache is not written, a replay
    would write it again); without gradients (generation, scoring) it runs as before."""
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise UserError(f"GRADIENT_CHECKPOINTING: {type(model).__name__} has no transformer layers to checkpoint")
    for layer in layers:
        if getattr(layer, "checkpointed", False):
            continue

        def forward(*args, _forward=layer.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            kwargs["use_cache"] = False
            if "cache" in kwargs:
                kwargs["cache"] = None
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
        layer.forward, layer.checkpointed = forward, True
    return len(layers)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only (never LayerNorm weights or biases).

    The fused implementation (one kernel over all parameters) where torch has it for the parameters' device:
    on this CPU a step over 90M parameters took 0.044 s instead of the for-loop's 0.43 s (docs/throughput.md)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
                for p in decay + no_decay)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, fused=fused or None)


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0.1 at max_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
