"""Command-line overrides of a script's constants (utils.configure)."""
import json

import pytest

from utils import ConfigError, configure


def settings():
    return {"LR": 1e-3, "MAX_STEPS": 10, "MODEL": "embedded", "BF16": False, "EVAL_LIMIT": None, "lower": 1}


def test_overrides_both_forms_and_int_for_float():
    """`--lr 3e-5` and `--max_steps=5` both apply; an int is accepted where a float is expected."""
    ns = settings()
    cfg = configure(ns, ["--lr", "3", "--max_steps=5", "--model", "out/sft", "--bf16", "True", "--eval_limit", "7"])
    assert ns["LR"] == 3.0 and isinstance(ns["LR"], float)
    assert ns["MAX_STEPS"] == 5 and ns["MODEL"] == "out/sft" and ns["BF16"] is True and ns["EVAL_LIMIT"] == 7
    assert cfg == {k: ns[k] for k in cfg} and "lower" not in cfg  # only UPPERCASE constants are settings


def test_a_limit_with_a_number_default_takes_none():
    """EVAL_LIMIT = 300 says '(None: all)': `--eval_limit None` means all rows; other int settings refuse None."""
    ns = {**settings(), "EVAL_LIMIT": 300}
    configure(ns, ["--eval_limit", "None"])
    assert ns["EVAL_LIMIT"] is None
    with pytest.raises(ConfigError, match="--max_steps: expected int"):
        configure(settings(), ["--max_steps", "None"])


def test_unknown_setting_names_closest():
    """A typo names the closest valid setting instead of being ignored."""
    with pytest.raises(ConfigError, match="--max_steps"):
        configure(settings(), ["--max_step", "3"])


@pytest.mark.parametrize("args", [["--max_steps", "0.5"], ["--lr", "fast"], ["--bf16", "1"], ["--max_steps", "True"]])
def test_wrong_type_raises(args):
    """A value whose type differs from the default's is an error, not a silent string."""
    with pytest.raises(ConfigError, match="expected"):
        configure(settings(), args)


def test_gradient_checkpointing_takes_a_bool_or_selective():
    """GRADIENT_CHECKPOINTING = False: True, False and 'selective' (model/memory.py) and nothing else."""
    for raw, value in (("True", True), ("false", False), ("selective", "selective"), ("'selective'", "selective")):
        ns = {**settings(), "GRADIENT_CHECKPOINTING": False}
        configure(ns, ["--gradient_checkpointing", raw])
        assert ns["GRADIENT_CHECKPOINTING"] == value and type(ns["GRADIENT_CHECKPOINTING"]) is type(value)
    for raw in ("1", "some", "None"):
        with pytest.raises(ConfigError, match="--gradient_checkpointing: expected True, False or 'selective'"):
            configure({**settings(), "GRADIENT_CHECKPOINTING": False}, ["--gradient_checkpointing", raw])


def test_missing_value_raises():
    with pytest.raises(ConfigError, match="missing value"):
        configure(settings(), ["--lr"])


def test_config_file_replays_a_run_and_flags_win(tmp_path):
    """--config loads every setting a saved run_config.json holds; a flag given beside it wins, whether it
    comes before or after --config."""
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps({"LR": 3e-5, "MAX_STEPS": 77, "MODEL": "out/sft", "BF16": True, "EVAL_LIMIT": None}))
    for argv in (["--config", str(path), "--max_steps", "5"], ["--max_steps=5", f"--config={path}"]):
        ns = settings()
        cfg = configure(ns, argv)
        assert (ns["LR"], ns["MAX_STEPS"], ns["MODEL"], ns["BF16"]) == (3e-5, 5, "out/sft", True)
        assert cfg["MAX_STEPS"] == 5 and cfg["LR"] == 3e-5


