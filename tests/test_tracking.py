"""Experiment trackers (trainer/tracking.py): TensorBoard gets what metrics.jsonl gets, PPO samples as text."""
import glob
import json
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dataset.sft import SFTDataset
from model.load import load_tokenizer
from trainer.sft import SFTTrainer
from utils import ConfigError

from conftest import run_inline, trainer_configs
from test_trainer import tiny_model


def read_events(out_dir: str) -> EventAccumulator:
    files = glob.glob(os.path.join(out_dir, "logs", "**", "events.out.tfevents.*"), recursive=True)
    assert files, f"no TensorBoard event file under {out_dir}/logs"
    main = min(files, key=len)  # the run's own file (add_hparams writes another one in a subfolder)
    return EventAccumulator(main, size_guidance={"scalars": 0, "tensors": 0}).Reload()


def test_tensorboard_gets_every_metrics_line_with_the_same_keys(tmp_path):
    """--log_with tensorboard: the event file holds one scalar series per metrics.jsonl key (step and
    time aside), with the same values at the same steps; metrics.jsonl is still written."""
    tok = load_tokenizer("embedded")
    data = SFTDataset("ds/sft_val.jsonl", tok, max_len=64, limit=32, verbose=False)
    trainer = SFTTrainer(tiny_model(), tok, data, data, None, run_config={"LR": 3e-3, "X": None}, max_new_tokens=8,
                         eval_batch_size=64, judge=None,
                         **trainer_configs(tmp_path, lr=3e-3, max_steps=4, batch_size=8, eval_interval=2,
                                           log_interval=1, log_with="tensorboard"))
    trainer.fit()
    lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    keys = {k for line in lines for k in line} - {"step", "time"}
    events = read_events(str(tmp_path))
    assert set(events.Tags()["scalars"]) == keys and "eval/loss" in keys and "train/loss" in keys
    for key in keys:
        logged = {e.step: e.value for e in events.Scalars(key)}
        expected = {l["step"]: l[key] for l in lines if key in l}
        assert logged.keys() == expected.keys()
        assert all(abs(logged[s] - v) <= 1e-6 * max(1.0, abs(v)) for s, v in expected.items())


def test_ppo_logs_metrics_and_sample_completions_as_text(tmp_path):
    """train_rlhf.py --log_with tensorboard: PPO's per-iteration metrics reach TensorBoard, and each
    evaluation's sample completions arrive as a text table."""
    run_inline("train_rlhf.py", "--sft_model", "embedded", "--rm_model", "embedded", "--iterations", "2",
               "--rollout_batch", "4", "--mini_batch", "4", "--ppo_epochs", "1", "--max_new_tokens", "4",
               "--eval_interval", "1", "--eval_limit", "3", "--test_limit", "3", "--log_with", "tensorboard", "--out_dir", str(tmp_path))
    events = read_events(str(tmp_path))
    assert {"ppo/score", "ppo/kl", "ppo/clipfrac", "eval/gold_score"} <= set(events.Tags()["scalars"])
    texts = events.Tensors("eval/samples/text_summary")
    assert [t.step for t in texts] == [1, 2]
    table = texts[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| type | input | response | reward |") and len(table.splitlines()) == 2 + 3


def test_unknown_or_missing_tracker_is_a_clear_error(tmp_path):
    """A misspelt tracker name names the LOG_WITH setting instead of failing later: a ConfigError,
    which run_main reports as one line without a traceback."""
    tok = load_tokenizer("embedded")
    data = SFTDataset("ds/sft_val.jsonl", tok, max_len=64, limit=8, verbose=False)
    with pytest.raises(ConfigError, match="LOG_WITH='tensorbored'"):
        SFTTrainer(tiny_model(), tok, data, None, None, run_config={}, max_new_tokens=8, eval_batch_size=64,
                   judge=None,
                   **trainer_configs(tmp_path, max_steps=1, batch_size=4, log_with="tensorbored"))
