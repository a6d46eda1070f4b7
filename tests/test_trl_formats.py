"""TRL's standard dataset formats, each read by the stages it makes sense for (table: docs/sft.md)."""

import pytest

from dataset.io import DataError
from dataset.prompt import PromptDataset, read_prompts
from dataset.comparisons import read_comparisons
from dataset.rm import RMDataset
from dataset.sft import SFTDataset
from model.load import load_tokenizer

from conftest import write_jsonl

USER = [{"role": "user", "content": "Add the two numbers.\n2 and 24"}]
REPLY = [{"role": "assistant", "content": "The answer is 26."}]


@pytest.fixture(scope="module")
def tok(alpaca_tok):
    return alpaca_tok


def test_sft_prompt_completion_plain(tok, tmp_path):
    """The prompt as is, the completion supervised (its tokens and EOS), the prompt not."""
    item = SFTDataset(
        write_jsonl(tmp_path, "a.jsonl", [{"prompt": "Q: 2+2?\nA:", "completion": " 4"}]), tok, 64
    ).items[0]
    supervised = [t for t, lab in zip(item["input_ids"], item["labels"]) if lab != -100]
    assert (
        tok.decode(supervised, skip_special_tokens=True) == " 4"
        and supervised[-1] == tok.eos_token_id
    )


def test_sft_prompt_completion_conversational_equals_messages(tok, tmp_path):
    conv = SFTDataset(
        write_jsonl(tmp_path, "c.jsonl", [{"prompt": USER, "completion": REPLY}]), tok, 64
    ).items
    msgs = SFTDataset(write_jsonl(tmp_path, "m.jsonl", [{"messages": USER + REPLY}]), tok, 64).items
    assert conv == msgs and any(lab != -100 for lab in conv[0]["labels"])


def test_prompt_only_plain_for_ppo_grpo_and_winrate(tok, tmp_path):
    path = write_jsonl(tmp_path, "p.jsonl", [{"prompt": "Q: 2+2?\nA:"}])
    item = PromptDataset(path, tok, 64, verbose=False).items[0]
    assert tok.decode(item["prompt_ids"], skip_special_tokens=True) == "Q: 2+2?\nA:"
    assert read_prompts(path)[0]["prompt"] == "Q: 2+2?\nA:"


def test_prompt_only_conversational_for_ppo_grpo_and_winrate(tok, tmp_path):
    """{"prompt": [turns]} reads as the same `messages` row (it was refused: 'must be a string')."""
    conv = PromptDataset(
        write_jsonl(tmp_path, "c.jsonl", [{"prompt": USER}]), tok, 64, verbose=False
    ).items[0]
    msgs = PromptDataset(
        write_jsonl(tmp_path, "m.jsonl", [{"messages": USER}]), tok, 64, verbose=False
    ).items[0]
    assert conv["prompt_ids"] == msgs["prompt_ids"] and conv["row"]["messages"] == USER
    assert read_prompts(str(tmp_path / "c.jsonl"))[0]["messages"] == USER


def test_preference_explicit_prompt_plain(tok, tmp_path):
    row = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    groups = read_comparisons(write_jsonl(tmp_path, "e.jsonl", [row]))
    assert groups[0]["prompt"] == "The sky is" and groups[0]["responses"] == [" blue.", " green."]
    assert len(RMDataset(str(tmp_path / "e.jsonl"), tok, 64, verbose=False)) == 1


def test_preference_implicit_prompt_plain(tok, tmp_path):
    """TRL's {"chosen": "The sky is blue.", "rejected": "The sky is green."}: the shared text, cut at a
    word boundary, is the prompt."""
    path = write_jsonl(
        tmp_path, "i.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}]
    )
    group = read_comparisons(path)[0]
    assert group["prompt"] == "The sky is " and group["responses"] == ["blue.", "green."]
    assert len(RMDataset(path, tok, 64, verbose=False)) == 1
    with pytest.raises(DataError, match="share no prompt text"):
        read_comparisons(write_jsonl(tmp_path, "x.jsonl", [{"chosen": "Yes.", "rejected": "No."}]))


def test_preference_explicit_prompt_conversational(tok, tmp_path):
    path = write_jsonl(tmp_path, "ec.jsonl", [{"prompt": USER, "chosen": REPLY,
                                         "rejected": [{"role": "assistant", "content": "27"}]}])
    group = read_comparisons(path)[0]
    assert group["messages"] == USER and group["responses"] == ["The answer is 26.", "27"]
    assert read_prompts(path)[0]["messages"] == USER  # the same file as PPO/GRPO prompts


def test_preference_implicit_prompt_conversational(tok, tmp_path):
    path = write_jsonl(
        tmp_path,
        "ic.jsonl",
        [{"chosen": USER + REPLY, "rejected": USER + [{"role": "assistant", "content": "27"}]}],
    )
    assert read_comparisons(path)[0]["messages"] == USER
    assert read_prompts(path)[0]["messages"] == USER


def test_mixed_text_and_turns_is_an_error_naming_the_line(tmp_path):
    with pytest.raises(
        DataError, match=r"m.jsonl:1: 'prompt' is a list of turns but 'completion' is text"
    ):
        SFTDataset(
            write_jsonl(tmp_path, "m.jsonl", [{"prompt": USER, "completion": "x"}]),
            load_tokenizer("embedded"),
            64,
        )
