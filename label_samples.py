"""Simulated labelling: rank the SFT policy's own samples with the gold judge (InstructGPT's labellers
ranked K = 4-9 samples of their current models; here the judge of dataset/task.py stands in for them).

    python label_samples.py                    # out/label/{train,eval}.jsonl: K=4 samples of out/sft per prompt
    python train_rm.py --train_data out/label/train.jsonl --eval_data out/label/eval.jsonl --out_dir out/rm_label

For each prompt, K responses are sampled (temperature T) and judged. Responses with equal gold scores
are ties and make no comparison, so each distinct score keeps its first response; the row is a ranking
of those, best first (2 to 4 responses: the judge gives 1.0, 0.6, 0.4 or 0.0). Prompts whose K samples
all score the same are left out, and counted.
"""
import json
import os

import torch

from dataset.chat import render_prompt
from dataset.prompt import read_prompts
from dataset.task import rank_responses
from model.generate import answer
from model.load import load_causal_lm, load_tokenizer
from utils import configure, quiet_transformers, run_main, seed_everything

MODEL = "out/sft"  # the policy to sample from
TRAIN_PROMPTS = "ds/rm_train_ranked.jsonl"  # rows with instruction/input
# validation prompts, labelled the same way (the RM picks its checkpoint on them)
EVAL_PROMPTS = "ds/rm_val_ranked.jsonl"
OUT = "out/label"  # writes OUT/train.jsonl and OUT/eval.jsonl
K = 4  # samples per prompt
TEMPERATURE = 1.0  # sampling temperature of the K samples
LIMIT = None  # first N prompts of each file (None: all)
MAX_PROMPT_LEN = 72  # prompt tokens; longer prompts are cut from the left
MAX_NEW_TOKENS = 24  # response length limit
CHAT_TEMPLATE = False  # render prompts with the model's own chat template (as the policy was trained with it)
BF16 = False  # sample under bf16 autocast (as PPO's rollouts with --bf16 True): ~3x faster on CPUs with bf16 matmuls
SEED = 0  # sampling seed


def label(model, tokenizer, rows: list[dict], k: int, temperature: float, max_prompt_len: int,
          max_new_tokens: int, chat_template: bool = False) -> tuple[list[dict], int]:
    """Sample k responses per prompt row and rank them -> (ranked rows, number of prompts left out)."""
    samples = answer(
        model,
        tokenizer,
        [r for r in rows for _ in range(k)],
        max_prompt_len,
        max_new_tokens,
        chat_template=chat_template,
        do_sample=True,
        temperature=temperature,
    )
    ranked, left_out = [], 0
    for i, row in enumerate(rows):
        responses = rank_responses(render_prompt(row), samples[i * k: (i + 1) * k])
        if len(responses) < 2:
            left_out += 1
            continue
        ranked.append(
            {
                "type": row.get("type"),
                "instruction": row["instruction"],
                "input": row.get("input", ""),
                "responses": responses,
            }
        )
    return ranked, left_out


def main():
    quiet_transformers()
    seed_everything(SEED)
    tokenizer, model = load_tokenizer(MODEL), load_causal_lm(MODEL)
    os.makedirs(OUT, exist_ok=True)
    for name, source in (("train", TRAIN_PROMPTS), ("eval", EVAL_PROMPTS)):
        rows = read_prompts(source, LIMIT)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            ranked, left_out = label(model, tokenizer, rows, K, TEMPERATURE, MAX_PROMPT_LEN,
                                     MAX_NEW_TOKENS, CHAT_TEMPLATE)
        with open(os.path.join(OUT, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in ranked)
        pairs = sum(len(r["responses"]) * (len(r["responses"]) - 1) // 2 for r in ranked)
        print(
            f"{OUT}/{name}.jsonl: {len(ranked)} ranked prompts, {pairs} pairs; {left_out} of {len(rows)} "
            f"prompts left out (all {K} samples scored the same)"
        )


if __name__ == "__main__":
    configure(globals())
    run_main(main)
