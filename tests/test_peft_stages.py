"""PEFT as a setting of the RM stage: the script trains LoRA + head and exports a plain reward model."""
import json

import torch
from transformers import AutoModelForSequenceClassification

from conftest import run_inline


def test_train_rm_with_lora_exports_a_merged_reward_model(sft_dir, tmp_path):
    """`train_rm.py --peft lora` trains only LoRA matrices and the score head, saves the adapter, and
    writes a merged model that AutoModelForSequenceClassification loads like any reward model."""
    out = run_inline("train_rm.py", "--model", sft_dir, "--peft", "lora", "--max_steps", "3", "--train_limit", "64",
                     "--eval_limit", "20", "--out_dir", str(tmp_path))
    assert "lora: adapter in" in out
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert rm.config.num_labels == 1 and not any("lora" in n for n, _ in rm.named_parameters())
    base = AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1)
    ids = torch.tensor([[2, 40, 41, 42, 2]])
    assert rm(input_ids=ids).logits.shape == (1, 1)
    trained_body = [n for n, p in rm.named_parameters() if "score" not in n
                    and not torch.equal(p, dict(base.named_parameters())[n])]
    assert trained_body and all(("q_proj" in n or "v_proj" in n) and n.endswith("weight") for n in trained_body)
    assert json.load(open(tmp_path / "summary.json"))["steps"] == 3
