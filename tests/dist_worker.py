"""Runs under `python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py MODE OUT_DIR` for
tests/test_multiproc.py; the same functions run in the test process for the 1-process reference.

Modes: 'cut' (a run killed at step 4, after its step-3 checkpoint), then 'train' (SFT, RM and PPO checks,
the uninterrupted run and the resumed one, in one launch: each launch costs seconds of imports).
Rank 0 writes OUT_DIR/train.pt.
"""
import copy
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)

import torch  # noqa: E402
from transformers import OPTConfig, OPTForCausalLM, OPTForSequenceClassification  # noqa: E402

from conftest import trainer_configs  # noqa: E402
from dataset.prompt import PromptDataset  # noqa: E402
from dataset.rm import RMDataset  # noqa: E402
from dataset.sft import SFTDataset  # noqa: E402
from dataset.task import gold_judge  # noqa: E402
from model.load import load_tokenizer  # noqa: E402
from trainer.dist import all_ranks  # noqa: E402
from trainer.guard import NonFiniteError  # noqa: E402
from trainer.ppo import PPOConfig, PPOTrainer  # noqa: E402
from trainer.rm import RMTrainer  # noqa: E402
from trainer.sft import SFTTrainer  # noqa: E402


def tiny_config(dropout: float = 0.0, attention_dropout: float = 0.0, **kw) -> OPTConfig:
    """A 2-layer, width-32 OPT over the embedded tokenizer's 512 ids."""
    return OPTConfig(vocab_size=512, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=128, dropout=dropout,
                     attention_dropout=attention_dropout, activation_dropout=0.0, pad_token_id=1, **kw)


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def sft_run(out_dir: str, batch_size: int, steps: int = 3, dropout: float = 0.0, lm_head_chunk: int = 16,
            gradient_checkpointing="selective", **kw) -> SFTTrainer:
    """`steps` SFT steps from a seeded init, no warmup, over the first examples of ds/sft_val.jsonl; the loss
    through the LM head in chunks and the layers checkpointed selectively, as the side-by-side runs SFT."""
    tok = load_tokenizer("embedded")
    data = SFTDataset("ds/sft_val.jsonl", tok, max_len=64, limit=96, verbose=False)
    torch.manual_seed(0)
    model = OPTForCausalLM(tiny_config(dropout))
    trainer = SFTTrainer(model, tok, data, None, None, run_config={}, max_new_tokens=8, eval_batch_size=64,
                         judge=None, lm_head_chunk=lm_head_chunk,
                         **trainer_configs(out_dir, lr=3e-3, max_steps=steps, batch_size=batch_size, warmup_steps=0,
                                           log_interval=1, seed=1, gradient_checkpointing=gradient_checkpointing, **kw))
    trainer.fit()
    return trainer


def rm_data(out_dir: str) -> str:
    """Ranked groups of 2, 3 or 4 responses: ranks get different pair counts, so a mean of per-rank
    means differs from the global mean."""
    path, tmp = os.path.join(out_dir, "rm_groups.jsonl"), os.path.join(out_dir, f"rm_groups.{os.getpid()}.tmp")
    os.makedirs(out_dir, exist_ok=True)
    rows = [json.loads(line) for line in open("ds/rm_val_ranked.jsonl")][:48]
    with open(tmp, "w") as f:  # each process writes its own copy, then renames it (same content)
        for i, row in enumerate(rows):
            f.write(json.dumps({**row, "responses": row["responses"][: 2 + (i * 7) % 3]}) + "\n")
    os.replace(tmp, path)
    return path


def rm_run(out_dir: str, batch_size: int, steps: int = 3, **kw) -> RMTrainer:
    tok = load_tokenizer("embedded")
    data = RMDataset(rm_data(out_dir), tok, 64, verbose=False)
    torch.manual_seed(0)
    model = OPTForSequenceClassification(tiny_config(num_labels=1))
    trainer = RMTrainer(model, tok, data, None, run_config={}, eval_batch_size=64,
                        **trainer_configs(out_dir, lr=3e-3, max_steps=steps, batch_size=batch_size, warmup_steps=0,
                                          log_interval=1, seed=1, **kw))
    trainer.fit()
    return trainer


