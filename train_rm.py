"""Step 2 of InstructGPT: a reward model trained on ranked comparisons with the pairwise loss.

    python train_sft.py && python train_rm.py            # embedded SFT backbone, shipped rankings:
                                                         # 400 steps, ~4.5 min of one quiet core
    python train_rm.py --max_steps 5 --out_dir out/t_rm  # a quick smoke run
    python label_samples.py && python train_rm.py --train_data out/label/train.jsonl \
        --eval_data out/label/eval.jsonl                 # the SFT policy's samples, judge-ranked
    python train_rm.py --train_layers 0                  # head only, by logistic regression
    python bench/bench_rm_hh.py                          # SmolLM2-135M on HH harmless (~11 min)

Writes out_dir/: the reward model as an HF checkpoint that AutoModelForSequenceClassification
(num_labels=1) loads (model, tokenizer, run_config.json), metrics.jsonl, summary.json; out_dir/best
holds the checkpoint with the best held-out accuracy, and out_dir/ gets it at the end if it beats
the last.
"""
import os
import time

import torch
from dataset.chat import use_chat_format
from dataset.rm import RMDataset, check_too_long
from dataset.task import gold_judge
from model.load import load_tokenizer, set_dropout
from model.peft import apply_peft
from model.reward import load_reward_model
from trainer.base import LoopConfig, OptimConfig
from trainer.export import save_stage
from trainer.outdir import check_fresh_start
from trainer.checkpoint import lock_out_dir
from trainer.dist import is_sharded, resolve_bf16
from trainer.evaluate import test_evaluation
from trainer.rm import RMTrainer, fit_head
from utils import (ConfigError, bound_kernel_caches, configure, keep_freed_memory, quiet_transformers, run_main,
                   seed_everything)

# model and data
MODEL = "out/sft"  # backbone: the SFT checkpoint, 'embedded', a hub id, a dir or a .gguf; new head
TRAIN_DATA = "ds/rm_train_ranked.jsonl"  # ranked rows, chosen/rejected pairs, HH, or a hub name
EVAL_DATA = "ds/rm_val_ranked.jsonl"  # validation: evaluations and out_dir/best ('none' to skip)
TEST_DATA = "ds/rm_test_ranked.jsonl"  # test comparisons: the reported accuracy ('none' to skip)
OUT_DIR = "out/rm"  # where the reward model, metrics.jsonl and summary.json go
MAX_LEN = 96  # tokens per prompt + response; longer ones are cut (dataset/rm.py)
TOO_LONG = "cut"  # a training comparison over MAX_LEN: 'cut' (prompt from the left) or 'drop' it (as TRL does)
CHAT_TEMPLATE = False  # False: the Alpaca format; True: the tokenizer's chat template
STRICT = False  # HH rows whose two prompts differ: False = skip them with a warning, True = error
TRAIN_LIMIT = None  # use only the first N training rows (None: all)
EVAL_LIMIT = None  # use only the first N held-out rows (None: all)
# which weights train (head only: trainer/rm.py fit_head, docs/reward_model.md)
TRAIN_LAYERS = None  # top N blocks (+ final norm and head); None: all; 0: head only, no loop
HEAD_L2 = "0.01,0.03,0.1,0.3,1,3"  # head only: L2 strengths; CV on the training pairs picks one
CV_FOLDS = 5  # head only: cross-validation folds over the training groups
# optimisation (the loop settings' meaning: trainer/base.py LoopConfig and OptimConfig)
MAX_STEPS = 400
LR = 1e-3  # peak AdamW learning rate; ~1e-5 for a pretrained 100M+ backbone
BATCH_SIZE = 32  # ranked groups per micro-batch: K responses, K(K-1)/2 pairs each
GRAD_ACCUM = 1
WARMUP_STEPS = 20
WEIGHT_DECAY = 0.01
GRAD_CLIP = 1.0
SEED = 0  # also the head's initialisation
BF16 = "auto"  # True, False or 'auto': where it pays (trainer/dist.py resolve_bf16)
FSDP = False  # with torchrun --nproc_per_node N
GROUP_BY_LENGTH = False
KEEP_FREED_MEMORY = True  # reuse the memory torch frees, not handed back to the OS (glibc; docs/throughput.md)
KEEP_FREED_BELOW_MIB = 0  # with it: freed blocks of this many MiB or more go back to the OS (0: all kept; docs/throughput.md)
GRADIENT_CHECKPOINTING = False  # True: layers run again in the backward pass; 'selective': only their cheap ops
DROPOUT = None  # None: the model's own (opt-125m: 0.1); a number sets every dropout (TRL's RewardTrainer: 0)
# evaluation, logging, checkpoints
EVAL_INTERVAL = 50  # steps between evaluations; the most accurate model is kept in out_dir/best
EVAL_BATCH_SIZE = 64  # comparison groups per evaluation forward pass
SAVE_INTERVAL = 100
LOG_INTERVAL = 10
LOG_WITH = "none"
OVERWRITE = False
RESUME = False
# parameter-efficient fine-tuning (model/peft/); the new score head is always trained in full
PEFT = "none"  # 'none' (full fine-tuning), 'lora' or 'bitfit'
LORA_R = 8  # LoRA rank r
LORA_ALPHA = 16  # LoRA scale alpha: the update is (alpha / r) * B A
LORA_TARGETS = "q_proj,v_proj"  # comma-separated names of the linear layers LoRA adapts

