"""The base trainer and the SFT stage: learning, exact resume, atomic checkpoints, non-finite loss."""
import json
import math
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from dataset.sft import SFTDataset
from model.load import ModelError, load_causal_lm, resolve
from trainer.base import NonFiniteLossError
from trainer.optim import lr_factor
from trainer.checkpoint import load_state

from conftest import make_sft_trainer, run_inline, step_gradient, tiny_model


@pytest.fixture(scope="module")
def data(tok):
    return SFTDataset("ds/sft_val.jsonl", tok, max_len=64, limit=64, verbose=False)


def make_trainer(tok, data, out_dir, model=None, **kw):
    return make_sft_trainer(tok, data, out_dir, model, **{"max_steps": 6, "warmup_steps": 2, **kw})


def test_sft_loss_falls_on_a_tiny_batch(tok, data, tmp_path):
    """Forty steps on one repeated batch of 8 drive the loss below half its starting value."""
    trainer = make_trainer(tok, data.items[:8], tmp_path, max_steps=40, lr=1e-2)
    batch = trainer.get_batch(0)
    with torch.no_grad():
        first = trainer.compute_loss(batch)[0].item()
    trainer.fit()
    with torch.no_grad():
        last = trainer.compute_loss(batch)[0].item()
    assert last < 0.5 * first
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [l["step"] for l in lines] == list(range(1, 41)) and "train/loss" in lines[0]


def test_two_sft_micro_batches_make_the_step_of_one_batch(tok, data, tmp_path):
    """GRAD_ACCUM: 8 demonstrations as 2 micro-batches of 4 (different supervised token counts) give the
    gradient of the 8 in one batch: each micro-batch counts by its supervised tokens (the SFT side-by-side runs
    a step of 8 as 2 x 4, half the activations)."""
    def stepped(batch_size, grad_accum):
        trainer = make_sft_trainer(tok, data.items[:8], tmp_path / f"b{batch_size}", model=tiny_model(seed=3),
                                   batch_size=batch_size, grad_accum=grad_accum, max_steps=1)
        trainer.epoch_order = lambda epoch: torch.arange(8)  # the same 8 in the same order
        return step_gradient(trainer)
    counts = [sum(label != -100 for label in data[i]["labels"][1:]) for i in range(8)]
    assert sum(counts[:4]) != sum(counts[4:])  # unequal halves: an unweighted mean of the two would differ
    together, accumulated = stepped(8, 1), stepped(4, 2)
    assert torch.allclose(together, accumulated, atol=1e-7, rtol=1e-4), (together - accumulated).abs().max()


def test_interrupted_and_resumed_equals_uninterrupted(tok, data, tmp_path):
    """Stop after step 4 (checkpoint at 3), resume: the final weights equal an uninterrupted run's bitwise."""
    full = make_trainer(tok, data, tmp_path / "full", grad_accum=2)
    full.fit()

    class Crash(Exception):
        pass

    interrupted = make_trainer(tok, data, tmp_path / "cut", save_interval=3, grad_accum=2)
    original = interrupted.compute_loss

    def crash_at_step_4(batch):
        if interrupted.step == 4:
            raise Crash
        return original(batch)

    interrupted.compute_loss = crash_at_step_4
    with pytest.raises(Crash):
        interrupted.fit()
    assert json.load(open(tmp_path / "cut" / "checkpoint" / "run_config.json")) == {"test": True}
    resumed = make_trainer(tok, data, tmp_path / "cut", model=tiny_model(seed=123), resume=True, grad_accum=2)
    resumed.fit()
    assert resumed.step == 6
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_non_finite_loss_stops_and_keeps_checkpoint(tok, data, tmp_path):
    """A NaN loss raises a clear error and leaves the last good checkpoint byte-identical."""
    trainer = make_trainer(tok, data, tmp_path, save_interval=2)
    original = trainer.compute_loss

    def nan_at_step_3(batch):
        loss, m = original(batch)
        return (loss * float("nan"), m) if trainer.step == 3 else (loss, m)

    trainer.compute_loss = nan_at_step_3
    with pytest.raises(NonFiniteLossError, match="step 3: the loss is nan"):
        trainer.fit()
    step, state = load_state(str(tmp_path / "checkpoint"))
    assert step == 2 and not os.path.exists(tmp_path / "checkpoint.tmp")
    assert all(torch.isfinite(v).all() for v in state["trainer"]["model"].values())


