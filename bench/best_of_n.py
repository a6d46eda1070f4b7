"""Best-of-N: sample N answers to each test prompt from the SFT policy and keep the one the reward model
scores highest. No training: the cost is paid at answer time. A row beside PPO, GRPO and DPO in the
comparison table (bench/compare_alignment.sh), and the baseline of the over-optimisation study
(bench/overoptimisation.py).

    python bench/best_of_n.py --n 16 --seed 0 --out_dir out/compare/bon_s0

Writes OUT_DIR/summary.json with the keys train_rlhf.py writes (gold_score, correct, format, reward, kl,
per_type, ...), so bench/alignment_table.py reads it as it reads the others. gold_score is the gold score of
the answer best-of-N keeps (a sample, not a greedy answer); gold_score_sft is the SFT policy's greedy answer,
as in every other row. kl is log N - (N - 1) / N, the KL from the SFT policy to best-of-N's answer
distribution (Stiennon et al. 2020, appendix G.3; an upper bound where samples tie). N is fixed before the
run (16: a KL near PPO's default run); the gold judge chooses nothing.

From a pool of K >= N samples per prompt, `best_of_n_mean` gives the exact expectation over every N-subset
of the pool (the unbiased estimator of Nakano et al. 2021), not one draw of N.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from dataset.chat import use_chat_format  # noqa: E402
from dataset.prompt import PromptDataset  # noqa: E402
from dataset.task import gold_judge  # noqa: E402
from model.generate import decode_responses, sample_responses  # noqa: E402
from model.load import load_causal_lm, load_tokenizer  # noqa: E402
from model.reward import load_reward_model, reward_scores  # noqa: E402
from utils import write_json  # noqa: E402

JUDGED = ("gold", "correct", "format")


def bon_kl(n: int) -> float:
    """KL(best-of-n || policy) = log n - (n - 1) / n nats."""
    return math.log(n) - (n - 1) / n


def best_of_n_weights(k: int, n: int) -> torch.Tensor:
    """w (k,): the probability that the i-th lowest of k pooled samples is the best of a uniformly drawn
    n-subset, C(i - 1, n - 1) / C(k, n) (i counted from 1). Sums to 1."""
    i = torch.arange(1, k + 1, dtype=torch.float64)
    log_w = (torch.lgamma(i) - torch.lgamma(i - n + 1) - torch.lgamma(torch.tensor(n, dtype=torch.float64))
             - (math.lgamma(k + 1) - math.lgamma(n + 1) - math.lgamma(k - n + 1)))
    return torch.where(i >= n, log_w.exp(), torch.zeros_like(i))


def best_of_n_mean(proxy: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Per prompt, the expected value of `values` at the sample the proxy ranks first among n drawn without
    replacement from the pool. proxy, values: (M, K) -> (M,)"""
    order = proxy.argsort(dim=1, stable=True)  # lowest proxy first
    ranked = values.double().gather(1, order)  # (M, K)
    return ranked @ best_of_n_weights(proxy.size(1), n)


@torch.no_grad()
def sample_pool(policy, tokenizer, items: list[dict], k: int, reward_models: dict, max_new_tokens: int,
                temperature: float, batch_size: int) -> dict:
    """k samples per prompt (item: {'prompt_ids', 'row'}), each scored by every reward model (raw score, read
    as PPO reads it) and judged. Returns {'responses': [[str] * k] per prompt, 'scores': {name: (M, K)},
    'gold' / 'correct' / 'format': (M, K)}."""
    flat = [it for it in items for _ in range(k)]
    responses, scores = [], {name: [] for name in reward_models}
    for i in range(0, len(flat), batch_size):
        chunk = flat[i: i + batch_size]
        out = sample_responses(policy, tokenizer, [it["prompt_ids"] for it in chunk], max_new_tokens,
                               do_sample=True, temperature=temperature)
        for name, rm in reward_models.items():
            scores[name].append(reward_scores(rm, out.sequences, out.attention_mask))
        responses += decode_responses(tokenizer, out.sequences, out.context_length)
    judged = [gold_judge(it["row"], r) or {"score": math.nan, "correct": math.nan, "format": math.nan}
              for it, r in zip(flat, responses)]
    shape = (len(items), k)
    pool = {"responses": [responses[j * k: (j + 1) * k] for j in range(len(items))],
            "scores": {name: torch.cat(s).view(shape) for name, s in scores.items()}}
    for key, judged_key in zip(JUDGED, ("score", "correct", "format")):
        pool[key] = torch.tensor([j[judged_key] for j in judged], dtype=torch.float64).view(shape)
    return pool


