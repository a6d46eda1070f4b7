"""Reward model stage: the pairwise loss, last-token scoring, ranked pairs, HH splitting, learning,
the AutoModelForSequenceClassification round trip, row errors, and a train_rm.py smoke run."""
import json
import math
import os
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, OPTConfig, OPTForSequenceClassification

from conftest import ROOT, run_inline, step_gradient, trainer_configs
from dataset.io import DataError
from utils import ConfigError
from dataset.chat import chat_messages
from dataset.task import gold_judge, rank_responses
from dataset.comparisons import read_comparisons, split_hh
from dataset.rm import RMDataset, encode_chat, pair_kind, ranked_pairs, rm_collate
from model.load import load_tokenizer
from model.generate import position_ids_for
from model.loss import pairwise_loss
from model.reward import RewardEnsemble, load_reward_model, reward_scores
from trainer.rm import RMTrainer, evaluate_pairs, fit_linear_head, last_token_features, pairwise_metrics

PAD = 1


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("embedded")


def tiny_rm(vocab_size: int, seed: int = 0) -> OPTForSequenceClassification:
    """A 2-layer, width-32 OPT with a scalar head, dropout off."""
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                       max_position_embeddings=128, word_embed_proj_dim=32, dropout=0.0, attention_dropout=0.0,
                       activation_dropout=0.0, pad_token_id=PAD, num_labels=1)
    return OPTForSequenceClassification(config).eval()


def write_rows(tmp_path, name: str, rows: list) -> str:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_pairwise_loss_is_log2_at_equal_scores_and_stable():
    """-log sigmoid(r_w - r_l) is log 2 when chosen equals rejected (no preference yet), matches the
    textbook form at moderate margins, and stays finite at a margin of -200 where log(sigmoid) is -inf."""
    scores = torch.randn(7)
    assert torch.allclose(pairwise_loss(scores, scores.clone()), torch.tensor(math.log(2)))
    chosen, rejected = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    assert torch.allclose(pairwise_loss(chosen, rejected), -torch.log(torch.sigmoid(chosen - rejected)).mean())
    assert torch.isfinite(pairwise_loss(torch.tensor([-200.0]), torch.tensor([0.0])))
    assert pairwise_loss(torch.tensor([-200.0]), torch.tensor([0.0])).item() == pytest.approx(200.0)


def test_score_is_read_at_last_non_pad_token_on_either_padding_side():
    """A batch scores each sequence exactly as it scores alone, right- or left-padded: the head is read
    at the last real token (OPT needs the attention mask for positions under left padding)."""
    model = tiny_rm(vocab_size=40)
    seqs = [[2, 5, 6, 7, 8, 9, 2], [2, 11, 12, 2], [2, 20, 2]]
    alone = torch.stack([reward_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs])
    for side in ("right", "left"):
        width = max(map(len, seqs))
        fill = [[PAD] * (width - len(s)) for s in seqs]
        ids = torch.tensor([s + f if side == "right" else f + s for s, f in zip(seqs, fill)])  # (3, 7)
        mask = (ids != PAD).long()  # (3, 7)
        assert torch.allclose(reward_scores(model, ids, mask), alone, atol=1e-5), side
    ids = torch.tensor([seqs[1] + [PAD] * 3])
    changed = ids.clone()
    changed[0, 2] = 30  # a real token before the last one matters ...
    assert not torch.allclose(reward_scores(model, changed, torch.ones_like(ids)), reward_scores(model, ids, torch.ones_like(ids)))


