"""TRL's standard dataset formats, read into the rows every stage already knows.

TRL (huggingface/trl, "Dataset formats") names a few row types; each comes plain (text) or
conversational (lists of {"role", "content"} turns):

* prompt-only:       {"prompt": "..."}                 or {"prompt": [turns ending with a user turn]}
* prompt-completion: {"prompt": "...", "completion": "..."} or both as turn lists
* preference:        {"prompt", "chosen", "rejected"} (explicit prompt), or {"chosen", "rejected"}
                     whole texts / conversations sharing their prompt (implicit prompt)

A conversational prompt (and completion) becomes a `messages` row, the project's chat row; plain rows
are read as they are (dataset/sft.py, dataset/rm.py). Which stage reads which: docs/sft.md.
"""
import os

from dataset.io import DataError


def from_conversational(row: dict) -> dict:
    """A row whose `prompt` is a list of turns -> a `messages` row (prompt turns, then the completion's
    turns where it has one); other rows unchanged. Mixing text and turns is a DataError naming file:line."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(completion, list) and not isinstance(prompt, list):
        raise DataError(f"{row['_where']}: 'completion' is a list of turns but 'prompt' is not "
                        "(give both as turns, or both as text)")
    if not isinstance(prompt, list):
        return row
    if completion is not None and not isinstance(completion, list):
        raise DataError(f"{row['_where']}: 'prompt' is a list of turns but 'completion' is text "
                        "(give both as turns, or both as text)")
    out = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
    out["messages"] = prompt + (completion or [])
    return out


def implicit_prompt_turns(row: dict) -> list[dict]:
    """The turns a conversational implicit-prompt preference row's chosen and rejected share (its prompt)."""
    chosen, rejected = row["chosen"], row["rejected"]
    n = next(
        (i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b),
        min(len(chosen), len(rejected)),
    )
    if n == 0:
        raise DataError(
            f"{row['_where']}: 'chosen' and 'rejected' share no prompt turns (give 'prompt')"
        )
    return chosen[:n]


def split_common_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """A plain implicit-prompt pair -> (prompt, chosen reply, rejected reply): the prompt is the text both
    share, cut back to a word boundary so that neither reply starts mid-word."""
    common = os.path.commonprefix([chosen, rejected])
    cut = len(common)
    if not common[-1:].isspace():  # the replies would start mid-word: cut back to the last space
        cut = max(common.rfind(" "), common.rfind("\n")) + 1
    return chosen[:cut], chosen[cut:], rejected[cut:]
