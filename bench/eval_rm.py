"""Score saved reward models on comparison files: pairwise accuracy (all pairs, and where the gold judge
applies the correctness-only, format-only and trade pairs: a right answer in the worse format over a wrong
one in the preferred format), mean margin and the correctness-only accuracy per task type, one line per
(model, file).

    python bench/eval_rm.py --models out/rm,out/rm_label --data ds/rm_test_ranked.jsonl,out/label/eval.jsonl
    python bench/eval_rm.py --models out/smollm2/rm --chat_template True --limit 100   # as bench/pipeline_smollm2.sh trains it
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset.rm import RMDataset  # noqa: E402
from dataset.task import gold_judge  # noqa: E402
from model.load import load_tokenizer  # noqa: E402
from model.reward import load_reward_model  # noqa: E402
from trainer.rm import evaluate_pairs  # noqa: E402
from utils import configure, quiet_transformers  # noqa: E402

MODELS = "out/rm"  # comma-separated reward-model directories
DATA = "ds/rm_test_ranked.jsonl"  # comma-separated comparison files (ranked, pairs or HH)
MAX_LEN = 96  # tokens per prompt + response, as in training
# render with the tokenizer's chat template, as in training with --chat_template True
CHAT_TEMPLATE = False
LIMIT = 0  # ranked groups per file (0 = all)
EVAL_BATCH_SIZE = 64  # comparison groups per forward pass

configure(globals())


def main():
    quiet_transformers()
    for model_dir in MODELS.split(","):
        tokenizer = load_tokenizer(model_dir)
        model = load_reward_model(model_dir, tokenizer.pad_token_id).eval()
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
            m = evaluate_pairs(model, data, tokenizer.pad_token_id, EVAL_BATCH_SIZE)
            extra = "".join(
                f", {k} {m[k]:.4f} ({m['pairs_' + k.split('_')[1]]} pairs)"
                for k in ("accuracy_correctness", "accuracy_format", "accuracy_trade")
                if k in m
            )
            per_type = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in m.items()
                                 if k.startswith("accuracy_correctness/"))
            print(
                f"{model_dir} on {source}: accuracy {m['accuracy']:.4f} ({m['pairs']} pairs){extra}, "
                f"margin {m['margin']:.3f}" + (f"; correctness-only by type: {per_type}" if per_type else "")
            )


if __name__ == "__main__":
    main()