def test_ranking_of_k_gives_all_k_choose_2_pairs_each_response_scored_once(tok, tmp_path):
    """K ranked responses give exactly K(K-1)/2 (better, worse) pairs, better ranked first, and a batch
    holds each response once however many pairs it is in."""
    for k in range(2, 7):
        pairs = ranked_pairs(k)
        assert len(pairs) == len(set(pairs)) == k * (k - 1) // 2 and all(i < j for i, j in pairs)
    rows = [{"instruction": "Add the two numbers.", "input": "1 and 2", "responses": ["The answer is 3.", "3", "4", "5, I think."]},
            {"prompt": "Say hi.", "responses": ["hi", "hello there", "no"]},
            {"prompt": "Pick.", "chosen": "yes", "rejected": "no"}]
    ds = RMDataset(write_rows(tmp_path, "r.jsonl", rows), tok, max_len=64, verbose=False)
    assert [len(it["pairs"]) for it in ds.items] == [6, 3, 1] and ds.num_pairs == 10
    batch = rm_collate(ds.items, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4 + 3 + 2 and batch["chosen_index"].shape == (10,)
    assert batch["chosen_index"].tolist()[:6] == [0, 0, 0, 1, 1, 2] and batch["rejected_index"].tolist()[:6] == [1, 2, 3, 2, 3, 3]


def test_pair_kinds_from_gold_judge():
    """On the shipped rankings, [0] vs [2] and [1] vs [3] differ only in correctness, [0] vs [1] and
    [2] vs [3] only in format, [0] vs [3] in both, and [1] vs [2] trade a right answer for the preferred form:
    the split that evaluation reports separately."""
    prompt = "### Instruction:\nAdd the two numbers.\n\n### Input:\n13 and 18\n\n### Response:\n"
    responses = ["The answer is 31.", "31", "The answer is 33.", "33"]
    group = {"prompt": prompt, "type": "add"}
    kinds = {(i, j): pair_kind(gold_judge, group, responses[i], responses[j]) for i, j in ranked_pairs(4)}
    assert kinds[0, 2] == kinds[1, 3] == "correctness" and kinds[0, 1] == kinds[2, 3] == "format"
    assert kinds[0, 3] == "both" and kinds[1, 2] == "trade"  # "31" (right, bare) over "The answer is 33." (wrong, preferred form)


def test_correctness_accuracy_per_task_type_counts_only_that_types_correctness_pairs(tok, tmp_path):
    """accuracy_correctness/<type> is the share of one type's correctness-only pairs the model orders right:
    a scorer that reads the right answer on 'add' and the wrong one on 'sort' gets 1 and 0, whatever it
    does on the format pairs."""
    rows = [{"type": "add", "instruction": "Add the two numbers.", "input": "1 and 2",
             "responses": ["The answer is 3.", "3", "The answer is 4.", "4"]},
            {"type": "sort", "instruction": "Sort the numbers from smallest to largest.", "input": "3 1",
             "responses": ["The answer is 1 3.", "1 3", "The answer is 3 1.", "3 1"]}]
    ds = RMDataset(write_rows(tmp_path, "r.jsonl", rows), tok, max_len=64, verbose=False, judge=gold_judge)
    batch = rm_collate(ds.items, tok.pad_token_id)
    assert batch["types"] == ["add"] * 6 + ["sort"] * 6
    # scores of the 8 responses: add orders right > wrong, sort wrong > right; format pairs mixed
    scores = torch.tensor([2.0, 3.0, 0.0, 1.0, 0.0, 1.0, 2.0, 3.0])
    m = pairwise_metrics(scores[batch["chosen_index"]], scores[batch["rejected_index"]], batch["kinds"], scores,
                         batch["types"])
    assert m["accuracy_correctness/add"] == 1.0 and m["accuracy_correctness/sort"] == 0.0
    assert m["accuracy_correctness"] == 0.5 and m["pairs_correctness"] == 4 and m["accuracy_format"] == 0.0
    assert m["pairs_trade"] == 2 and m["accuracy_trade"] == 0.5  # add's "3" over "The answer is 4." right, sort's wrong


def test_hh_split_and_prompt_mismatch(tmp_path, capsys):
    """HH dialogues split after the last Assistant turn into one shared prompt and two replies; a row
    whose prompts differ is skipped with a warning naming file:line, or is an error when strict."""
    head = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant:"
    assert split_hh(head + " Sure.") == (head, " Sure.")
    good = {"chosen": head + " Sure.", "rejected": head + " No."}
    bad = {"chosen": head + " Sure.\n\nAssistant: More.", "rejected": head + " No."}  # an extra turn in one reply
    path = write_rows(tmp_path, "hh.jsonl", [good, bad, good])
    groups = read_comparisons(path)
    assert [g["responses"] for g in groups] == [[" Sure.", " No."]] * 2 and groups[0]["prompt"] == head
    warning = capsys.readouterr().out
    assert "skipped 1 HH row(s)" in warning and f"{path}:2" in warning
    with pytest.raises(DataError, match=f"{path}:2:"):
        read_comparisons(path, on_mismatch="error")
    kept = read_comparisons(path, on_mismatch="common_prefix")
    assert len(kept) == 3 and kept[1]["responses"] == [" Sure.\n\nAssistant: More.", " No."] and kept[1]["prompt"] == head


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "responses": ["only one"]}, "at least 2"),
    ({"prompt": "p", "responses": ["a", "a"]}, "same response twice"),
    ({"prompt": "p", "chosen": "a"}, "is missing"),
    ({"chosen": "no dialogue", "rejected": "here"}, "HH dialogue"),
    ({"prompt": "p", "chosen": "a", "rejected": "a"}, "same response"),
    ('{"prompt": "p", "chosen": ', "malformed JSON"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    """Each kind of bad row raises DataError naming the file and line (here line 2)."""
    path = write_rows(tmp_path, "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError, match=rf"{path}:2: .*{message}"):
        read_comparisons(path)


def test_over_length_prompt_is_cut_from_left_and_counted(tok, tmp_path):
    """A too-long pair keeps its whole responses (prompt cut from the left, BOS kept) and is counted."""
    rows = [{"prompt": "word " * 80, "chosen": "The answer is 3.", "rejected": "3"}]
    ds = RMDataset(write_rows(tmp_path, "long.jsonl", rows), tok, max_len=24, verbose=False)
    chosen = tok("The answer is 3.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    seq = ds.items[0]["sequences"][0]
    assert len(seq) == 24 and seq[-len(chosen):] == chosen and seq[0] == tok.bos_token_id
    assert ds.counter.prompt_cut == 2 and "2 truncated" in ds.report("x")


def test_over_length_prompt_is_cut_once_the_same_for_every_reply(tok, tmp_path):
    """A comparison whose prompt is too long keeps the same prompt tokens before each of its replies,
    a 1-token one and a long one alike (cut for the longest reply, not once per reply)."""
    rows = [{"prompt": "word " * 80, "chosen": "The answer is " + "very " * 10 + "long.", "rejected": "3"}]
    ds = RMDataset(write_rows(tmp_path, "long.jsonl", rows), tok, max_len=32, verbose=False)
    (a, b), (pa, pb) = ds.items[0]["sequences"], ds.items[0]["prompt_lengths"]
    assert pa == pb and a[:pa] == b[:pb] and len(a) == 32 and len(b) < 32


@pytest.fixture(scope="module")
def toy_run(tok, tmp_path_factory):
    """A tiny RM trained 40 steps on a toy preference: 'It is good/great/...' beats 'It is bad/poor/...'.
    Five words on each side, mixed, so a fresh model is near chance; held-out pairs have unseen prompts."""
    from dataset.task import WORDS

    tmp = tmp_path_factory.mktemp("toy")
    good, bad = ["good", "great", "fine", "nice", "happy"], ["bad", "poor", "awful", "sad", "wrong"]
    rows = [{"prompt": f"How is the {WORDS[i % len(WORDS)]}?\n", "chosen": f"It is {good[i % 5]}.",
             "rejected": f"It is {bad[(i // 5) % 5]}."} for i in range(60)]
    train = RMDataset(write_rows(tmp, "train.jsonl", rows[:40]), tok, 48, verbose=False)
    held = RMDataset(write_rows(tmp, "eval.jsonl", rows[40:]), tok, 48, verbose=False)
    model = tiny_rm(len(tok))
    before = evaluate_pairs(model, held, tok.pad_token_id, 64)
    trainer = RMTrainer(model, tok, train, held, run_config={}, eval_batch_size=64,
                        **trainer_configs(tmp / "rm", lr=1e-2, max_steps=40, batch_size=8, warmup_steps=0, log_interval=100))
    trainer.fit()
    trainer.save_model(str(tmp / "rm"), tok)
    return before, trainer, held, str(tmp / "rm")


def test_a_few_steps_on_a_toy_preference_raise_accuracy(toy_run):
    """Held-out pairwise accuracy rises from near chance (0.65 for this seed) to >= 0.9, margin > 0.5."""
    before, trainer, held, _ = toy_run
    after = evaluate_pairs(trainer.unwrap(trainer.model), held, 1, 64)
    assert before["accuracy"] <= 0.8 and after["accuracy"] >= 0.9 and after["margin"] > 0.5


def test_saved_rm_loads_with_auto_class_and_gives_same_scores(toy_run, tok):
    """AutoModelForSequenceClassification.from_pretrained(dir) and load_reward_model(dir) both return
    the trained model's scores, so PPO and other tools can use the checkpoint as is."""
    _, trainer, held, rm_dir = toy_run
    batch = rm_collate(held.items[:6], tok.pad_token_id)
    expected = reward_scores(trainer.unwrap(trainer.model).eval(), batch["input_ids"], batch["attention_mask"])
    auto = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    assert auto.config.num_labels == 1
    assert torch.allclose(reward_scores(auto, batch["input_ids"], batch["attention_mask"]), expected, atol=1e-6)
    ours = load_reward_model(rm_dir, tok.pad_token_id).eval()
    assert torch.allclose(reward_scores(ours, batch["input_ids"], batch["attention_mask"]), expected, atol=1e-6)


def test_simulated_labelling_ranks_by_gold_score_without_ties():
    """Simulated labels: one response per distinct gold score, best first; ties and empties dropped."""
    prompt = "### Instruction:\nAdd the two numbers.\n\n### Input:\n1 and 2\n\n### Response:\n"
    samples = ["4", "3", "The answer is 3.", "5", "", "The answer is 4.", "3, I think."]
    assert rank_responses(prompt, samples) == ["The answer is 3.", "3", "The answer is 4.", "4"]


def test_train_rm_smoke_writes_summary_and_loadable_model(sft_dir, tmp_path):
    """train_rm.py runs 3 steps from the SFT checkpoint and writes the summary keys PPO and the README use."""
    out = str(tmp_path / "rm")
    run_inline("train_rm.py", "--model", sft_dir, "--out_dir", out, "--max_steps", "3", "--train_limit", "64",
               "--eval_limit", "32", "--batch_size", "8", "--eval_interval", "0")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    for key in ("accuracy", "accuracy_correctness", "margin", "eval_pairs", "train_seconds", "peak_rss_mb"):
        assert summary[key] is not None, key
    assert summary["eval_pairs"] == 32 * 6
    # 3 steps x 8 ranked groups x 4 responses: the padded count is the batches' full (N, T) shapes
    assert 0 < summary["train_tokens"] <= summary["train_tokens_padded"] <= 3 * 8 * 4 * 96
    assert summary["tokens_per_second"] == pytest.approx(summary["train_tokens"] / summary["train_seconds"])
    assert set(summary["accuracy_correctness_per_type"]) == {"add", "capital", "count", "opposite", "sort"}
    model = load_reward_model(out, 1)
    assert model.config.num_labels == 1 and os.path.exists(os.path.join(out, "run_config.json"))


def test_chat_template_turns_hh_dialogue_into_messages_and_closes_each_reply(tok, tmp_path):
    """CHAT_TEMPLATE: HH turns become user/assistant messages, the prompt is the template up to the
    assistant's turn, and each reply ends with the template's end-of-turn (the token the score is read at)."""
    head = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Help me?\n\nAssistant:"
    assert chat_messages(head) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                   {"role": "user", "content": "Help me?"}]
    assert chat_messages("### Instruction:\nAdd.") == [{"role": "user", "content": "### Instruction:\nAdd."}]
    path = write_rows(tmp_path, "hh.jsonl", [{"chosen": head + " Sure.", "rejected": head + " No."}])
    chat_tok = load_tokenizer("embedded")
    chat_tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        RMDataset(path, chat_tok, 64, verbose=False, chat_template=True)  # a tokenizer without a template
    chat_tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                              "{% if add_generation_prompt %}[assistant] {% endif %}")
    prompt_ids, replies = encode_chat(chat_tok, chat_messages(head), [" Sure.", " No."])
    assert chat_tok.decode(prompt_ids) == "[user] Hi</s>\n[assistant] Hello.</s>\n[user] Help me?</s>\n[assistant] "
    assert [chat_tok.decode(r) for r in replies] == ["Sure.</s>", "No.</s>"]
    ds = RMDataset(path, chat_tok, 64, verbose=False, chat_template=True)
    assert ds.items[0]["sequences"] == [prompt_ids + replies[0], prompt_ids + replies[1]]


def test_logistic_head_recovers_a_linear_preference_and_cv_picks_the_l2():
    """fit_linear_head on features where the preferred response is the one further along a hidden
    direction: held-out accuracy >= 0.9, and cross-validation rejects an L2 so strong it cannot fit."""
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=gen)
    features = torch.randn(600, 16, generator=gen) * torch.linspace(0.5, 3.0, 16)  # (N, H), uneven scales
    utility = features @ direction + 0.5 * torch.randn(600, generator=gen)
    a, b = torch.arange(0, 600, 2), torch.arange(1, 600, 2)
    chosen, rejected = torch.where(utility[a] > utility[b], a, b), torch.where(utility[a] > utility[b], b, a)
    group = torch.arange(300)
    fit = fit_linear_head(features[:400], chosen[:200], rejected[:200], group[:200], [1e-3, 1e3], folds=4, seed=0)
    assert set(fit["cv_accuracy"]) == {1e-3, 1e3} and fit["l2"] == 1e-3
    assert fit["cv_accuracy"][1e-3] >= 0.85 and fit["train_accuracy"] >= 0.9
    held = ((features[chosen[200:]] - features[rejected[200:]]) @ fit["weight"] > 0).float().mean().item()
    assert held >= 0.9
    cosine = torch.nn.functional.cosine_similarity(fit["weight"], direction, dim=0).item()
    assert cosine > 0.9