def test_saved_checkpoint_reloads_to_identical_logits(tok, data, tmp_path):
    """save_model writes an HF checkpoint that AutoModelForCausalLM reloads with identical logits."""
    trainer = make_trainer(tok, data, tmp_path, max_steps=2)
    trainer.fit()
    trainer.save_model(str(tmp_path / "hf"), tok)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([data[0]["input_ids"]])
    trainer.model.eval()
    assert torch.equal(trainer.model(ids).logits, reloaded(ids).logits)
    assert json.load(open(tmp_path / "hf" / "run_config.json")) == {"test": True}


def test_sft_raises_gold_score(sft_dir):
    """SFT on the embedded default lifts the held-out gold score well above the untrained model's (0)."""
    summary = json.load(open(os.path.join(sft_dir, "summary.json")))
    assert summary["gold_score_base"] < 0.05
    assert summary["gold_score"] > summary["gold_score_base"] + 0.15
    assert summary["eval_loss"] < 0.5 * summary["eval_loss_base"]
    assert os.path.exists(os.path.join(sft_dir, "model.safetensors")) and os.path.exists(os.path.join(sft_dir, "tokenizer.json"))


def test_opt125m_architecture_switch_takes_a_training_step(opt125m_dir, tmp_path):
    """MODEL=<a local opt-125m-architecture checkpoint> runs through train_sft.py (the switch users
    flip for facebook/opt-125m): the model has exactly opt-125m's 125,239,296 parameters, its first loss is
    the untrained model's ln(vocab) (random weights predict uniformly), and the saved weights moved."""
    from safetensors import safe_open

    model = load_causal_lm(opt125m_dir)
    assert sum(p.numel() for p in model.parameters()) == 125_239_296
    vocab = model.config.vocab_size
    del model
    run_inline("train_sft.py", "--model", opt125m_dir, "--out_dir", str(tmp_path), "--max_steps", "1",
               "--batch_size", "2", "--max_len", "48", "--eval_limit", "2", "--test_limit", "2", "--test_data", "none", "--max_new_tokens", "4",
               "--eval_data", "none", "--warmup_steps", "0", "--lr", "1e-3")
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["num_params"] == 125_239_296 and summary["steps"] == 1
    assert abs(summary["train_loss"] - math.log(vocab)) < 0.5, summary["train_loss"]
    name = "model.decoder.layers.0.self_attn.q_proj.weight"
    weights = [safe_open(os.path.join(d, "model.safetensors"), "pt").get_tensor(name) for d in (opt125m_dir, tmp_path)]
    assert not torch.equal(*weights)


def test_model_setting_errors_are_clear(tmp_path, monkeypatch):
    """A mistyped path or an unreachable hub id says which setting to change, without network waits.
    The Hugging Face cache is an empty directory here, so a machine that has opt-125m cached still
    sees the offline error."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="MODEL='out/nope': no such directory"):
        resolve("out/nope")
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        resolve("facebook/opt-125m")
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path))


def test_lr_factor_warms_up_linearly_then_decays_by_cosine_to_a_tenth():
    """The schedule every stage uses: (step + 1) / warmup during warmup, then 0.1 + 0.9 * (1 + cos(pi * progress)) / 2,
    held at 0.1 after max_steps."""
    assert [lr_factor(s, 4, 20) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(12, 4, 20) == pytest.approx(0.55)  # halfway through the decay
    assert lr_factor(20, 4, 20) == pytest.approx(0.1) and lr_factor(30, 4, 20) == pytest.approx(0.1)
    assert lr_factor(0, 0, 10) == 1.0 and lr_factor(5, 0, 10) == pytest.approx(0.55)
