"""Fuzzing the readers: seeded random corruptions of valid rows of every accepted format either load or
stop with the project's DataError naming the corrupted row's file:line; never any other exception."""
import json
import os
import random
import re

import pytest

from dataset.io import DataError
from dataset.prompt import PromptDataset
from dataset.rm import RMDataset
from dataset.sft import SFTDataset
from model.load import load_tokenizer

HH = "\n\nHuman: Add 2 and 3.\n\nAssistant:"
VALID = {  # reader -> valid rows of each format it accepts
    "sft": [{"type": "add", "instruction": "Add the two numbers.", "input": "22 and 24", "output": "The answer is 46."},
            {"instruction": "Say hi.", "output": "hi"},
            {"prompt": "Say hi.\n", "completion": "hi"}],
    "prompt": [{"type": "sort", "instruction": "Sort the numbers from smallest to largest.", "input": "5 33 65 62"},
               {"instruction": "Say hi.", "input": ""},
               {"prompt": "Say hi.\n"}],
    "rm": [{"type": "add", "instruction": "Add the two numbers.", "input": "13 and 18",
            "responses": ["The answer is 31.", "31", "The answer is 33.", "33"]},
           {"prompt": "Say hi.\n", "responses": ["hi", "hello there", "no"]},
           {"type": "add", "instruction": "Add the two numbers.", "input": "13 and 18", "chosen": "The answer is 31.", "rejected": "31"},
           {"prompt": "Say hi.\n", "chosen": "hi", "rejected": "no"},
           {"chosen": HH + " 5.", "rejected": HH + " 6."}],
}
ODD_VALUES = [0, -1, 1.5, True, False, [], {}, ["x"], [1, 2], {"a": "b"}, "", " ", "\u0000", "x" * 300]
RAW_VALUES = ["1" * 5000, "1e999", "-1e999", "NaN", "Infinity", "[" * 20000 + "]" * 20000, '"\\ud800x"', '"a\\udfffb"']


def corrupt(row: dict, rng: random.Random) -> tuple[str, str]:
    """One corrupted JSON line from a valid row -> (line, what was done)."""
    row = json.loads(json.dumps(row))
    key = rng.choice(sorted(row))
    kind = rng.choice(["cut", "type", "null", "raw", "drop", "not_object", "bom", "u2028", "list_item", "empty_list",
                       "type_field"])
    if kind == "cut":
        text = json.dumps(row)
        return text[: rng.randrange(1, len(text))], kind
    if kind == "type":
        row[key] = rng.choice(ODD_VALUES)
    elif kind == "null":
        row[key] = None
    elif kind == "raw":  # values json.dumps cannot write: huge integers, inf, NaN, deep nesting, lone surrogates
        raw = rng.choice(RAW_VALUES)
        row[key] = "@RAW@"
        return json.dumps(row).replace('"@RAW@"', raw), f"{kind} {raw[:12]}"
    elif kind == "drop":
        del row[key]
    elif kind == "not_object":
        return rng.choice(["[1, 2]", '"text"', "3", "null", "true", "[]"]), kind
    elif kind == "bom":  # a byte-order mark in front of this line (fine on line 1 only)
        return "\ufeff" + json.dumps(row), kind
    elif kind == "u2028":  # a raw line-separator character inside a string: still one JSON line
        if isinstance(row[key], str):
            row[key] = row[key][:1] + "\u2028" + row[key][1:]
        return json.dumps(row, ensure_ascii=False), kind
    elif kind == "list_item" and isinstance(row.get("responses"), list):
        row["responses"][rng.randrange(len(row["responses"]))] = rng.choice(ODD_VALUES + [None])
    elif kind == "empty_list" and "responses" in row:
        row["responses"] = rng.choice([[], ["only one"]])
    elif kind == "type_field":
        row["type"] = rng.choice(["add", "capital", 3, None, "nonsense"])
    return json.dumps(row), kind


def read(reader: str, path: str, tok):
    if reader == "sft":
        return SFTDataset(path, tok, 48, verbose=False).items
    if reader == "prompt":
        return PromptDataset(path, tok, 48, verbose=False).items
    return RMDataset(path, tok, 48, verbose=False).items


