"""The command line a new user meets: --help on every script, --config with a YAML or JSON recipe."""
import json
import re
import runpy
import sys

import pytest

from utils import ConfigError, configure

SCRIPTS = ["train_sft.py", "train_rm.py", "train_rlhf.py", "train_dpo.py", "train_peft.py", "chat.py",
           "eval_winrate.py", "label_samples.py"]


def settings_of(path: str) -> list[str]:
    """The names the script's settings block defines: UPPERCASE constants before the first function or
    the configure call."""
    block = re.split(r"^(?:def |config = configure)", open(path).read(), flags=re.M)[0]
    return re.findall(r"^([A-Z][A-Z0-9_]*) = ", block, flags=re.M)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_and_names_every_setting(script, flag, monkeypatch, capsys):
    """`python SCRIPT --help` prints every setting with its default and comment, grouped, and exits 0."""
    monkeypatch.setattr(sys, "argv", [script, flag])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(script, run_name="__main__")
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    names = settings_of(script)
    assert len(names) >= 8
    for name in names:
        assert f"--{name.lower()} = " in out, name
    assert "settings (" in out


def test_help_shows_defaults_comments_and_groups(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_sft.py", "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path("train_sft.py", run_name="__main__")
    out = capsys.readouterr().out
    assert "--max_steps = 900\n      optimizer steps" in out
    assert out.index("\noptimisation (") < out.index("--max_steps =") < out.index("\nevaluation, logging")


def ns():
    return {"LR": 1e-3, "MAX_STEPS": 10, "MODEL": "embedded", "BF16": False, "EVAL_LIMIT": None}


def test_yaml_recipe_sets_values_and_flags_win(tmp_path):
    """A YAML recipe names settings as the command line does (or as in the file); YAML's text 3e-5 is
    read as a float for a float setting; a flag beside --config wins."""
    path = tmp_path / "run.yaml"
    path.write_text("lr: 3e-5\nmax_steps: 77\nMODEL: out/sft\nbf16: true\neval_limit: null\n")
    n = ns()
    configure(n, ["--config", str(path), "--max_steps", "5"])
    assert (n["LR"], n["MAX_STEPS"], n["MODEL"], n["BF16"], n["EVAL_LIMIT"]) == (3e-5, 5, "out/sft", True, None)
    assert isinstance(n["LR"], float)


@pytest.mark.parametrize("suffix,text", [(".yaml", "lr: 1e-4\nmax_stepz: 3\n"),
                                         (".json", '{"lr": 1e-4, "max_stepz": 3}')])
def test_recipe_with_unknown_key_refused(tmp_path, suffix, text):
    path = tmp_path / ("run" + suffix)
    path.write_text(text)
    with pytest.raises(ConfigError, match="does not have: MAX_STEPZ"):
        configure(ns(), ["--config", str(path)])


def test_yaml_wrong_type_and_bad_yaml_are_one_line_errors(tmp_path):
    bad_type = tmp_path / "a.yaml"
    bad_type.write_text("max_steps: ten\n")
    with pytest.raises(ConfigError, match="--max_steps: expected int"):
        configure(ns(), ["--config", str(bad_type)])
    broken = tmp_path / "b.yml"
    broken.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read it as YAML") as e:
        configure(ns(), ["--config", str(broken)])
    assert "\n" not in str(e.value)


def test_run_config_json_still_replays(tmp_path):
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps({"LR": 3e-5, "MAX_STEPS": 7, "MODEL": "out/x", "BF16": True, "EVAL_LIMIT": 4}))
    n = ns()
    configure(n, ["--config", str(path)])
    assert (n["LR"], n["MAX_STEPS"], n["MODEL"], n["BF16"], n["EVAL_LIMIT"]) == (3e-5, 7, "out/x", True, 4)


def test_sft_summary_counts_tokens_exactly(tmp_path):
    """Identical rows of L tokens: 2 steps x 4 rows process 8 L tokens, none of them padding."""
    from conftest import run_inline
    from dataset.sft import SFTDataset
    from model.load import load_tokenizer

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "Q: 2+2?\nA:", "completion": " 4"}) + "\n" * 1)
    data.write_text(data.read_text() * 8)
    length = len(SFTDataset(str(data), load_tokenizer("embedded"), 96, verbose=False).items[0]["input_ids"])
    out = tmp_path / "sft"
    run_inline("train_sft.py", "--train_data", str(data), "--eval_data", "none", "--eval_prompts", "none",
               "--test_data", "none", "--test_prompts", "none", "--max_steps", "2", "--batch_size", "4", "--out_dir", str(out), "--save_interval", "0")
    summary = json.load(open(out / "summary.json"))
    assert summary["train_tokens"] == summary["train_tokens_padded"] == 2 * 4 * length
    assert summary["tokens_per_second"] == pytest.approx(summary["train_tokens"] / summary["train_seconds"])
