"""Step 3 of InstructGPT: PPO against the reward model, with a KL penalty to the SFT model.

    python train_sft.py && python train_rm.py && python train_rlhf.py   # the whole pipeline
    python train_rlhf.py --iterations 2 --rollout_batch 8 --mini_batch 4 --out_dir out/t   # smoke
    python train_rlhf.py --peft lora --actor_lr 1e-3   # LoRA actor; reference = adapters off
    python train_rlhf.py --reward gold                 # the gold judge as reward: an upper bound
    python train_rlhf.py --algo grpo                   # G samples per prompt, no critic

Four models: actor (from SFT_MODEL, trained), reference (SFT_MODEL, frozen), critic (from RM_MODEL,
trained; a value per token) and reward model (RM_MODEL, frozen). Writes out_dir/: the actor as an
HF checkpoint, metrics.jsonl, summary.json, side_by_side.jsonl (SFT vs RLHF answers),
ppo_curves.png. GRPO (--algo grpo) drops the critic: the other samples of the same prompt are the
baseline.
"""
import copy
import dataclasses
import json
import os
import time

import torch

from dataset.chat import render_prompt, row_messages, use_chat_format
from dataset.prompt import PromptDataset
from dataset.sft import SFTDataset
from dataset.task import gold_judge
from model.load import load_causal_lm, load_tokenizer
from model.memory import resolve_lm_head_chunk
from model.peft import apply_peft, count_parameters, format_counts
from model.reward import RewardEnsemble, load_reward_model, load_scorer, score_replies
from model.reward_functions import reward_functions
from trainer.base import LoopConfig
from trainer.dist import resolve_bf16
from trainer.evaluate import (SFTEvalSettings, comparison_summary, greedy_and_sampled,
                              print_comparison, read_sft_eval, sft_evaluation, write_side_by_side)
from trainer.grpo import GRPOConfig, GRPOTrainer
from trainer.ppo import PPOConfig, PPOTrainer
from utils import (ConfigError, bound_kernel_caches, configure, keep_freed_memory, plot_metrics, quiet_transformers,
                   run_main, seed_everything)