def by_type(values: torch.Tensor, types: list) -> dict:
    """{type: mean of values (M,) over that type's prompts}"""
    return {t: values[torch.tensor([u == t for u in types])].mean().item() for t in sorted(set(types))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sft_model", default="out/sft")
    ap.add_argument("--rm_model", default="out/rm")
    ap.add_argument("--prompts", default="ds/prompts_test.jsonl")
    ap.add_argument("--limit", type=int, default=None, help="first N prompts (default: all)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max_prompt_len", type=int, default=72)
    ap.add_argument("--max_new_tokens", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--batch_size", type=int, default=256, help="rows per generate call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out_dir", default="out/bon")
    args = ap.parse_args()
    if args.n < 1:
        raise SystemExit(f"error: --n {args.n}: must be >= 1")
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.sft_model, "--sft_model")
    use_chat_format(tokenizer, False)
    policy = load_causal_lm(args.sft_model, "--sft_model").eval()
    rm = load_reward_model(args.rm_model, tokenizer.pad_token_id, "--rm_model").eval()
    items = PromptDataset(args.prompts, tokenizer, args.max_prompt_len, limit=args.limit).items
    rows = [it["row"] for it in items]
    types = [r.get("type") for r in rows]
    greedy = []  # the SFT policy's greedy answers: the starting point every row of the table shares
    for i in range(0, len(items), 100):
        out = sample_responses(policy, tokenizer, [it["prompt_ids"] for it in items[i: i + 100]],
                               args.max_new_tokens, do_sample=False)
        greedy += decode_responses(tokenizer, out.sequences, out.context_length)
    sft = {key: torch.tensor([(gold_judge(r, a) or {})[k] for r, a in zip(rows, greedy)], dtype=torch.float64)
           for key, k in zip(JUDGED, ("score", "correct", "format"))}
    start = time.time()
    pool = sample_pool(policy, tokenizer, items, args.n, {"rm": rm}, args.max_new_tokens, args.temperature,
                       args.batch_size)
    seconds = time.time() - start
    proxy = pool["scores"]["rm"]
    best = {key: best_of_n_mean(proxy, pool[key], args.n) for key in JUDGED}  # n = k: the one best sample
    summary = {"algo": "best-of-n", "n": args.n, "train_seconds": seconds, "split": os.path.basename(args.prompts),
               "gold_score_sft": sft["gold"].mean().item(), "gold_score": best["gold"].mean().item(),
               "correct_sft": sft["correct"].mean().item(), "correct": best["correct"].mean().item(),
               "format_sft": sft["format"].mean().item(), "format": best["format"].mean().item(),
               "gold_score_sampled_sft": pool["gold"].mean().item(), "gold_score_sampled": best["gold"].mean().item(),
               "kl": bon_kl(args.n), "reward_sft": proxy.mean().item(),
               "reward": best_of_n_mean(proxy, proxy, args.n).mean().item(), "eval_prompts": len(items),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "per_type": {}}
    for key in JUDGED:
        before, after = by_type(sft[key], types), by_type(best[key], types)
        summary["per_type"].update({f"{t}/{key}": {"sft": before[t], "bon": after[t]} for t in before})
    write_json(os.path.join(args.out_dir, "summary.json"), summary)
    print(f"best-of-{args.n} on {len(items)} prompts ({seconds:.0f} s): gold {summary['gold_score_sft']:.3f} (SFT greedy) "
          f"-> {summary['gold_score']:.3f}, correct {summary['correct_sft']:.3f} -> {summary['correct']:.3f}, "
          f"format {summary['format_sft']:.3f} -> {summary['format']:.3f}, KL {summary['kl']:.2f}")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_type"}))


if __name__ == "__main__":
    main()