def noisy_axis_preference(pairs: int = 120, hidden: int = 8, mislabelled: int = 12, seed: int = 0) -> tuple:
    """Features (2 * pairs, hidden) where the better response of each pair is high on axis 0 and the
    worse one low, the other axes noise, and the first `mislabelled` pairs ranked the wrong way round:
    every sensible head gets exactly those pairs wrong, so the CV accuracy is the same for every L2,
    while its confidence on them (the log-loss) is not. -> features, chosen, rejected, group."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(2 * pairs, hidden, generator=gen)
    features[0::2, 0] = 1 + 0.2 * torch.randn(pairs, generator=gen)  # better responses
    features[1::2, 0] = -1 + 0.2 * torch.randn(pairs, generator=gen)  # worse responses
    better, worse = torch.arange(0, 2 * pairs, 2), torch.arange(1, 2 * pairs, 2)
    right_way = torch.arange(pairs) >= mislabelled
    chosen, rejected = torch.where(right_way, better, worse), torch.where(right_way, worse, better)
    return features, chosen, rejected, torch.arange(pairs)


def test_cv_picks_the_l2_by_held_out_log_loss_so_accuracy_ties_and_float_noise_cannot_flip_it():
    """On HH, three L2 strengths can tie exactly in CV accuracy, and then a float-level change in the
    bf16 features flips an accuracy-based pick (test 0.648 -> 0.624). Here all three strengths tie exactly at 0.9 CV
    accuracy; the pick must be the lowest CV log-loss (0.1: neither the first listed, which the accuracy
    rule took, nor the strongest), and must stay the same when the features get 1e-6 relative noise."""
    features, chosen, rejected, group = noisy_axis_preference()
    l2s = [1e-3, 0.1, 10.0]
    fit = fit_linear_head(features, chosen, rejected, group, l2s, folds=4, seed=0)
    assert set(fit["cv_accuracy"].values()) == {0.9}, fit["cv_accuracy"]  # the exact tie this test is about
    assert set(fit["cv_log_loss"]) == set(l2s) and fit["l2"] == min(l2s, key=fit["cv_log_loss"].get) == 0.1
    assert fit["cv_log_loss"][0.1] < min(fit["cv_log_loss"][1e-3], fit["cv_log_loss"][10.0]) - 0.01
    for seed in (1, 2):
        noise = 1 + 1e-6 * torch.randn(features.shape, generator=torch.Generator().manual_seed(seed))
        noisy = fit_linear_head(features * noise, chosen, rejected, group, l2s, folds=4, seed=0)
        assert noisy["l2"] == 0.1
        assert noisy["cv_log_loss"] == pytest.approx(fit["cv_log_loss"], abs=1e-4)


def test_cv_log_loss_within_the_tolerance_counts_as_a_tie_and_the_stronger_l2_wins():
    """Two strengths too weak to matter (1e-9, 1e-8) give CV log-losses about 1e-6 apart, which is float
    noise, not evidence: they tie, and the stronger one is used whichever order they are listed in."""
    features, chosen, rejected, group = noisy_axis_preference()
    for l2s in ([1e-9, 1e-8], [1e-8, 1e-9]):
        fit = fit_linear_head(features, chosen, rejected, group, l2s, folds=4, seed=0)
        assert abs(fit["cv_log_loss"][1e-9] - fit["cv_log_loss"][1e-8]) < 1e-4
        assert fit["l2"] == 1e-8


def test_last_token_features_are_what_the_score_head_reads(tok, toy_run):
    """Scores from the features times the head weight equal the model's own scores, for every sequence,
    and the pair indices point at each group's chosen and rejected sequences."""
    _, trainer, held, _ = toy_run
    model = trainer.unwrap(trainer.model).eval()
    features, chosen, rejected, group = last_token_features(model, held, tok.pad_token_id, batch_size=3)
    batch = rm_collate(held.items, tok.pad_token_id)
    with torch.no_grad():
        expected = reward_scores(model, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(features @ model.score.weight[0].detach(), expected, atol=1e-5)
    assert chosen.tolist() == batch["chosen_index"].tolist() and rejected.tolist() == batch["rejected_index"].tolist()
    assert group.tolist() == list(range(len(held)))


def test_train_rm_head_only_fits_the_head_and_saves_a_model_that_scores_the_same(sft_dir, tmp_path):
    """TRAIN_LAYERS=0: the backbone is untouched, the head is fitted (training loss below log 2, held-out
    accuracy above the fresh head's, the format preference learned), and the saved model's end-to-end accuracy equals the one in summary.json."""
    out = str(tmp_path / "rm_head")
    run_inline("train_rm.py", "--model", sft_dir, "--out_dir", out, "--train_layers", "0", "--train_limit", "600",
               "--eval_limit", "100", "--head_l2", "0.01,0.1")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["head_l2"] in (0.01, 0.1) and set(summary["cv_accuracy"]) == set(summary["cv_log_loss"]) == {"0.01", "0.1"}
    assert summary["cv_log_loss"][f"{summary['head_l2']:g}"] <= min(summary["cv_log_loss"].values()) + 1e-4  # the pick
    # the fitted head learns the format preference (0.935-0.97 on the test split); the fresh head's random
    # direction can order as many pairs overall (0.627 both, on one CPU), never more
    assert summary["accuracy"] >= summary["accuracy_base"] and summary["accuracy_format"] >= 0.9, summary
    assert summary["train_loss"] < math.log(2) - 0.05, summary  # a zero head would sit at log 2
    model, base = load_reward_model(out, PAD).eval(), load_reward_model(sft_dir, PAD)
    sft_params = dict(base.named_parameters())
    for name, p in model.named_parameters():
        if not name.startswith("score"):
            assert torch.equal(p, sft_params[name]), name
    held = RMDataset(os.path.join(ROOT, "ds/rm_test_ranked.jsonl"), load_tokenizer(out), 96, limit=100, verbose=False)
    assert evaluate_pairs(model, held, PAD, 64)["accuracy"] == pytest.approx(summary["accuracy"], abs=1e-6)


def test_too_long_drop_leaves_out_only_the_over_long_comparisons_and_counts_them(tok, tmp_path):
    """TOO_LONG='drop' (TRL's rule): a comparison with any sequence over max_len is left out, counted and
    reported; the others are encoded exactly as under 'cut'."""
    rows = [{"prompt": "Add.\n1 and 2", "chosen": "The answer is 3.", "rejected": "3"},
            {"prompt": "word " * 80, "chosen": "The answer is 3.", "rejected": "3"},
            {"prompt": "Sort.\n2 1", "chosen": "The answer is 1 2.", "rejected": "1 2"}]
    path = write_rows(tmp_path, "mixed.jsonl", rows)
    cut = RMDataset(path, tok, max_len=24, verbose=False)
    drop = RMDataset(path, tok, max_len=24, verbose=False, too_long="drop")
    assert len(cut) == 3 and len(drop) == 2 and drop.dropped == 1
    assert [it["sequences"] for it in drop.items] == [cut.items[0]["sequences"], cut.items[2]["sequences"]]
    assert [g["prompt"] for g in drop.groups] == [rows[0]["prompt"], rows[2]["prompt"]]
    assert "1 groups longer than max_len left out" in drop.report("x")
    with pytest.raises(ConfigError, match="TOO_LONG"):
        RMDataset(path, tok, max_len=24, verbose=False, too_long="truncate")


def test_set_dropout_turns_every_dropout_off_and_says_so_in_the_config():
    """DROPOUT=0 (train_rm.py): a model built with dropout 0.1 gives the same output twice in training
    mode (it did not before), and its config records 0."""
    from conftest import tiny_model
    from model.load import set_dropout

    model = tiny_model(dropout=0.1).train()
    ids = torch.arange(3, 19)[None]
    assert not torch.equal(model(ids).logits, model(ids).logits)
    set_dropout(model, 0.0)
    assert torch.equal(model(ids).logits, model(ids).logits)
    assert model.config.dropout == 0.0 and model.config.attention_dropout == 0.0


def test_two_micro_batches_make_the_step_of_one_batch(tok, tmp_path):
    """GRAD_ACCUM: a step over two micro-batches (a ranked group of 4 replies, 6 pairs, then a 1-pair group)
    has the gradient of the 7 pairs in one batch: each micro-batch counts by its pairs (the reward-model
    side-by-side runs 8 pairs a step as 2 x 4)."""
    rows = [{"prompt": "How is the day?\n", "responses": ["It is good.", "It is fine.", "It is bad.", "No."]},
            {"prompt": "How is the night?\n", "chosen": "It is calm.", "rejected": "It is loud."}]
    data = RMDataset(write_rows(tmp_path, "mixed.jsonl", rows), tok, 48, verbose=False)

    def stepped(batch_size, grad_accum):
        trainer = RMTrainer(tiny_rm(len(tok)), tok, data, None, run_config={}, eval_batch_size=8,
                            **trainer_configs(tmp_path / f"b{batch_size}", batch_size=batch_size,
                                              grad_accum=grad_accum))
        trainer.epoch_order = lambda epoch: torch.arange(len(data))  # the file's order
        return step_gradient(trainer)
    together, accumulated = stepped(2, 1), stepped(1, 2)
    assert torch.allclose(together, accumulated, atol=1e-7, rtol=1e-4), (together - accumulated).abs().max()


def test_simulated_labelling_renders_prompts_with_the_chat_template(monkeypatch):
    """label_samples.py --chat_template True samples the policy on the prompts as it was trained on them
    (SmolLM2's pipeline): the model's own chat template, not the Alpaca rendering."""
    import label_samples
    import model.generate as gen
    from dataset.chat import prompt_ids

    chat_tok = load_tokenizer("embedded")
    chat_tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                              "{% if add_generation_prompt %}[assistant] {% endif %}")
    seen = []

    def fake_generate(model, tokenizer, ids, max_new_tokens, **sampling):
        seen.extend(ids)
        width = max(map(len, ids))
        answers = [tokenizer(a, add_special_tokens=False).input_ids for a in ("3", "The answer is 3.")]
        rows = [[tokenizer.pad_token_id] * (width - len(p)) + p + answers[i % 2] for i, p in enumerate(ids)]
        return torch.tensor([r + [tokenizer.pad_token_id] * (width + 8 - len(r)) for r in rows])

    monkeypatch.setattr(gen, "generate", fake_generate)
    row = {"type": "add", "instruction": "Add the two numbers.", "input": "1 and 2"}
    ranked, left_out = label_samples.label(None, chat_tok, [row], 2, 1.0, 72, 8, chat_template=True)
    assert seen == [prompt_ids(chat_tok, row, True)] * 2
    assert chat_tok.decode(seen[0]).startswith("[user] ") and "### Instruction" not in chat_tok.decode(seen[0])
    assert left_out == 0 and ranked[0]["responses"] == ["The answer is 3.", "3"]
    seen.clear()
    label_samples.label(None, chat_tok, [row], 2, 1.0, 72, 8)  # the default: the Alpaca rendering
    assert "### Instruction" in chat_tok.decode(seen[0])


