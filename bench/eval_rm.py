"""Score saved reward models on comparison files: pairwise accuracy (all pairs, and where the gold judge
applies the correctness-only, format-only and trade pairs: a right answer in the worse format over a wrong
one in the preferred format), mean margin and the correctness-only accuracy per task type, one line per
(model, file).

    python bench/eval_rm.py --models out/rm,out/rm_label --data ds/rm_test_ranked.jsonl,out/label/eval.jsonl
    python bench/eval_rm.py --models out/smollm2/rm --chat_template True --limit 100   # as bench/pipeline_smollm2.sh trains it
    python bench/eval_rm.py --models out/rm,out/rm_seed1,out/rm_seed2 --ensemble mean_minus_std   # the reward PPO sees

With --ensemble the models are one reward (model/reward.py RewardEnsemble, as train_rlhf.py --rm_ensemble builds
it): each member standardised by its mean and std over the file's own responses (PPO standardises on the SFT
policy's first rollout batch; the file's responses stand in for it), then combined.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset.rm import RMDataset, rm_collate  # noqa: E402
from dataset.task import gold_judge  # noqa: E402
from model.load import load_tokenizer  # noqa: E402
from model.reward import RewardEnsemble, load_reward_model  # noqa: E402
from trainer.rm import evaluate_pairs  # noqa: E402
from utils import configure, quiet_transformers  # noqa: E402

MODELS = "out/rm"  # comma-separated reward-model directories
DATA = "ds/rm_test_ranked.jsonl"  # comma-separated comparison files (ranked, pairs or HH)
MAX_LEN = 96  # tokens per prompt + response, as in training
# render with the tokenizer's chat template, as in training with --chat_template True
CHAT_TEMPLATE = False
LIMIT = 0  # ranked groups per file (0 = all)
EVAL_BATCH_SIZE = 64  # comparison groups per forward pass
BF16 = False  # score under CPU bf16 autocast (as a reward model trained with --bf16 True scores in PPO)
ENSEMBLE = ""  # '' (each model alone), or 'mean', 'min', 'mean_minus_std': all MODELS as one reward
ENSEMBLE_LAMBDA = 1.0  # 'mean_minus_std': mean - lambda * std across the members

configure(globals())


def report(name: str, source: str, m: dict) -> str:
    extra = "".join(
        f", {k} {m[k]:.4f} ({m['pairs_' + k.split('_')[1]]} pairs)"
        for k in ("accuracy_correctness", "accuracy_format", "accuracy_trade")
        if k in m
    )
    per_type = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in m.items() if k.startswith("accuracy_correctness/"))
    return (f"{name} on {source}: accuracy {m['accuracy']:.4f} ({m['pairs']} pairs){extra}, "
            f"margin {m['margin']:.3f}" + (f"; correctness-only by type: {per_type}" if per_type else ""))


def main():
    quiet_transformers()
    dirs = MODELS.split(",")
    # one reward of all the models, or each model alone
    groups = [dirs] if ENSEMBLE else [[d] for d in dirs]
    for group in groups:
        tokenizer = load_tokenizer(group[0])
        models = [load_reward_model(d, tokenizer.pad_token_id).eval() for d in group]
        model = RewardEnsemble(models, ENSEMBLE, ENSEMBLE_LAMBDA).eval() if ENSEMBLE else models[0]
        name = f"ensemble {ENSEMBLE} of {','.join(group)}" if ENSEMBLE else group[0]
        for source in DATA.split(","):
            data = RMDataset(
                source,
                tokenizer,
                MAX_LEN,
                limit=LIMIT or None,
                verbose=False,
                chat_template=CHAT_TEMPLATE,
                judge=gold_judge,
            )
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
                if ENSEMBLE:  # each member standardised over the file's responses
                    batches = (rm_collate(data.items[i: i + EVAL_BATCH_SIZE], tokenizer.pad_token_id)
                               for i in range(0, len(data.items), EVAL_BATCH_SIZE))
                    model.calibrate_batches((b["input_ids"], b["attention_mask"]) for b in batches)
                metrics = evaluate_pairs(model, data, tokenizer.pad_token_id, EVAL_BATCH_SIZE)
            print(report(name, source, metrics))


if __name__ == "__main__":
    main()