config = configure(globals())


def freeze_lower_layers(model, train_layers: int) -> None:
    """Freeze the embeddings and every block below the top `train_layers`: the backward pass then
    stops at the first trainable block, and no activations are kept for the frozen ones."""
    blocks = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    frozen = list(blocks[: len(blocks) - train_layers].parameters())
    frozen += [p for name, m in model.named_modules() if name.split(".")[-1].startswith("embed")
               for p in m.parameters()]
    for p in frozen:
        p.requires_grad_(False)


def check_settings() -> list[float]:
    """Fail on bad settings before anything is loaded; returns the HEAD_L2 strengths."""
    if TRAIN_LAYERS is not None and TRAIN_LAYERS < 0:
        raise ConfigError(f"TRAIN_LAYERS={TRAIN_LAYERS}: give a number of top blocks to train, "
                          "0 (head only) or None (all)")
    check_too_long(TOO_LONG)
    if DROPOUT is not None and not (isinstance(DROPOUT, (int, float)) and 0 <= DROPOUT < 1):
        raise ConfigError(f"DROPOUT={DROPOUT!r}: not a probability in [0, 1) (give e.g. 0.0, or None for the model's own)")
    if PEFT not in ("none", "lora", "bitfit"):
        raise ConfigError(f"PEFT={PEFT!r}: the reward model supports 'none', 'lora' and 'bitfit'")
    if TRAIN_LAYERS == 0 and PEFT != "none":
        raise ConfigError("TRAIN_LAYERS=0 fits the head only; it cannot be combined with PEFT")
    if TRAIN_LAYERS == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("TRAIN_LAYERS=0 (head only) runs in one process: start it with python, "
                          "not torchrun/accelerate")
    try:
        return [float(v) for v in HEAD_L2.split(",")]
    except ValueError:
        raise ConfigError(f"HEAD_L2={HEAD_L2!r}: expected comma-separated numbers, "
                          "e.g. '0.1,1'") from None


def rm_summary(ev: dict, accuracy_base, **extra) -> dict:
    """summary.json: held-out metrics after training (ev), the accuracy before it, run facts."""
    per_type = {k.split("/", 1)[1]: v for k, v in ev.items()
                if k.startswith("accuracy_correctness/")}
    return {"accuracy": ev.get("accuracy"), "accuracy_correctness": ev.get("accuracy_correctness"),
            "accuracy_format": ev.get("accuracy_format"),
            "accuracy_trade": ev.get("accuracy_trade"), "margin": ev.get("margin"),
            "eval_pairs": ev.get("pairs"), "eval_pairs_correctness": ev.get("pairs_correctness"),
            "score_mean": ev.get("score_mean"), "score_std": ev.get("score_std"),
            "accuracy_base": accuracy_base, "accuracy_correctness_per_type": per_type, **extra,
            "model": MODEL, "train_data": TRAIN_DATA, "eval_data": EVAL_DATA,
            "test_data": TEST_DATA}


