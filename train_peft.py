"""Parameter-efficient fine-tuning compared: BitFit, prompt tuning, p-tuning, prefix tuning and
LoRA against full fine-tuning.

    python train_peft.py                     # counts, comparison on the embedded SFT model,
                                             # memory on opt-125m (~6-10 min)
    python train_peft.py --compare False --memory_steps 0   # parameter counts only (~30 s)
    python train_peft.py --counts False --memory_steps 0 --max_steps 5 --eval_limit 16 \
        --out_dir out/t_peft --plot none     # a quick smoke run
    python train_peft.py --model ~/.cache/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf \
        --counts False --memory_steps 0 --max_steps 30 --batch_size 8 --warmup_steps 3 \
        --methods base,full,lora,prompt_tuning,p_tuning,prefix_tuning --eval_limit 50 \
        --lr_full 1e-4 --lr_lora 2e-3 --lr_prompt_tuning 3e-2 --lr_p_tuning 3e-3 \
        --lr_prefix_tuning 1e-2 --bf16 True --out_dir out/peft_smollm2 \
        --plot pic/peft_comparison_smollm2.png
                                             # SmolLM2-135M from a GGUF file; BitFit left out:
                                             # Llama layers have no biases

1. Counts: each method on the opt-125m architecture (facebook/opt-125m if it is in the HF cache,
   else the same architecture with random weights, built in memory), printed as
   `trainable params: X || all params: Y || trainable%: Z`, next to the count its formula predicts.
2. Comparison: every method (and full fine-tuning) adapts MODEL, an SFT checkpoint, to the
   instruction type the SFT data never contained (dataset/task.py HOLDOUT_TYPE) for the same steps
   on the same data; each in its own process (bench/peft_compare.py). Writes OUT_DIR/results.md,
   OUT_DIR/results.json and the PLOT figure.
3. Memory: every method for MEMORY_STEPS steps on the opt-125m architecture, where weights,
   gradients and AdamW state are large enough for the difference between methods to show.
"""
import copy
import json
import os
import subprocess
import sys

from model.load import ModelError, load_causal_lm, opt125m_config, resolve
from model.peft import apply_peft, count_parameters, format_counts
from model.peft.bitfit import bitfit_parameter_count
from model.peft.lora import lora_parameter_count
from model.peft.p_tuning import p_tuning_parameter_count
from model.peft.prefix_tuning import prefix_tuning_parameter_count
from model.peft.prompt_tuning import prompt_tuning_parameter_count
from bench.peft_compare import (OPT125M_ARCH, comparison_table, counts_table, plot_comparison,
                                  summary_line)
from utils import UserError, configure, quiet_transformers, run_main, write_json

# parameter counts
COUNTS = True  # print the parameter counts on opt-125m first
COUNT_MODEL = "facebook/opt-125m"  # counted when in the HF cache; else its architecture, random
# comparison: model and data
COMPARE = True  # run the training comparison after the counts
MODEL = "out/sft"  # the pretrained base every method adapts (python train_sft.py writes out/sft)
TRAIN_DATA = "ds/peft_train.jsonl"  # demonstrations of the held-out instruction type
EVAL_DATA = "ds/peft_eval.jsonl"  # held-out demonstrations (loss) and their prompts (gold score)
METHODS = "base,full,bitfit,lora,prompt_tuning,p_tuning,prefix_tuning"  # 'base': no training
OUT_DIR = "out/peft"  # results.md, results.json, one folder per method with what it saved
PLOT = "pic/peft_comparison.png"  # the figure ('none' to skip)
# optimisation (the same for every method but the learning rate)
MAX_STEPS = 150  # optimizer steps per method
BATCH_SIZE = 32  # examples per step
MAX_LEN = 96  # tokens per example
WARMUP_STEPS = 10  # linear warmup, then cosine decay
LR_FULL = 1e-3  # full fine-tuning
LR_BITFIT = 3e-2  # BitFit
LR_LORA = 1e-2  # LoRA
LR_PROMPT_TUNING = 1e-1  # prompt tuning: virtual tokens start far from useful, so a high rate
LR_P_TUNING = 1e-2  # p-tuning (lower than prompt tuning: the MLP encoder amplifies updates)
LR_PREFIX_TUNING = 3e-2  # prefix tuning
THREADS = 1  # torch threads per method; 2 threads on 2 busy cores ran 25x slower than 1
BF16 = False  # bfloat16 autocast (worth it for SmolLM2 / opt-125m, not for the tiny model)
SEED = 0  # same initialisation and data order for every method
# method settings (also the ones the parameter counts use)
LORA_R = 4  # LoRA rank
LORA_ALPHA = 8  # LoRA scale: the update is (alpha / r) B A
LORA_TARGETS = "q_proj,v_proj"  # comma-separated linear layers LoRA adapts
NUM_VIRTUAL_TOKENS = 10  # prompt tuning, p-tuning, prefix tuning
# memory and speed on the opt-125m architecture (every method but 'base', no evaluation)
MEMORY_STEPS = 2  # optimizer steps per method (0: skip)
MEMORY_BATCH_SIZE = 8  # examples per step
# evaluation
EVAL_LIMIT = 200  # held-out prompts for the gold score (None: all)
MAX_NEW_TOKENS = 16  # generation length for the gold score
EVAL_BATCH_SIZE = 64  # held-out demonstrations per forward pass, prompts per generate call

config = configure(globals())
PEFT_SETTINGS = dict(r=LORA_R, alpha=LORA_ALPHA, targets=tuple(LORA_TARGETS.split(",")),
                     num_virtual_tokens=NUM_VIRTUAL_TOKENS)
