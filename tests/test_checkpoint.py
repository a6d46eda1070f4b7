"""Runs that survive a cluster: a save that fails halfway, a pickle checkpoint, two runs on one out_dir,
and SIGTERM / SIGINT in every stage (stop after the step, checkpoint, resume bitwise equal)."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import OPTConfig, OPTForSequenceClassification

import trainer.checkpoint as ckpt
from dataset.prompt import PromptDataset
from dataset.rm import RMDataset
from dataset.sft import SFTDataset
from trainer.checkpoint import CheckpointError, candidates, load_state
from trainer.lock import OutDirLocked
from trainer.signals import Preempted
from trainer.ppo import PPOConfig, PPOTrainer
from trainer.rm import RMTrainer

from conftest import ROOT, tiny_model, trainer_configs
from test_ppo import PPO_SETTINGS
from test_trainer import make_trainer


@pytest.fixture(scope="module")
def data(tok):
    return SFTDataset("ds/sft_val.jsonl", tok, max_len=64, limit=64, verbose=False)


@pytest.fixture(scope="module")
def uninterrupted(tok, data, tmp_path_factory):
    """Final weights of a 6-step SFT run that nothing interrupts."""
    full = make_trainer(tok, data, tmp_path_factory.mktemp("full"))
    full.fit()
    return [p.detach().clone() for p in full.model.parameters()]


def assert_same(params, model):
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))


class Boom(OSError):
    pass


@pytest.mark.parametrize("where", ["tensors", "swap"])
def test_save_failing_halfway_leaves_a_checkpoint_that_resumes_exactly(tok, data, tmp_path, monkeypatch, uninterrupted, where):
    """The save at step 4 dies while writing the tensors, or between its two renames (leaving only
    checkpoint.old, which resume must then find). A complete checkpoint is still there, the resumed
    run ends bitwise equal to the uninterrupted one, and metrics.jsonl holds each step once."""
    run = make_trainer(tok, data, tmp_path, save_interval=2)
    real_save, real_replace = ckpt.save_file, os.replace

    def save_file(tensors, path):
        if run.step == 4:
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise Boom("disk full")
        real_save(tensors, path)

    def replace(src, dst):
        if run.step == 4 and str(src).endswith("checkpoint.tmp"):
            raise Boom("power cut between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt, "save_file", save_file) if where == "tensors" else monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(CheckpointError, match="saving the checkpoint of step 4 failed.*step 2.* is kept"
                       if where == "tensors" else "saving the checkpoint of step 4 failed"):
        run.fit()
    monkeypatch.undo()
    found = candidates(str(tmp_path / "checkpoint"))
    assert [s for s, _ in found] == ([2] if where == "tensors" else [4, 2])
    resumed = make_trainer(tok, data, tmp_path, model=tiny_model(seed=7), resume=True)
    resumed.fit()
    assert resumed.step == 6
    assert_same(uninterrupted, resumed.model)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]  # rows logged after the checkpoint by the crashed run are not repeated
    resumed.save_checkpoint()  # the next save first completes the interrupted swap: one checkpoint again
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == ["checkpoint"]
    assert sorted(os.listdir(tmp_path / "checkpoint")) == ["run_config.json", "state.json", "state.safetensors"]


class RunsCode:
    """Unpickling this creates a file: what a malicious checkpoint could do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("name", ["trainer_state.pt", "state.safetensors"])
def test_a_checkpoint_holding_a_pickle_is_refused_without_running_it(tok, data, tmp_path, name):
    """A pickle in the checkpoint (the old format, or one renamed to look like safetensors) is refused with
    an error naming the file; the code inside it never runs (torch.load(weights_only=False) ran it)."""
    marker = str(tmp_path / "pwned")
    path = tmp_path / "checkpoint"
    path.mkdir()
    (path / name).write_bytes(pickle.dumps({"step": 3, "x": RunsCode(marker)}))
    if name == "state.safetensors":
        (path / "state.json").write_text(json.dumps({"step": 3, "state": {}}))
    with pytest.raises(CheckpointError, match="pickle" if name.endswith(".pt") else "not a readable checkpoint"):
        make_trainer(tok, data, tmp_path, resume=True).fit()
    assert not os.path.exists(marker)


