"""What a run does with what it finds in out_dir: resume only what it can continue, never start over an
earlier run, never lose the last complete checkpoint or model, and a lock that cannot be redirected
(trainer/outdir.py, trainer/checkpoint.py, trainer/lock.py, model/load.py)."""
import json
import multiprocessing
import os
import shutil

import pytest
import torch

from dataset.sft import SFTDataset
from model.load import ModelError, build_embedded, load_causal_lm
from trainer import checkpoint as ckpt
from trainer.export import save_stage
from trainer.checkpoint import CheckpointError, drop_rows_after
from trainer.lock import OutDirLocked, lock_out_dir, release_lock
from trainer.sft import SFTTrainer
from utils import UserError

from conftest import make_sft_trainer, tiny_model


@pytest.fixture(scope="module")
def data(tok):
    return SFTDataset("ds/sft_val.jsonl", tok, max_len=64, limit=32, verbose=False)


def outdir_model():
    """The tiny model with OPTConfig's default dropouts (0.1, none in attention)."""
    return tiny_model(dropout=0.1, attention_dropout=0.0)


def make_trainer(tok, data, out_dir, run_config, cls=SFTTrainer, **kw):
    return make_sft_trainer(tok, data, out_dir, outdir_model(), cls, run_config,
                            **{"max_steps": 3, "warmup_steps": 0, "save_interval": 2, **kw})


RUN = {"LR": 3e-3, "SEED": 1, "TRAIN_DATA": "ds/sft_train.jsonl", "LOG_INTERVAL": 1}


@pytest.fixture
def checkpointed(tok, data, tmp_path):
    """An out_dir holding the checkpoint of step 2 of a 3-step run cut short."""
    trainer = make_trainer(tok, data, tmp_path, RUN, max_steps=2, save_interval=0)
    trainer.fit()
    trainer.save_checkpoint()
    release_lock(os.path.join(os.path.realpath(tmp_path), ".lock"))
    return tmp_path


def test_resume_refuses_other_training_settings_naming_each(tok, data, checkpointed):
    """A new LR, seed or data file with --resume True would continue the old schedule while
    run_config.json records the new values: one line names each difference and the override; a
    setting that only changes logging may differ."""
    changed = {**RUN, "LR": 1e-3, "SEED": 2, "TRAIN_DATA": "mine.jsonl", "LOG_INTERVAL": 5}
    with pytest.raises(CheckpointError) as err:
        make_trainer(tok, data, checkpointed, changed, resume=True)
    message = str(err.value)
    assert "LR 0.003 -> 0.001" in message and "SEED 1 -> 2" in message and "TRAIN_DATA" in message
    assert "LOG_INTERVAL" not in message and "--overwrite True" in message and "\n" not in message
    make_trainer(tok, data, checkpointed, {**RUN, "LOG_INTERVAL": 5}, resume=True).fit()  # allowed


def test_resume_refuses_another_stages_checkpoint(tok, data, checkpointed):
    """DPO (or the RM) in an out_dir holding an SFT checkpoint must not load it as its own."""
    class OtherStage(SFTTrainer):
        pass

    with pytest.raises(CheckpointError, match="a checkpoint of SFTTrainer, not of OtherStage"):
        make_trainer(tok, data, checkpointed, RUN, cls=OtherStage, resume=True)


def test_a_fresh_run_refuses_an_earlier_runs_out_dir_unless_overwrite(tok, data, checkpointed, capsys):
    """A fresh run over a checkpoint (which a later --resume would continue) or over a finished run is
    refused with the two ways out; --overwrite True deletes the checkpoint, says so, and starts."""
    with pytest.raises(OutDirLocked, match=r"holds a checkpoint \(step 2.*--resume True.*--overwrite True"):
        make_trainer(tok, data, checkpointed, RUN)
    trainer = make_trainer(tok, data, checkpointed, RUN, overwrite=True)
    assert not os.path.exists(checkpointed / "checkpoint") and "--overwrite True: removed" in capsys.readouterr().out
    trainer.fit()
    trainer.finish(tok, "none", {})
    release_lock(os.path.join(os.path.realpath(checkpointed), ".lock"))
    shutil.rmtree(checkpointed / "checkpoint")
    for resume in (False, True):  # a finished run: no checkpoint to resume either
        with pytest.raises(OutDirLocked, match="a finished run"):
            make_trainer(tok, data, checkpointed, RUN, resume=resume)


