"""Chat formats and conversational rows (dataset/chat.py): templates, assistant-only masks, bad rows."""

import pytest

from dataset.chat import (
    ALPACA_TEMPLATE,
    EMBEDDED_TEMPLATE,
    chat_prompt_ids,
    encode_conversation,
    render,
    render_prompt,
    row_messages,
    use_chat_format,
)
from dataset.io import DataError
from dataset.prompt import PromptDataset, read_prompts
from dataset.rm import RMDataset
from dataset.sft import SFTDataset
from dataset.tokens import encode_prompt, encode_response
from model.load import load_tokenizer

from conftest import write_jsonl

CONVERSATION = [{"role": "system", "content": "Answer in a sentence."},
                {"role": "user", "content": "Add the two numbers.\n1 and 2"},
                {"role": "assistant", "content": "The answer is 3."},
                {"role": "user", "content": "Give the opposite of the word.\nhot"},
                {"role": "assistant", "content": "The answer is cold."}]


@pytest.fixture(scope="module")
def tok(alpaca_tok):
    return alpaca_tok


def test_alpaca_template_gives_the_training_prompt_tokens(tok):
    """The Alpaca chat template, which every checkpoint carries, renders each shipped prompt to exactly the
    tokens the model was trained on, so pipeline(messages) and chat.py ask what SFT taught."""
    rows = read_prompts("ds/prompts_val.jsonl") + read_prompts("ds/sft_train.jsonl", 200)
    for row in rows:
        assert chat_prompt_ids(tok, row_messages(row)) == encode_prompt(tok, render_prompt(row))
    row = rows[-1]
    ids, labels = encode_conversation(
        tok, row_messages(row) + [{"role": "assistant", "content": row["output"]}]
    )
    prompt, response = encode_prompt(tok, render_prompt(row)), encode_response(tok, row["output"])
    assert ids == prompt + response and labels == [-100] * len(prompt) + response


def test_alpaca_text_is_written_once():
    """render_prompt and the Alpaca chat template give the same text, character for character, with and
    without an input: both are built from one set of pieces, so the two paths cannot drift apart."""
    tokenizer = load_tokenizer("embedded")
    tokenizer.chat_template = ALPACA_TEMPLATE.replace("{{ bos }}", "")
    rows = [{"instruction": "Add the two numbers.", "input": "12 and 30"},
            {"instruction": "Name a colour.", "input": ""}, {"instruction": "Name a colour."}]
    for row in rows:
        assert render(tokenizer, row_messages(row), add_generation_prompt=True) == render_prompt(
            row
        )
    assert (
        render_prompt(rows[0])
        == "### Instruction:\nAdd the two numbers.\n\n### Input:\n12 and 30\n\n### Response:\n"
    )


@pytest.mark.parametrize("template", ["alpaca", "embedded"])
def test_only_assistant_tokens_are_supervised(tok, tmp_path, template):
    """In a multi-turn `messages` row, the supervised tokens are exactly each assistant turn's text and its
    EOS; system, user and template markup tokens get -100 (with both formats)."""
    chat_tok = load_tokenizer("embedded")
    use_chat_format(chat_tok, template == "embedded")
    assert (chat_tok.chat_template == EMBEDDED_TEMPLATE) == (template == "embedded")
    ds = SFTDataset(
        write_jsonl(tmp_path, "c.jsonl", [{"messages": CONVERSATION}]),
        chat_tok,
        512,
        verbose=False,
    )
    ids, labels = ds.items[0]["input_ids"], ds.items[0]["labels"]
    supervised = [t for t in labels if t != -100]
    assert supervised == encode_response(chat_tok, "The answer is 3.") + encode_response(
        chat_tok, "The answer is cold."
    )
    runs = "".join("s" if l != -100 else "." for l in labels).split(".")
    assert len([r for r in runs if r]) == 2  # two separate supervised spans
    assert [t for t, l in zip(ids, labels) if l != -100] == supervised
    assert (
        chat_tok.decode([t for t, l in zip(ids, labels) if l == -100]).count(
            "Answer in a sentence."
        )
        == 1
    )
    assert ids[-1] == chat_tok.eos_token_id and labels[-1] == chat_tok.eos_token_id


