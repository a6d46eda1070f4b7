"""The runs of bench/bench_throughput.py, one function per stage: each builds the stage's models and
trainer on the opt-125m architecture, times its training steps and returns the figures. `s` holds the
benchmark's resolved settings (its constants after the command-line overrides)."""

import copy
import time

from bench.throughput_parts import known_fields, matmul_params, timed_steps
from dataset.prompt import PromptDataset
from dataset.rm import RMDataset
from dataset.sft import SFTDataset
from model.load import load_causal_lm, load_tokenizer
from model.reward import load_reward_model
from trainer.base import LoopConfig, OptimConfig
from trainer.ppo import PPOConfig, PPOTrainer
from trainer.rm import RMTrainer
from trainer.sft import SFTTrainer


def loop_config(out_dir: str, bf16: bool, levers: set) -> LoopConfig:
    return known_fields(LoopConfig, out_dir=out_dir, max_steps=10**6, warmup_steps=0, grad_clip=1.0,
                        eval_interval=0, log_interval=1, save_interval=0, seed=0, bf16=bf16, resume=False,
                        log_with="none", group_by_length="group" in levers,
                        gradient_checkpointing="ckpt" in levers, overwrite=True, fsdp=False)


def run_sft(s: dict, model_dir: str, out_dir: str, bf16: bool, levers: set) -> dict:
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    data = SFTDataset(s["ALPACA"], tokenizer, s["MAX_LEN"], limit=s["DATA_ROWS"], verbose=False)
    optim = OptimConfig(lr=2e-5, weight_decay=0.0, batch_size=s["SFT_BATCH"], grad_accum=1)
    trainer = SFTTrainer(model, tokenizer, data, None, None, loop=loop_config(out_dir, bf16, levers), optim=optim,
                         run_config={}, max_new_tokens=1, eval_batch_size=64, judge=None)

    def count(i):
        mask = trainer.get_batch(i)["attention_mask"]
        return {"tokens": int(mask.sum()), "padded_tokens": mask.numel()}

    r = timed_steps(trainer, s["WARMUP"], s["SFT_STEPS"], count)
    r.update(
        tokens_per_s=r["tokens"] / r["seconds"],
        padded_tokens_per_s=r["padded_tokens"] / r["seconds"],
        matmul_params=matmul_params(model),
    )
    r["model_gflops"] = 6 * r["matmul_params"] * r["padded_tokens_per_s"] / 1e9
    return r


def run_rm(s: dict, model_dir: str, out_dir: str, bf16: bool, levers: set) -> dict:
    tokenizer = load_tokenizer(model_dir)
    model = load_reward_model(model_dir, tokenizer.pad_token_id)
    data = RMDataset(
        s["HH"], tokenizer, s["MAX_LEN"], on_mismatch="common_prefix", limit=s["DATA_ROWS"], verbose=False
    )
    optim = OptimConfig(lr=1e-5, weight_decay=0.0, batch_size=s["RM_PAIRS"], grad_accum=1)
    trainer = RMTrainer(model, tokenizer, data, None, loop=loop_config(out_dir, bf16, levers), optim=optim,
                        run_config={}, eval_batch_size=8)

    def count(i):
        batch = trainer.get_batch(i)
        return {
            "pairs": len(batch["chosen_index"]),
            "tokens": int(batch["attention_mask"].sum()),
            "padded_tokens": batch["attention_mask"].numel(),
        }

    r = timed_steps(trainer, s["WARMUP"], s["RM_STEPS"], count)
    r.update(
        pairs_per_s=r["pairs"] / r["seconds"],
        tokens_per_s=r["tokens"] / r["seconds"],
        matmul_params=matmul_params(model),
    )
    r["model_gflops"] = 6 * r["matmul_params"] * r["padded_tokens"] / r["seconds"] / 1e9
    return r


def run_ppo(s: dict, model_dir: str, out_dir: str, bf16: bool, levers: set) -> dict:
    import trainer.onpolicy as ppo_module

    tokenizer = load_tokenizer(model_dir)
    actor = load_causal_lm(model_dir)
    ref = copy.deepcopy(actor)
    critic = load_reward_model(model_dir, tokenizer.pad_token_id)
    reward_model = load_reward_model(model_dir, tokenizer.pad_token_id)
    prompts = PromptDataset(s["ALPACA"], tokenizer, s["MAX_PROMPT_LEN"], limit=s["DATA_ROWS"], verbose=False)
    cfg = known_fields(PPOConfig, actor_lr=1e-6, critic_lr=1e-5, weight_decay=0.0,
                       rollout_batch=s["PPO_PROMPTS"], mini_batch=s["PPO_MINI_BATCH"],
                       ppo_epochs=s["PPO_EPOCHS"], stop_approx_kl=0.0, max_new_tokens=s["PPO_NEW_TOKENS"],
                       temperature=1.0, top_k=0, top_p=1.0, beta=0.2, target_kl=0.0, kl_horizon=1000,
                       gamma=1.0, lam=0.95, clip_range=0.2, value_clip=0.2, ptx_coef=0.0, ptx_batch=8,
                       missing_eos_penalty=1.0, normalize_scores=True, frozen_bf16="frozen_bf16" in levers,
                       close_truncated=False, eval_batch_size=100,
                       eval_sampled=False, stop_disagreement=0.0)
    trainer = PPOTrainer(actor, ref, critic, reward_model, tokenizer, prompts, cfg=cfg,
                         loop=loop_config(out_dir, bf16, levers), run_config={}, ptx_data=None,
                         reward_fn=None, judge=None, eval_prompts=None)
    phases = {"generate": 0.0, "experience": 0.0, "learn": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            phases[name] += time.perf_counter() - start
            return out

        return wrapper

    sample = ppo_module.sample_responses
    ppo_module.sample_responses = timed("generate", sample)
    trainer.make_experience = timed("experience", trainer.make_experience)
    trainer.learn = timed("learn", trainer.learn)
    lengths = []

    def count(i):
        lengths.append(trainer.last_sequence_shape)
        return {}

    trainer.last_sequence_shape = None
    original = trainer.make_experience

    def remember_shape(items):
        exp = original(items)
        trainer.last_sequence_shape = list(exp.sequences.shape)
        return exp

    trainer.make_experience = remember_shape
    r = timed_steps(
        trainer,
        s["WARMUP"],
        s["PPO_ITERATIONS"],
        count,
        on_timed_start=lambda: phases.update(dict.fromkeys(phases, 0.0)),
    )
    ppo_module.sample_responses = sample
    n = s["PPO_ITERATIONS"]
    r.update(
        seconds_per_iteration=r["seconds"] / n,
        generate_s=phases["generate"] / n,
        score_s=(phases["experience"] - phases["generate"]) / n,
        learn_s=phases["learn"] / n,
        sequence_shapes=lengths,
    )
    return r


STAGES = {"sft": run_sft, "rm": run_rm, "ppo": run_ppo}
