"""Comparison data for the reward model: rows -> groups of responses ranked best first -> token ids.

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

A group is scored as one unit: each of its K responses is one sequence (prompt + response + EOS),
scored once per step, and the pairs index into them. Over-length sequences follow the shared policy
of `dataset.sft.fit_lengths` (prompt cut from the left, once per comparison, for its longest reply;
then each response from the right); they are counted and reported, never dropped. Bad rows raise DataError with file:line.

* conversational (TRL's preference format): `chosen` / `rejected` are message lists, either whole
  conversations sharing their prompt turns (implicit prompt) or one assistant turn each after a
  `prompt` message list (explicit prompt).

With `chat_template=True` the text goes through the tokenizer's chat template instead (for a chat model
such as SmolLM2-Instruct): HH turns become user/assistant messages (any other prompt is one user
message), and each response is the assistant's turn, closed by the template's end-of-turn token, which
is then the token the reward is read at. Conversational rows always go through the chat template.
"""
import os

import torch

from dataset.chat import chat_messages, check_messages, encode_text, last_user_text, reply_text
from dataset.io import DataError, read_rows
from dataset.prompt import check_task_row
from dataset.tokens import TruncationCounter, encode_prompt, encode_response, fit_lengths, pad
from dataset.trl_formats import split_common_prefix
from utils import ConfigError

RANKED_FORMATS = [["instruction", "input", "responses"], ["prompt", "responses"]]
PAIR_FORMATS = [["instruction", "input", "chosen", "rejected"], ["prompt", "chosen", "rejected"], ["chosen", "rejected"]]
ASSISTANT = "\n\nAssistant:"


def ranked_pairs(k: int) -> list[tuple[int, int]]:
    """All (better, worse) index pairs of a best-first ranking of k responses: k(k-1)/2 of them."""
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


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


def encode_chat(tokenizer, messages: list[dict], responses: list[str]) -> tuple[list, list[list]]:
    """Prompt ids (the template up to the assistant's turn) and each response's ids (its text and the
    template's end-of-turn, nothing after it, so the last token is the end-of-turn)."""
    if not tokenizer.chat_template:
        raise ConfigError("CHAT_TEMPLATE=True: the tokenizer has no chat template (set CHAT_TEMPLATE=False)")
    replies = []
    for response in responses:
        prompt, turn = reply_text(tokenizer, messages, response.strip())
        replies.append(encode_text(tokenizer, turn))
    return encode_text(tokenizer, prompt), replies


def conversational_group(row: dict) -> dict:
    """A conversational comparison row -> a group with its prompt `messages` (see the module docstring)."""
    where = row["_where"]
    if isinstance(row.get("prompt"), list):  # explicit prompt; chosen/rejected: one assistant turn each
        prompt = check_messages(row["prompt"], where, "prompt", last="user")
        replies = [check_messages(row[k], where, k, last="assistant") for k in ("chosen", "rejected")]
    else:  # implicit prompt: the turns both conversations share
        chosen, rejected = (check_messages(row[k], where, k, last="assistant") for k in ("chosen", "rejected"))
        n = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        prompt, replies = chosen[:n], [chosen[n:], rejected[n:]]
    if not prompt or any(len(r) != 1 for r in replies):
        raise DataError(f"{where}: 'chosen' and 'rejected' must differ only in their final assistant turn, "
                        "after shared prompt turns (or give the prompt turns in 'prompt')")
    responses = [r[0]["content"] for r in replies]
    if responses[0] == responses[1]:
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same response")
    return {"prompt": last_user_text(prompt), "messages": prompt, "responses": responses, "type": row.get("type"),
            "where": where}


