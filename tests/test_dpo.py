"""DPO: the loss at the start, response-only sequence log-probs, one step's effect, train_dpo.py smoke run."""
import json
import math
import os

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from conftest import run_inline, step_gradient, trainer_configs
from dataset.rm import RMDataset, rm_collate
from model.load import load_causal_lm, load_tokenizer
from model.loss import dpo_loss, sequence_logprobs, token_logprobs
from trainer.dpo import DPOConfig, DPOTrainer, policy_sequence_logprobs

ROWS = [{"instruction": "Add the two numbers.", "input": f"{a} and {b}",
         "responses": [f"The answer is {a + b}.", f"{a + b}", f"The answer is {a + b + 1}.", f"{a + b + 1}"]}
        for a, b in [(1, 2), (13, 18), (40, 7), (22, 22)]]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("embedded")


@pytest.fixture
def ranked(tok, tmp_path):
    path = tmp_path / "ranked.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return RMDataset(str(path), tok, max_len=64, verbose=False)


def tiny_model(seed=0) -> OPTForCausalLM:
    """A 2-layer, width-32 OPT with the embedded tokenizer's vocabulary, dropout off."""
    torch.manual_seed(seed)
    return OPTForCausalLM(OPTConfig(vocab_size=512, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                                    num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=128,
                                    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))


def test_dpo_loss_is_log2_when_policy_equals_reference_and_stable():
    """With the policy equal to the reference every implicit reward is 0, so the loss is exactly log 2
    (no preference yet), whatever the log-probs and beta; elsewhere it is the textbook formula, and it
    stays finite at a margin of -200 where log(sigmoid(.)) is -inf."""
    chosen, rejected = -torch.rand(9) * 30, -torch.rand(9) * 30
    for beta in (0.01, 0.1, 2.0):
        loss, stats = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta)
        assert loss.item() == pytest.approx(math.log(2), abs=1e-7) and stats["margin"] == 0.0 and stats["accuracy"] == 0.0
    ref_c, ref_r = chosen - 1.0, rejected + 0.5
    loss, stats = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.1)
    expected = -torch.log(torch.sigmoid(0.1 * ((chosen - ref_c) - (rejected - ref_r)))).mean()
    assert torch.allclose(loss, expected) and stats["margin"] == pytest.approx(0.15) and stats["accuracy"] == 1.0
    big = dpo_loss(torch.tensor([-2000.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=0.1)[0]
    assert torch.isfinite(big) and big.item() == pytest.approx(200.0)


def test_sequence_logprobs_ignore_prompt_and_pad_tokens(tok, ranked):
    """The collated loss_mask covers exactly each response and its EOS; the sequence log-prob is the sum
    of those tokens' log-probs as the sequence scores alone, unpadded; logits at positions that predict
    a prompt or pad token change nothing, while one that predicts a response token does."""
    batch = rm_collate(ranked.items, tok.pad_token_id)
    model = tiny_model().eval()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (N, T, V)
    seq = sequence_logprobs(logits, batch["input_ids"], batch["loss_mask"])  # (N,)
    assert torch.allclose(policy_sequence_logprobs(model, batch), seq, atol=1e-5)
    flat = [(s, n) for it in ranked.items for s, n in zip(it["sequences"], it["prompt_lengths"])]
    assert batch["loss_mask"].sum(1).tolist() == [len(s) - n for s, n in flat]
    for i, (s, n) in enumerate(flat):
        assert s[-1] == tok.eos_token_id and batch["loss_mask"][i, n - 1] == 0 and batch["loss_mask"][i, n] == 1
        ids = torch.tensor([s])
        alone = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:])[0]  # (len - 1,): token t+1
        assert seq[i].item() == pytest.approx(alone[n - 1:].sum().item(), abs=1e-4)
    predicts = batch["loss_mask"][:, 1:].bool()  # (N, T-1): logits position t predicts a response token
    noise = torch.randn_like(logits[:, :-1]) * 5
    other = logits.clone()
    other[:, :-1][~predicts] += noise[~predicts]  # prompt and pad positions only
    other[:, -1] += 5.0  # the last position predicts nothing
    assert torch.allclose(sequence_logprobs(other, batch["input_ids"], batch["loss_mask"]), seq, atol=1e-5)
    other[:, :-1][predicts] += noise[predicts]
    assert not torch.allclose(sequence_logprobs(other, batch["input_ids"], batch["loss_mask"]), seq, atol=1e-2)


def test_one_dpo_step_raises_the_chosen_minus_rejected_log_ratio_margin(tok, ranked, tmp_path):
    """At step 0 the policy is the reference: the loss is log 2 and every margin 0. One optimizer step on
    the batch makes (log pi/pi_ref)(chosen) - (log pi/pi_ref)(rejected) positive on average."""
    cfg = DPOConfig(beta=0.1, max_new_tokens=8, temperature=1.0, eval_batch_size=64,
                    eval_prompt_batch=100)
    trainer = DPOTrainer(tiny_model(), tiny_model(), tok, ranked, None, None, None, cfg=cfg, run_config={}, judge=None,
                         **trainer_configs(tmp_path, lr=1e-2, max_steps=1, batch_size=len(ranked), log_interval=1))
    batch = trainer.get_batch(0)

    def margins() -> torch.Tensor:
        with torch.no_grad():
            ratio = policy_sequence_logprobs(trainer.model, batch) - batch["ref_logprobs"]  # (N,)
        return ratio[batch["chosen_index"]] - ratio[batch["rejected_index"]]  # (P,)

    before = margins()
    loss, stats = trainer.compute_loss(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5) and before.abs().max() < 1e-4
    metrics = trainer.training_step()
    after = margins()
    assert after.mean() > 0.05 and (after > 0).float().mean() > 0.5, after
    assert metrics["dpo/accuracy"] == pytest.approx(stats["dpo/accuracy"])