def test_eval_rm_scores_an_ensemble_as_ppo_reads_it(toy_run, tok, tmp_path):
    """bench/eval_rm.py --ensemble: the models as one reward; each member standardised over the file's responses
    (mean 0, std 1), so a 'mean' of one model ranks as the model does; identical members have no spread, so
    'mean_minus_std' of two copies is the model's ranking too, and its line says it is the ensemble."""
    _, trainer, held, rm_dir = toy_run
    trained = load_reward_model(rm_dir, tok.pad_token_id).eval()
    alone = evaluate_pairs(trained, held, tok.pad_token_id, 64)
    ensemble = RewardEnsemble([trained, tiny_rm(len(tok)).eval()], "mean", 1.0).eval()
    batch = rm_collate(held.items, tok.pad_token_id)
    parts = [rm_collate(held.items[i: i + 7], tok.pad_token_id) for i in range(0, len(held.items), 7)]
    ensemble.calibrate_batches((b["input_ids"], b["attention_mask"]) for b in parts)  # the stats cover every batch
    with torch.no_grad():
        z = ensemble.member_scores(batch["input_ids"], batch["attention_mask"], position_ids_for(batch["attention_mask"]))
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-4) and torch.allclose(z.std(0), torch.ones(2), atol=1e-4)
    one = RewardEnsemble([trained], "mean", 1.0).eval()
    one.calibrate(batch["input_ids"], batch["attention_mask"])
    assert evaluate_pairs(one, held, tok.pad_token_id, 64)["accuracy"] == alone["accuracy"]
    held_file = os.path.join(os.path.dirname(rm_dir), "eval.jsonl")  # toy_run's held-out pairs
    out = run_inline("bench/eval_rm.py", "--models", f"{rm_dir},{rm_dir}", "--data", held_file,
                     "--ensemble", "mean_minus_std", "--max_len", "48")
    line = [x for x in out.splitlines() if x.startswith("ensemble mean_minus_std of")]
    assert len(line) == 1 and f"accuracy {alone['accuracy']:.4f} ({alone['pairs']} pairs)" in line[0]