def pair_kind(judge, group: dict, better: str, worse: str) -> str:
    """What separates two responses to a group's prompt by judge(row, response) (the task's gold judge):
    'correctness' (same format, correctness differs), 'format' (same correctness, format differs), 'both'
    (the better one is also in the better format), 'trade' (the better one is right in the worse format, the
    worse one wrong in the preferred format: a reward model that gets these wrong pays PPO to trade a right
    answer for the preferred form), or 'none'."""
    b, w = judge(group, better), judge(group, worse)
    same_format, same_correct = b["format"] == w["format"], b["correct"] == w["correct"]
    if same_format:
        return "none" if same_correct else "correctness"
    if same_correct:
        return "format"
    return "trade" if b["correct"] > w["correct"] and b["format"] < w["format"] else "both"


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
            raise DataError(f"{where}: field 'responses' must be a list of at least 2 responses (best first; "
                            "a single comparison can also be given as chosen/rejected)")
        if not all(isinstance(r, str) and r.strip() for r in responses):
            raise DataError(f"{where}: field 'responses' must hold non-empty strings (fix the row)")
        if len(set(responses)) < len(responses):
            raise DataError(f"{where}: field 'responses' holds the same response twice (a ranking needs distinct ones; "
                            "remove the duplicate)")
        return {"prompt": check_task_row(row), "responses": responses, "type": row.get("type"), "where": where}
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
                raise DataError(f"{where}: 'chosen' and 'rejected' share no prompt text (add 'prompt' or "
                                "'instruction', or give HH dialogues with '\\n\\nAssistant:' turns)") from None
        if prompt != other:
            if on_mismatch == "error":
                raise DataError(f"{where}: chosen and rejected dialogues differ before their last Assistant turn "
                                "(fix the row, or set STRICT=False to skip such rows)")
            if on_mismatch == "skip":
                skipped.append(where)
                return None
            prompt, chosen, rejected = split_hh_common(row["chosen"], row["rejected"])
        check_task_row(row, prompt)
    if not chosen.strip() and not rejected.strip():
        raise DataError(f"{where}: both replies are empty (nothing to compare; remove the row)")
    if chosen == rejected:
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same response (a comparison needs two different "
                        "ones; remove the row)")
    return {"prompt": prompt, "responses": [chosen, rejected], "type": row.get("type"), "where": where}


def read_comparisons(source: str, on_mismatch: str = "skip", limit: int = None, split: str = "train") -> list[dict]:
    """Read ranked, pair or HH rows into groups (see the module docstring); warns about skipped HH rows."""
    if on_mismatch not in ("skip", "error", "common_prefix"):
        raise ConfigError(f"on_mismatch={on_mismatch!r}: expected 'skip', 'error' or 'common_prefix'")
    rows = read_rows(source, RANKED_FORMATS + PAIR_FORMATS, optional=("input",), split=split, lists=("responses",),
                     lists_or_strings=("chosen", "rejected", "prompt"))[:limit]
    skipped = []
    groups = [g for g in (to_group(r, on_mismatch, skipped) for r in rows) if g is not None]
    if skipped:
        print(f"warning: skipped {len(skipped)} HH row(s) whose chosen and rejected prompts differ "
              f"({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}); set STRICT to make this an error")
    if not groups:  # a run on nothing would divide by zero later
        raise DataError(f"{source}: all {len(rows)} rows were skipped (their chosen and "
                        "rejected prompts differ); fix them, or set STRICT=True to see the first")
    return groups