ALGO = "ppo"  # 'ppo' (actor + critic, KL in the reward) or 'grpo' (no critic, KL in the loss)
# models and data
SFT_MODEL = "out/sft"  # actor and reference start here
RM_MODEL = "out/rm"  # reward model (frozen) and critic initialisation; several, comma-separated: an ensemble
RM_ENSEMBLE = "mean"  # several RM_MODELs: 'mean', 'min' or 'mean_minus_std' of the standardised scores
RM_ENSEMBLE_LAMBDA = 1.0  # 'mean_minus_std': reward = mean - lambda * std across the members
CRITIC_INIT = "zero_head"  # 'zero_head' (RM backbone, values start at 0) or 'rm'; see docs/ppo.md
REWARD = "rm"  # 'rm', 'gold' (an upper bound) or FILE.py:FUNCTION,... (model/reward_functions.py)
REWARD_WEIGHTS = ""  # comma-separated weights of the REWARD terms ('': 1 each) in their sum
PROMPTS = "ds/prompts_train.jsonl"  # rollout prompts (instruction/input, prompt, or messages rows)
PTX_DATA = "ds/sft_train.jsonl"  # SFT demonstrations for the ptx LM loss (used when PTX_COEF > 0)
EVAL_PROMPTS = "ds/prompts_val.jsonl"  # validation prompts: the evaluations during training
TEST_PROMPTS = "ds/prompts_test.jsonl"  # test prompts: the reported figures ('none': EVAL_PROMPTS)
JUDGE_RM = "none"  # 'none': the gold judge; or a second reward model, never trained on
OUT_DIR = "out/rlhf"  # checkpoint, metrics, summary, samples, plot
MAX_PROMPT_LEN = 72  # prompt tokens; longer prompts are cut from the left
CHAT_TEMPLATE = False  # False: the Alpaca format; True: the SFT tokenizer's chat template
# rollout
ITERATIONS = 50  # rollout + update; the gold score peaks early, then the RM is over-optimised
ROLLOUT_BATCH = 64  # responses per iteration (PPO: one per prompt; GRPO: GROUP_SIZE per prompt)
GROUP_SIZE = 4  # GRPO: samples per prompt whose scores are normalised together
MAX_NEW_TOKENS = 20  # response length limit (no minimum length is forced)
TEMPERATURE = 1.0  # of the rollouts; actor and reference log-probs use the same one
TOP_K = 0  # must stay 0: PPO samples the full distribution (the KL to the reference needs it)
TOP_P = 1.0  # must stay 1.0, for the same reason
# PPO (the loop settings' meaning: trainer/base.py LoopConfig; the loop's steps are ITERATIONS)
PPO_EPOCHS = 4  # passes over each rollout batch
STOP_APPROX_KL = 0.0  # > 0: stop an iteration's epochs once an epoch's mean approx KL exceeds it
STOP_DISAGREEMENT = 0.0  # > 0, several RM_MODELs: end the run once their disagreement on rollouts rises this much
MINI_BATCH = 16  # rows per gradient step
ACTOR_LR = 5e-5  # AdamW learning rate of the actor
CRITIC_LR = 1e-4  # AdamW learning rate of the critic
WEIGHT_DECAY = 0.0  # actor and critic
WARMUP_STEPS = 0  # in iterations
CLIP_RANGE = 0.2  # epsilon of the clipped policy objective
VALUE_CLIP = 0.2  # clip of the value loss around rollout values
GAMMA = 1.0  # discount
LAM = 0.95  # GAE lambda
BETA = 0.2  # KL penalty coefficient (start value with TARGET_KL); 0.05 let the policy hack the RM
GRPO_LOSS = "token"  # GRPO: 'token' (mean over all tokens) or 'sequence' (model/loss.py grpo_loss)
GRPO_STD_SCALE = False  # GRPO: divide each group's advantages by its std (DeepSeekMath)
GRPO_BETA = 0.1  # GRPO: weight of the k3 KL term; chosen on validation (bench/choose_on_validation.sh)
TARGET_KL = 0.0  # > 0: adapt BETA toward this summed KL per response (nats); 0: fixed BETA
KL_HORIZON = 1000  # adaptive controller horizon, in rollouts
PTX_COEF = 0.0  # weight of the LM loss on PTX_DATA (InstructGPT's PPO-ptx); 0 = plain PPO
PTX_BATCH = 16  # SFT rows per ptx loss
MISSING_EOS_PENALTY = 1.0  # subtracted from the normalised score of a response without EOS
CLOSE_TRUNCATED = False  # the RM scores a response cut at MAX_NEW_TOKENS with EOS appended
NORMALIZE_SCORES = True  # running mean/std normalisation of reward-model scores
GRAD_CLIP = 1.0  # actor and critic separately
BF16 = "auto"  # True, False or 'auto': where it pays (trainer/dist.py resolve_bf16)
FROZEN_BF16 = True  # with BF16: reference and reward model keep bf16 matrices (half the memory)
SEED = 0  # also the sampling
FSDP = False  # with torchrun --nproc_per_node N
GRADIENT_CHECKPOINTING = False  # True: layers run again in the backward pass; 'selective': only their cheap ops
LM_HEAD_CHUNK = "auto"  # policy log-probs (and ptx loss) through the LM head this many tokens at a time (0: off; docs/throughput.md)
GROUP_BY_LENGTH = False
KEEP_FREED_MEMORY = True  # reuse the memory torch frees, not handed back to the OS (glibc; docs/throughput.md)
KEEP_FREED_BELOW_MIB = 0  # with it: freed blocks of this many MiB or more go back to the OS (0: all kept; docs/throughput.md)
# PEFT (model/peft/): a LoRA actor shares its weights with the reference (adapters off)
PEFT = "none"  # 'none' or 'lora'
LORA_R = 8  # LoRA rank
LORA_ALPHA = 16  # LoRA scale alpha
LORA_TARGETS = "q_proj,v_proj"  # comma-separated module names LoRA adapts
# evaluation, logging, checkpoints (intervals in iterations)
EVAL_INTERVAL = 10  # held-out gold evaluations (0: only at the end)
EVAL_BATCH_SIZE = 100  # held-out prompts per generate call
EVAL_SAMPLED = False  # evaluations also sample: gold, RM score and KL (bench/overoptimisation.sh)
EVAL_LIMIT = 300  # validation prompts (None: all)
TEST_LIMIT = None  # test prompts (None: all)
SFT_EVAL = "run"  # 'run': evaluate SFT (OUT_DIR/sft_eval.json); or an earlier OUT_DIR to reuse
LOG_INTERVAL = 1
SAVE_INTERVAL = 10
LOG_WITH = "none"
RESUME = False
OVERWRITE = False

_DEFAULTS = {k: v for k, v in globals().items() if k.isupper()}  # before the command line
config = configure(globals())
# PPO's settings that GRPO has no use for: changing one under ALGO='grpo' is an error, not silently
# ignored
_PPO_FIELDS = {f.name.upper() for f in dataclasses.fields(PPOConfig)}
_GRPO_FIELDS = {f.name.upper() for f in dataclasses.fields(GRPOConfig)}
_PPO_ONLY = sorted(_PPO_FIELDS - _GRPO_FIELDS) + ["PTX_DATA", "CRITIC_INIT"]  # + what the script reads for PPO
_GRPO_ONLY = sorted(_GRPO_FIELDS - _PPO_FIELDS)
sft_eval_settings = SFTEvalSettings.from_settings(config)  # as given: BF16 may still be 'auto'


