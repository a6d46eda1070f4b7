"""Report of a PPO run judged by a second reward model (train_rlhf.py --judge_rm; bench/pipeline_hh.sh).

    python bench/hh_report.py --run_dir out/hh_ppo/rlhf --plot pic/hh_overoptimisation.png

Reads RUN_DIR/side_by_side.jsonl (the greedy SFT and RLHF answers to the held-out prompts, each with the
proxy reward model's score `reward` and the judge's `gold`), summary.json and metrics.jsonl. Prints and
writes RUN_DIR/report.json: the judge's win rate of RLHF over SFT with a 95% bootstrap interval, both
reward models' mean scores, KL, mean reply length; five answers side by side; and plots the proxy and judge
scores of the rollouts over PPO iterations (the over-optimisation picture of Gao et al. 2022).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from eval_winrate import outcomes, win_rate  # noqa: E402
from model.load import load_tokenizer  # noqa: E402
from utils import configure, write_json  # noqa: E402

RUN_DIR = "out/hh_ppo/rlhf"  # a train_rlhf.py out_dir written with --judge_rm
PLOT = "pic/hh_ppo.png"  # the proxy / judge curve ('none': no plot)
SHOW = 5  # answers printed side by side
BOOTSTRAP = 2000  # bootstrap resamples of the interval
SEED = 0


def main() -> None:
    configure(globals())
    rows = [json.loads(line) for line in open(os.path.join(RUN_DIR, "side_by_side.jsonl"))]
    summary = json.load(open(os.path.join(RUN_DIR, "summary.json")))
    tokenizer = load_tokenizer(RUN_DIR, "RUN_DIR")
    sft, rlhf = [r["sft"] for r in rows], [r["rlhf"] for r in rows]
    judged = win_rate(outcomes([r["gold"] for r in sft], [r["gold"] for r in rlhf], [r["response"] for r in sft],
                               [r["response"] for r in rlhf]), BOOTSTRAP, SEED)
    proxy = win_rate(outcomes([r["reward"] for r in sft], [r["reward"] for r in rlhf], [r["response"] for r in sft],
                              [r["response"] for r in rlhf]), BOOTSTRAP, SEED)
    mean = lambda xs: sum(xs) / len(xs)
    n_tokens = lambda answers: [len(tokenizer(a["response"], add_special_tokens=False)["input_ids"]) for a in answers]
    length = lambda answers: mean(n_tokens(answers))
    report = {"prompts": len(rows), "judge_win_rate": judged, "proxy_win_rate": proxy,
              "judge_mean": {"sft": mean([r["gold"] for r in sft]), "rlhf": mean([r["gold"] for r in rlhf])},
              "proxy_mean": {"sft": mean([r["reward"] for r in sft]), "rlhf": mean([r["reward"] for r in rlhf])},
              "kl_sampled": summary.get("kl"), "kl_greedy": summary.get("kl_greedy"),
              "mean_length_tokens": {"sft": length(sft), "rlhf": length(rlhf)}, "iterations": summary.get("iterations"),
              "agreement": agreement(sft, rlhf, n_tokens(sft), n_tokens(rlhf))}
    write_json(os.path.join(RUN_DIR, "report.json"), report)
    j, p = judged, proxy
    print(f"{len(rows)} held-out HH prompts, greedy answers, RLHF vs SFT")
    print(f"judge RM win rate {j['win_rate']:.3f} [{j['ci95'][0]:.3f}, {j['ci95'][1]:.3f}] "
          f"({j['b_wins']} wins / {j['ties']} ties / {j['a_wins']} losses); proxy RM win rate {p['win_rate']:.3f} "
          f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]")
    print(f"judge mean {report['judge_mean']['sft']:+.3f} -> {report['judge_mean']['rlhf']:+.3f}; proxy mean "
          f"{report['proxy_mean']['sft']:+.3f} -> {report['proxy_mean']['rlhf']:+.3f}; KL {report['kl_sampled']:.2f} nats "
          f"(sampled); reply length {report['mean_length_tokens']['sft']:.1f} -> {report['mean_length_tokens']['rlhf']:.1f} tokens")
    a = report["agreement"]
    print(f"proxy-judge correlation of scores: SFT answers {a['proxy_judge_sft']:+.2f}, RLHF answers "
          f"{a['proxy_judge_rlhf']:+.2f}, per-prompt change SFT -> RLHF {a['proxy_judge_change']:+.2f}; with reply "
          f"length: proxy {a['proxy_length']:+.2f}, judge {a['judge_length']:+.2f}")
    for row in rows[:SHOW]:
        print(f"\nprompt (last turn): {row['sft']['input'] or row['prompt'][-200:]!r}")
        print(f"  SFT  (judge {row['sft']['gold']:+.2f}, proxy {row['sft']['reward']:+.2f}): {row['sft']['response']!r}")
        print(f"  RLHF (judge {row['rlhf']['gold']:+.2f}, proxy {row['rlhf']['reward']:+.2f}): {row['rlhf']['response']!r}")
    if PLOT != "none":
        plot(os.path.join(RUN_DIR, "metrics.jsonl"), PLOT)
        print(f"\nwrote {PLOT}")


def agreement(sft: list, rlhf: list, sft_len: list, rlhf_len: list) -> dict:
    """Do the two reward models agree on these answers? Pearson correlations of the proxy's and the judge's
    scores over the SFT answers, over the RLHF answers, and of their per-prompt changes SFT -> RLHF (what PPO
    bought by the proxy against what the judge says of it); and of each one's score with the reply's length
    in tokens, over both sets of answers."""
    from statistics import correlation
    proxy, judge = [a["reward"] for a in sft + rlhf], [a["gold"] for a in sft + rlhf]
    return {"proxy_judge_sft": correlation([a["reward"] for a in sft], [a["gold"] for a in sft]),
            "proxy_judge_rlhf": correlation([a["reward"] for a in rlhf], [a["gold"] for a in rlhf]),
            "proxy_judge_change": correlation([b["reward"] - a["reward"] for a, b in zip(sft, rlhf)],
                                              [b["gold"] - a["gold"] for a, b in zip(sft, rlhf)]),
            "proxy_length": correlation(proxy, sft_len + rlhf_len), "judge_length": correlation(judge, sft_len + rlhf_len)}


def plot(metrics_path: str, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(line) for line in open(metrics_path)]
    train = [l for l in lines if "ppo/score" in l]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    def smooth(xs, k=4):  # mean of the last k rollouts: one rollout is 16 prompts, and noisy
        return [sum(xs[max(0, i - k + 1): i + 1]) / len(xs[max(0, i - k + 1): i + 1]) for i in range(len(xs))]

    steps = [l["step"] for l in train]
    for key, label, color in (("ppo/score", "proxy RM (optimised)", "tab:blue"), ("ppo/gold_score", "judge RM (held out)", "tab:red")):
        ys = [l[key] - train[0][key] for l in train]
        left.plot(steps, ys, color=color, alpha=0.25)
        left.plot(steps, smooth(ys), label=f"{label}, mean of 4", color=color)
    left.set(xlabel="PPO iteration", ylabel="score - first value", title="rollouts: each (faint), mean of 4")
    left.legend(fontsize=8)
    for key, label, color in (("ppo/gold_score", "judge RM", "tab:red"), ("ppo/score", "proxy RM", "tab:blue")):
        right.scatter([l["ppo/kl"] for l in train], [l[key] - train[0][key] for l in train], color=color, label=label, s=14)
    right.set(xlabel="KL to SFT (nats / response, rollouts)", ylabel="score - first value", title="score against KL")
    right.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