class RMDataset(torch.utils.data.Dataset):
    """Tokenized groups: {'sequences': K lists of ids, 'prompt_lengths': K ints (the prompt tokens that start
    each sequence), 'pairs': [(better, worse)], 'kinds': pair kinds or None, 'types': the pairs' task types or None}.

    kinds come from judge(row, response) (the scripts pass the task's gold judge) and exist only for rows it
    judges (the shipped task's rows, which carry a 'type')."""

    def __init__(self, source: str, tokenizer, max_len: int, on_mismatch: str = "skip", limit: int = None,
                 verbose: bool = True, chat_template: bool = False, judge=None):
        self.groups = read_comparisons(source, on_mismatch, limit)
        self.items, self.counter = [], TruncationCounter()
        for g in self.groups:
            if chat_template or "messages" in g:
                prompt_ids, response_ids = encode_chat(tokenizer, g.get("messages") or chat_messages(g["prompt"]),
                                                       g["responses"])
            else:
                prompt_ids = encode_prompt(tokenizer, g["prompt"])
                response_ids = [encode_response(tokenizer, response) for response in g["responses"]]
            # The prompt is cut once, for the longest reply, so every reply of the comparison follows the same
            # prompt tokens (cut per reply, a long reply would be read after less of the prompt than a short one)
            whole = len(prompt_ids)
            prompt_ids, _ = fit_lengths(prompt_ids, max(response_ids, key=len), max_len)
            cut = len(prompt_ids) < whole
            self.counter.prompt_cut += len(response_ids) if cut else 0
            sequences, prompt_lengths = [], []
            for ids in response_ids:
                counted = self.counter.truncated
                p, r = fit_lengths(prompt_ids, ids, max_len, self.counter)
                self.counter.truncated += cut and self.counter.truncated == counted  # each sequence once
                sequences.append(p + r)
                prompt_lengths.append(len(p))
            pairs = ranked_pairs(len(sequences))
            judged = judge is not None and judge(g, g["responses"][0]) is not None
            kinds = [pair_kind(judge, g, g["responses"][i], g["responses"][j]) for i, j in pairs] if judged else None
            types = [g.get("type")] * len(pairs) if judged else None  # the task type of each pair (add, sort, ...)
            self.items.append({"sequences": sequences, "prompt_lengths": prompt_lengths, "pairs": pairs, "kinds": kinds,
                               "types": types})
        if verbose:
            print(self.report(source))

    def report(self, name: str) -> str:
        c = self.counter
        return (f"{name}: {len(self.items)} groups, {self.num_pairs} pairs, {c.rows} sequences, "
                f"{c.truncated} truncated (prompt cut from the left: {c.prompt_cut}, "
                f"response cut from the right: {c.response_cut})")

    @property
    def num_pairs(self) -> int:
        return sum(len(it["pairs"]) for it in self.items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def flatten_groups(items: list) -> dict:
    """The groups' responses as one list of N sequences, and their P pairs as indices into it.

    sequences: N id lists; prompt_lengths: N ints; chosen, rejected: P row indices; group: P group
    indices; kinds, types: P pair kinds and task types (None where unknown)."""
    flat = {"sequences": [], "prompt_lengths": [], "chosen": [], "rejected": [], "group": [], "kinds": [], "types": []}
    for g, it in enumerate(items):
        offset = len(flat["sequences"])
        flat["sequences"] += it["sequences"]
        flat["prompt_lengths"] += it["prompt_lengths"]
        flat["chosen"] += [offset + i for i, _ in it["pairs"]]
        flat["rejected"] += [offset + j for _, j in it["pairs"]]
        flat["group"] += [g] * len(it["pairs"])
        flat["kinds"] += it["kinds"] or [None] * len(it["pairs"])
        flat["types"] += it.get("types") or [None] * len(it["pairs"])
    return flat


def rm_collate(items: list, pad_id: int) -> dict:
    """Flatten the groups' responses into one right-padded batch of N sequences, and index the P pairs.

    input_ids, attention_mask: (N, T); loss_mask: (N, T), 1 on response tokens (EOS included), which
    DPO's sequence log-probs sum over; chosen_index, rejected_index: (P,) rows of input_ids;
    kinds, types: P pair kinds and task types (None where unknown)."""
    flat = flatten_groups(items)
    seqs = flat["sequences"]
    return {
        "input_ids": pad(seqs, pad_id),  # (N, T)
        "attention_mask": pad([[1] * len(s) for s in seqs], 0),  # (N, T)
        "loss_mask": pad([[0] * n + [1] * (len(s) - n) for s, n in zip(seqs, flat["prompt_lengths"])], 0),  # (N, T)
        "chosen_index": torch.tensor(flat["chosen"], dtype=torch.long),  # (P,)
        "rejected_index": torch.tensor(flat["rejected"], dtype=torch.long),  # (P,)
        "kinds": flat["kinds"],
        "types": flat["types"],
    }