def ppo_checks(out_dir: str) -> dict:
    """One rollout + update, then one full iteration with the adaptive KL controller, then evaluation.
    In the configuration users run, not the embedded one: dropout and attention dropout 0.1 (opt-125m's
    config) and sampling at temperature 0.7."""
    tok = load_tokenizer("embedded")
    torch.manual_seed(0)
    actor = OPTForCausalLM(tiny_config(dropout=0.1, attention_dropout=0.1))
    critic = OPTForSequenceClassification(tiny_config(dropout=0.1, attention_dropout=0.1, num_labels=1))
    prompts = PromptDataset("ds/prompts_train.jsonl", tok, 48, limit=64, verbose=False)
    eval_prompts = PromptDataset("ds/prompts_val.jsonl", tok, 48, limit=7, verbose=False).items

    def length_reward(rows, responses):  # varies across responses, so scores and advantages have a spread
        return [len(r) / 10 for r in responses]

    cfg = PPOConfig(actor_lr=1e-3, critic_lr=1e-3, weight_decay=0.0, rollout_batch=8, mini_batch=4, ppo_epochs=2,
                    stop_approx_kl=0.0, max_new_tokens=8, temperature=0.7, top_k=0, top_p=1.0, beta=0.1, target_kl=0.01,
                    kl_horizon=100, gamma=1.0, lam=0.95, clip_range=0.2, value_clip=0.2, ptx_coef=0.0, ptx_batch=4,
                    missing_eos_penalty=1.0, normalize_scores=True, frozen_bf16=True, close_truncated=False, eval_batch_size=100,
                    eval_sampled=False, stop_disagreement=0.0)
    trainer = PPOTrainer(actor, copy.deepcopy(actor), critic, None, tok, prompts, cfg=cfg, ptx_data=None,
                         reward_fn=length_reward, judge=gold_judge, eval_prompts=None, run_config={},
                         loop=trainer_configs(out_dir, max_steps=2, seed=0)["loop"],
                         lm_head_chunk=5)  # the policy log-probs through the head a few tokens at a time
    acc = trainer.accelerator
    exp = trainer.make_experience(trainer.get_batch(0)["items"])
    out = {"rank": acc.process_index, "world": acc.num_processes, "type": str(acc.distributed_type),
           "lm_head_chunk": trainer.lm_head_chunk,
           "kl_zero": bool(torch.equal(exp.kl, torch.zeros_like(exp.kl))),
           "moments": (trainer.score_moments.count, trainer.score_moments.mean, trainer.score_moments.var),
           "raw_scores": exp.raw_scores.tolist(), "advantages": exp.advantages, "action_mask": exp.action_mask}
    trainer.learn(exp)
    trainer.step = 1
    out["first"] = trainer.first_minibatch_stats
    out["after_update"] = torch.cat([flat(trainer.actor), flat(trainer.critic)])
    metrics = trainer.training_step()
    out.update(beta=trainer.beta, metrics=metrics)
    out["eval"] = trainer.evaluate_policy(trainer.unwrap(trainer.actor), eval_prompts, do_sample=False)["rows"]
    out["eval_inputs"] = [it["row"].get("input", "") for it in eval_prompts]
    # an actor step that overflows: the next minibatch's loss is non-finite on both ranks, and both trace it to
    # the weights (checked once per iteration) and stop together
    for group in trainer.actor_opt.param_groups:
        group["lr"] = float("inf")
    try:
        trainer.training_step()
        out["overflow"] = None
    except NonFiniteError as e:
        out["overflow"] = str(e)
    return out


def record_group_at_exit(out_dir: str) -> None:
    """Registered before any trainer, so it runs after the project's own exit handlers (atexit is LIFO):
    writes OUT_DIR/exit.RANK with whether the process group was still up when the process exited."""
    import atexit
    import torch.distributed as dist

    def record():
        with open(os.path.join(out_dir, f"exit.{os.environ.get('RANK', '0')}"), "w") as f:
            f.write(str(dist.is_initialized()))
    atexit.register(record)


def main():
    mode, out_dir = sys.argv[1], sys.argv[2]
    record_group_at_exit(out_dir)
    if mode == "cut":
        original = SFTTrainer.compute_loss

        def killed_at_step_4(self, batch):  # the process dies as if killed: no exception, no cleanup
            if self.step == 4:
                os._exit(3)
            return original(self, batch)

        SFTTrainer.compute_loss = killed_at_step_4
        sft_run(os.path.join(out_dir, "run"), batch_size=4, steps=6, dropout=0.1, save_interval=3)
        raise AssertionError("the run was to be killed at step 4")
    sft = sft_run(os.path.join(out_dir, "sft"), batch_size=8)
    acc = sft.accelerator
    result = {"launch": all_ranks(acc, (acc.num_processes, acc.process_index, str(acc.distributed_type))),
              "sft": flat(sft.model), "sft_lm_head_chunk": sft.lm_head_chunk, "rm": flat(rm_run(os.path.join(out_dir, "rm"), batch_size=4).model),
              "ppo": all_ranks(acc, ppo_checks(os.path.join(out_dir, "ppo")))}
    full = sft_run(os.path.join(out_dir, "full"), batch_size=4, steps=6, dropout=0.1)
    resumed = sft_run(os.path.join(out_dir, "run"), batch_size=4, steps=6, dropout=0.1, resume=True)
    result.update(full=flat(full.model), resumed=flat(resumed.model), resumed_step=resumed.step)
    if acc.is_main_process:
        torch.save(result, os.path.join(out_dir, "train.pt"))


if __name__ == "__main__":
    main()
