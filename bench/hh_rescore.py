"""Score a PPO run's held-out SFT and RLHF answers again with two other reward models (no new PPO run):
do reward models trained another way agree better on the policy's replies, and what would they say?

    python bench/hh_rescore.py --run_dir out/hh_ppo/rlhf --proxy out/hh_lf/rm_proxy --judge out/hh_lf/rm_judge \
        --prompts hh-harmless-test.jsonl

Reads RUN_DIR/side_by_side.jsonl (train_rlhf.py with --judge_rm; bench/pipeline_hh.sh) and the same
held-out dialogues from PROMPTS, scores both answer sets with PROXY and JUDGE (each in its own chat format,
cut from the left to MAX_LEN tokens as PPO scored them), and prints the judge's win rate of RLHF over SFT
and the two models' agreement (bench/hh_report.py agreement). Writes RUN_DIR/rescore_<OUT_NAME>.json.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.hh_report import agreement  # noqa: E402
from dataset.chat import row_messages  # noqa: E402
from dataset.prompt import read_prompts  # noqa: E402
from eval_winrate import outcomes, win_rate  # noqa: E402
from model.load import load_tokenizer  # noqa: E402
from model.reward import load_scorer, score_replies  # noqa: E402
from utils import ConfigError, configure, run_main, write_json  # noqa: E402

RUN_DIR = "out/hh_ppo/rlhf"  # a train_rlhf.py out_dir with side_by_side.jsonl
PROXY = "out/hh_ppo/rm_proxy"  # reward model in the proxy's place
JUDGE = "out/hh_ppo/rm_judge"  # reward model in the judge's place
PROMPTS = ""  # required: the held-out dialogues of the run (hh-harmless-test.jsonl), in its order
MAX_LEN = 256  # tokens scored: PPO's MAX_PROMPT_LEN + MAX_NEW_TOKENS
BF16 = True  # bf16 autocast, as the run scored
LIMIT = None  # only the first N answers (None: all; for a quick check)
OUT_NAME = "rescored"  # RUN_DIR/rescore_<OUT_NAME>.json
BOOTSTRAP = 2000
SEED = 0


def main() -> None:
    configure(globals())
    if not PROMPTS:
        raise ConfigError(
            "--prompts: missing (give the run's held-out dialogues, e.g. hh-harmless-test.jsonl)"
        )
    rows = [json.loads(line) for line in open(os.path.join(RUN_DIR, "side_by_side.jsonl"))][:LIMIT]
    conversations = [row_messages(r) for r in read_prompts(PROMPTS, len(rows))]
    answers = {k: [r[k]["response"] for r in rows] for k in ("sft", "rlhf")}
    scored = {k: [{"response": a} for a in answers[k]] for k in answers}
    torch.set_grad_enabled(False)
    for key, path in (("reward", PROXY), ("gold", JUDGE)):
        model, tokenizer = load_scorer(path, key)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            for k in answers:
                for a, s in zip(
                    scored[k],
                    score_replies(model, tokenizer, conversations, answers[k], max_len=MAX_LEN),
                ):
                    a[key] = s
        del model
    tokenizer = load_tokenizer(RUN_DIR, "RUN_DIR")
    n_tokens = lambda k: [
        len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers[k]
    ]
    sft, rlhf = scored["sft"], scored["rlhf"]
    judged = win_rate(
        outcomes(
            [a["gold"] for a in sft], [a["gold"] for a in rlhf], answers["sft"], answers["rlhf"]
        ),
        BOOTSTRAP,
        SEED,
    )
    proxy = win_rate(
        outcomes(
            [a["reward"] for a in sft],
            [a["reward"] for a in rlhf],
            answers["sft"],
            answers["rlhf"],
        ),
        BOOTSTRAP,
        SEED,
    )
    report = {
        "proxy": PROXY,
        "judge": JUDGE,
        "prompts": len(rows),
        "judge_win_rate": judged,
        "proxy_win_rate": proxy,
        "agreement": agreement(sft, rlhf, n_tokens("sft"), n_tokens("rlhf")),
    }
    report["max_abs_change"] = {
        k: max(abs(a[k] - r[s][m]) for s in ("sft", "rlhf") for a, r in zip(scored[s], rows))
        # vs the run's own scores
        for k, m in (("reward", "reward"), ("gold", "gold"))
    }
    write_json(os.path.join(RUN_DIR, f"rescore_{OUT_NAME}.json"), report)
    a = report["agreement"]
    print(
        f"{len(rows)} answers of {RUN_DIR} rescored: judge ({JUDGE}) win rate {judged['win_rate']:.3f} "
        f"[{judged['ci95'][0]:.3f}, {judged['ci95'][1]:.3f}], proxy ({PROXY}) win rate {proxy['win_rate']:.3f}"
    )
    print(
        f"proxy-judge correlation: SFT answers {a['proxy_judge_sft']:+.2f}, RLHF answers {a['proxy_judge_rlhf']:+.2f}, "
        f"change {a['proxy_judge_change']:+.2f}; with length: proxy {a['proxy_length']:+.2f}, judge {a['judge_length']:+.2f}"
    )


if __name__ == "__main__":
    run_main(main)
