"""PEFT (model/peft/): exact parameter counts, LoRA's zero init and merge, what a training step may
change, adapter save/load, generation with virtual tokens, and the train_peft.py / train_sft.py wiring."""
import copy
import os

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM, OPTForSequenceClassification

from conftest import run_inline, run_refused
from model.load import opt125m_config
from model.loss import lm_loss
from model.peft import apply_peft, count_parameters, disabled_adapters, export_model, format_counts, load_adapter, save_adapter
from model.peft.generation import generate_with_virtual_tokens
from model.peft.lora import lora_parameter_count
from model.peft.p_tuning import p_tuning_parameter_count
from model.peft.prefix_tuning import prefix_tuning_parameter_count
from model.peft.prompt_tuning import prompt_tuning_parameter_count, text_logits
from utils import ConfigError

METHODS = ["lora", "bitfit", "prompt_tuning", "p_tuning", "prefix_tuning"]
TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=48, num_attention_heads=4,
            max_position_embeddings=64, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2)


def tiny_lm(seed: int = 0) -> OPTForCausalLM:
    torch.manual_seed(seed)
    return OPTForCausalLM(OPTConfig(**TINY)).eval()


def batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (3, 9), generator=g)  # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def train_step(model, lr: float = 0.05) -> None:
    """One AdamW step over *all* parameters: frozen ones get no gradient and must not move."""
    b = batch()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)  # decay would move A without a gradient
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    lm_loss(text_logits(logits, b["input_ids"]), b["labels"]).backward()
    optimizer.step()
    model.eval()


def logits_of(model) -> torch.Tensor:
    b = batch(2)
    with torch.no_grad():
        return text_logits(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["input_ids"])


@pytest.fixture(scope="module")
def opt125m():
    """facebook/opt-125m's exact architecture with random weights, built once in memory (no download)."""
    torch.manual_seed(0)
    return OPTForCausalLM(opt125m_config())


def test_counts_on_opt125m_are_exact(opt125m):
    """The parameter counts on opt-125m, exactly: prompt tuning 7,680 of 125,246,976; prefix tuning 184,320 of 125,423,616;
    LoRA r=4 on q,v 147,456 of 125,386,752; BitFit 102,144 of 125,239,296; p-tuning 1,779,456 (its formula)."""
    settings = dict(r=4, alpha=8, targets=("q_proj", "v_proj"), num_virtual_tokens=10)
    counts = {m: count_parameters(apply_peft(copy.deepcopy(opt125m), m, **settings)) for m in METHODS}
    assert counts["prompt_tuning"] == (7_680, 125_246_976)
    assert counts["prefix_tuning"] == (184_320, 125_423_616)
    assert counts["lora"] == (147_456, 125_386_752)
    assert counts["bitfit"] == (102_144, 125_239_296)
    assert counts["p_tuning"] == (1_779_456, 125_239_296 + 1_779_456)
    assert format_counts(*counts["lora"]) == "trainable params: 147,456 || all params: 125,386,752 || trainable%: 0.1176"


def test_counts_equal_formulas_on_other_shapes():
    """On a model with d_in != d_out (LoRA on fc1: 32 -> 48) the counts still equal the formulas:
    LoRA r (d_in + d_out) per matrix, prompt tuning n d, prefix tuning n 2 L d, p-tuning n d + MLP."""
    d, ffn, layers, n, r = 32, 48, 2, 7, 3
    assert count_parameters(apply_peft(tiny_lm(), "lora", r=r, targets=("fc1",)))[0] == lora_parameter_count([(ffn, d)] * layers, r)
    assert lora_parameter_count([(ffn, d)] * layers, r) == layers * r * (d + ffn)
    assert count_parameters(apply_peft(tiny_lm(), "prompt_tuning", num_virtual_tokens=n))[0] == prompt_tuning_parameter_count(n, d) == n * d
    assert count_parameters(apply_peft(tiny_lm(), "prefix_tuning", num_virtual_tokens=n))[0] == prefix_tuning_parameter_count(n, layers, d)
    assert count_parameters(apply_peft(tiny_lm(), "p_tuning", num_virtual_tokens=n))[0] == p_tuning_parameter_count(n, d)


def test_lora_at_init_equals_base():
    """B starts at zero, so before any training the LoRA model's logits equal the base model's exactly."""
    base_logits = logits_of(tiny_lm())
    lora = apply_peft(tiny_lm(), "lora", r=4, alpha=8, targets=("q_proj", "v_proj", "fc1"))
    assert torch.equal(logits_of(lora), base_logits)


