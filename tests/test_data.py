"""Reading data: validation errors name file:line:field; the loss mask covers response + EOS only."""
import json

import pytest

from dataset.io import DataError, read_rows
from dataset.sft import SFT_FORMATS, SFTDataset, sft_collate
from dataset.tokens import TruncationCounter, fit_lengths
from model.load import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("embedded")


def write(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return str(p)


def test_mask_supervises_only_response_and_eos(tok, tmp_path):
    """Labels equal the token ids exactly on the response tokens and the final EOS; -100 on the prompt
    (including OPT's leading </s>) and on padding."""
    rows = [{"instruction": "Add the two numbers.", "input": "1 and 2", "output": "The answer is 3."},
            {"prompt": "Say hi.\n", "completion": "hi"}]
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    ds = SFTDataset(path, tok, max_len=96, verbose=False)
    batch = sft_collate([ds[0], ds[1]], tok.pad_token_id)
    for i, response in enumerate(["The answer is 3.", "hi"]):
        ids, labels = batch["input_ids"][i].tolist(), batch["labels"][i].tolist()
        resp = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(ds[i]["input_ids"])
        supervised = [t for t, l in zip(ids, labels) if l != -100]
        assert supervised == resp  # exactly the response and its EOS
        assert labels[n - len(resp): n] == resp and all(l == -100 for l in labels[: n - len(resp)] + labels[n:])
        assert ids[0] == tok.eos_token_id and labels[0] == -100  # BOS (= EOS id) is never supervised
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (len(ids) - n)


def test_truncation_cuts_prompt_from_left_and_counts():
    """An over-long row keeps BOS + the end of the prompt and the whole response; it is counted."""
    counter = TruncationCounter()
    p, r = fit_lengths(list(range(100, 130)), [1, 2, 3], max_len=13, counter=counter)
    assert p == [100] + list(range(121, 130)) and r == [1, 2, 3]
    p, r = fit_lengths(list(range(100, 120)), list(range(50)), max_len=20, counter=counter)
    assert len(p) == 8 and len(p) + len(r) == 20 and r == list(range(12))  # response cut only when it alone is too long
    fit_lengths([1, 2], [3], max_len=20, counter=counter)
    assert (counter.rows, counter.prompt_cut, counter.response_cut) == (3, 2, 1)


@pytest.mark.parametrize("content, match", [
    (b'{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "output"\n', r"d.jsonl:2: malformed JSON"),
    (b'{"instruction": "a", "input": "", "output": "b"}\n\n{"instruction": "a", "input": ""}\n', r"d.jsonl:3: field 'output' is missing"),
    (b'{"instruction": "a", "input": "", "output": "  "}\n', r"d.jsonl:1: field 'output' is empty"),
    (b'{"instruction": "a", "input": "", "output": 3}\n', r"d.jsonl:1: field 'output' must be a string"),
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n', r"d.jsonl:2: not valid UTF-8"),
    (b'[1, 2]\n', r"d.jsonl:1: expected a JSON object"),
])
def test_bad_rows_name_file_and_line(tmp_path, content, match):
    """Every bad row is an error that names the file, the line and the field."""
    with pytest.raises(DataError, match=match):
        read_rows(write(tmp_path, "d.jsonl", content), SFT_FORMATS, optional=("input",))


def test_missing_file_and_json_array(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_rows(str(tmp_path / "nope.jsonl"), SFT_FORMATS)
    path = write(tmp_path, "a.json", b'[{"prompt": "p", "completion": "c"},\n {"prompt": "p"}]')
    with pytest.raises(DataError, match=r"a.json:2: field"):
        read_rows(path, SFT_FORMATS)


def test_optional_input_may_be_missing(tmp_path):
    rows = read_rows(write(tmp_path, "d.jsonl", b'{"instruction": "a", "output": "b"}\n'), SFT_FORMATS, optional=("input",))
    assert rows[0]["output"] == "b" and rows[0]["_where"].endswith("d.jsonl:1")


def test_unreachable_hub_dataset_is_one_clear_error():
    """A datasets hub name that is neither cached nor reachable fails at once, naming the setting to check."""
    with pytest.raises(DataError, match="nobody/no-such-dataset: could not load it .*check the data path setting"):
        read_rows("nobody/no-such-dataset", SFT_FORMATS)


def test_hh_rows_are_prompts_up_to_the_last_assistant_turn(tmp_path):
    """An Anthropic HH row in a prompt file: the dialogue both replies share, as user/assistant messages
    ending with the user's turn (the reply PPO samples goes after it); a row that is no HH dialogue names its line."""
    from dataset.prompt import read_prompts

    path = tmp_path / "hh.jsonl"
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: sure",
            "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: no"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match=r"hh.jsonl:2.*HH dialogues"):
        read_prompts(str(path))
    path.write_text(json.dumps(good) + "\n")
    assert read_prompts(str(path))[0]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                                      {"role": "user", "content": "help me"}]
