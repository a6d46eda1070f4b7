"""Runs under `python -m torch.distributed.run ... tests/fsdp_worker.py MODE OUT_DIR` for
tests/test_fsdp.py; the 1-process references run the same functions in the test process.

Modes: 'train' (2 ranks, FSDP2 over gloo: SFT, RM and PPO against 1 process, bytes per rank, PPO's
first ratio in bf16 with dropout, the sharded resume, DPO and GRPO) and 'sft' (SFT only: the 2-node
launch). Rank 0 writes OUT_DIR/fsdp.pt."""
import copy
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.chdir(ROOT)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402
from transformers import OPTForCausalLM, OPTForSequenceClassification  # noqa: E402

from conftest import trainer_configs  # noqa: E402
from dataset.prompt import PromptDataset  # noqa: E402
from dataset.rm import RMDataset  # noqa: E402
from dist_worker import rm_data, rm_run, sft_run, tiny_config  # noqa: E402
from model.load import load_tokenizer  # noqa: E402
from trainer import fsdp  # noqa: E402
from trainer.dist import all_ranks  # noqa: E402
from trainer.dpo import DPOConfig, DPOTrainer  # noqa: E402
from trainer.grpo import GRPOConfig, GRPOTrainer  # noqa: E402
from trainer.ppo import PPOConfig, PPOTrainer  # noqa: E402
from trainer.sft import SFTTrainer  # noqa: E402


def full_flat(*models) -> torch.Tensor:
    """The models' parameters as one vector, in parameters() order (tied weights once); gathered
    from the shards under FSDP (a collective), so it compares with an unsharded run's flat()."""
    parts = []
    for model in models:
        full = fsdp.full_state_dict(model) if fsdp.is_sharded_model(model) else model.state_dict()
        if full:  # {} on ranks > 0
            parts += [full[name].reshape(-1).float() for name, _ in model.named_parameters()]
    return torch.cat(parts) if parts else torch.zeros(0)


def prompt_reward(rows, responses):
    """A score per prompt (no dependence on the sampled text): advantages have a spread, and both
    runs score every prompt alike."""
    return [(len(str(row)) % 7) / 3 for row in rows]


def ppo_run(out_dir: str, rollout_batch: int, steps: int, use_fsdp: bool, dropout: float = 0.0,
            bf16: bool = False, temperature: float = 1.0) -> PPOTrainer:
    """A PPO trainer on the tiny OPT: one minibatch per rollout, fixed beta, 2 epochs (not yet
    run)."""
    tok = load_tokenizer("embedded")
    torch.manual_seed(0)
    actor = OPTForCausalLM(tiny_config(dropout=dropout, attention_dropout=dropout))
    critic = OPTForSequenceClassification(tiny_config(dropout=dropout, attention_dropout=dropout,
                                                      num_labels=1))
    prompts = PromptDataset("ds/prompts_train.jsonl", tok, 48, limit=64, verbose=False)
    cfg = PPOConfig(actor_lr=1e-3, critic_lr=1e-3, weight_decay=0.0, rollout_batch=rollout_batch,
                    mini_batch=rollout_batch, ppo_epochs=2, stop_approx_kl=0.0, max_new_tokens=8,
                    temperature=temperature, top_k=0, top_p=1.0, beta=0.1, target_kl=0.0,
                    kl_horizon=100, gamma=1.0, lam=0.95, clip_range=0.2, value_clip=0.2,
                    ptx_coef=0.0, ptx_batch=4, missing_eos_penalty=1.0, normalize_scores=True,
                    frozen_bf16=True, close_truncated=False, eval_batch_size=100,
                    eval_sampled=False, stop_disagreement=0.0)
    loop = trainer_configs(out_dir, max_steps=steps, seed=0, bf16=bf16, fsdp=use_fsdp)["loop"]
    return PPOTrainer(actor, copy.deepcopy(actor), critic, None, tok, prompts, cfg=cfg,
                      ptx_data=None, reward_fn=prompt_reward, judge=None, eval_prompts=None,
                      run_config={}, loop=loop)


def ppo_greedy(out_dir: str, rollout_batch: int, use_fsdp: bool) -> PPOTrainer:
    """3 PPO iterations with greedy rollouts and dropout 0: the same responses however the prompts
    are split over ranks, so 2 ranks x b equal 1 process x 2b in exact arithmetic."""
    trainer = ppo_run(out_dir, rollout_batch, 3, use_fsdp)
    trainer.sampling = dict(do_sample=False)
    trainer.fit()
    return trainer


def count_all_gathers(fn):
    """(fn(), how many FSDP all-gathers this rank issued while it ran)."""
    calls, original = [0], dist.all_gather_single

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)
    dist.all_gather_single = counted
    try:
        return fn(), calls[0]
    finally:
        dist.all_gather_single = original


def ppo_first_update(out_dir: str) -> dict:
    """bf16, dropout 0.1, temperature 0.7: KL 0 and ratio 1 before any update, and how many
    all-gathers one rollout's sampling and scoring took."""
    AcceleratorState._reset_state()  # one mixed-precision setting per process; the group stays
    trainer = ppo_run(out_dir, 8, 1, True, dropout=0.1, bf16=True, temperature=0.7)
    items = trainer.get_batch(0)["items"]
    (out, *_), gathers = count_all_gathers(lambda: trainer.sample_and_score(items))
    exp = trainer.make_experience(items)
    trainer.learn(exp)
    units = sum(isinstance(m, fsdp.FSDPModule) for m in trainer.actor.modules())
    return {"kl_zero": bool(torch.equal(exp.kl, torch.zeros_like(exp.kl))),
            "first": trainer.first_minibatch_stats, "gathers": gathers, "units": units,
            "new_tokens": out.sequences.size(1) - out.context_length}


