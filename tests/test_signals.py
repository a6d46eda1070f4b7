"""Signals end a run cleanly everywhere: a second SIGTERM / SIGINT inside the loop stops at once with
128 + the signal and keeps the last complete checkpoint; outside the loop one line and 128 + the signal.
Also: the truncation report counts each row once."""
import os
import signal

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from dataset.sft import SFTDataset
from dataset.tokens import TruncationCounter, fit_lengths
from model.load import load_tokenizer
from trainer.checkpoint import load_state
from trainer.signals import Preempted
from trainer.sft import SFTTrainer
from utils import run_main

from conftest import trainer_configs


def test_a_second_signal_stops_at_once_with_128_plus_signal_and_keeps_the_checkpoint(tmp_path, capsys):
    """Two SIGTERMs during step 3 (the first would checkpoint after the step): the second stops at once
    with exit 143, not a KeyboardInterrupt traceback with 130, and step 2's checkpoint is intact."""
    tok = load_tokenizer("embedded")
    data = SFTDataset("ds/sft_val.jsonl", tok, max_len=48, limit=16, verbose=False)
    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(vocab_size=512, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                                     num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128))
    trainer = SFTTrainer(model, tok, data, None, None, run_config={}, max_new_tokens=8, eval_batch_size=64,
                         judge=None,
                         **trainer_configs(tmp_path, max_steps=5, save_interval=2, batch_size=4))
    original = trainer.compute_loss

    def two_signals_in_step_3(batch):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(batch)

    trainer.compute_loss = two_signals_in_step_3
    with pytest.raises(Preempted) as stop:
        trainer.fit()
    assert stop.value.code == 128 + signal.SIGTERM
    assert "received again: stopping at once" in capsys.readouterr().err
    assert load_state(str(tmp_path / "checkpoint"))[0] == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_outside_the_loop_is_one_line_and_128_plus_signal(signum, capsys):
    """Before or after the loop (loading, the final write) SIGTERM would otherwise kill silently and
    SIGINT print a traceback: both stop with one line; the handlers are put back afterwards."""
    before = signal.getsignal(signum)
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: os.kill(os.getpid(), signum))
    assert stop.value.code == 128 + signum
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stopped by {signal.Signals(signum).name} outside the training loop") and "\n" not in err
    assert signal.getsignal(signum) is before


def test_truncation_report_counts_each_row_once():
    """A row cut at both ends is one truncated row (the report said 800 truncated of 400 rows)."""
    counter = TruncationCounter()
    for _ in range(4):
        fit_lengths(list(range(100)), list(range(100)), 40, counter)
    fit_lengths([1, 2], [3], 40, counter)
    assert (counter.rows, counter.truncated) == (5, 4)
    assert counter.report("f").startswith("f: 5 rows, 4 truncated")