def test_on_policy_table_averages_each_rewards_correctness_accuracy_per_type():
    """bench/on_policy_table.py: eval_rm.py's lines, tagged with reward and seed, become one row per reward with the
    mean over seeds of the correctness-only accuracy, overall and per type (a type missing in a seed is left out)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import on_policy_table

    def line(reward, seed, acc, pairs, types):
        return (f"{reward}\t{seed}\tout/rm on out/label/eval.jsonl: accuracy 0.7000 (300 pairs), accuracy_correctness "
                f"{acc:.4f} ({pairs} pairs), accuracy_format 0.7000 (200 pairs), margin 1.000; correctness-only by type: "
                + ", ".join(f"{t} {v:.3f}" for t, v in types.items()) + "\n")

    lines = [line("default", 0, 0.6, 50, {"add": 0.5, "count": 0.8}), line("default", 1, 0.8, 60, {"add": 0.7, "count": 0.6,
             "sort": 0.25}), line("iterated", 0, 0.9, 50, {"count": 1.0})]
    assert on_policy_table.parse(lines[1])[2] == {"all": 0.8, "pairs": 60, "add": 0.7, "count": 0.6, "sort": 0.25}
    rows = on_policy_table.table(lines).splitlines()
    assert rows[0] == "| reward | seeds | correctness-only | add | count | sort |"
    assert rows[2] == "| default | 2 | 0.700 (0.60 / 0.80) | 0.600 (0.50 / 0.70) | 0.700 (0.80 / 0.60) | 0.250 (0.25) |"
    assert rows[3] == "| iterated | 1 | 0.900 (0.90) | - | 1.000 (1.00) | - |"
    with pytest.raises(ValueError, match="no correctness-only"):
        on_policy_table.parse("default\t0\tout/rm on x.jsonl: accuracy 0.5000 (10 pairs), margin 0.1")


def test_simulated_labelling_samples_under_bf16_autocast_when_asked(monkeypatch, sft_dir, tmp_path):
    """label_samples.py --bf16 True samples under CPU bf16 autocast (as PPO's rollouts with --bf16 True); the
    default samples in the model's own precision."""
    import model.generate as gen

    states = []

    def fake_generate(model, tokenizer, ids, max_new_tokens, **sampling):
        states.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        width = max(map(len, ids))
        return torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p + [tokenizer.eos_token_id] for p in ids])

    monkeypatch.setattr(gen, "generate", fake_generate)
    data = os.path.join(ROOT, "ds", "rm_val_ranked.jsonl")
    for flag in ("True", "False"):
        states.clear()
        run_inline("label_samples.py", "--model", sft_dir, "--train_prompts", data, "--eval_prompts", data,
                   "--limit", "2", "--out", str(tmp_path / flag), "--bf16", flag)
        assert states == [flag == "True"] * 2  # the train and the eval prompts


def test_eval_rm_scores_under_bf16_autocast_when_asked(toy_run, monkeypatch):
    """bench/eval_rm.py --bf16 True scores under CPU bf16 autocast (the ensemble's calibration too); the toy
    model's ranking survives it."""
    import trainer.rm as rm_module

    _, _, held, rm_dir = toy_run
    original, states = rm_module.evaluate_pairs, []

    def recording(*args, **kwargs):
        states.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return original(*args, **kwargs)

    monkeypatch.setattr(rm_module, "evaluate_pairs", recording)
    held_file = os.path.join(os.path.dirname(rm_dir), "eval.jsonl")
    lines = {}
    for flag in ("True", "False"):
        out = run_inline("bench/eval_rm.py", "--models", rm_dir, "--data", held_file, "--max_len", "48", "--bf16", flag)
        lines[flag] = [x for x in out.splitlines() if " on " in x and ": accuracy " in x][0]
    assert states == [True, False]
    assert lines["True"].split(", margin")[0] == lines["False"].split(", margin")[0]  # same accuracy
