"""One arm of the PEFT comparison (train_peft.py): adapt a pretrained model with one method for a fixed
number of steps, then measure it. Each arm runs in its own process, so its peak memory is its own:

    python -m bench.peft_compare '<settings as JSON>' result.json

Measured, per method:
* trainable parameters (model/peft count_parameters);
* held-out loss (response tokens of the held-out demonstrations) and gold score (greedy answers to
  held-out prompts, judged by the task's judge, which the command line below passes in) after `max_steps` steps;
* seconds per optimizer step (wall clock over the training loop only, evaluation excluded);
* peak resident memory of the process (VmHWM: weights, gradients, optimizer state, activations, the
  evaluation's generation, and the Python/torch runtime itself) and its increase over the memory right
  after loading the model (what training and evaluation added);
* bytes on disk of what the method saves (the adapter; the whole model for full fine-tuning).
"""
import json
import os
import shutil
import sys
import time

import torch
from safetensors.torch import save_model

from dataset.prompt import PromptDataset
from dataset.sft import SFTDataset
from model.load import load_causal_lm, load_tokenizer, opt125m_config
from model.peft import apply_peft, count_parameters, save_adapter
from trainer.base import LoopConfig, OptimConfig
from trainer.evaluate import Judge
from trainer.sft import SFTTrainer
from utils import quiet_transformers, seed_everything

# model name for the in-memory opt-125m architecture (memory measurements)
OPT125M_ARCH = "opt125m-arch"


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process from /proc/self/status, in MiB: VmRSS now, VmHWM its peak.
    (getrusage's ru_maxrss would not do: Linux carries it over from the parent through fork and exec.)"""
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith(field + ":"))
    return int(kib) / 1024


def load_base(name: str):
    """(tokenizer, model): a saved model, or OPT125M_ARCH: opt-125m's architecture with random weights,
    built in memory (with the embedded tokenizer, whose ids fit OPT's vocabulary)."""
    if name == OPT125M_ARCH:
        from transformers import OPTForCausalLM
        return load_tokenizer("embedded"), OPTForCausalLM(opt125m_config())
    return load_tokenizer(name), load_causal_lm(name)