def test_old_is_kept_until_a_new_checkpoint_is_verified(tmp_path):
    """Resume fell back to checkpoint.old because `checkpoint` is cut: the next save must not delete
    .old before its own checkpoint is complete (else a crash then would leave no checkpoint at all)."""
    path = str(tmp_path / "checkpoint")
    ckpt.save_checkpoint(path, {"w": torch.ones(3)}, 1, {})
    shutil.copytree(path, str(tmp_path / "step1"))
    ckpt.save_checkpoint(path, {"w": torch.ones(3)}, 2, {})
    os.rename(tmp_path / "step1", path + ".old")
    with open(os.path.join(path, "state.safetensors"), "r+b") as f:
        f.truncate(20)  # state.json says complete, the tensors are cut
    assert ckpt.load_newest(path)[2] == path + ".old"
    ckpt.begin_save(path)
    assert ckpt.checkpoint_step(path + ".old") == 1


def test_a_half_written_last_metrics_line_does_not_block_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "train/lo')
    drop_rows_after(str(path), 2)
    assert [json.loads(line)["step"] for line in open(path)] == [1, 2]


def test_a_failed_final_write_is_one_line_and_keeps_the_previous_model(tok, tmp_path, monkeypatch):
    """The final model is written aside and renamed in: a write that fails (a full disk) leaves the
    earlier model.safetensors whole and is one line; a model cut anyway is a one-line ModelError."""
    save_stage(str(tmp_path), outdir_model(), tok, {}, "none", {})
    before = (tmp_path / "model.safetensors").read_bytes()

    def disk_full(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tok), "save_pretrained", disk_full)
    with pytest.raises(UserError, match="writing the trained model failed.*No space left"):
        save_stage(str(tmp_path), outdir_model(), tok, {}, "none", {})
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not os.path.exists(tmp_path / ".final.tmp")
    with open(tmp_path / "model.safetensors", "r+b") as f:
        f.truncate(len(before) // 2)
    with pytest.raises(ModelError, match="cannot be loaded"):
        load_causal_lm(str(tmp_path))


def test_the_lock_refuses_a_symlink_and_a_file_as_out_dir(tmp_path):
    """A symlinked out_dir/.lock would have its target overwritten, then deleted when the run ends."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "run").mkdir()
    os.symlink(target, tmp_path / "run" / ".lock")
    with pytest.raises(OutDirLocked, match="symbolic link"):
        lock_out_dir(str(tmp_path / "run"))
    assert target.read_text() == "keep me"
    with pytest.raises(OutDirLocked, match="is a file"):
        lock_out_dir(str(target))


def _build(args):
    return open(os.path.join(build_embedded(*args), "build_id.txt")).read()


def test_embedded_model_builds_once_under_concurrent_starts_and_ignores_user_files(tmp_path):
    """Processes of a fresh torchrun all build out/embedded at once (5 crashes in 6 before the lock);
    a user's file in ds/ changes nothing (the tokenizer is trained on the named shipped files)."""
    data_dir = tmp_path / "ds"
    shutil.copytree("ds", data_dir)
    (data_dir / "mine.jsonl").write_text('{"broken": ')
    args = (str(data_dir), str(tmp_path / "embedded"))
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        ids = pool.map(_build, [args] * 3)
    assert len(set(ids)) == 1 and ids[0] == open("out/embedded/build_id.txt").read()
    assert sorted(os.listdir(tmp_path)) == ["ds", "embedded", "embedded.lock"]


def test_an_evaluation_setting_that_shapes_a_stage_blocks_its_resume(tmp_path):
    """EVAL_BATCH_SIZE only batches evaluation in most stages, so a resume may change it; DPO computes
    the reference log-probs of its training comparisons in chunks of that size, so there a change is
    refused like any training setting."""
    import json

    from trainer.dpo import DPOTrainer
    from trainer.outdir import check_resumable

    (tmp_path / "run_config.json").write_text(json.dumps({"LR": 1e-3, "EVAL_BATCH_SIZE": 64}))
    now = {"LR": 1e-3, "EVAL_BATCH_SIZE": 32}
    check_resumable(str(tmp_path), "SFTTrainer", now, SFTTrainer.shaping_settings)  # allowed
    with pytest.raises(CheckpointError, match="EVAL_BATCH_SIZE 64 -> 32"):
        check_resumable(str(tmp_path), "DPOTrainer", now, DPOTrainer.shaping_settings)
