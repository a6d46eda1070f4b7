"""Step 1 of InstructGPT: supervised fine-tuning on instruction -> response demonstrations.

    python train_sft.py                                  # embedded tiny OPT, ds/: ~3 min, 2 cores
    python train_sft.py --max_steps 20 --out_dir out/t   # a quick smoke run
    python train_sft.py --peft lora --lora_r 8 --lr 3e-3 --out_dir out/sft_lora   # LoRA
    python train_sft.py --model facebook/opt-125m --train_data tatsu-lab/alpaca --eval_data none \
        --eval_prompts none --max_len 512 --batch_size 8 --grad_accum 4 --lr 2e-5 --bf16 True
                                                         # opt-125m on Alpaca (online once)
    torchrun --nproc_per_node 2 train_sft.py             # two processes (CPU gloo or GPUs)

Writes out_dir/: an HF checkpoint (model, tokenizer, generation config, run_config.json),
metrics.jsonl, summary.json; out_dir/checkpoint/ holds the resumable training state (--resume
True). With PEFT the adapter goes to out_dir/adapter/; LoRA and BitFit also write the merged full
model to out_dir/.
"""
import time

from dataset.chat import use_chat_format
from dataset.prompt import PromptDataset
from dataset.sft import SFTDataset
from dataset.task import gold_judge
from model.load import load_causal_lm, load_tokenizer
from model.memory import resolve_lm_head_chunk
from model.peft import apply_peft, count_parameters, format_counts
from trainer.base import LoopConfig, OptimConfig
from trainer.dist import resolve_bf16
from trainer.evaluate import test_evaluation
from trainer.sft import SFTTrainer
from utils import bound_kernel_caches, configure, keep_freed_memory, quiet_transformers, run_main, seed_everything

# model and data
MODEL = "embedded"  # 'embedded' (tiny OPT, offline), a hub id, a local dir or a .gguf file
TRAIN_DATA = "ds/sft_train.jsonl"  # JSON/JSONL file or hub name ('tatsu-lab/alpaca'): docs/sft.md
EVAL_DATA = "ds/sft_val.jsonl"  # validation demonstrations: the eval loss ('none' to skip)
EVAL_PROMPTS = "ds/prompts_val.jsonl"  # validation prompts: the gold score ('none': no judge)
TEST_DATA = "ds/sft_test.jsonl"  # test demonstrations: the reported loss ('none' to skip)
TEST_PROMPTS = "ds/prompts_test.jsonl"  # test prompts: the reported gold score ('none' to skip)
OUT_DIR = "out/sft"  # where the checkpoint, metrics.jsonl and summary.json go
MAX_LEN = 96  # tokens per example; longer ones are cut (prompt from the left, see dataset/sft.py)
CHAT_TEMPLATE = False  # False: the Alpaca format; True: the tokenizer's template (dataset/chat.py)
# optimisation (the loop settings' meaning: trainer/base.py LoopConfig and OptimConfig)
MAX_STEPS = 900  # optimizer steps
BATCH_SIZE = 64  # demonstrations per micro-batch, per process
GRAD_ACCUM = 1
LR = 3e-3  # peak AdamW learning rate; ~2e-5 for a pretrained opt-125m
WARMUP_STEPS = 50
WEIGHT_DECAY = 0.01
GRAD_CLIP = 1.0
BF16 = "auto"  # True, False or 'auto': where it pays (trainer/dist.py resolve_bf16)
SEED = 0  # also the new weights' initialisation and the sampling
GROUP_BY_LENGTH = False
KEEP_FREED_MEMORY = True  # reuse the memory torch frees, not handed back to the OS (glibc; docs/throughput.md)
KEEP_FREED_BELOW_MIB = 0  # with it: freed blocks of this many MiB or more go back to the OS (0: all kept; docs/throughput.md)
GRADIENT_CHECKPOINTING = False  # True: layers run again in the backward pass; 'selective': only their cheap ops
LM_HEAD_CHUNK = "auto"  # LM head + loss on supervised tokens, this many at a time (0: off; docs/throughput.md)
FSDP = False  # with torchrun --nproc_per_node N
# evaluation, logging, checkpoints
EVAL_INTERVAL = 300  # steps between evaluations (0: only before and after)
EVAL_BATCH_SIZE = 64  # demonstrations per forward pass, prompts per generate call
MAX_NEW_TOKENS = 24  # generation length for the gold-score evaluation
EVAL_LIMIT = 300  # validation prompts to score (None: all)
TEST_LIMIT = None  # test prompts to score (None: all)
LOG_INTERVAL = 10
LOG_WITH = "none"
SAVE_INTERVAL = 300
RESUME = False
OVERWRITE = False
# parameter-efficient fine-tuning (model/peft/)
PEFT = "none"  # 'none' (full), 'lora', 'bitfit', 'prompt_tuning', 'p_tuning' or 'prefix_tuning'
LORA_R = 8  # LoRA rank r
LORA_ALPHA = 16  # LoRA scale alpha: the update is (alpha / r) * B A
LORA_TARGETS = "q_proj,v_proj"  # comma-separated names of the linear layers LoRA adapts
NUM_VIRTUAL_TOKENS = 10  # virtual tokens of prompt tuning, p-tuning and prefix tuning

