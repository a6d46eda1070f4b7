"""Reward over-optimisation, measured (Gao et al. 2022): gold and proxy score against KL to the SFT policy,
for best-of-N and for PPO over training, one curve per reward model. Run by bench/overoptimisation.sh,
which trains the reward models and the PPO runs first:

    python bench/overoptimisation.py --sft_model out/sft --rms quarter=out/overopt/rm_quarter,all=out/rm \\
        --ppo quarter=out/overopt/ppo_quarter,all=out/overopt/ppo_all --out_dir out/overopt

Best-of-N: POOL samples per test prompt from the SFT policy, each scored by every reward model and judged
once; for N = 1, 2, 4, ..., POOL the exact expectation over the pool's N-subsets (bench/best_of_n.py) of the
gold score, correctness and proxy score of the answer the reward model ranks first, at
KL = log N - (N - 1) / N. PPO: the sampled evaluations its run logged (EVAL_SAMPLED) on the same test
prompts, at the KL measured on them; its start is the SFT policy (best-of-1). Proxy scores are shown as the
gain over the SFT policy's mean, in each reward model's own units.

Writes OUT_DIR/overoptimisation.json, OUT_DIR/overoptimisation.md (the tables) and the figure (--plot).
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from bench.best_of_n import JUDGED, best_of_n_mean, bon_kl, sample_pool  # noqa: E402
from dataset.chat import use_chat_format  # noqa: E402
from dataset.prompt import PromptDataset  # noqa: E402
from model.load import load_causal_lm, load_tokenizer  # noqa: E402
from model.reward import load_reward_model  # noqa: E402
from utils import write_json  # noqa: E402


def named_paths(text: str) -> dict:
    """'a=path1,b=path2' -> {'a': 'path1', 'b': 'path2'}"""
    return dict(part.split("=", 1) for part in text.split(",") if part)


def best_of_n_curve(pool: dict, rm: str) -> list[dict]:
    """One point per N = 1, 2, 4, ... up to the pool size: gold, correct, format, proxy gain and KL."""
    proxy = pool["scores"][rm]  # (M, K)
    base = proxy.mean().item()
    points, n = [], 1
    while n <= proxy.size(1):
        point = {"n": n, "kl": bon_kl(n), "proxy_gain": best_of_n_mean(proxy, proxy, n).mean().item() - base}
        point.update({key: best_of_n_mean(proxy, pool[key], n).mean().item() for key in JUDGED})
        points.append(point)
        n *= 2
    return points


def ppo_curve(run_dir: str, start: dict) -> list[dict]:
    """The sampled evaluations of a PPO run (metrics.jsonl), after `start` (the SFT policy: best-of-1)."""
    points = [dict(start, step=0)]
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if "eval/sampled_kl" in m and m["step"] > 0:
                points.append({"step": m["step"], "kl": m["eval/sampled_kl"], "gold": m["eval/sampled_gold_score"],
                               "correct": m["eval/sampled_correct"], "format": m["eval/sampled_format"],
                               "proxy_gain": m["eval/sampled_reward"] - start["proxy"]})
    if len(points) == 1:
        raise SystemExit(f"error: {run_dir}/metrics.jsonl has no sampled evaluation: run train_rlhf.py with "
                         "--eval_sampled True --eval_interval 5")
    return points


def table(name: str, points: list[dict], key: str) -> list[str]:
    lines = [f"| {name} | KL | gold | correct | format | proxy gain |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {p[key]} | {p['kl']:.2f} | {p['gold']:.3f} | {p['correct']:.3f} | {p['format']:.3f} | "
              f"{p['proxy_gain']:+.2f} |" for p in points]
    return lines


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("gold", "gold score (test, sampled)"), ("correct", "correct (test, sampled)"),
              ("proxy_gain", "proxy RM score gain over SFT"))
    for ax, (key, label) in zip(axes, panels):
        for i, (rm, curves) in enumerate(results["reward_models"].items()):
            for method, style in (("best_of_n", "-o"), ("ppo", "--s")):
                pts = curves.get(method)
                if pts:
                    ax.plot([math.sqrt(max(p["kl"], 0.0)) for p in pts], [p[key] for p in pts], style,
                            color=f"C{i}", markersize=3, label=f"{method.replace('_', '-')}, RM on {rm}")
        ax.set_xlabel("sqrt(KL to SFT)  (KL in nats per answer)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Reward over-optimisation on the embedded task: best-of-N and PPO against reward models "
                 "trained on 1/4, 1/2 and all comparisons", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sft_model", default="out/sft")
    ap.add_argument("--rms", required=True, help="name=reward model dir, comma-separated")
    ap.add_argument("--ppo", default="", help="name=PPO out_dir (trained against that reward model), comma-separated")
    ap.add_argument("--prompts", default="ds/prompts_test.jsonl")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--pool", type=int, default=64, help="samples per prompt (best-of-N up to this N)")
    ap.add_argument("--max_prompt_len", type=int, default=72)
    ap.add_argument("--max_new_tokens", type=int, default=20)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out_dir", default="out/overopt")
    ap.add_argument("--plot", default="pic/overoptimisation.png")
    args = ap.parse_args()
    rms, ppo_runs = named_paths(args.rms), named_paths(args.ppo)
    unknown = sorted(set(ppo_runs) - set(rms))
    if unknown:
        raise SystemExit(f"error: --ppo names {unknown} that --rms does not")
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.sft_model, "--sft_model")
    use_chat_format(tokenizer, False)
    policy = load_causal_lm(args.sft_model, "--sft_model").eval()
    models = {name: load_reward_model(path, tokenizer.pad_token_id, "--rms").eval() for name, path in rms.items()}
    items = PromptDataset(args.prompts, tokenizer, args.max_prompt_len, limit=args.limit).items
    pool = sample_pool(policy, tokenizer, items, args.pool, models, args.max_new_tokens, 1.0, args.batch_size)
    results = {"prompts": len(items), "pool": args.pool, "reward_models": {}}
    lines = [f"{len(items)} test prompts, {args.pool} SFT samples each.", ""]
    for name in rms:
        curves = {"best_of_n": best_of_n_curve(pool, name)}
        start = {k: curves["best_of_n"][0][k] for k in (*JUDGED, "kl")}
        start.update(proxy=pool["scores"][name].mean().item(), proxy_gain=0.0)
        if name in ppo_runs:
            curves["ppo"] = ppo_curve(ppo_runs[name], start)
        results["reward_models"][name] = {"path": rms[name], **curves}
        lines += [f"Reward model on {name} of the comparisons ({rms[name]}):", ""]
        lines += table("best-of-N", curves["best_of_n"], "n") + [""]
        if "ppo" in curves:
            lines += table("PPO iteration", curves["ppo"], "step") + [""]
    write_json(os.path.join(args.out_dir, "overoptimisation.json"), results)
    with open(os.path.join(args.out_dir, "overoptimisation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, args.plot)
    print(f"wrote {args.out_dir}/overoptimisation.json, {args.out_dir}/overoptimisation.md and {args.plot}")


if __name__ == "__main__":
    main()
