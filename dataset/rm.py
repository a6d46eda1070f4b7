"""Comparison data for the reward model: groups of responses ranked best first (read by
dataset/comparisons.py) -> token ids.

A group is scored as one unit: each of its K responses is one sequence (prompt + response + EOS),
scored once per step, and the pairs index into them. Over-length sequences follow the shared policy
of `dataset.tokens.fit_lengths` (prompt cut from the left, once per comparison, for its longest reply;
then each response from the right); they are counted and reported. With `too_long='drop'` a comparison with any
sequence over `max_len` is left out instead (as TRL's RewardTrainer does), also counted. Bad rows raise DataError
with file:line.

With `chat_template=True` the text goes through the tokenizer's chat template instead (for a chat model
such as SmolLM2-Instruct): HH turns become user/assistant messages (any other prompt is one user
message), and each response is the assistant's turn, closed by the template's end-of-turn token, which
is then the token the reward is read at. Conversational rows always go through the chat template.
"""
import torch

from dataset.chat import chat_messages, encode_text, reply_text
from dataset.comparisons import read_comparisons
from dataset.tokens import TruncationCounter, encode_prompt, encode_response, fit_lengths, pad
from utils import ConfigError


def ranked_pairs(k: int) -> list[tuple[int, int]]:
    """All (better, worse) index pairs of a best-first ranking of k responses: k(k-1)/2 of them."""
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def encode_chat(tokenizer, messages: list[dict], responses: list[str]) -> tuple[list, list[list]]:
    """Prompt ids (the template up to the assistant's turn) and each response's ids (its text and the
    template's end-of-turn, nothing after it, so the last token is the end-of-turn)."""
    if not tokenizer.chat_template:
        raise ConfigError(
            "CHAT_TEMPLATE=True: the tokenizer has no chat template (set CHAT_TEMPLATE=False)"
        )
    replies = []
    for response in responses:
        prompt, turn = reply_text(tokenizer, messages, response.strip())
        replies.append(encode_text(tokenizer, turn))
    return encode_text(tokenizer, prompt), replies


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


def check_too_long(value: str) -> None:
    """TOO_LONG: what happens to a comparison over max_len."""
    if value not in ("cut", "drop"):
        raise ConfigError(f"TOO_LONG={value!r}: expected 'cut' (the prompt from the left, then the "
                          "response from the right) or 'drop' (leave the comparison out)")


class RMDataset(torch.utils.data.Dataset):
    """Tokenized groups: {'sequences': K lists of ids, 'prompt_lengths': K ints (the prompt tokens that start
    each sequence), 'pairs': [(better, worse)], 'kinds': pair kinds or None, 'types': the pairs' task types or None}.

    kinds come from judge(row, response) (the scripts pass the task's gold judge) and exist only for rows it
    judges (the shipped task's rows, which carry a 'type')."""

    def __init__(
        self,
        source: str,
        tokenizer,
        max_len: int,
        on_mismatch: str = "skip",
        limit: int = None,
        verbose: bool = True,
        chat_template: bool = False,
        judge=None,
        too_long: str = "cut",
    ):
        check_too_long(too_long)
        self.groups = read_comparisons(source, on_mismatch, limit)
        self.items, self.counter, self.dropped = [], TruncationCounter(), 0
        kept = []
        for g in self.groups:
            if chat_template or "messages" in g:
                prompt_ids, response_ids = encode_chat(
                    tokenizer, g.get("messages") or chat_messages(g["prompt"]), g["responses"]
                )
            else:
                prompt_ids = encode_prompt(tokenizer, g["prompt"])
                response_ids = [encode_response(tokenizer, response) for response in g["responses"]]
            if too_long == "drop" and len(prompt_ids) + max(map(len, response_ids)) > max_len:
                self.dropped += 1
                continue
            kept.append(g)
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
                # each sequence once
                self.counter.truncated += cut and self.counter.truncated == counted
                sequences.append(p + r)
                prompt_lengths.append(len(p))
            pairs = ranked_pairs(len(sequences))
            judged = judge is not None and judge(g, g["responses"][0]) is not None
            kinds = (
                [pair_kind(judge, g, g["responses"][i], g["responses"][j]) for i, j in pairs]
                if judged
                else None
            )
            # the task type of each pair (add, sort, ...)
            types = [g.get("type")] * len(pairs) if judged else None
            self.items.append(
                {
                    "sequences": sequences,
                    "prompt_lengths": prompt_lengths,
                    "pairs": pairs,
                    "kinds": kinds,
                    "types": types,
                }
            )
        self.groups = kept  # the groups behind self.items, one for one
        if verbose:
            print(self.report(source))

    def report(self, name: str) -> str:
        c = self.counter
        dropped = f", {self.dropped} groups longer than max_len left out" if self.dropped else ""
        return (f"{name}: {len(self.items)} groups, {self.num_pairs} pairs, {c.rows} sequences, "
                f"{c.truncated} truncated (prompt cut from the left: {c.prompt_cut}, "
                f"response cut from the right: {c.response_cut}){dropped}")

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
    flat = {
        "sequences": [],
        "prompt_lengths": [],
        "chosen": [],
        "rejected": [],
        "group": [],
        "kinds": [],
        "types": [],
    }
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
        "loss_mask": pad(
            [[0] * n + [1] * (len(s) - n) for s, n in zip(seqs, flat["prompt_lengths"])], 0
        ),  # (N, T)
        "chosen_index": torch.tensor(flat["chosen"], dtype=torch.long),  # (P,)
        "rejected_index": torch.tensor(flat["rejected"], dtype=torch.long),  # (P,)
        "kinds": flat["kinds"],
        "types": flat["types"],
    }
