"""Simulated labelling: rank the SFT policy's own samples with the gold judge (InstructGPT's labellers
ranked K = 4-9 samples of their current models; here the judge of dataset/task.py stands in for them).

    python label_samples.py                    # out/label/{train,eval}.jsonl: K=4 samples of out/sft per prompt
    python train_rm.py --train_data out/label/train.jsonl --eval_data out/label/eval.jsonl --out_dir out/rm_label

For each prompt, K responses are sampled (temperature T) and judged. Responses with equal gold scores
are ties and make no comparison, so each distinct score keeps its first response; the row is a ranking
of those, best first (2 to 4 responses: the judge gives 1.0, 0.6, 0.4 or 0.0). Prompts whose K samples
all score the same are left out, and counted.
"""
import argparse
import json
import os

from dataset.sft import read_prompts, render_prompt
from dataset.task import rank_responses
from model.generate import answer
from model.load import load_causal_lm, load_tokenizer
from utils import quiet_transformers, seed_everything


def label(model, tokenizer, rows: list[dict], k: int, temperature: float, max_prompt_len: int,
          max_new_tokens: int) -> tuple[list[dict], int]:
    """Sample k responses per prompt row and rank them -> (ranked rows, number of prompts left out)."""
    samples = answer(model, tokenizer, [r for r in rows for _ in range(k)], max_prompt_len, max_new_tokens,
                     do_sample=True, temperature=temperature)
    ranked, left_out = [], 0
    for i, row in enumerate(rows):
        responses = rank_responses(render_prompt(row), samples[i * k: (i + 1) * k])
        if len(responses) < 2:
            left_out += 1
            continue
        ranked.append({"type": row.get("type"), "instruction": row["instruction"], "input": row.get("input", ""),
                       "responses": responses})
    return ranked, left_out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="out/sft", help="the policy to sample from")
    parser.add_argument("--train_prompts", default="ds/rm_train_ranked.jsonl", help="rows with instruction/input")
    parser.add_argument("--eval_prompts", default="ds/rm_val_ranked.jsonl", help="held-out prompts, labelled the same way")
    parser.add_argument("--out", default="out/label", help="writes OUT/train.jsonl and OUT/eval.jsonl")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=None, help="first N prompts of each file")
    parser.add_argument("--max_prompt_len", type=int, default=72)
    parser.add_argument("--max_new_tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet_transformers()
    seed_everything(args.seed)
    tokenizer, model = load_tokenizer(args.model), load_causal_lm(args.model)
    os.makedirs(args.out, exist_ok=True)
    for name, source in (("train", args.train_prompts), ("eval", args.eval_prompts)):
        rows = read_prompts(source, args.limit)
        ranked, left_out = label(model, tokenizer, rows, args.k, args.temperature, args.max_prompt_len,
                                 args.max_new_tokens)
        with open(os.path.join(args.out, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in ranked)
        pairs = sum(len(r["responses"]) * (len(r["responses"]) - 1) // 2 for r in ranked)
        print(f"{args.out}/{name}.jsonl: {len(ranked)} ranked prompts, {pairs} pairs; {left_out} of {len(rows)} "
              f"prompts left out (all {args.k} samples scored the same)")


if __name__ == "__main__":
    main()
