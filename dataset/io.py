"""Read rows from local JSON / JSONL files or `datasets.load_dataset` names, validating every row.

Errors name the file, the line and the field (`DataError: ds/x.jsonl:12: field 'output' is missing`),
because `datasets`' own JSON loader names no line for a malformed row and turns a missing field into
None silently.
"""
import json
import os

from utils import UserError, hub_reachable


class DataError(UserError, ValueError):
    """A bad input row or file; the message starts with 'file:line:'."""
    exit_code = 3


def _parse(text: str, where: str, what: str):
    """json.loads, with every way it can fail as a DataError naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line = where.rsplit(":", 1)[0] + f":{e.lineno}" if what == "JSON" else where
        raise DataError(
            f"{line}: malformed {what} ({e.msg}, column {e.colno}) (fix or remove it)"
        ) from None
    # e.g. an integer of more than 4300 digits, nesting too deep
    except (ValueError, RecursionError) as e:
        raise DataError(
            f"{where}: unreadable {what} ({type(e).__name__}: {str(e)[:80]}) (fix or remove it)"
        ) from None


def _read_local(path: str) -> list[tuple[int, dict]]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (check the data path setting)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory (give a .json or .jsonl file)") from None
    except OSError as e:  # a symbolic-link loop, no permission, ...
        raise DataError(f"{path}: cannot be read ({e.strerror}) (check the data path setting)"
                        ) from None
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte {e.start}) (save the file as UTF-8)"
        ) from None
    if path.endswith(".json"):  # one JSON array of objects
        rows = _parse(text, f"{path}:1", "JSON")
        if not isinstance(rows, list):
            raise DataError(
                f"{path}:1: expected a JSON array of objects, got {type(rows).__name__} "
                "(or use a .jsonl file, one object per line)"
            )
        return [(i + 1, r) for i, r in enumerate(rows)]  # item number stands in for the line
    rows = []
    # only \n ends a line (as editors count), \r\n too
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            rows.append((lineno, _parse(line, f"{path}:{lineno}", "JSON line")))
    return rows


def _read_hub(name: str, split: str) -> list[tuple[int, dict]]:
    import datasets  # imported here: local files need no `datasets`

    # use the local cache only, instead of retrying the network for half a minute
    if not hub_reachable():
        datasets.config.HF_HUB_OFFLINE = True
        import huggingface_hub.constants
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, no such split ...
        raise DataError(
            f"{name}: could not load it as a local file or with datasets.load_dataset "
            f"(split {split!r}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(check the data path setting, or go online once so the dataset is cached)"
        ) from None
    return [(i + 1, dict(r)) for i, r in enumerate(ds)]


def read_rows(source: str, fields: list[list[str]], optional: tuple = (), split: str = "train",
              lists: tuple = (), lists_or_strings: tuple = ()) -> list[dict]:
    """Read and validate rows.

    source: a .json/.jsonl path, or a `datasets` hub name (`name` or `name:split`).
    fields: accepted row formats, each a list of required fields; a row must match one of them.
    optional: fields that may be missing or empty (e.g. Alpaca's 'input').
    lists: fields whose value is a list (e.g. ranked 'responses', chat 'messages'); lists_or_strings: fields
    that may be either (conversational 'chosen' / 'rejected' / 'prompt'); every other field is a string.
    Returns the rows with a '_where' key ('file:line') for later error messages.
    """
    local = source.endswith((".json", ".jsonl")) or os.path.exists(source)
    if not local and source.count("/") > 1:
        raise DataError(f"{source}: no such file (check the data path setting)")
    if not local and ":" in source:
        source, split = source.rsplit(":", 1)
    rows = _read_local(source) if local else _read_hub(source, split)
    if not rows:
        raise DataError(
            f"{source}{':1' if local else ''}: no rows (the file is empty; give a file with data)"
        )
    accepted = " or ".join("/".join(f) for f in fields)
    out = []
    for lineno, row in rows:
        where = f"{source}:{lineno}"
        if not isinstance(row, dict):
            raise DataError(
                f"{where}: expected a JSON object, got {type(row).__name__} (one object per row: {accepted})"
            )
        fmt = next((f for f in fields if all(k in row for k in f if k not in optional)), None)
        if fmt is None:  # name what is missing from the format this row comes closest to
            closest = max(fields, key=lambda f: (sum(k in row for k in f), -len(f)))
            missing = [k for k in closest if k not in row and k not in optional]
            raise DataError(
                f"{where}: field {missing[0]!r} is missing (accepted formats: {accepted})"
            )
        for k in fmt:
            v = row.get(k, "")
            if k in optional and v is None:
                row[k] = v = ""
            kind = list if k in lists or (k in lists_or_strings and isinstance(v, list)) else str
            if not isinstance(v, kind):
                raise DataError(
                    f"{where}: field {k!r} must be a {'list' if kind is list else 'string'}, "
                    f"got {type(v).__name__} (fix the row)"
                )
            for text in v if kind is list else [v]:
                if isinstance(text, str) and not text.isprintable() and _has_surrogate(text):
                    raise DataError(
                        f"{where}: field {k!r} holds a lone UTF-16 surrogate escape such as \\ud800, "
                        "which is not text (fix the row)"
                    )
            if k not in optional and (not v or (kind is str and not v.strip())):
                raise DataError(f"{where}: field {k!r} is empty (fill it in or remove the row)")
        out.append(dict(row, _where=where))
    return out


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True
