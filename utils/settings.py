"""Command-line overrides of a script's constants: `configure(globals())` applies `--key value`,
`--key=value` and `--config FILE` to the UPPERCASE settings, checks their types and ranges, and
returns the resolved settings; `--help` lists them with their comments."""
import ast
import dataclasses
import difflib
import json
import math
import os
import sys

from utils.errors import ConfigError


def _is_setting(name: str, value) -> bool:
    return (
        name.isupper()
        and not name.startswith("_")
        and isinstance(value, (bool, int, float, str, list, tuple, dict, type(None)))
    )


def _parse_value(name: str, raw: str, default):
    if isinstance(default, str):
        return raw  # a string setting takes the text as it is: --model out/sft
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return _check_type(name, value, default, raw)


def _check_type(name: str, value, default, raw=None):
    """The value if its type matches the default's (an int is accepted for a float), else ConfigError."""
    raw = value if raw is None else raw
    if default is None or (value is None and name.endswith("_LIMIT")):  # a limit of None: all rows
        return value
    if name == "GRADIENT_CHECKPOINTING":  # a bool, or the string 'selective' (model/memory.py)
        if isinstance(value, str) and value.lower() in ("true", "false", "selective"):
            value = {"true": True, "false": False}.get(value.lower(), "selective")
        if not (isinstance(value, bool) or value == "selective"):
            raise ConfigError(f"--gradient_checkpointing: expected True, False or 'selective', got {raw!r}")
        return value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    # BF16='auto' also takes True / False, LM_HEAD_CHUNK='auto' a number (a replayed run_config records the choice)
    elif default == "auto":
        ok = isinstance(value, (bool, str, int))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"--{name.lower()}: expected {type(default).__name__}, got {raw!r} "
                          f"(give a {type(default).__name__} like the default, {default!r})")
    return value


def configure(namespace: dict, argv: list[str] = None) -> dict:
    """Apply `--key value` / `--key=value` overrides to the UPPERCASE constants in `namespace`.

    Values are parsed with ast.literal_eval (a string setting takes the raw text); the type must match
    the default (an int is accepted for a float). Unknown names raise with the closest valid names.
    `--config run_config.json` first loads every setting a saved run recorded (replay); flags given
    beside it win, wherever they stand. Every override is printed. Returns the resolved settings
    {NAME: value}, for logging and checkpoints. From the command line (argv=None) an error exits with
    its message instead of a traceback.
    """
    from_cli = argv is None
    argv = sys.argv[1:] if from_cli else argv
    settings = {k: v for k, v in namespace.items() if _is_setting(k, v)}
    if "--help" in argv or "-h" in argv:
        print(settings_help(namespace, settings))
        sys.exit(0)
    try:
        argv = _apply_config_file(namespace, settings, argv)
        i = 0
        while i < len(argv):
            arg = argv[i]
            if not arg.startswith("--"):
                raise ConfigError(
                    f"{arg}: unexpected argument (give settings as --name value or --name=value)"
                )
            if "=" in arg:
                key, raw = arg[2:].split("=", 1)
                i += 1
            elif i + 1 < len(argv):
                key, raw = arg[2:], argv[i + 1]
                i += 2
            else:
                raise ConfigError(
                    f"{arg}: missing value (give it as {arg} <value> or {arg}=<value>)"
                )
            name = key.upper().replace("-", "_")
            if name not in settings:
                close = difflib.get_close_matches(name, settings, n=3, cutoff=0.5)
                hint = (
                    f"did you mean {', '.join('--' + c.lower() for c in close)}? " if close else ""
                )
                raise ConfigError(
                    f"--{key}: unknown setting ({hint}valid: {', '.join('--' + s.lower() for s in settings)})"
                )
            value = _parse_value(name, raw, namespace[name])
            print(f"override: {name} = {value!r}")
            namespace[name] = settings[name] = value
        check_ranges(settings)
    except ConfigError as e:
        if from_cli and os.environ.get("INSTRUCT_DEBUG", "0") in ("", "0"):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        raise
    return settings


# allowed ranges of numeric settings, by name (whichever script has them); None passes where it
# is the documented "all" / "off" (EVAL_LIMIT, TRAIN_LIMIT, TRAIN_LAYERS)
POSITIVE = ("LR", "ACTOR_LR", "CRITIC_LR", "LORA_ALPHA", "CLIP_RANGE", "VALUE_CLIP")
AT_LEAST_ONE = ("BATCH_SIZE", "GRAD_ACCUM", "LOG_INTERVAL", "MAX_STEPS", "ITERATIONS",
                "ROLLOUT_BATCH", "GROUP_SIZE", "MINI_BATCH", "PPO_EPOCHS", "PTX_BATCH",
                "EVAL_BATCH_SIZE", "EVAL_PROMPT_BATCH", "MEMORY_BATCH_SIZE", "LORA_R",
                "NUM_VIRTUAL_TOKENS", "MAX_NEW_TOKENS", "THREADS", "BOOTSTRAP", "KL_HORIZON",
                "TRAIN_LIMIT", "EVAL_LIMIT", "MAX_PROMPT_LEN")
NON_NEGATIVE = ("GRAD_CLIP", "WEIGHT_DECAY", "WARMUP_STEPS", "EVAL_INTERVAL", "SAVE_INTERVAL",
                "MEMORY_STEPS", "SEED", "TARGET_KL", "STOP_APPROX_KL", "PTX_COEF", "BETA",
                "GRPO_BETA", "TEMPERATURE", "TOP_K", "TRAIN_LAYERS", "STOP_DISAGREEMENT",
                "RM_ENSEMBLE_LAMBDA")