def main():
    l2s = check_settings()
    quiet_transformers()
    seed_everything(SEED)
    bound_kernel_caches()  # before the first bf16 product (utils/runtime.py)
    keep_freed_memory(KEEP_FREED_MEMORY, KEEP_FREED_BELOW_MIB)
    on_mismatch = "error" if STRICT else "skip"
    tokenizer = load_tokenizer(MODEL)  # pads with a token that is not EOS (model/load.py)
    use_chat_format(tokenizer, CHAT_TEMPLATE)
    model = load_reward_model(MODEL, tokenizer.pad_token_id)
    config["BF16"] = resolve_bf16(BF16, model)

    if DROPOUT is not None:
        set_dropout(model, float(DROPOUT))

    def comparisons(path, limit, too_long="cut"):
        return RMDataset(path, tokenizer, MAX_LEN, on_mismatch, limit, chat_template=CHAT_TEMPLATE,
                         judge=gold_judge, too_long=too_long)

    train = comparisons(TRAIN_DATA, TRAIN_LIMIT, TOO_LONG)  # validation and test: every comparison, cut
    eval_data = None if EVAL_DATA == "none" else comparisons(EVAL_DATA, EVAL_LIMIT)
    test_data = None if TEST_DATA == "none" else comparisons(TEST_DATA, EVAL_LIMIT)
    if TRAIN_LAYERS == 0:  # L2 by cross-validation on train; the figures are the test split's
        return head_only(model, tokenizer, train, test_data or eval_data, l2s)
    if TRAIN_LAYERS is not None:
        freeze_lower_layers(model, TRAIN_LAYERS)
    model = apply_peft(model, PEFT, task="reward", r=LORA_R, alpha=LORA_ALPHA,
                       targets=tuple(LORA_TARGETS.split(",")))
    trainer = RMTrainer(model, tokenizer, train, eval_data, loop=LoopConfig.from_settings(config),
                        optim=OptimConfig.from_settings(config), run_config=config,
                        eval_batch_size=EVAL_BATCH_SIZE)
    num_params = sum(p.numel() for p in model.parameters())
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer.log(f"reward model on {MODEL} ({num_params:,} parameters, {num_trainable:,} trained); "
                f"{len(train)} training groups, {train.num_pairs} pairs")
    # the reward model before training (fresh head); not when resuming: the step-0 evaluation would
    # compete for out_dir/best with the resumed run's best before its checkpoint is loaded
    before = trainer.run_evaluation() if eval_data is not None and not trainer.resuming else {}
    if before:
        trainer.log_start(before)
    if test_data is not None and not trainer.resuming:
        before = test_evaluation(trainer, eval_data=test_data)  # the reported "before" figure
    start = time.time()
    final = trainer.fit()
    train_seconds = time.time() - start
    best_dir = os.path.join(OUT_DIR, "best")
    last_accuracy = final.get("eval/accuracy", 0.0)
    # a sharded model takes no plain state dict: out_dir/best then stays where it is
    if (PEFT == "none" and trainer.best_value is not None and trainer.best_value > last_accuracy
            and not is_sharded(trainer.accelerator)):
        trainer.unwrap(trainer.model).load_state_dict(
            load_reward_model(best_dir, tokenizer.pad_token_id).state_dict())
        final.update(trainer.run_evaluation())
        trainer.log(f"the last step was not the best: {OUT_DIR}/ gets {best_dir}/ "
                    f"(validation accuracy {final['eval/accuracy']:.4f})")
    val_accuracy = final.get("eval/accuracy")
    if test_data is not None:  # the chosen model on the test split: the figures reported
        final.update(test_evaluation(trainer, eval_data=test_data))
    ev = {k[len("eval/"):]: v for k, v in final.items() if k.startswith("eval/")}
    summary = rm_summary(ev, before.get("eval/accuracy"), train_loss=final.get("train/loss"),
                         split="test" if test_data is not None else "validation",
                         val_accuracy=val_accuracy, steps=MAX_STEPS, train_pairs=train.num_pairs,
                         train_seconds=train_seconds, num_params=num_params,
                         **trainer.token_counts(train_seconds))
    trainer.finish(tokenizer, PEFT, summary)  # PEFT: OUT_DIR/adapter, and the merged model
    trainer.log(", ".join(f"{k}={v:.4f}" for k, v in summary.items() if isinstance(v, float)))


def head_only(model, tokenizer, train, eval_data, l2s: list[float]) -> None:
    """TRAIN_LAYERS=0: the frozen backbone's features once, the head by logistic regression
    (trainer/rm.py fit_head)."""
    lock_out_dir(OUT_DIR)  # one run per output directory, as the Trainer does
    check_fresh_start(OUT_DIR, os.path.join(OUT_DIR, "checkpoint"), RESUME, OVERWRITE, True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().requires_grad_(False).to(device)
    print(f"reward model on {MODEL}: backbone frozen, head fitted on {len(train)} training "
          f"groups, {train.num_pairs} pairs")
    start = time.time()
    fit, before, after = fit_head(model, train, eval_data, tokenizer.pad_token_id, l2s, CV_FOLDS,
                                  SEED, EVAL_BATCH_SIZE, bf16=config["BF16"])
    summary = rm_summary(after, before.get("accuracy"), train_loss=fit["train_loss"],
                         train_accuracy=fit["train_accuracy"], head_l2=fit["l2"],
                         length_corr=after.get("length_corr"),
                         cv_accuracy={f"{k:g}": v for k, v in fit["cv_accuracy"].items()},
                         cv_log_loss={f"{k:g}": v for k, v in fit["cv_log_loss"].items()}, steps=0,
                         train_pairs=train.num_pairs, train_seconds=time.time() - start,
                         num_params=sum(p.numel() for p in model.parameters()))
    print(", ".join(f"{k}={v:.4f}" for k, v in summary.items() if isinstance(v, float)))
    # what Trainer.finish writes
    print(save_stage(OUT_DIR, model.cpu(), tokenizer, config, "none", summary))


if __name__ == "__main__":
    run_main(main)