def memory(trainer: SFTTrainer) -> dict:
    """Bytes this rank holds of parameters, gradients (after one backward) and AdamW state."""
    loss, _ = trainer.compute_loss(trainer.get_batch(0))
    loss.backward()
    held = fsdp.local_bytes(trainer.model, trainer.optimizer)
    trainer.optimizer.zero_grad(set_to_none=True)
    return held


def dpo_and_grpo(out_dir: str) -> dict:
    """One DPO step and one GRPO iteration under FSDP (smoke): the losses are finite and the
    weights moved."""
    tok = load_tokenizer("embedded")
    torch.manual_seed(0)
    policy = OPTForCausalLM(tiny_config())
    start = full_flat(policy)
    ranked = RMDataset(rm_data(out_dir), tok, 64, verbose=False)
    dpo_cfg = DPOConfig(beta=0.1, max_new_tokens=8, temperature=1.0, eval_batch_size=64,
                        eval_prompt_batch=100)
    dpo = DPOTrainer(policy, copy.deepcopy(policy), tok, ranked, None, None, None, judge=None,
                     run_config={}, cfg=dpo_cfg,
                     **trainer_configs(os.path.join(out_dir, "dpo"), lr=1e-2, max_steps=1,
                                       batch_size=4, fsdp=True))
    dpo_metrics = dpo.fit()
    actor = OPTForCausalLM(tiny_config())
    prompts = PromptDataset("ds/prompts_train.jsonl", tok, 48, limit=64, verbose=False)
    cfg = GRPOConfig(actor_lr=1e-3, weight_decay=0.0, rollout_batch=8, group_size=4, mini_batch=4,
                     ppo_epochs=1, max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0,
                     grpo_beta=0.04, grpo_loss="token", grpo_std_scale=False, stop_approx_kl=0.0,
                     clip_range=0.2, missing_eos_penalty=1.0,
                     normalize_scores=True, frozen_bf16=True, close_truncated=False, eval_batch_size=100,
                    eval_sampled=False, stop_disagreement=0.0)
    grpo = GRPOTrainer(actor, copy.deepcopy(actor), None, tok, prompts, cfg=cfg,
                       reward_fn=lambda rows, responses: [len(r) / 5 for r in responses],
                       judge=None, eval_prompts=None, run_config={},
                       loop=trainer_configs(os.path.join(out_dir, "grpo"), max_steps=1, seed=0,
                                            fsdp=True)["loop"])
    grpo_metrics = grpo.fit()
    moved = full_flat(dpo.model)
    return {"dpo_loss": dpo_metrics["train/loss"],
            "dpo_moved": (moved - start).norm().item() if moved.numel() else 0,
            "grpo_loss": grpo_metrics["grpo/policy_loss"],
            "grpo_sharded": fsdp.is_sharded_model(grpo.actor)}


def resume(out_dir: str) -> dict:
    """A 6-step run with dropout stopped after its step-3 checkpoint (an exception at step 4 on
    every rank), then resumed; and the uninterrupted run."""
    original = SFTTrainer.compute_loss

    def stopped_at_step_4(self, batch):
        if self.step == 4:
            raise KeyboardInterrupt
        return original(self, batch)
    SFTTrainer.compute_loss = stopped_at_step_4
    try:
        sft_run(os.path.join(out_dir, "run"), batch_size=4, steps=6, dropout=0.1, save_interval=3,
                fsdp=True)
    except KeyboardInterrupt:
        pass
    SFTTrainer.compute_loss = original
    resumed = sft_run(os.path.join(out_dir, "run"), batch_size=4, steps=6, dropout=0.1,
                      resume=True, fsdp=True)
    full = sft_run(os.path.join(out_dir, "full"), batch_size=4, steps=6, dropout=0.1, fsdp=True)
    return {"resumed_step": resumed.step, "resumed": full_flat(resumed.model),
            "full": full_flat(full.model)}


def main():
    mode, out_dir = sys.argv[1], sys.argv[2]
    sft = sft_run(os.path.join(out_dir, "sft"), batch_size=8, fsdp=True)
    acc = sft.accelerator
    result = {"world": acc.num_processes, "sft": full_flat(sft.model)}
    if mode == "train":
        result["memory"] = all_ranks(acc, memory(sft))
        sft.save_model(os.path.join(out_dir, "sft_hf"))
        rm = rm_run(os.path.join(out_dir, "rm"), batch_size=4, fsdp=True)
        result["rm"] = full_flat(rm.model)
        ppo = ppo_greedy(os.path.join(out_dir, "ppo"), 8, True)
        result["ppo"] = full_flat(ppo.actor, ppo.critic)
        result["ppo_first"] = all_ranks(acc, ppo_first_update(os.path.join(out_dir, "ppo_bf16")))
        AcceleratorState._reset_state()  # back to float32
        result.update(resume(out_dir))
        result.update(dpo_and_grpo(out_dir))
    if acc.is_main_process:
        torch.save(result, os.path.join(out_dir, "fsdp.pt"))
    # every rank leaves together, its collectives done: a rank that tore its gloo group down at exit while the
    # other was still saving aborted once in five CI runs ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