def test_state_round_trips_through_safetensors_and_json(tmp_path):
    """Tensors (tied ones stored once), tuples, int dict keys, None and floats come back as they were."""
    w = torch.randn(3, 2)
    state = {"a": w, "tied": w, "opt": {0: {"step": torch.tensor(2.0)}}, "betas": (0.9, 0.999), "none": None,
             "rng": (3, tuple(range(5)), None), "__odd": [1.5, "x"]}
    ckpt.save_checkpoint(str(tmp_path / "c"), state, 9, {"LR": 1e-3})
    step, back = load_state(str(tmp_path / "c"))
    assert step == 9 and torch.equal(back["a"], w) and torch.equal(back["tied"], w)
    assert back["opt"][0]["step"].item() == 2.0 and back["betas"] == (0.9, 0.999) and back["rng"] == (3, (0, 1, 2, 3, 4), None)
    assert back["none"] is None and back["__odd"] == [1.5, "x"]


HOLD = ("import sys, time; sys.path.insert(0, {root!r}); from trainer.lock import lock_out_dir; "
        "lock_out_dir({out!r}); print('locked', flush=True); time.sleep(60)")


def test_one_run_per_out_dir_and_a_dead_holder_is_taken_over(tok, data, tmp_path, capsys):
    """While another process holds out_dir, a trainer on it stops with an error naming that process's PID;
    once the holder is killed (its lock file left behind), the next run takes the directory over."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=ROOT, out=str(tmp_path))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutDirLocked, match=rf"in use by another run \(PID {holder.pid} on "):
            make_trainer(tok, data, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert f"PID {holder.pid}" in open(tmp_path / ".lock").read()  # SIGKILL left the file behind
    make_trainer(tok, data, tmp_path, max_steps=1).fit()
    assert f"no longer running (PID {holder.pid}" in capsys.readouterr().out
    assert f"PID {os.getpid()}" in open(tmp_path / ".lock").read()


def signal_at(trainer, step, signum):
    """Send `signum` to this process in the middle of step `step` (as a cluster would)."""
    original = trainer.training_step

    def step_with_signal():
        if trainer.step + 1 == step:
            os.kill(os.getpid(), signum)
        return original()

    trainer.training_step = step_with_signal


def run_and_stop(make, tmp_path, step, signum, exit_code):
    """Run make('full') to the end, and make('cut') until `signum` arrives during `step`: the cut run
    must exit with `exit_code` and leave a checkpoint of that step. Returns (full, cut)."""
    full = make("full")
    full.fit()
    cut = make("cut")
    signal_at(cut, step, signum)
    with pytest.raises(Preempted) as stopped:
        cut.fit()
    assert stopped.value.code == exit_code and load_state(str(tmp_path / "cut" / "checkpoint"))[0] == step
    return full, cut


def tiny_rm(seed):
    torch.manual_seed(seed)
    return OPTForSequenceClassification(OPTConfig(vocab_size=512, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                                                  num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                                                  dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                                                  num_labels=1, pad_token_id=1))


def test_rm_stops_on_sigint_after_the_step_and_resumes_bitwise(tok, tmp_path):
    """SIGINT during step 3 of a reward-model run: step 3 finishes, a checkpoint of step 3 is written, the
    run exits with 130, and the resumed run ends bitwise equal to an uninterrupted one (best value too)."""
    rows = [{"prompt": f"Q{i}?\n", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(24)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    train = RMDataset(str(path), tok, 32, verbose=False)

    def rm_trainer(out, seed=0, **kw):
        trainer = RMTrainer(tiny_rm(seed), tok, train, train, run_config={}, eval_batch_size=64,
                            **trainer_configs(tmp_path / out, lr=1e-2, max_steps=5, batch_size=4, eval_interval=2,
                                              log_interval=1, **kw))
        trainer.best_metric = "eval/margin"
        return trainer

    full, cut = run_and_stop(rm_trainer, tmp_path, 3, signal.SIGINT, exit_code=130)
    assert cut.step == 3
    resumed = rm_trainer("cut", seed=5, resume=True)
    resumed.fit()
    assert_same(list(full.model.parameters()), resumed.model)
    assert resumed.best_value == full.best_value


def test_ppo_stops_on_sigterm_after_the_iteration_and_resumes_bitwise(tok, tmp_path):
    """SIGTERM during PPO iteration 2 (the reference is the same frozen model in both runs): the iteration finishes, its checkpoint holds actor, critic, both
    optimizers, beta and the score statistics; the resumed run ends bitwise equal to an uninterrupted one."""
    prompts = PromptDataset("ds/prompts_train.jsonl", tok, 24, limit=32, verbose=False)

    def ppo_trainer(out, seed=0, **kw):
        cfg = PPOConfig(**{**PPO_SETTINGS, "actor_lr": 1e-2, "critic_lr": 1e-2, "rollout_batch": 8, "mini_batch": 4,
                           "max_new_tokens": 6, "target_kl": 1.0})
        return PPOTrainer(tiny_model(seed), tiny_model(0), tiny_rm(seed + 1), None, tok, prompts, cfg=cfg, ptx_data=None,
                          reward_fn=lambda rows, responses: [float(len(r)) for r in responses], judge=None,
                          eval_prompts=None, run_config={},
                          loop=trainer_configs(tmp_path / out, max_steps=3, seed=0, log_interval=1, **kw)["loop"])

    full, _ = run_and_stop(ppo_trainer, tmp_path, 2, signal.SIGTERM, exit_code=143)
    resumed = ppo_trainer("cut", seed=9, resume=True)
    torch.manual_seed(123)  # the checkpoint's RNG state, not this, drives the remaining rollouts
    resumed.fit()
    assert_same(list(full.actor.parameters()), resumed.actor)
    assert_same(list(full.critic.parameters()), resumed.critic)
    assert resumed.beta == full.beta and vars(resumed.score_moments) == vars(full.score_moments)


def test_sft_script_sigterm_checkpoints_prints_resume_and_resumes_bitwise(tmp_path):
    """A real train_sft.py process gets SIGTERM mid-run: it finishes the step, writes a checkpoint, prints
    the command to resume and exits 143 (the save interval alone would have saved nothing yet). Resuming
    finishes the run with the model bitwise equal to an uninterrupted run's."""
    args = ["train_sft.py", "--train_data", "ds/sft_val.jsonl", "--eval_data", "none", "--eval_prompts", "none",
            "--test_data", "none", "--test_prompts", "none",
            "--max_steps", "30", "--batch_size", "4", "--warmup_steps", "2", "--log_interval", "1", "--save_interval", "1000"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    start = lambda out, *extra: subprocess.Popen([sys.executable, *args, "--out_dir", str(tmp_path / out), *extra], cwd=ROOT,
                                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    full, proc = start("full"), start("cut")  # the uninterrupted reference runs alongside
    metrics = tmp_path / "cut" / "metrics.jsonl"
    while proc.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    step = load_state(str(tmp_path / "cut" / "checkpoint"))[0]
    assert 3 <= step < 30
    assert "SIGTERM received" in err and f"stopped by signal 15 after step {step}" in out
    command = out.split("Resume with: ")[1].splitlines()[0]
    assert command.startswith("python train_sft.py ") and command.endswith("--resume True")
    resumed = start("cut", "--resume", "True")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert f"resumed from {tmp_path / 'cut' / 'checkpoint'} at step {step}" in out
    assert full.wait(timeout=300) == 0
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()
