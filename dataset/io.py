"""Read rows from local JSON / JSONL files or `datasets.load_dataset` names, validating every row.

Errors name the file, the line and the field (`DataError: ds/x.jsonl:12: field 'output' is missing`),
because `datasets`' own JSON loader names no line for a malformed row and turns a missing field into
None silently.
"""
import json
import os


class DataError(ValueError):
    """A bad input row or file; the message starts with 'file:line:'."""


def _read_local(path: str) -> list[tuple[int, dict]]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None
    if path.endswith(".json"):  # one JSON array of objects
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}:1: expected a JSON array of objects")
        return [(i + 1, r) for i, r in enumerate(rows)]  # item number stands in for the line
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
    return rows


def _read_hub(name: str, split: str) -> list[tuple[int, dict]]:
    import datasets  # imported here: local files need no `datasets`
    from model.load import hub_reachable

    if not hub_reachable():  # use the local cache only, instead of retrying the network for half a minute
        datasets.config.HF_HUB_OFFLINE = True
        import huggingface_hub.constants
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, no such split ...
        raise DataError(f"{name}: could not load it as a local file or with datasets.load_dataset "
                        f"(split {split!r}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
                        "Check the data path setting, or go online once so the dataset is cached.") from None
    return [(i + 1, dict(r)) for i, r in enumerate(ds)]


def read_rows(source: str, fields: list[list[str]], optional: tuple = (), split: str = "train") -> list[dict]:
    """Read and validate rows.

    source: a .json/.jsonl path, or a `datasets` hub name (`name` or `name:split`).
    fields: accepted row formats, each a list of required fields; a row must match one of them.
    optional: fields that may be missing or empty (e.g. Alpaca's 'input').
    Returns the rows with a '_where' key ('file:line') for later error messages.
    """
    local = source.endswith((".json", ".jsonl")) or os.path.exists(source)
    if not local and source.count("/") > 1:
        raise DataError(f"{source}: no such file")
    if not local and ":" in source:
        source, split = source.rsplit(":", 1)
    rows = _read_local(source) if local else _read_hub(source, split)
    if not rows:
        raise DataError(f"{source}: no rows")
    out = []
    for lineno, row in rows:
        where = f"{source}:{lineno}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        fmt = next((f for f in fields if all(k in row for k in f if k not in optional)), None)
        if fmt is None:
            missing = [k for k in fields[0] if k not in row and k not in optional]
            accepted = " or ".join("/".join(f) for f in fields)
            raise DataError(f"{where}: field {missing[0]!r} is missing (accepted formats: {accepted})")
        for k in fmt:
            v = row.get(k, "")
            if k in optional and v is None:
                row[k] = v = ""
            if not isinstance(v, (str, list)):
                raise DataError(f"{where}: field {k!r} must be a string or list, got {type(v).__name__}")
            if k not in optional and (not v or (isinstance(v, str) and not v.strip())):
                raise DataError(f"{where}: field {k!r} is empty")
        out.append(dict(row, _where=where))
    return out