def test_train_dpo_smoke_writes_checkpoint_and_summary(sft_dir, tmp_path):
    """train_dpo.py runs 3 steps from the SFT checkpoint and writes a loadable policy, metrics.jsonl with
    the implicit-reward accuracy and margin, and the summary keys the comparison reads (RM score included)."""
    out = str(tmp_path / "dpo")
    run_inline("train_dpo.py", "--sft_model", sft_dir, "--out_dir", out, "--max_steps", "3", "--batch_size", "4",
               "--train_limit", "40", "--eval_limit", "12", "--test_limit", "12", "--eval_interval", "0", "--log_interval", "1",
               "--eval_rm", sft_dir)  # a fresh scalar head on the SFT model: an RM to score answers with
    summary = json.load(open(os.path.join(out, "summary.json")))
    for key in ("gold_score_sft", "gold_score", "correct", "format", "kl", "train_seconds", "peak_rss_mb",
                "dpo_accuracy", "dpo_margin", "reward"):
        assert summary[key] is not None and summary[key] == summary[key], key
    assert summary["eval_prompts"] == 12 and summary["kl"] != 0.0
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["step"] for m in metrics if "dpo/accuracy" in m] == [1, 2, 3]
    assert metrics[0]["step"] == 0 and metrics[0]["eval/dpo_margin"] == pytest.approx(0.0, abs=1e-4)
    load_causal_lm(out)


def test_dpo_micro_batches_weighted_by_pair_count(tok, ranked, tmp_path):
    """With gradient accumulation, a micro-batch counts by its pairs: the gradient of a step over two
    micro-batches (a ranked group of 6 pairs, then a 1-pair group) is that of the 7 pairs together."""
    path = tmp_path / "mixed.jsonl"
    rows = [ROWS[0], {"instruction": "Add the two numbers.", "input": "5 and 6", "chosen": "The answer is 11.",
                      "rejected": "12"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = RMDataset(str(path), tok, max_len=64, verbose=False)
    cfg = DPOConfig(beta=0.1, max_new_tokens=8, temperature=1.0, eval_batch_size=64,
                    eval_prompt_batch=100)

    def stepped(batch_size, grad_accum):
        trainer = DPOTrainer(tiny_model(), tiny_model(), tok, data, None, None, None, cfg=cfg, run_config={},
                             judge=None, **trainer_configs(tmp_path / f"b{batch_size}", lr=1e-2, max_steps=1,
                                                           batch_size=batch_size, grad_accum=grad_accum,
                                                           warmup_steps=0))
        trainer.epoch_order = lambda epoch: torch.arange(len(data))  # the file's order: group, then pair
        assert trainer.loss_weight(trainer.get_batch(0)) == (7 if batch_size == 2 else 6)
        return step_gradient(trainer)
    together, accumulated = stepped(2, 1), stepped(1, 2)
    assert torch.allclose(together, accumulated, atol=1e-7, rtol=1e-4), (together - accumulated).abs().max()


def test_train_dpo_without_held_out_data_and_in_the_checkpoints_chat_format(sft_dir, tmp_path):
    """--eval_data none --eval_prompts none exits 0 and plots only the logged loss; CHAT_TEMPLATE='auto'
    takes the format the SFT checkpoint was trained with (its run_config.json) and saves it."""
    import shutil

    from dataset.chat import EMBEDDED_TEMPLATE
    from model.load import load_tokenizer

    sft = str(tmp_path / "sft_chat")
    shutil.copytree(sft_dir, sft)
    tok = load_tokenizer(sft)
    tok.chat_template = EMBEDDED_TEMPLATE  # as train_sft.py --chat_template True saves it
    tok.save_pretrained(sft)
    run_config = json.load(open(os.path.join(sft, "run_config.json")))
    json.dump({**run_config, "CHAT_TEMPLATE": True}, open(os.path.join(sft, "run_config.json"), "w"))
    out = str(tmp_path / "dpo")
    printed = run_inline("train_dpo.py", "--sft_model", sft, "--out_dir", out, "--max_steps", "2",
                         "--batch_size", "4", "--train_limit", "8", "--eval_data", "none", "--eval_prompts",
                         "none", "--test_data", "none", "--test_prompts", "none", "--log_interval", "1")
    assert json.load(open(os.path.join(out, "run_config.json")))["CHAT_TEMPLATE"] is True
    assert load_tokenizer(out).chat_template == EMBEDDED_TEMPLATE
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert 0 < summary["train_tokens"] <= summary["train_tokens_padded"] and summary["tokens_per_second"] > 0
    assert os.path.exists(os.path.join(out, "dpo_curves.png")) and "Traceback" not in printed


def test_plot_with_nothing_logged_is_skipped(tmp_path):
    from utils import plot_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 0, "other": 1.0}) + "\n")
    assert plot_metrics(str(metrics), str(tmp_path / "x.png"), [("eval/kl", "KL")]) is False
    assert not (tmp_path / "x.png").exists()
