"""Win rate of model B over model A on a prompt file: InstructGPT's headline metric.

    python eval_winrate.py                                        # out/rlhf (B) vs out/sft (A), ds/prompts_test.jsonl, judged by out/rm and the gold judge
    python eval_winrate.py --model_a out/sft --model_b out/sft_lora --prompts my_prompts.jsonl --rm none

Both models answer every prompt in their own format (their tokenizer's chat template), greedy by default.
Each prompt is one comparison: B wins (1), ties (0.5: equal scores or the same reply) or loses (0), judged
by the reward model (RM) and, where the prompt is one of the task's instructions, by the gold judge.
The win rate is the mean outcome; its 95% interval is a percentile bootstrap over prompts. Mean reply
lengths are printed beside it, since length is the classic way to please a reward model.
Writes out_dir/pairs.jsonl (one row per prompt: both replies and all scores) and out_dir/summary.json.
Prompt files: instruction/input, prompt, or messages rows (dataset/prompt.py read_prompts).
"""
import json
import os

import torch

from dataset.chat import render_prompt, row_messages
from dataset.prompt import read_prompts
from dataset.task import score_if_known
from model.generate import respond
from model.load import load_checkpoint
from model.reward import load_scorer, score_replies
from utils import configure, quiet_transformers, run_main, seed_everything, write_json

MODEL_A = "out/sft"  # the baseline (any checkpoint the project writes: full, merged or adapter dir)
MODEL_B = "out/rlhf"  # the challenger: the win rate is B's
PROMPTS = "ds/prompts_test.jsonl"  # prompt file (instruction/input, prompt or messages rows)
RM = "out/rm"  # reward model judging the pairs ('none': gold judge only)
LIMIT = None  # first N prompts only (None: all)
MAX_NEW_TOKENS = 24  # reply length limit
TEMPERATURE = 0.0  # 0: greedy; > 0: sampled replies
BOOTSTRAP = 2000  # bootstrap resamples for the 95% interval
BATCH_SIZE = 64  # prompts per generation batch
SEED = 0  # sampling and bootstrap seed
OUT_DIR = "out/winrate"  # pairs.jsonl and summary.json


def outcomes(
    a: list[float], b: list[float], replies_a: list[str], replies_b: list[str]
) -> list[float]:
    """Per prompt: 1 if B scored higher, 0 if lower, 0.5 for a tie (equal scores, or the same reply, which
    can score a hair apart when batched with different padding)."""
    return [
        0.5 if ra == rb or sa == sb else float(sb > sa)
        for sa, sb, ra, rb in zip(a, b, replies_a, replies_b)
    ]


def win_rate(results: list[float], samples: int, seed: int) -> dict:
    """Mean outcome (ties count 1/2) and its 95% percentile-bootstrap interval over prompts."""
    x = torch.tensor(results, dtype=torch.float64)  # (n,)
    # (S, n)
    idx = torch.randint(len(x), (samples, len(x)), generator=torch.Generator().manual_seed(seed))
    means = x[idx].mean(1)  # (S,)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"win_rate": x.mean().item(), "ci95": [lo, hi], "prompts": len(results),
            "b_wins": sum(r == 1 for r in results), "ties": sum(r == 0.5 for r in results),
            "a_wins": sum(r == 0 for r in results)}


def main():
    quiet_transformers()
    seed_everything(SEED)
    torch.set_grad_enabled(False)
    rows = read_prompts(PROMPTS, LIMIT)
    conversations = [row_messages(r) for r in rows]
    sampling = (
        {"do_sample": True, "temperature": TEMPERATURE}
        if TEMPERATURE > 0
        else {"do_sample": False}
    )
    replies, lengths = {}, {}
    for name, path in (("a", MODEL_A), ("b", MODEL_B)):
        model, tokenizer = load_checkpoint(path, f"MODEL_{name.upper()}")
        replies[name] = respond(
            model, tokenizer, conversations, MAX_NEW_TOKENS, BATCH_SIZE, **sampling
        )
        lengths[name] = [
            len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies[name]
        ]
        del model
    pairs = [
        {"prompt": render_prompt(r), "a": ra, "b": rb}
        for r, ra, rb in zip(rows, replies["a"], replies["b"])
    ]
    summary = {
        "model_a": MODEL_A,
        "model_b": MODEL_B,
        "prompts_file": PROMPTS,
        "prompts": len(rows),
        "mean_length_tokens": {k: sum(v) / len(v) for k, v in lengths.items()},
        "mean_length_chars": {k: sum(map(len, v)) / len(v) for k, v in replies.items()},
    }
    if RM != "none":
        scorer = load_scorer(RM)
        scores = {k: score_replies(*scorer, conversations, replies[k]) for k in ("a", "b")}
        for p, sa, sb in zip(pairs, scores["a"], scores["b"]):
            p.update(rm_a=sa, rm_b=sb)
        summary["rm"] = {
            "model": RM,
            **win_rate(
                outcomes(scores["a"], scores["b"], replies["a"], replies["b"]), BOOTSTRAP, SEED
            ),
            "mean_score": {k: sum(v) / len(v) for k, v in scores.items()},
        }
    for p in pairs:
        p.update(
            gold_a=score_if_known(p["prompt"], p["a"]), gold_b=score_if_known(p["prompt"], p["b"])
        )
    judged = [p for p in pairs if p["gold_a"] is not None and p["gold_b"] is not None]
    if judged:
        golds = {k: [p[f"gold_{k}"] for p in judged] for k in ("a", "b")}
        summary["gold"] = {
            **win_rate(
                outcomes(
                    golds["a"], golds["b"], [p["a"] for p in judged], [p["b"] for p in judged]
                ),
                BOOTSTRAP,
                SEED,
            ),
            "mean_score": {k: sum(v) / len(v) for k, v in golds.items()},
        }
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "pairs.jsonl"), "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    write_json(os.path.join(OUT_DIR, "summary.json"), summary)
    report(summary)


def report(summary: dict) -> None:
    decoding = f"sampled at temperature {TEMPERATURE}" if TEMPERATURE > 0 else "greedy"
    print(
        f"B = {MODEL_B} vs A = {MODEL_A} on {summary['prompts']} prompts of {PROMPTS} ({decoding}, "
        f"up to {MAX_NEW_TOKENS} new tokens)"
    )
    print(
        f"{'judge':32}{'win rate of B':>14}{'95% interval':>18}{'B wins / ties / A wins':>25}{'mean score A -> B':>20}"
    )
    for key, name in (("rm", f"reward model ({RM})"), ("gold", "gold judge")):
        if key in summary:
            s = summary[key]
            interval = "[{:.3f}, {:.3f}]".format(*s["ci95"])
            counts = f"{s['b_wins']} / {s['ties']} / {s['a_wins']}"
            means = f"{s['mean_score']['a']:.3f} -> {s['mean_score']['b']:.3f}"
            print(f"{name:32}{s['win_rate']:14.3f}{interval:>18}{counts:>25}{means:>20}")
    t, c = summary["mean_length_tokens"], summary["mean_length_chars"]
    print(
        f"mean reply length: A {t['a']:.1f} tokens ({c['a']:.1f} characters), B {t['b']:.1f} tokens ({c['b']:.1f} characters)"
    )
    print(f"wrote {OUT_DIR}/pairs.jsonl (one row per prompt) and {OUT_DIR}/summary.json")


if __name__ == "__main__":
    configure(globals())
    run_main(main)  # a bad path or prompt file: one line naming the setting or file:line