@pytest.mark.parametrize("method", METHODS)
def test_training_step_changes_only_trainable_weights(method):
    """After one step every frozen weight is bit-identical and the method's own weights (LoRA B, biases,
    virtual tokens, prefixes) have moved: training a PEFT model never touches the base model."""
    model = apply_peft(tiny_lm(), method, r=4, num_virtual_tokens=5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    train_step(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    if method == "bitfit":
        assert changed == trainable and all(n.endswith("bias") for n in changed)
    if method == "lora":
        assert all("lora_B" in n for n in changed)  # A gets no gradient while B is still 0: dL/dA = B^T (...) = 0


@pytest.mark.parametrize("method", ["lora", "bitfit", "prefix_tuning", "p_tuning"])
def test_adapter_save_load_round_trip(method, tmp_path):
    """What save_adapter writes, loaded onto a fresh base model, reproduces the trained model's logits."""
    model = apply_peft(tiny_lm(), method, r=4, num_virtual_tokens=5)
    train_step(model)
    save_adapter(model, str(tmp_path))
    reloaded = load_adapter(tiny_lm(), str(tmp_path))
    assert torch.allclose(logits_of(reloaded), logits_of(model), atol=1e-6)
    assert not torch.allclose(logits_of(tiny_lm()), logits_of(model), atol=1e-3)  # the adapter does something


def test_merged_lora_equals_unmerged_and_disabled_is_base():
    """W0 + (alpha/r) B A folded into one matrix gives the adapted logits (plain OPT model, no LoRA layers);
    inside disabled_adapters the LoRA model gives the base model's logits (PPO's reference)."""
    model = apply_peft(tiny_lm(), "lora", r=4, alpha=8, targets=("q_proj", "v_proj"))
    train_step(model)
    adapted = logits_of(model)
    with disabled_adapters(model):
        assert torch.equal(logits_of(model), logits_of(tiny_lm()))
    merged = export_model(model)
    assert type(merged) is OPTForCausalLM and not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.allclose(logits_of(merged), adapted, atol=1e-5)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_virtual_token_generation_matches_full_forward(method):
    """The cached, left-padded generation loop picks the same greedy tokens as recomputing each row
    alone, unpadded, with a full forward pass (no cache) at every step."""
    base = tiny_lm()
    with torch.no_grad():  # large position embeddings: an off-by-one position changes the greedy tokens
        base.model.decoder.embed_positions.weight.normal_(0, 1.0)
    model = apply_peft(base, method, num_virtual_tokens=4)
    train_step(model, lr=0.5)  # virtual tokens that matter
    rows = [[2, 5, 9, 11, 7], [2, 30, 4]]
    ids = torch.tensor([rows[0], [1, 1] + rows[1]])  # left-padded (B, P)
    seqs = generate_with_virtual_tokens(model, ids, (ids != 1).long(), max_new_tokens=6, eos_token_id=63, pad_token_id=1)
    for i, row in enumerate(rows):
        seq = torch.tensor([row])
        with torch.no_grad():
            for _ in range(6):
                next_token = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1].argmax(-1)
                seq = torch.cat([seq, next_token[:, None]], dim=1)
        assert seqs[i, ids.shape[1]:].tolist() == seq[0, len(row):].tolist()


def test_reward_model_lora_trains_the_score_head():
    """task='reward': LoRA on q,v plus the freshly initialised scalar head (modules_to_save=['score']);
    after a step the merged reward model scores exactly like the adapted one."""
    torch.manual_seed(0)
    rm = apply_peft(OPTForSequenceClassification(OPTConfig(**TINY, num_labels=1)), "lora", task="reward", r=4,
                    targets=("q_proj", "v_proj"))
    assert count_parameters(rm)[0] == 2 * 2 * 4 * (32 + 32) + 32  # LoRA + score (32 -> 1, no bias)
    b = batch()
    optimizer = torch.optim.AdamW(rm.parameters(), lr=0.05)
    rm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.sum().backward()
    optimizer.step()
    rm.eval()
    with torch.no_grad():
        scores = rm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # (B, 1)
        merged = export_model(rm)
        assert type(merged) is OPTForSequenceClassification
        assert torch.allclose(merged(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, scores, atol=1e-5)


def test_unknown_setting_and_method_raise():
    """A mistyped setting or method name fails loudly instead of silently training something else."""
    with pytest.raises(ConfigError, match="unknown PEFT settings"):
        apply_peft(tiny_lm(), "lora", rank=4)
    with pytest.raises(ConfigError, match="expected one of"):
        apply_peft(tiny_lm(), "adapters")


def test_train_peft_and_sft_peft_smoke(tmp_path, monkeypatch):
    """train_peft.py runs a comparison arm end to end (prompt tuning: virtual tokens in training and in
    generation) and writes its table and figure; train_sft.py with PEFT=lora saves a peft adapter plus a
    merged model that loads as a plain checkpoint."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two threads on two shared cores can run many times slower
    out = str(tmp_path / "peft")
    text = run_inline("train_peft.py", "--counts", "False", "--memory_steps", "0", "--model", "embedded", "--methods",
                      "prompt_tuning", "--max_steps", "2", "--eval_limit", "8", "--out_dir", out, "--plot",
                      str(tmp_path / "p.png"))
    assert "| prompt_tuning | 0.1 | 1,280 |" in text and (tmp_path / "p.png").exists()
    sft = str(tmp_path / "sft_lora")
    run_inline("train_sft.py", "--peft", "lora", "--max_steps", "2", "--batch_size", "8", "--out_dir", sft, "--eval_limit",
               "8", "--test_limit", "8", "--test_data", "none", "--eval_data", "none", "--eval_interval", "0", "--save_interval", "0", "--warmup_steps", "1")
    from peft import PeftConfig

    from model.load import load_causal_lm
    assert PeftConfig.from_pretrained(sft + "/adapter").peft_type.value == "LORA"
    assert type(load_causal_lm(sft)) is OPTForCausalLM


def test_train_peft_names_a_missing_model_in_one_line(tmp_path):
    """A comparison on a MODEL that is not there stops before any arm runs, with one error line that
    says how the default MODEL is made (no traceback, nothing in OUT_DIR but the folder)."""
    code, err = run_refused("train_peft.py", "--counts", "False", "--model", str(tmp_path / "nowhere"),
                            "--out_dir", str(tmp_path / "peft"))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 4  # ModelError's exit code
    assert len(lines) == 1 and lines[0].startswith("error:") and "python train_sft.py" in lines[0], err
    assert os.listdir(tmp_path / "peft") == []
