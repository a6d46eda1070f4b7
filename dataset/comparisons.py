"""Comparison rows -> groups of responses ranked best first, for the reward model and DPO.

Accepted rows (local JSON/JSONL files or `datasets.load_dataset` names, e.g. Anthropic/hh-rlhf):

* ranked:  instruction/input (or prompt) + `responses`, best first, K >= 2. A ranking of K gives all
  K(K-1)/2 pairs (InstructGPT section 3.5): responses[i] is preferred to responses[j] for every i < j.
* pair:    instruction/input (or prompt) + `chosen` / `rejected` (one pair, K = 2).
* HH:      `chosen` / `rejected` only: whole dialogues of "\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns
  (Anthropic HH-RLHF). Each is split after its last "\\n\\nAssistant:" into the shared prompt and the
  reply. If the two prompts differ (a reply that itself contains "\\n\\nAssistant:" makes a few real
  rows do so) the row is skipped with a warning naming file:line, counted, or is an error under
  `on_mismatch="error"`. `on_mismatch="common_prefix"` keeps it instead, splitting both at the last
  "\\n\\nAssistant:" of their common prefix (for evaluating every pair of a test file).

* conversational (TRL's preference format): `chosen` / `rejected` are message lists, either whole
  conversations sharing their prompt turns (implicit prompt) or one assistant turn each after a
  `prompt` message list (explicit prompt).
"""
import os

from dataset.chat import check_messages, last_user_text
from dataset.io import DataError, read_rows
from dataset.prompt import check_task_row
from dataset.trl_formats import split_common_prefix
from utils import ConfigError

RANKED_FORMATS = [["instruction", "input", "responses"], ["prompt", "responses"]]
PAIR_FORMATS = [
    ["instruction", "input", "chosen", "rejected"],
    ["prompt", "chosen", "rejected"],
    ["chosen", "rejected"],
]
ASSISTANT = "\n\nAssistant:"


def split_hh(dialogue: str) -> tuple[str, str]:
    """Split an HH dialogue after its last '\\n\\nAssistant:' -> (prompt, reply)."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn")
    cut += len(ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


def split_hh_common(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split both dialogues at the last '\\n\\nAssistant:' of their common prefix -> (prompt, chosen, rejected)."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError("the dialogues share no '\\n\\nAssistant:' turn")
    cut += len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def conversational_group(row: dict) -> dict:
    """A conversational comparison row -> a group with its prompt `messages` (see the module docstring)."""
    where = row["_where"]
    # explicit prompt; chosen/rejected: one assistant turn each
    if isinstance(row.get("prompt"), list):
        prompt = check_messages(row["prompt"], where, "prompt", last="user")
        replies = [
            check_messages(row[k], where, k, last="assistant") for k in ("chosen", "rejected")
        ]
    else:  # implicit prompt: the turns both conversations share
        chosen, rejected = (
            check_messages(row[k], where, k, last="assistant") for k in ("chosen", "rejected")
        )
        n = next(
            (i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b),
            min(len(chosen), len(rejected)),
        )
        prompt, replies = chosen[:n], [chosen[n:], rejected[n:]]
    if not prompt or any(len(r) != 1 for r in replies):
        raise DataError(
            f"{where}: 'chosen' and 'rejected' must differ only in their final assistant turn, "
            "after shared prompt turns (or give the prompt turns in 'prompt')"
        )
    responses = [r[0]["content"] for r in replies]
    if responses[0] == responses[1]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same response")
    return {
        "prompt": last_user_text(prompt),
        "messages": prompt,
        "responses": responses,
        "type": row.get("type"),
        "where": where,
    }


def to_group(row: dict, on_mismatch: str, skipped: list) -> dict:
    """One validated row -> {'prompt', 'responses' (best first), 'type', 'where'}; None if skipped."""
    where = row["_where"]
    if "responses" in row:
        responses = row["responses"]
        if not isinstance(row.get("prompt", ""), str):
            got = type(row["prompt"]).__name__
            raise DataError(f"{where}: field 'prompt' of a ranked row must be a string, got {got} "
                            "(a message list goes with chosen/rejected)")
        if len(responses) < 2:
            raise DataError(
                f"{where}: field 'responses' must be a list of at least 2 responses (best first; "
                "a single comparison can also be given as chosen/rejected)"
            )
        if not all(isinstance(r, str) and r.strip() for r in responses):
            raise DataError(f"{where}: field 'responses' must hold non-empty strings (fix the row)")
        if len(set(responses)) < len(responses):
            raise DataError(
                f"{where}: field 'responses' holds the same response twice (a ranking needs distinct ones; "
                "remove the duplicate)"
            )
        return {
            "prompt": check_task_row(row),
            "responses": responses,
            "type": row.get("type"),
            "where": where,
        }
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, list) or isinstance(row.get("prompt"), list):
        return conversational_group(row)
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise DataError(f"{where}: fields 'chosen' and 'rejected' must be strings (fix the row)")
    if "instruction" in row or "prompt" in row:
        prompt = check_task_row(row)
    else:
        try:
            (prompt, chosen), (other, rejected) = split_hh(chosen), split_hh(rejected)
        except ValueError:  # TRL's plain implicit prompt: the text both share
            prompt, chosen, rejected = split_common_prefix(chosen, rejected)
            other = prompt
            if not prompt.strip():
                raise DataError(
                    f"{where}: 'chosen' and 'rejected' share no prompt text (add 'prompt' or "
                    "'instruction', or give HH dialogues with '\\n\\nAssistant:' turns)"
                ) from None
        if prompt != other:
            if on_mismatch == "error":
                raise DataError(
                    f"{where}: chosen and rejected dialogues differ before their last Assistant turn "
                    "(fix the row, or set STRICT=False to skip such rows)"
                )
            if on_mismatch == "skip":
                skipped.append(where)
                return None
            prompt, chosen, rejected = split_hh_common(row["chosen"], row["rejected"])
        check_task_row(row, prompt)
    if not chosen.strip() and not rejected.strip():
        raise DataError(f"{where}: both replies are empty (nothing to compare; remove the row)")
    if chosen == rejected:
        raise DataError(
            f"{where}: 'chosen' and 'rejected' are the same response (a comparison needs two different "
            "ones; remove the row)"
        )
    return {
        "prompt": prompt,
        "responses": [chosen, rejected],
        "type": row.get("type"),
        "where": where,
    }


def read_comparisons(
    source: str, on_mismatch: str = "skip", limit: int = None, split: str = "train"
) -> list[dict]:
    """Read ranked, pair or HH rows into groups (see the module docstring); warns about skipped HH rows."""
    if on_mismatch not in ("skip", "error", "common_prefix"):
        raise ConfigError(
            f"on_mismatch={on_mismatch!r}: expected 'skip', 'error' or 'common_prefix'"
        )
    rows = read_rows(
        source,
        RANKED_FORMATS + PAIR_FORMATS,
        optional=("input",),
        split=split,
        lists=("responses",),
        lists_or_strings=("chosen", "rejected", "prompt"),
    )[:limit]
    skipped = []
    groups = [g for g in (to_group(r, on_mismatch, skipped) for r in rows) if g is not None]
    if skipped:
        print(
            f"warning: skipped {len(skipped)} HH row(s) whose chosen and rejected prompts differ "
            f"({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}); set STRICT to make this an error"
        )
    if not groups:  # a run on nothing would divide by zero later
        raise DataError(f"{source}: all {len(rows)} rows were skipped (their chosen and "
                        "rejected prompts differ); fix them, or set STRICT=True to see the first")
    return groups