LRS = {"base": 0.0, "full": LR_FULL, "bitfit": LR_BITFIT, "lora": LR_LORA,
       "prompt_tuning": LR_PROMPT_TUNING, "p_tuning": LR_P_TUNING,
       "prefix_tuning": LR_PREFIX_TUNING}


def count_model():
    """COUNT_MODEL if it can be loaded offline, else its architecture with random weights."""
    try:
        return load_causal_lm(COUNT_MODEL, "COUNT_MODEL"), COUNT_MODEL
    except (ModelError, OSError):
        from transformers import OPTForCausalLM
        return OPTForCausalLM(opt125m_config()), "opt-125m architecture, random weights"


def parameter_counts() -> list[dict]:
    """Count each method on opt-125m with the method settings above, next to the formula's."""
    base, name = count_model()
    c = base.config
    d, layers, heads = c.hidden_size, c.num_hidden_layers, c.num_attention_heads
    formulas = {"bitfit": bitfit_parameter_count(base),
                # every attention projection (q_proj, k_proj, v_proj, out_proj) is (d, d)
                "lora": lora_parameter_count([(d, d)] * len(PEFT_SETTINGS["targets"]) * layers,
                                             r=LORA_R),
                "prompt_tuning": prompt_tuning_parameter_count(NUM_VIRTUAL_TOKENS, d),
                "p_tuning": p_tuning_parameter_count(NUM_VIRTUAL_TOKENS, d),
                "prefix_tuning": prefix_tuning_parameter_count(NUM_VIRTUAL_TOKENS, layers, d)}
    print(f"parameter counts on {name} ({count_parameters(base)[1]:,} parameters, "
          f"{layers} layers, d_model {d}, {heads} heads)")
    rows = []
    for method, formula in formulas.items():
        adapted = apply_peft(copy.deepcopy(base), method, **PEFT_SETTINGS)
        trainable, total = count_parameters(adapted)
        print(f"{method:>14}: {format_counts(trainable, total)}")
        rows.append({"method": method, "trainable": trainable, "total": total, "formula": formula})
    return rows


def run_arms(model: str, methods: list[str], steps: int, batch_size: int, evaluate: bool,
             out_dir: str) -> list[dict]:
    """Each method in a fresh process (its own peak memory), with the same data, steps and seed."""
    os.makedirs(out_dir, exist_ok=True)
    results = []
    for method in methods:
        settings = {"method": method, "model": model, "train_data": TRAIN_DATA,
                    "eval_data": EVAL_DATA, "out_dir": out_dir, "lr": LRS[method],
                    "max_steps": steps, "batch_size": batch_size, "max_len": MAX_LEN,
                    "warmup_steps": WARMUP_STEPS, "bf16": BF16, "threads": THREADS, "seed": SEED,
                    "evaluate": evaluate,
                    "eval_limit": EVAL_LIMIT, "max_new_tokens": MAX_NEW_TOKENS,
                    "eval_batch_size": EVAL_BATCH_SIZE, "peft_settings": PEFT_SETTINGS}
        path, log = os.path.join(out_dir, f"{method}.json"), os.path.join(out_dir, f"{method}.log")
        with open(log, "w") as f:
            command = [sys.executable, "-m", "bench.peft_compare", json.dumps(settings), path]
            proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            raise UserError(f"method {method} failed; see {log}")
        with open(path) as f:
            results.append(json.load(f))
        print(summary_line(results[-1]))
    return results


def main():
    quiet_transformers()
    os.makedirs(OUT_DIR, exist_ok=True)
    counts = parameter_counts() if COUNTS else []
    text, report = counts_table(counts) if COUNTS else "", {"config": config, "counts": counts}
    if COMPARE:
        try:
            resolve(MODEL)
        except ModelError as e:
            raise ModelError(f"{e}. The default MODEL, out/sft, is written by "
                             "`python train_sft.py` (~3 min).") from None
        print(f"comparison on {MODEL}: {MAX_STEPS} steps x {BATCH_SIZE} examples per method")
        report["results"] = run_arms(MODEL, METHODS.split(","), MAX_STEPS, BATCH_SIZE, True,
                                     OUT_DIR)
        text += "\n" + comparison_table(report["results"],
                                         f"Adapting `{MODEL}` to the held-out instruction type: "
                                         f"{MAX_STEPS} steps x {BATCH_SIZE} examples, "
                                         f"{THREADS} thread(s).")
    if MEMORY_STEPS:
        print(f"memory on {OPT125M_ARCH}: {MEMORY_STEPS} steps x {MEMORY_BATCH_SIZE} examples "
              "per method")
        methods = [m for m in METHODS.split(",") if m != "base"]
        report["memory"] = run_arms(OPT125M_ARCH, methods, MEMORY_STEPS, MEMORY_BATCH_SIZE, False,
                                    os.path.join(OUT_DIR, "opt125m"))
        text += "\n" + comparison_table(report["memory"],
                                         "Memory and speed on the opt-125m architecture (random "
                                         f"weights, fp32, no evaluation): {MEMORY_STEPS} steps x "
                                         f"{MEMORY_BATCH_SIZE} examples, {THREADS} thread(s).")
    if COMPARE and PLOT != "none":
        title = f"{MODEL}: {MAX_STEPS} steps x {BATCH_SIZE} examples"
        plot_comparison(report["results"], PLOT, title, report.get("memory"))
        print(f"wrote {PLOT}")
    write_json(os.path.join(OUT_DIR, "results.json"), report)
    with open(os.path.join(OUT_DIR, "results.md"), "w") as f:
        f.write(text)
    print("\n" + text + f"\nwrote {OUT_DIR}/results.md and results.json")


if __name__ == "__main__":
    run_main(main)
