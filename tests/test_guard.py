"""Nothing non-finite is applied or saved: the loss, the gradient norm and the updated weights are
checked every step, the weights again before every save, and exit 7 names the cause and the last good
checkpoint (trainer/guard.py)."""
import os

import pytest
import torch

from dataset.sft import SFTDataset
from trainer.export import save_stage
from trainer.checkpoint import load_state
from trainer.guard import NonFiniteError, all_finite

from conftest import make_sft_trainer


@pytest.fixture(scope="module")
def data(tok):
    return SFTDataset("ds/sft_val.jsonl", tok, max_len=64, limit=32, verbose=False)


def make_trainer(tok, data, out_dir, **kw):
    return make_sft_trainer(tok, data, out_dir, **{"max_steps": 3, "warmup_steps": 0, **kw})


def test_an_infinite_lr_stops_at_the_first_step_and_saves_nothing(tok, data, tmp_path):
    """--lr 1e999 (inf) with a finite, clipped gradient still overflows AdamW's update: the weight check
    stops the run at step 1 (exit 7) before the checkpoint save_interval=1 asks for, so no checkpoint
    and no model exist to be mistaken for a good one."""
    trainer = make_trainer(tok, data, tmp_path, lr=float("inf"), save_interval=1, max_steps=1)
    with pytest.raises(NonFiniteError, match="updated weights is non-finite.*no checkpoint was saved yet"
                       ) as err:
        trainer.fit()
    assert err.value.exit_code == 7 and "Lower LR" in str(err.value)
    assert not os.path.exists(tmp_path / "checkpoint") and not os.path.exists(tmp_path / "checkpoint.tmp")
    with pytest.raises(NonFiniteError, match="final weights"):  # and finish() refuses to write the model
        trainer.finish(tok, "none", {})
    assert not os.path.exists(tmp_path / "model.safetensors")


def test_a_nan_gradient_is_never_applied_and_names_the_last_good_checkpoint(tok, data, tmp_path):
    """A finite loss whose gradient is NaN: the step stops before the optimizer step (the weights stay
    as they were) and the message names the checkpoint of step 2, which holds finite weights."""
    trainer = make_trainer(tok, data, tmp_path, save_interval=2)
    weight = trainer.model.model.decoder.embed_tokens.weight
    original = trainer.compute_loss

    def nan_gradient_at_step_2(batch):
        if trainer.step == 2:
            weight.register_hook(lambda g: g * float("nan"))
        return original(batch)

    trainer.compute_loss = nan_gradient_at_step_2
    with pytest.raises(NonFiniteError) as err:
        trainer.fit()
    message = str(err.value)
    assert "gradient norm is nan" in message and "(step 2), is untouched" in message, message
    step, state = load_state(str(tmp_path / "checkpoint"))
    assert step == 2 and all(torch.isfinite(v).all() for v in state["trainer"]["model"].values())
    assert torch.isfinite(weight).all()  # the NaN step was not applied
    assert torch.equal(weight.detach(), state["trainer"]["model"]["model.decoder.embed_tokens.weight"])


def test_non_finite_weights_are_never_checkpointed_or_saved(tok, data, tmp_path):
    """However the weights got there, save_checkpoint, save_model and save_stage refuse NaN weights."""
    trainer = make_trainer(tok, data, tmp_path)
    with torch.no_grad():
        trainer.model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="weights to checkpoint"):
        trainer.save_checkpoint()
    with pytest.raises(NonFiniteError, match="weights to save"):
        trainer.save_model(str(tmp_path / "best"))
    with pytest.raises(NonFiniteError, match="nothing was written"):
        save_stage(str(tmp_path / "stage"), trainer.model, tok, {}, "none", {})
    assert not any(os.path.exists(tmp_path / d) for d in ("checkpoint", "best", "stage"))


def test_exit_7_advice_names_each_stages_own_settings():
    """DPO's loss is scaled by BETA, PPO has two learning rates: exit 7 names those, not just LR;
    PPO checks the critic as well as the actor, GRPO (no critic) the actor."""
    from trainer.dpo import DPOTrainer
    from trainer.grpo import GRPOTrainer
    from trainer.ppo import PPOTrainer

    assert "BETA" in DPOTrainer.nonfinite_hint and "LR" in DPOTrainer.nonfinite_hint
    assert "ACTOR_LR" in PPOTrainer.nonfinite_hint and "CRITIC_LR" in PPOTrainer.nonfinite_hint
    fake = type("T", (), {"actor": "a", "critic": "c"})()
    assert PPOTrainer.trained_models(fake) == ["a", "c"] and GRPOTrainer.trained_models(fake) == ["a"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_all_finite_finds_one_bad_value_in_any_tensor_and_passes_huge_finite_ones(bad, where):
    tensors = [torch.full((300, 7), 3e38), torch.tensor(-2.5), torch.ones(64, dtype=torch.bfloat16)]
    assert all_finite(tensors)
    tensors[where].view(-1)[-1] = bad
    assert not all_finite(tensors)
