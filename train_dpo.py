"""DPO (Rafailov et al. 2023): align the SFT model on comparisons, with no reward model or PPO.

    python train_sft.py && python train_dpo.py       # out/sft + the shipped rankings -> out/dpo
    python train_dpo.py --max_steps 5 --eval_limit 20 --out_dir out/t_dpo   # smoke run
    python train_dpo.py --peft lora --lr 3e-3        # LoRA policy; reference = adapters off
    python train_dpo.py --eval_rm out/rm             # also the reward model's score of the answers

Reads the comparison files train_rm.py reads (dataset/rm.py): ranked rows give all K(K-1)/2 pairs,
pair rows one pair, Anthropic HH rows their dialogue split. Writes out_dir/: the policy as an HF
checkpoint, metrics.jsonl, summary.json (gold score before/after, correct, format, KL to SFT, time,
memory) and dpo_curves.png.
"""
import copy
import os
import time

from dataset.chat import saved_chat_format, use_chat_format
from dataset.prompt import PromptDataset
from dataset.rm import RMDataset
from dataset.task import gold_judge
from model.load import load_causal_lm, load_tokenizer
from model.peft import apply_peft, count_parameters, format_counts
from model.reward import load_reward_model
from trainer.base import LoopConfig, OptimConfig
from trainer.dist import resolve_bf16
from trainer.evaluate import (comparison_summary, greedy_and_sampled, print_comparison,
                              test_evaluation)
from trainer.dpo import DPOConfig, DPOTrainer
from utils import (ConfigError, bound_kernel_caches, configure, keep_freed_memory, plot_metrics, quiet_transformers,
                   run_main, seed_everything)

# models and data
SFT_MODEL = "out/sft"  # the policy and the frozen reference start here
TRAIN_DATA = "ds/rm_train_ranked.jsonl"  # comparisons, as train_rm.py reads them, or a hub name
EVAL_DATA = "ds/rm_val_ranked.jsonl"  # validation: implicit-reward accuracy ('none' to skip)
EVAL_PROMPTS = "ds/prompts_val.jsonl"  # validation prompts: gold score and KL ('none' to skip)
TEST_DATA = "ds/rm_test_ranked.jsonl"  # test: the implicit-reward accuracy reported ('none': skip)
TEST_PROMPTS = "ds/prompts_test.jsonl"  # test prompts: the reported figures ('none': EVAL_PROMPTS)
EVAL_RM = "none"  # a reward model that scores held-out answers (e.g. out/rm), or 'none'
OUT_DIR = "out/dpo"  # checkpoint, metrics.jsonl, summary.json, dpo_curves.png
MAX_LEN = 96  # tokens per prompt + response of a comparison (cut as in train_rm.py)
MAX_PROMPT_LEN = 72  # held-out prompt tokens (as in train_rlhf.py)
MAX_NEW_TOKENS = 20  # answer length limit of the held-out evaluation (as in train_rlhf.py)
TEMPERATURE = 1.0  # sampling temperature of the held-out sampled answers (the KL figure)
STRICT = False  # HH rows whose two prompts differ: False = skip with a warning, True = error
TRAIN_LIMIT = None  # use only the first N training rows (None: all)
CHAT_TEMPLATE = "auto"  # 'auto': as SFT_MODEL was trained; False: Alpaca; True: the chat template
# DPO (the loop settings' meaning: trainer/base.py LoopConfig and OptimConfig)
BETA = 0.1  # strength of the implicit KL constraint: r(x, y) = BETA * log(pi(y|x) / pi_ref(y|x))
LR = 3e-4  # peak AdamW learning rate; 1e-3 broke the answers (correct 0.62 -> 0.36)
MAX_STEPS = 150  # 150 x 16 ranked groups = 2,400 of the 3,000 groups, 14,400 pairs
BATCH_SIZE = 16  # ranked groups per micro-batch, each with its K responses, K(K-1)/2 pairs
WARMUP_STEPS = 10
WEIGHT_DECAY = 0.0
GRAD_ACCUM = 1
GRAD_CLIP = 1.0
BF16 = "auto"  # True, False or 'auto': where it pays (trainer/dist.py resolve_bf16)
SEED = 0  # also the sampling of held-out answers
GRADIENT_CHECKPOINTING = False  # True: layers run again in the backward pass; 'selective': only their cheap ops
GROUP_BY_LENGTH = False
KEEP_FREED_MEMORY = True  # reuse the memory torch frees, not handed back to the OS (glibc; docs/throughput.md)
KEEP_FREED_BELOW_MIB = 0  # with it: freed blocks of this many MiB or more go back to the OS (0: all kept; docs/throughput.md)
FSDP = False  # with torchrun --nproc_per_node N
# PEFT (model/peft/): a LoRA policy shares its weights with the reference (adapters off)
PEFT = "none"  # 'none' or 'lora'
LORA_R = 8  # LoRA rank
LORA_ALPHA = 16  # LoRA scale alpha
LORA_TARGETS = "q_proj,v_proj"  # comma-separated module names LoRA adapts
# evaluation, logging, checkpoints
EVAL_INTERVAL = 50  # steps between held-out evaluations (0: only at the end)
EVAL_LIMIT = 300  # validation prompts (None: all)
TEST_LIMIT = None  # test prompts, and test comparisons of TEST_DATA (None: all)
EVAL_BATCH_SIZE = 64  # comparison groups per reference or implicit-reward forward pass
EVAL_PROMPT_BATCH = 100  # held-out prompts per generate call
LOG_INTERVAL = 10
LOG_WITH = "none"
SAVE_INTERVAL = 0
RESUME = False
OVERWRITE = False