config = configure(globals())


def main():
    quiet_transformers()
    seed_everything(SEED)
    bound_kernel_caches()  # before the first bf16 product (utils/runtime.py)
    keep_freed_memory(KEEP_FREED_MEMORY, KEEP_FREED_BELOW_MIB)
    tokenizer = load_tokenizer(MODEL)
    use_chat_format(tokenizer, CHAT_TEMPLATE)
    model = apply_peft(load_causal_lm(MODEL), PEFT, task="causal", r=LORA_R, alpha=LORA_ALPHA,
                       targets=tuple(LORA_TARGETS.split(",")),
                       num_virtual_tokens=NUM_VIRTUAL_TOKENS)
    config["BF16"] = resolve_bf16(BF16, model)
    config["LM_HEAD_CHUNK"] = resolve_lm_head_chunk(LM_HEAD_CHUNK, model)

    def demonstrations(path):
        return SFTDataset(path, tokenizer, MAX_LEN, chat_template=CHAT_TEMPLATE)

    def prompt_items(path, limit):  # prompts leave MAX_NEW_TOKENS of MAX_LEN for the answer
        return PromptDataset(path, tokenizer, MAX_LEN - MAX_NEW_TOKENS, limit, verbose=False,
                             chat_template=CHAT_TEMPLATE).items

    train = demonstrations(TRAIN_DATA)
    eval_data = None if EVAL_DATA == "none" else demonstrations(EVAL_DATA)
    prompts = None if EVAL_PROMPTS == "none" else prompt_items(EVAL_PROMPTS, EVAL_LIMIT)
    test_data = None if TEST_DATA == "none" else demonstrations(TEST_DATA)
    test_prompts = None if TEST_PROMPTS == "none" else prompt_items(TEST_PROMPTS, TEST_LIMIT)
    trainer = SFTTrainer(model, tokenizer, train, eval_data, prompts,
                         loop=LoopConfig.from_settings(config),
                         optim=OptimConfig.from_settings(config), run_config=config,
                         max_new_tokens=MAX_NEW_TOKENS, eval_batch_size=EVAL_BATCH_SIZE,
                         judge=gold_judge, lm_head_chunk=config["LM_HEAD_CHUNK"])
    trainable, num_params = count_parameters(model)
    trainer.log(f"model: {MODEL} ({num_params:,} parameters); {len(train)} training examples; "
                f"PEFT={PEFT}")
    trainer.log(format_counts(trainable, num_params))
    # validation before SFT (a resumed run loads its checkpoint in fit()); then the reported
    # figures
    trainer.log_start(trainer.run_evaluation())
    before = test_evaluation(trainer, eval_data=test_data, eval_prompts=test_prompts)
    start = time.time()
    fitted = trainer.fit()
    train_seconds = time.time() - start
    final = test_evaluation(trainer, eval_data=test_data, eval_prompts=test_prompts)
    summary = {"gold_score_base": before.get("eval/gold_score"),
               "gold_score": final.get("eval/gold_score"),
               "correct": final.get("eval/correct"), "format": final.get("eval/format"),
               "eval_loss_base": before.get("eval/loss"), "eval_loss": final.get("eval/loss"),
               "train_loss": fitted.get("train/loss"), "steps": MAX_STEPS,
               "train_seconds": train_seconds, "split": "test", "num_params": num_params,
               "trainable_params": trainable, "peft": PEFT, "model": MODEL,
               **trainer.token_counts(train_seconds)}
    trainer.finish(tokenizer, PEFT, summary)
    trainer.log(f"gold score (test prompts, greedy): before {summary['gold_score_base']} "
                f"-> after {summary['gold_score']}")


if __name__ == "__main__":
    run_main(main)
