"""Command-line overrides of a script's constants (utils.configure)."""
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


def test_unknown_setting_names_closest():
    """A typo names the closest valid setting instead of being ignored."""
    with pytest.raises(ConfigError, match="--max_steps"):
        configure(settings(), ["--max_step", "3"])


@pytest.mark.parametrize("args", [["--max_steps", "0.5"], ["--lr", "fast"], ["--bf16", "1"], ["--max_steps", "True"]])
def test_wrong_type_raises(args):
    """A value whose type differs from the default's is an error, not a silent string."""
    with pytest.raises(ConfigError, match="expected"):
        configure(settings(), args)


def test_missing_value_raises():
    with pytest.raises(ConfigError, match="missing value"):
        configure(settings(), ["--lr"])