def check_algo_settings() -> None:
    """A setting the chosen ALGO does not read must keep its default: --beta under GRPO (whose KL
    weight is GRPO_BETA, in the loss) would otherwise be silently ignored."""
    unused = _PPO_ONLY if ALGO == "grpo" else _GRPO_ONLY
    changed = [k for k in unused if json.dumps(config[k]) != json.dumps(_DEFAULTS[k])]
    if changed:
        hint = " (GRPO's KL weight is --grpo_beta)" if "BETA" in changed and ALGO == "grpo" else ""
        flags = ", ".join("--" + k.lower() for k in changed)
        raise ConfigError(f"ALGO={ALGO!r} does not use {flags}{hint}: leave them at their "
                          "defaults, or choose the other ALGO")


def reward_model_judge(path: str, max_len: int):
    """JUDGE_RM: judge(row, response) by a reward model PPO never optimises (for data without a
    gold judge, e.g. Anthropic HH): its score of the reply, in the reward model's own chat format.
    No correctness or format verdicts (NaN)."""
    model, tokenizer = load_scorer(path, "JUDGE_RM")

    def judge(row, response):
        score = score_replies(model, tokenizer, [row_messages(row)], [response], batch_size=1,
                              max_len=max_len)[0]
        return {"score": score, "correct": float("nan"), "format": float("nan")}
    return judge