@pytest.mark.parametrize("reader", ["sft", "prompt", "rm"])
def test_corrupted_rows_load_or_name_file_and_line(reader, tmp_path, capsys):
    """120 seeded cases per reader (cut lines, wrong types, nulls, huge numbers, inf/NaN, deep nesting,
    lone surrogates, missing fields, non-objects, a BOM, U+2028, CRLF line ends, bad response lists)."""
    tok = load_tokenizer("embedded")
    rng = random.Random(reader)
    outcomes = {"loaded": 0, "error": 0}
    for case in range(120):
        rows = [json.dumps(r) for r in VALID[reader]]
        k = rng.randrange(len(rows))
        rows[k], what = corrupt(VALID[reader][k], rng)
        newline = rng.choice(["\n", "\r\n"])
        path = str(tmp_path / f"case{case}.jsonl")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(newline.join(rows) + rng.choice(["", newline]))
        try:
            items = read(reader, path, tok)
        except DataError as e:
            outcomes["error"] += 1
            assert re.match(rf"{re.escape(path)}:{k + 1}: \S", str(e)), f"case {case} ({what}): {e}"
        except Exception as e:  # anything else is a reader bug
            pytest.fail(f"case {case} ({what}, line {k + 1}: {rows[k][:120]!r}) raised {type(e).__name__}: {e}")
        else:
            outcomes["loaded"] += 1
            assert 0 < len(items) <= len(rows)
    capsys.readouterr()
    assert outcomes["error"] > 40 and outcomes["loaded"] > 10, outcomes  # both outcomes exercised


VALID["sft"].append({"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]})
VALID["prompt"].append({"messages": [{"role": "user", "content": "Say hi."}]})
VALID["rm"].append({"prompt": [{"role": "user", "content": "Say hi."}],
                    "chosen": [{"role": "assistant", "content": "hi"}], "rejected": [{"role": "assistant", "content": "no"}]})


def trainable(reader: str, item: dict) -> bool:
    """What a loaded item must be for training not to crash later: flat lists of token ids."""
    def ids(x):
        return isinstance(x, list) and len(x) > 0 and all(isinstance(i, int) for i in x)
    if reader == "sft":
        return ids(item["input_ids"]) and len(item["labels"]) == len(item["input_ids"])
    if reader == "prompt":
        return ids(item["prompt_ids"])
    return len(item["sequences"]) >= 2 and all(ids(s) for s in item["sequences"]) and len(item["pairs"]) >= 1


@pytest.mark.parametrize("reader", ["sft", "prompt", "rm"])
def test_every_field_of_every_format_with_every_wrong_type(reader, tmp_path, capsys):
    """Each field of each accepted format, set to each odd value (and null, and a list of odd values):
    the reader raises DataError naming file:line, or loads an item training can use (no silent row that
    crashes the collator mid-training, as a ranked `prompt` given as a list did)."""
    tok = load_tokenizer("embedded")
    case = 0
    for row in VALID[reader]:
        for key in sorted(row):
            for value in ODD_VALUES + [None, [None], [{"role": "assistant", "content": "x"}]]:
                path = tmp_path / f"c{case}.jsonl"
                path.write_text(json.dumps({**row, key: value}) + "\n")
                case += 1
                try:
                    items = read(reader, str(path), tok)
                except DataError as e:
                    assert str(e).startswith(str(path)), e
                except Exception as e:
                    pytest.fail(f"{reader} {key}={value!r} raised {type(e).__name__}: {e}")
                else:
                    assert items and all(trainable(reader, it) for it in items), (key, value, items[:1])
    capsys.readouterr()


def test_paths_that_are_not_files_and_files_with_nothing_to_train_on(tmp_path, capsys):
    """A directory, a symbolic-link loop, a link to a directory, an empty or blank file, an HH file whose
    every row is skipped, HH rows whose replies are both empty, messages that start with an assistant
    turn: each a one-line DataError, never a traceback and never an empty dataset."""
    tok = load_tokenizer("embedded")
    (tmp_path / "dir.jsonl").mkdir()
    os.symlink(tmp_path / "loop_b.jsonl", tmp_path / "loop_a.jsonl")
    os.symlink(tmp_path / "loop_a.jsonl", tmp_path / "loop_b.jsonl")
    os.symlink(tmp_path / "dir.jsonl", tmp_path / "to_dir.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n \n\r\n")
    hh = "\n\nHuman: {}\n\nAssistant:{}"
    (tmp_path / "skipped.jsonl").write_text(json.dumps({"chosen": hh.format("a", " x"), "rejected": hh.format("b", " y")}))
    (tmp_path / "empty_replies.jsonl").write_text(json.dumps({"chosen": hh.format("a", ""), "rejected": hh.format("a", " ")}))
    (tmp_path / "assistant_first.jsonl").write_text(json.dumps({"messages": [
        {"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}))
    cases = [(r, n) for r in ("sft", "prompt", "rm")
             for n in ("dir", "loop_a", "to_dir", "empty", "blank")] + [
        ("rm", "skipped"), ("rm", "empty_replies"), ("sft", "assistant_first")]
    for reader, name in cases:
        path = str(tmp_path / f"{name}.jsonl")
        with pytest.raises(DataError) as err:
            read(reader, path, tok)
        assert str(err.value).startswith(path) and "\n" not in str(err.value), (reader, name, err.value)
    capsys.readouterr()