def test_chat_template_true_renders_alpaca_rows_with_the_tokenizers_own_template(tmp_path):
    """CHAT_TEMPLATE=True: an instruction/input row becomes one user message in the tokenizer's template
    (the embedded tokenizer's own), in SFT and PPO prompt data alike."""
    chat_tok = load_tokenizer("embedded")
    use_chat_format(chat_tok, True)
    row = {"instruction": "Add the two numbers.", "input": "1 and 2", "output": "3"}
    path = write_jsonl(tmp_path, "a.jsonl", [row])
    item = SFTDataset(path, chat_tok, 512, verbose=False, chat_template=True).items[0]
    assert (
        chat_tok.decode(item["input_ids"])
        == "</s><|user|>\nAdd the two numbers.\n1 and 2\n<|assistant|>\n3</s>"
    )
    assert chat_tok.decode([t for t in item["labels"] if t != -100]) == "3</s>"
    prompt = PromptDataset(path, chat_tok, 512, verbose=False, chat_template=True).items[0][
        "prompt_ids"
    ]
    assert prompt == item["input_ids"][: len(prompt)] and chat_tok.decode(prompt).endswith(
        "<|assistant|>\n"
    )


def test_long_conversation_is_cut_from_the_left_keeping_bos_and_last_reply(tok, tmp_path):
    """Over MAX_LEN, a conversation loses its oldest tokens (BOS kept) and keeps its last reply whole,
    with every kept label still aligned to its token."""
    path = write_jsonl(tmp_path, "c.jsonl", [{"messages": CONVERSATION}])
    full, cut = (SFTDataset(path, tok, max_len, verbose=False).items[0] for max_len in (512, 30))
    n = len(cut["input_ids"])
    assert n == 30 and cut["input_ids"][0] == tok.bos_token_id
    assert (
        cut["input_ids"][1:] == full["input_ids"][-(n - 1) :]
        and cut["labels"][1:] == full["labels"][-(n - 1) :]
    )


def test_conversational_preference_rows_equal_the_alpaca_pair(tok, tmp_path):
    """TRL's conversational preference rows (implicit and explicit prompt) tokenize exactly like the same
    comparison written as an instruction/input pair row."""
    user = {"role": "user", "content": "Add the two numbers.\n1 and 2"}
    rows = [
        {
            "instruction": "Add the two numbers.",
            "input": "1 and 2",
            "chosen": "The answer is 3.",
            "rejected": "4",
        },
        {
            "chosen": [user, {"role": "assistant", "content": "The answer is 3."}],
            "rejected": [user, {"role": "assistant", "content": "4"}],
        },
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": "The answer is 3."}],
            "rejected": [{"role": "assistant", "content": "4"}],
        },
    ]
    items = RMDataset(write_jsonl(tmp_path, "p.jsonl", rows), tok, 96, verbose=False).items
    assert items[0]["sequences"] == items[1]["sequences"] == items[2]["sequences"]


@pytest.mark.parametrize(
    "kind,row,message",
    [
        (
            "sft",
            {"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]},
            r"x.jsonl:2: messages\[0\] has no 'role'",
        ),
        (
            "sft",
            {"messages": [{"role": "user", "content": "hi"}]},
            "x.jsonl:2: field 'messages' has no assistant turn",
        ),
        (
            "sft",
            {"messages": [{"role": "bot", "content": "hi"}]},
            r"x.jsonl:2: messages\[0\] has role 'bot'",
        ),
        (
            "sft",
            {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
            "has no text",
        ),
        (
            "prompt",
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            },
            "x.jsonl:2: field 'messages' must end with a user turn",
        ),
        (
            "rm",
            {
                "chosen": [{"role": "user", "content": "hi"}],
                "rejected": [{"role": "user", "content": "ho"}],
            },
            "x.jsonl:2: field 'chosen' must end with an assistant turn",
        ),
        (
            "rm",
            {
                "chosen": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                ],
                "rejected": [
                    {"role": "user", "content": "c"},
                    {"role": "assistant", "content": "d"},
                ],
            },
            "x.jsonl:2: 'chosen' and 'rejected' must differ only in their final assistant turn",
        ),
    ],
)
def test_bad_conversational_rows_name_file_and_line(tok, tmp_path, kind, row, message):
    """A turn without a role, an unknown role, an empty turn, a missing assistant turn or a prompt that
    ends with the assistant is a DataError naming file:line and the turn."""
    good = {
        "sft": {
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        },
        "prompt": {"messages": [{"role": "user", "content": "a"}]},
        "rm": {"prompt": "a", "chosen": "b", "rejected": "c"},
    }[kind]
    path = write_jsonl(tmp_path, "x.jsonl", [good, row])
    load = {"sft": lambda: SFTDataset(path, tok, 96, verbose=False),
            "prompt": lambda: PromptDataset(path, tok, 96, verbose=False),
            "rm": lambda: RMDataset(path, tok, 96, verbose=False)}[kind]
    with pytest.raises(DataError, match=message):
        load()