def test_config_file_of_another_script_or_wrong_type_raises(tmp_path):
    """A run_config with a setting this script lacks, or a value of the wrong type, is an error naming it."""
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"LR": 1e-3, "TRAIN_LAYERS": 0}))
    with pytest.raises(ConfigError, match="does not have: TRAIN_LAYERS"):
        configure(settings(), ["--config", str(other)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"MAX_STEPS": "ten"}))
    with pytest.raises(ConfigError, match="--max_steps: expected int"):
        configure(settings(), ["--config", str(bad)])


def test_train_script_replays_its_saved_run_config(tmp_path):
    """A stage run with --config <a saved run_config.json> runs with that run's settings (its run_config
    equals the saved one except for the flags given beside --config)."""
    from conftest import run_inline

    first = tmp_path / "first"
    run_inline("train_sft.py", "--out_dir", str(first), "--max_steps", "2", "--batch_size", "4", "--eval_data", "none",
               "--train_data", "ds/sft_val.jsonl",
               "--eval_prompts", "none", "--test_data", "none", "--test_prompts", "none", "--lr", "1e-4", "--warmup_steps", "0", "--save_interval", "0")
    saved = json.load(open(first / "run_config.json"))
    out = run_inline("train_sft.py", "--config", str(first / "run_config.json"), "--out_dir", str(tmp_path / "second"))
    replayed = json.load(open(tmp_path / "second" / "run_config.json"))
    assert replayed == {**saved, "OUT_DIR": str(tmp_path / "second")} and "config: " in out
    steps = [json.loads(l)["step"] for l in open(tmp_path / "second" / "metrics.jsonl")]
    assert steps[-1] == 2  # MAX_STEPS=2 came from the file, not the script's default


def test_config_replay_without_out_dir_writes_to_a_new_out_dir(tmp_path, capsys):
    """--config out/x/run_config.json alone would replay OUT_DIR too and overwrite out/x's model and
    metrics: the replay goes to a new directory beside it, named in a line; --out_dir still wins."""
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps({"OUT_DIR": str(tmp_path / "x"), "LR": 3e-5}))
    (tmp_path / "x_replay1").mkdir()
    ns = {**settings(), "OUT_DIR": "out/sft"}
    configure(ns, ["--config", str(path)])
    assert ns["OUT_DIR"] == str(tmp_path / "x_replay2") and "replay writes to" in capsys.readouterr().out
    ns = {**settings(), "OUT_DIR": "out/sft"}
    configure(ns, ["--config", str(path), "--out_dir", str(tmp_path / "mine")])
    assert ns["OUT_DIR"] == str(tmp_path / "mine")


@pytest.mark.parametrize("args, name", [
    (["--lr", "-1"], "LR"), (["--lr", "0"], "LR"), (["--lr", "1e999"], "LR"), (["--batch_size", "0"], "BATCH_SIZE"),
    (["--grad_accum", "0"], "GRAD_ACCUM"), (["--log_interval", "0"], "LOG_INTERVAL"),
    (["--max_steps", "-3"], "MAX_STEPS"), (["--max_len", "7"], "MAX_LEN"), (["--grad_clip", "-1"], "GRAD_CLIP"),
    (["--lora_r", "0"], "LORA_R"), (["--train_limit", "0"], "TRAIN_LIMIT")])
def test_numeric_settings_out_of_range_are_one_line_errors(args, name):
    """Each of these would run silently wrong (gradient ascent, an untrained model saved with exit 0)
    or crash mid-run (divide by zero): instead, a one-line error naming the setting and its range."""
    ns = {"LR": 1e-3, "BATCH_SIZE": 8, "GRAD_ACCUM": 1, "LOG_INTERVAL": 10, "MAX_STEPS": 10, "MAX_LEN": 96,
          "GRAD_CLIP": 1.0, "LORA_R": 8, "TRAIN_LIMIT": None, "EVAL_LIMIT": None}
    with pytest.raises(ConfigError, match=rf"{name} must be") as err:
        configure(dict(ns), args)
    assert "\n" not in str(err.value)
    configure(dict(ns), ["--max_len", "8", "--grad_clip", "0", "--train_limit", "None"])  # the edges pass