def dir_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def run_method(s: dict, judge: Judge) -> dict:
    """Train `s['method']` ('base' = no training, 'full', or a model/peft method) and measure it; judge(row,
    response) scores the held-out answers."""
    quiet_transformers()
    torch.set_num_threads(s["threads"])
    seed_everything(s["seed"])
    tokenizer, model = load_base(s["model"])
    rss_loaded = rss_mb()
    peft_method = "none" if s["method"] in ("base", "full") else s["method"]
    model = apply_peft(model, peft_method, task="causal", **s["peft_settings"])
    trainable, total = count_parameters(model)
    train = SFTDataset(s["train_data"], tokenizer, s["max_len"], verbose=False)
    eval_data = SFTDataset(s["eval_data"], tokenizer, s["max_len"], verbose=False)
    prompts = PromptDataset(
        s["eval_data"],
        tokenizer,
        s["max_len"] - s["max_new_tokens"],
        s["eval_limit"],
        verbose=False,
    ).items
    out_dir = os.path.join(s["out_dir"], s["method"])
    shutil.rmtree(out_dir, ignore_errors=True)
    steps = 0 if s["method"] == "base" else s["max_steps"]
    loop = LoopConfig(
        out_dir=out_dir,
        max_steps=steps,
        warmup_steps=min(s["warmup_steps"], steps),
        grad_clip=1.0,
        eval_interval=0,
        log_interval=max(1, steps // 30),
        save_interval=0,
        seed=s["seed"],
        bf16=s["bf16"],
        resume=False,
        log_with="none",
        group_by_length=False,
        gradient_checkpointing=False,
        fsdp=False,
        overwrite=False,
    )
    optim = OptimConfig(lr=s["lr"], weight_decay=0.0, batch_size=s["batch_size"], grad_accum=1)
    trainer = SFTTrainer(model, tokenizer, train, None, None, loop=loop, optim=optim, run_config=s,
                         max_new_tokens=s["max_new_tokens"], eval_batch_size=s["eval_batch_size"],
                         judge=judge)
    start = time.time()
    trainer.fit()  # no eval data yet: the timed loop is training only
    seconds_per_step = (time.time() - start) / steps if steps else 0.0
    trainer.eval_data, trainer.eval_prompts = (
        (eval_data, prompts) if s["evaluate"] else (None, None)
    )
    start_eval = time.time()
    final = trainer.run_evaluation()
    eval_seconds = time.time() - start_eval
    peak = rss_mb("VmHWM")  # before saving: serialising is not training
    curve = []
    if steps:
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            curve = [
                (row["step"], row["train/loss"])
                for row in map(json.loads, f)
                if "train/loss" in row
            ]
    saved = os.path.join(out_dir, "saved")
    # every weight (save_model: a GGUF-loaded model refuses save_pretrained)
    if s["method"] in ("base", "full"):
        os.makedirs(saved)
        save_model(trainer.unwrap(trainer.model), os.path.join(saved, "model.safetensors"))
    else:
        save_adapter(trainer.unwrap(trainer.model), saved)
    return {
        "method": s["method"],
        "trainable": trainable,
        "total": total,
        "lr": s["lr"],
        "steps": steps,
        "eval_loss": final.get("eval/loss"),
        "gold_score": final.get("eval/gold_score"),
        "correct": final.get("eval/correct"),
        "format": final.get("eval/format"),
        "seconds_per_step": seconds_per_step,
        "eval_seconds": eval_seconds,
        "peak_rss_mb": peak,
        "rss_after_load_mb": rss_loaded,
        "peak_over_load_mb": peak - rss_loaded,
        "saved_bytes": dir_bytes(saved),
        "train_loss_curve": curve,
    }


# ---------------------------------------------------------------------- report: tables and figure
FORMULAS = {
    "bitfit": "every bias",
    "lora": "r (d_in + d_out) x 24 matrices",
    "prompt_tuning": "n d",
    "p_tuning": "n d + 3 (d^2 + d)",
    "prefix_tuning": "n x 2 x layers x d",
}


def counts_table(rows: list[dict]) -> str:
    lines = ["| method | trainable params | all params | trainable % | formula | formula value |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {r['total']:,} | {100 * r['trainable'] / r['total']:.4f} "
            f"| {FORMULAS[r['method']]} | {r['formula']:,} |"
        )
    return "\n".join(lines) + "\n"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary_line(r: dict) -> str:
    return (
        f"{r['method']:>14}: loss {_num(r['eval_loss'], '.3f')}, gold {_num(r['gold_score'], '.3f')}, "
        f"{r['seconds_per_step']:.3f} s/step, peak {r['peak_rss_mb']:.0f} MiB, saved {r['saved_bytes'] / 1024:,.1f} KiB"
    )


def comparison_table(results: list[dict], caption: str) -> str:
    lines = [
        caption,
        "",
        "| method | lr | trainable params | held-out loss | gold score | s/step | peak RSS (MiB) "
        "| peak - after load (MiB) | saved (KiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['lr']:g} | {r['trainable']:,} | {_num(r['eval_loss'], '.3f')} | {_num(r['gold_score'], '.3f')} "
            f"| {r['seconds_per_step']:.3f} | {r['peak_rss_mb']:.0f} | {r['peak_over_load_mb']:.0f} "
            f"| {r['saved_bytes'] / 1024:,.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_comparison(results: list[dict], path: str, title: str, memory: list[dict] = None) -> None:
    """Training-loss curves; one bar per method for held-out loss, gold score and trainable parameters;
    and, given the opt-125m memory runs, their peak memory over the loaded model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5 if memory else 4, figsize=(22 if memory else 18, 4.2))
    # in order, once each
    names = list(dict.fromkeys(r["method"] for r in results + (memory or [])))
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    for r in results:
        if r["train_loss_curve"]:
            steps, losses = zip(*r["train_loss_curve"])
            axes[0].plot(steps, losses, label=r["method"], color=colors[r["method"]])
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[0].legend(fontsize=8)
    panels = [
        (results, "held-out loss", "eval_loss"),
        (results, "gold score, held-out prompts (max 1)", "gold_score"),
        (results, "trainable parameters (log)", "trainable"),
    ]
    if memory:
        panels.append((memory, "opt-125m arch: peak RSS - after load (MiB)", "peak_over_load_mb"))
    for ax, (rows, label, key) in zip(axes[1:], panels):
        ax.bar(
            [r["method"] for r in rows],
            [r[key] for r in rows],
            color=[colors[r["method"]] for r in rows],
        )
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=60)
    axes[3].set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)

if __name__ == "__main__":  # the command line is a script: it passes the shipped task's judge in
    from dataset.task import gold_judge

    result = run_method(json.loads(sys.argv[1]), gold_judge)
    with open(sys.argv[2], "w") as f:
        json.dump(result, f, indent=2)