UNIT_INTERVAL = ("GAMMA", "LAM", "TOP_P")
MIN_MAX_LEN = 8  # a prompt and a response need a few tokens each; below, a slice goes negative


def check_ranges(settings: dict) -> None:
    """ConfigError (one line, naming the setting and its allowed range) for a numeric setting out
    of range: a zero batch or a negative GRAD_CLIP would otherwise run, silently wrong."""
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rule = None
        if not math.isfinite(value):
            rule = "a finite number"
        elif (name in POSITIVE or name.startswith("LR_")) and value <= 0:
            rule = "> 0"
        elif name in AT_LEAST_ONE and value < 1:
            rule = ">= 1" + (" (or None: all)" if "LIMIT" in name else "")
        elif name in NON_NEGATIVE and value < 0:
            rule = ">= 0"
        elif name in UNIT_INTERVAL and not 0 <= value <= 1:
            rule = "between 0 and 1"
        elif name == "MAX_LEN" and value < MIN_MAX_LEN:
            rule = f">= {MIN_MAX_LEN}"
        elif name == "CV_FOLDS" and value < 2:
            rule = ">= 2"
        if rule:
            raise ConfigError(f"--{name.lower()} {value!r}: out of range; {name} must be {rule}")


def from_settings(cls, settings: dict, **names):
    """A config dataclass from a script's resolved settings: field `f` takes settings['F'] (its constant),
    or settings[names[f]] where the script names it otherwise (PPO: max_steps='ITERATIONS'). The
    dataclasses have no defaults, so every value comes from the script's one block of constants."""
    return cls(
        **{f.name: settings[names.get(f.name, f.name.upper())] for f in dataclasses.fields(cls)}
    )


def _apply_config_file(namespace: dict, settings: dict, argv: list[str]) -> list[str]:
    """Apply `--config PATH` (a run_config.json every stage saves) and return argv without it."""
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                path, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1:]
            elif i + 1 < len(argv):
                path, rest = argv[i + 1], argv[:i] + argv[i + 2:]
            else:
                raise ConfigError(
                    "--config: missing value (a run_config.json, e.g. out/sft/run_config.json)"
                )
            break
    else:
        return argv
    saved = read_settings_file(path, namespace)
    unknown = [k for k in saved if k not in settings]
    if unknown:
        raise ConfigError(
            f"--config {path}: settings this script does not have: {', '.join(unknown)} "
            "(a run_config.json of another script?)"
        )
    for name, value in saved.items():
        namespace[name] = settings[name] = _check_type(name, value, namespace[name])
    print(f"config: {len(saved)} settings from {path}")
    given = any(a.startswith(("--out_dir", "--out-dir")) for a in rest)
    if "OUT_DIR" in saved and isinstance(saved["OUT_DIR"], str) and not given:
        namespace["OUT_DIR"] = settings["OUT_DIR"] = _replay_dir(saved["OUT_DIR"])
        print(f"config: the replay writes to {settings['OUT_DIR']}, not to the recorded "
              f"{saved['OUT_DIR']} (give --out_dir to choose)")
    return rest


def _replay_dir(recorded: str) -> str:
    """A new output directory next to the replayed run's, so a replay never overwrites that run."""
    n = 1
    while os.path.exists(f"{recorded.rstrip('/')}_replay{n}"):
        n += 1
    return f"{recorded.rstrip('/')}_replay{n}"


def read_settings_file(path: str, namespace: dict) -> dict:
    """{NAME: value} from a run_config.json or a YAML/JSON recipe. A recipe may name settings as on the
    command line (`lr: 3e-5`); YAML reads 3e-5 as text, so text for a non-text setting is parsed as a
    flag's value would be."""
    is_yaml = path.endswith((".yaml", ".yml"))
    try:
        with open(path) as f:
            if is_yaml:
                import yaml

                saved = yaml.safe_load(f)
            else:
                saved = json.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e})") from None
    except Exception as e:  # json.JSONDecodeError or yaml.YAMLError, one line either way
        kind = "YAML" if is_yaml else "JSON"
        raise ConfigError(
            f"--config {path}: cannot read it as {kind} ({' '.join(str(e).split())})"
        ) from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings (name: value), "
                          f"like a run_config.json")
    out = {}
    for key, value in saved.items():
        name = str(key).upper().replace("-", "_")
        if isinstance(value, str) and name in namespace and not isinstance(namespace[name], str):
            value = _parse_value(name, value, namespace[name])
        out[name] = value
    return out


def settings_help(namespace: dict, settings: dict) -> str:
    """--help: the script's docstring, then every setting under its header as the file groups them,
    with its default and its comment (read from the script's own source, the one place they live)."""
    import re

    lines = [(namespace.get("__doc__") or "").strip(), "", "settings (--name value, --name=value, "
             "or --config FILE.yaml/.json; the default follows '='):"]
    seen = set()
    path = namespace.get("__file__")
    source = open(path).read().splitlines() if path and os.path.exists(path) else []
    pattern = re.compile(r"([A-Z][A-Z0-9_]*)\s*=\s*(.*?)(?:\s+#\s*(.*))?$")
    for i, line in enumerate(source):
        setting = pattern.match(line)
        if setting and setting.group(1) in settings and setting.group(1) not in seen:
            name, comment = setting.group(1), setting.group(3) or ""
            seen.add(name)
            lines.append(f"  --{name.lower()} = {settings[name]!r}\n      {comment}".rstrip())
        elif line.startswith("# ") and i + 1 < len(source) and pattern.match(source[i + 1]):
            lines.append(f"\n{line[2:]}:")  # a header right above a setting opens its group
    for name in settings:  # any setting the file does not spell one per line
        if name not in seen:
            lines.append(f"  --{name.lower()} = {settings[name]!r}")
    return "\n".join(lines)
