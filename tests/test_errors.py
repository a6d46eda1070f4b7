"""Errors a user can fix arrive as one line, `error: <where>: <what> (<how to fix>)`, with an exit code per
kind and no traceback (INSTRUCT_DEBUG=1 shows it); a missing field is named from the row's own format."""
import json
import os
import subprocess
import sys

import pytest

from dataset.io import DataError, read_rows
from dataset.comparisons import PAIR_FORMATS, RANKED_FORMATS
from dataset.prompt import PROMPT_FORMATS
from dataset.sft import SFT_FORMATS

from conftest import ROOT


@pytest.mark.parametrize("formats, row, missing", [
    (RANKED_FORMATS + PAIR_FORMATS, {"prompt": "p", "chosen": "a"}, "rejected"),
    (RANKED_FORMATS + PAIR_FORMATS, {"instruction": "i", "input": "", "rejected": "a"}, "chosen"),
    (RANKED_FORMATS + PAIR_FORMATS, {"chosen": "a"}, "rejected"),
    (RANKED_FORMATS + PAIR_FORMATS, {"instruction": "i"}, "responses"),
    (SFT_FORMATS, {"prompt": "p"}, "completion"),
    (SFT_FORMATS, {"instruction": "i", "input": "x"}, "output"),
    (PROMPT_FORMATS, {"input": "x"}, "instruction"),
])
def test_missing_field_is_the_one_the_rows_own_format_lacks(tmp_path, formats, row, missing):
    """A comparison row with prompt and chosen lacks `rejected`, not `instruction` (the first format's field)."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"d.jsonl:1: field '{missing}' is missing \(accepted formats: "):
        read_rows(str(path), formats, optional=("input",))


def run(*args, debug=False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "INSTRUCT_DEBUG": "1" if debug else "0"}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_scripts_report_data_model_and_setting_errors_in_one_line(tmp_path):
    """A bad data row (exit 3), a wrong model path (exit 4) and an unknown setting (exit 2): stderr is the
    single line `error: ...` naming file:line or the setting, with no traceback; INSTRUCT_DEBUG=1 shows it."""
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    rm_args = ["train_rm.py", "--model", "embedded", "--train_data", str(data), "--out_dir", str(tmp_path / "rm")]
    procs = {  # started together: each pays the import time once, side by side
        "data": run(*rm_args),
        "model": run("train_rlhf.py", "--sft_model", "out/no_such_sft", "--out_dir", str(tmp_path / "ppo")),
        "setting": run("train_sft.py", "--max_step", "3"),
        "value": run("train_rm.py", "--dropout", "abc"),
        "debug": run(*rm_args, "--out_dir", str(tmp_path / "rm2"), debug=True),
    }
    result = {name: (p.wait(timeout=300), p.communicate()[1]) for name, p in procs.items()}
    expected = {
        "data": (3, f"error: {data}:2: field 'rejected' is missing (accepted formats: "),
        "model": (4, "error: SFT_MODEL='out/no_such_sft': no such directory, and not a hub id of the form 'org/name' (check the path"),
        "setting": (2, "error: --max_step: unknown setting (did you mean --max_steps"),
        "value": (2, "error: DROPOUT='abc': not a probability in [0, 1) (give e.g. 0.0"),
    }
    for name, (code, start) in expected.items():
        rc, err = result[name]
        lines = err.strip().splitlines()
        assert rc == code and len(lines) == 1 and lines[0].startswith(start) and lines[0].endswith(")"), (name, rc, err[-1500:])
    rc, err = result["debug"]
    assert rc != 0 and "Traceback (most recent call last)" in err and "DataError" in err