config = configure(globals())


def main():
    if PEFT not in ("none", "lora"):
        raise ConfigError(f"PEFT={PEFT!r}: DPO supports 'none' and 'lora'")
    quiet_transformers()
    seed_everything(SEED)
    bound_kernel_caches()  # before the first bf16 product (utils/runtime.py)
    keep_freed_memory(KEEP_FREED_MEMORY, KEEP_FREED_BELOW_MIB)
    tokenizer = load_tokenizer(SFT_MODEL, "SFT_MODEL")
    chat = config["CHAT_TEMPLATE"] = saved_chat_format(SFT_MODEL, CHAT_TEMPLATE)
    use_chat_format(tokenizer, chat)
    policy = load_causal_lm(SFT_MODEL, "SFT_MODEL")
    config["BF16"] = resolve_bf16(BF16, policy)
    ref = copy.deepcopy(policy) if PEFT == "none" else None
    policy = apply_peft(policy, PEFT, r=LORA_R, alpha=LORA_ALPHA,
                        targets=tuple(LORA_TARGETS.split(",")))
    on_mismatch = "error" if STRICT else "skip"

    def comparisons(path, limit):
        return RMDataset(path, tokenizer, MAX_LEN, on_mismatch, limit, chat_template=chat,
                         judge=gold_judge)

    def prompt_items(path, limit):
        return PromptDataset(path, tokenizer, MAX_PROMPT_LEN, limit, chat_template=chat).items

    train = comparisons(TRAIN_DATA, TRAIN_LIMIT)
    eval_data = None if EVAL_DATA == "none" else comparisons(EVAL_DATA, None)
    eval_prompts = None if EVAL_PROMPTS == "none" else prompt_items(EVAL_PROMPTS, EVAL_LIMIT)
    test_data = None if TEST_DATA == "none" else comparisons(TEST_DATA, TEST_LIMIT)
    test_prompts = eval_prompts
    if TEST_PROMPTS != "none":
        test_prompts = prompt_items(TEST_PROMPTS, TEST_LIMIT)
    reward_model = None
    if EVAL_RM != "none":
        reward_model = load_reward_model(EVAL_RM, tokenizer.pad_token_id, "EVAL_RM")
    trainer = DPOTrainer(policy, ref, tokenizer, train, eval_data, eval_prompts, reward_model,
                         cfg=DPOConfig.from_settings(config),
                         loop=LoopConfig.from_settings(config),
                         optim=OptimConfig.from_settings(config), run_config=config,
                         judge=gold_judge)
    print(f"policy: {format_counts(*count_parameters(policy))}; {len(train)} training groups, "
          f"{train.num_pairs} pairs")

    before = {}
    if test_prompts:  # the SFT policy on the test prompts: greedy (gold score), sampled (KL)
        before = greedy_and_sampled(trainer.evaluate_policy, trainer.unwrap(trainer.model),
                                    test_prompts)
        print(f"SFT: gold {before['greedy']['gold_score']:.3f} "
              f"(sampled {before['sampled']['gold_score']:.3f})")
    if not trainer.resuming:  # step 0 of the curves: the SFT policy
        trainer.log_start(trainer.run_evaluation())
    start = time.time()
    final = trainer.fit()
    # the reference pass is part of the cost
    train_seconds = trainer.reference_seconds + time.time() - start
    summary = {"steps": MAX_STEPS, "beta": BETA, "lr": LR, "train_pairs": train.num_pairs,
               "train_loss": final.get("train/loss"), "train_seconds": train_seconds,
               "reference_seconds": trainer.reference_seconds,
               **trainer.token_counts(train_seconds), "peft": PEFT,
               "split": "test" if TEST_PROMPTS != "none" else "validation",
               **{"val_" + k[len("eval/"):]: v for k, v in final.items()
                  if k.startswith("eval/dpo_")}}
    if test_data is not None:  # the implicit reward's accuracy on the test comparisons
        test_items = trainer.with_reference_logprobs(test_data.items)
        tested = test_evaluation(trainer, eval_data=test_items, eval_prompts=None)
        summary.update({k[len("eval/"):]: v for k, v in tested.items()
                        if k.startswith("eval/dpo_")})
    if test_prompts:
        after = greedy_and_sampled(trainer.evaluate_policy, trainer.unwrap(trainer.model),
                                   test_prompts)
        summary.update(comparison_summary(before, after, "DPO"))
    trainer.finish(tokenizer, PEFT, summary)
    if not trainer.accelerator.is_main_process:
        return
    if test_prompts:
        print_comparison(before, after, "DPO", f"{summary['split']} prompts: {len(test_prompts)}")
    curves = [("train/loss", "DPO loss (train)"),
              ("eval/dpo_accuracy", "implicit-reward accuracy (validation)"),
              ("eval/gold_score", "gold score (validation, greedy)"),
              ("eval/kl", "KL to SFT (greedy, nats / response)")]
    plotted = plot_metrics(os.path.join(OUT_DIR, "metrics.jsonl"),
                           os.path.join(OUT_DIR, "dpo_curves.png"), curves)
    wrote = f"; wrote {OUT_DIR}/dpo_curves.png" if plotted else ""
    print(f"train {train_seconds:.0f} s{wrote}")


if __name__ == "__main__":
    run_main(main)