def main():
    if ALGO not in ("ppo", "grpo"):
        raise ConfigError(f"ALGO={ALGO!r}: expected 'ppo' or 'grpo'")
    check_algo_settings()
    if STOP_DISAGREEMENT and (len(RM_MODEL.split(",")) < 2 or REWARD != "rm"):
        raise ConfigError(f"STOP_DISAGREEMENT={STOP_DISAGREEMENT:g} reads the disagreement of several reward "
                          "models: give RM_MODEL as a comma-separated list (and REWARD='rm'), or leave it at 0")
    if RM_ENSEMBLE not in RewardEnsemble.combines:
        raise ConfigError(f"RM_ENSEMBLE={RM_ENSEMBLE!r}: expected one of {', '.join(RewardEnsemble.combines)}")
    # the settings are checked before any model loads
    algo_config = (GRPOConfig if ALGO == "grpo" else PPOConfig).from_settings(config)
    saved_sft_eval = read_sft_eval(SFT_EVAL, sft_eval_settings)
    reward_fn = reward_functions(REWARD, REWARD_WEIGHTS, gold_judge)  # None: REWARD='rm'
    quiet_transformers()
    seed_everything(SEED)
    bound_kernel_caches()  # before the first bf16 product (utils/runtime.py)
    keep_freed_memory(KEEP_FREED_MEMORY, KEEP_FREED_BELOW_MIB)
    tokenizer = load_tokenizer(SFT_MODEL, "SFT_MODEL")
    use_chat_format(tokenizer, CHAT_TEMPLATE)
    actor = load_causal_lm(SFT_MODEL, "SFT_MODEL")
    config["BF16"] = resolve_bf16(BF16, actor)
    config["LM_HEAD_CHUNK"] = resolve_lm_head_chunk(LM_HEAD_CHUNK, actor)
    if PEFT == "none":
        ref = copy.deepcopy(actor)
    elif PEFT == "lora":
        actor = apply_peft(actor, "lora", r=LORA_R, alpha=LORA_ALPHA,
                           targets=tuple(LORA_TARGETS.split(",")))
        ref = None  # the actor with its adapters off
    else:
        raise ConfigError(f"PEFT={PEFT!r}: PPO supports 'none' and 'lora'")
    pad_id = tokenizer.pad_token_id
    rm_paths = RM_MODEL.split(",")
    critic = load_reward_model(rm_paths[0], pad_id, "RM_MODEL") if ALGO == "ppo" else None
    if CRITIC_INIT not in ("rm", "zero_head"):
        raise ConfigError(f"CRITIC_INIT={CRITIC_INIT!r}: expected 'rm' or 'zero_head'")
    # the returns are in normalised-score units, while the RM head speaks raw scores
    if critic is not None and CRITIC_INIT == "zero_head":
        torch.nn.init.zeros_(critic.score.weight)
    reward_model = None
    if reward_fn is None:
        members = [load_reward_model(path, pad_id, "RM_MODEL") for path in rm_paths]
        # an ensemble is standardised on the SFT policy's samples when the trainer starts (model/reward.py)
        reward_model = (members[0] if len(members) == 1
                        else RewardEnsemble(members, RM_ENSEMBLE, RM_ENSEMBLE_LAMBDA))

    def prompt_items(path, limit):
        return PromptDataset(path, tokenizer, MAX_PROMPT_LEN, limit=limit,
                             chat_template=CHAT_TEMPLATE).items

    prompts = PromptDataset(PROMPTS, tokenizer, MAX_PROMPT_LEN, chat_template=CHAT_TEMPLATE)
    eval_prompts = prompt_items(EVAL_PROMPTS, EVAL_LIMIT) if EVAL_PROMPTS != "none" else None
    test_prompts = eval_prompts  # the reported figures; never a choice
    if TEST_PROMPTS != "none":
        test_prompts = prompt_items(TEST_PROMPTS, TEST_LIMIT)
    max_len = MAX_PROMPT_LEN + MAX_NEW_TOKENS
    ptx = None
    if PTX_COEF > 0:
        ptx = SFTDataset(PTX_DATA, tokenizer, max_len, chat_template=CHAT_TEMPLATE)
    judge = gold_judge if JUDGE_RM == "none" else reward_model_judge(JUDGE_RM, max_len)
    wiring = dict(loop=LoopConfig.from_settings(config, max_steps="ITERATIONS"), run_config=config,
                  reward_fn=reward_fn, judge=judge, eval_prompts=eval_prompts,
                  lm_head_chunk=config["LM_HEAD_CHUNK"])
    if ALGO == "grpo":
        trainer = GRPOTrainer(actor, ref, reward_model, tokenizer, prompts, cfg=algo_config,
                              **wiring)
        trainer.log(f"actor: {format_counts(*count_parameters(actor))}; no critic")
    else:
        trainer = PPOTrainer(actor, ref, critic, reward_model, tokenizer, prompts, cfg=algo_config,
                             ptx_data=ptx, **wiring)
        trainer.log(f"actor: {format_counts(*count_parameters(actor))}; "
                    f"critic: {format_counts(*count_parameters(critic))}")

    before = {}
    if test_prompts:  # the SFT policy (the actor before any update) on the test prompts
        before = sft_evaluation(trainer, test_prompts, saved_sft_eval, sft_eval_settings,
                                config["BF16"], os.path.join(OUT_DIR, "sft_eval.json"))
        greedy, sampled = before["greedy"], before["sampled"]
        trainer.log(f"SFT on the test prompts: gold {greedy['gold_score']:.3f} "
                    f"(sampled {sampled['gold_score']:.3f}), RM score {greedy['reward']:.3f}")
    if eval_prompts:  # step 0 of the validation curve: the SFT policy
        start_eval = trainer.evaluate_policy(trainer.unwrap(trainer.actor), eval_prompts,
                                             do_sample=False)
        trainer.log_start({f"eval/{k}": v for k, v in start_eval.items()
                           if k != "rows" and "/" not in k})
    start = time.time()
    trainer.fit()
    train_seconds = time.time() - start
    summary = {"algo": ALGO, "iterations": ITERATIONS, "train_seconds": train_seconds,
               "peft": PEFT, "reward": REWARD}
    split = "test" if TEST_PROMPTS != "none" else "validation"
    if test_prompts:
        after = greedy_and_sampled(trainer.evaluate_policy, trainer.unwrap(trainer.actor),
                                   test_prompts)
        summary.update(split=split, **comparison_summary(before, after, "RLHF"))
    trainer.finish(tokenizer, PEFT, summary)
    if not trainer.accelerator.is_main_process:
        return
    if test_prompts:
        side_by_side = os.path.join(OUT_DIR, "side_by_side.jsonl")
        write_side_by_side(side_by_side, test_prompts, before, after, "RLHF")
        print_comparison(before, after, "RLHF", f"{split} prompts: {len(test_prompts)}")
    judged = "gold score" if JUDGE_RM == "none" else "judge RM score"
    curves = [(f"{ALGO}/score", "RM score (rollouts)"),
              (f"{ALGO}/gold_score", f"{judged} (rollouts)"),
              ("eval/gold_score", f"{judged} (validation, greedy)"),
              (f"{ALGO}/kl", "KL to SFT (nats / response)")]
    plot_metrics(os.path.join(OUT_DIR, "metrics.jsonl"),
                 os.path.join(OUT_DIR, f"{ALGO}_curves.png"), curves)
    print(f"wrote {OUT_DIR}/side_by_side.jsonl (SFT and RLHF answers) and "
          f"{OUT_DIR}/{ALGO}_curves.png")


if __name__ == "__main__":
    run_main(main)
