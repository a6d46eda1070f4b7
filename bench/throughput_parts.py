"""The pieces of bench/bench_throughput.py that read none of its settings: the model it measures, the
timing of training steps, and the table row of a result."""

import dataclasses
import os
import time

import torch

from model.load import opt125m_config
from utils import ConfigError


def build_model(out_dir: str, tokenizer_file: str) -> str:
    """OUT_DIR/opt125m: opt-125m's architecture and dropout (0.1), random weights (seed 0), and SmolLM2's
    tokenizer (its 49,152 ids fit OPT's 50,272-row embedding)."""
    path = os.path.join(out_dir, "opt125m")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    if not tokenizer_file or not os.path.exists(tokenizer_file):
        raise ConfigError(
            f"--tokenizer {tokenizer_file!r}: not found (give the path of the "
            "SmolLM2-135M-Instruct GGUF file)"
        )
    from transformers import AutoTokenizer, OPTForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(
        os.path.dirname(tokenizer_file), gguf_file=os.path.basename(tokenizer_file)
    )
    cfg = opt125m_config()
    cfg.dropout = 0.1  # facebook/opt-125m's config (attention and activation dropout are 0.0 there)
    cfg.bos_token_id, cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    OPTForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def matmul_params(model) -> int:
    """Parameters that take part in matrix products: every >= 2-D weight but the embeddings, plus the LM
    head (tied to the token embedding) where the model has one (a reward model has a scalar head instead)."""
    inner = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n)
    head = model.get_output_embeddings()
    return inner + (head.weight.numel() if head is not None else 0)


def known_fields(cls, **values):
    """cls(**values) without the values cls has no field for (so the benchmark also runs against
    trainers whose configs have fewer fields)."""
    return cls(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}})


def timed_steps(trainer, warmup: int, steps: int, count, on_timed_start=lambda: None) -> dict:
    """Run warmup + steps training steps; time the last `steps`. count(index) -> {name: amount} of
    step `index`."""
    totals, seconds = {}, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            on_timed_start()
        trainer.step = i
        start = time.perf_counter()
        trainer.training_step()
        if i >= warmup:
            seconds += time.perf_counter() - start
            for k, v in count(i).items():
                totals[k] = totals.get(k, 0) + v
    return {"seconds": seconds, "steps": steps, **totals}


def row(run: str, r: dict) -> str:
    stage = run.split("-")[0]
    if stage == "sft":
        figure = f"{r['tokens_per_s']:7.1f} tok/s ({r['padded_tokens_per_s']:.0f} padded)"
    elif stage == "rm":
        figure = f"{r['pairs_per_s']:7.2f} pairs/s ({r['tokens_per_s']:.0f} tok/s)"
    else:
        figure = (
            f"{r['seconds_per_iteration']:7.1f} s/iter (generate {r['generate_s']:.1f}, score {r['score_s']:.1f}, "
            f"learn {r['learn_s']:.1f})"
        )
    gflops = f"{r['model_gflops']:5.0f}" if "model_gflops" in r else "    -"
    return f"{run:34} {figure:58} {gflops} {r['peak_rss_mb'] / 1024:6.2f}   {r['probe']}"


def without_runs(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--runs="):
            skip = False
            continue
        if a == "--runs":
            skip = True
            continue
        out.append(a)
    return out
