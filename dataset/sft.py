"""SFT data: the prompt template, tokenization with a response-only loss mask, and the collator.

Template (Alpaca style; the Input block is left out when a row has no input):

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Response:
    {response}</s>

`prompt`/`completion` rows use their prompt text as is. `messages` rows (system/user/assistant turns), and
every row under CHAT_TEMPLATE=True, go through the tokenizer's chat template instead (dataset/chat.py);
then every assistant turn is supervised and nothing else. Only response tokens and the final EOS are
supervised (label = token id); prompt and padding tokens get label -100, which cross-entropy ignores.

Truncation policy, shared by every stage (`fit_lengths`): when prompt + response exceed the limit,
the prompt is cut from the left (its first token, the BOS, is kept) down to MIN_PROMPT_TOKENS; only a
response that does not fit beside those is cut from the right. Rows are never dropped; truncated rows
are counted and reported.
"""
import json
import os

import torch

from dataset.chat import chat_messages, chat_prompt_ids, check_messages, encode_conversation, last_user_text, row_messages
from dataset.io import DataError, read_rows
from dataset.trl_formats import from_conversational, implicit_prompt_turns
from dataset.task import reference_answer

SFT_FORMATS = [["instruction", "input", "output"], ["prompt", "completion"], ["messages"]]
PROMPT_FORMATS = [["instruction", "input"], ["prompt"], ["messages"], ["chosen", "rejected"]]
MIN_PROMPT_TOKENS = 8  # the prompt keeps at least this many tokens when the response is long


def render_prompt(row: dict) -> str:
    """The prompt text of a row (Alpaca `instruction`/`input`, or a raw `prompt`). For a `messages` row,
    the last user turn: what the gold judge reads (its tokens come from the chat template, `prompt_ids`)."""
    if "messages" in row:
        return last_user_text(row["messages"])
    if "instruction" in row:
        body = f"### Instruction:\n{row['instruction']}\n\n"
        if row.get("input"):
            body += f"### Input:\n{row['input']}\n\n"
        return body + "### Response:\n"
    return row["prompt"]


def check_task_row(row: dict, prompt: str = None) -> str:
    """The prompt of a row (rendered unless given); a row with a 'type' (the shipped task's rows) must be
    one the gold judge can score, since evaluation and pair kinds ask it. Raises DataError naming the row otherwise."""
    prompt = render_prompt(row) if prompt is None else prompt
    if row.get("type") is not None:
        try:
            if not isinstance(row["type"], str):
                raise TypeError(f"'type' must be a string, got {type(row['type']).__name__}")
            reference_answer(prompt)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise DataError(f"{row['_where']}: the row has a 'type', so the shipped task's gold judge scores it, but "
                            f"the judge cannot read it ({type(e).__name__}: {e}) (fix the row, or drop 'type' from "
                            "rows of another task)") from None
    return prompt


def response_of(row: dict) -> str:
    return row["output"] if "output" in row else row["completion"]


class TruncationCounter:
    """Counts rows cut by `fit_lengths`, for the report printed after tokenizing a file."""

    def __init__(self):
        # a row cut at both ends counts once in `truncated`
        self.rows = self.truncated = self.prompt_cut = self.response_cut = 0

    def report(self, name: str) -> str:
        return (f"{name}: {self.rows} rows, {self.truncated} truncated (prompt cut from the left: "
                f"{self.prompt_cut}, response cut from the right: {self.response_cut})")


def fit_lengths(prompt_ids: list, response_ids: list, max_len: int, counter: TruncationCounter = None):
    """Apply the truncation policy; returns (prompt_ids, response_ids) with total length <= max_len."""
    if counter is not None:
        counter.rows += 1
    if len(prompt_ids) + len(response_ids) <= max_len:
        return prompt_ids, response_ids
    if counter is not None:
        counter.truncated += 1
    room = max(max_len - len(response_ids), min(MIN_PROMPT_TOKENS, len(prompt_ids)))
    if room < len(prompt_ids):
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - room + 1:]  # keep BOS, cut from the left
        if counter is not None:
            counter.prompt_cut += 1
    if len(prompt_ids) + len(response_ids) > max_len:
        response_ids = response_ids[: max_len - len(prompt_ids)]
        if counter is not None:
            counter.response_cut += 1
    return prompt_ids, response_ids


def encode_prompt(tokenizer, prompt: str) -> list:
    return tokenizer(prompt)["input_ids"]  # adds BOS where the tokenizer does (OPT: </s>)


def encode_response(tokenizer, response: str) -> list:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def prompt_ids(tokenizer, row: dict, chat_template: bool = False) -> list[int]:
    """A row's prompt tokens: `messages` rows, and every row under CHAT_TEMPLATE=True, through the
    tokenizer's chat template; Alpaca and raw-prompt rows otherwise as text."""
    if chat_template or "messages" in row:
        return chat_prompt_ids(tokenizer, row_messages(row))
    return encode_prompt(tokenizer, render_prompt(row))


def fit_conversation(ids: list, labels: list, max_len: int, counter: TruncationCounter = None):
    """`fit_lengths` for a whole conversation: the last assistant turn is the response, everything
    before it (earlier turns keep their labels) the prompt. Returns (ids, labels)."""
    start = len(labels)
    while start > 0 and labels[start - 1] != -100:
        start -= 1
    p, r = fit_lengths(ids[:start], ids[start:], max_len, counter)
    cut = start - len(p)  # tokens removed after the BOS
    p_labels = labels[:start] if cut == 0 else labels[:1] + labels[1 + cut: start]
    return p + r, p_labels + r


class ItemsDataset(torch.utils.data.Dataset):
    """A dataset whose tokenized items are built once, in __init__, into the list self.items."""

    items: list

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class SFTDataset(ItemsDataset):
    """Tokenized demonstrations: each item is {'input_ids', 'labels'} as lists of ints."""

    def __init__(self, source: str, tokenizer, max_len: int, limit: int = None, verbose: bool = True,
                 chat_template: bool = False):
        rows = read_rows(source, SFT_FORMATS, optional=("input",), lists=("messages",),
                         lists_or_strings=("prompt", "completion"))[:limit]
        rows = [from_conversational(r) for r in rows]  # TRL's conversational prompt-completion rows
        self.rows, self.items, counter = rows, [], TruncationCounter()
        for row in rows:
            if "messages" in row or chat_template:
                messages = (check_messages(row["messages"], row["_where"], need_assistant=True) if "messages" in row
                            else row_messages(row) + [{"role": "assistant", "content": response_of(row)}])
                ids, labels = fit_conversation(*encode_conversation(tokenizer, messages), max_len, counter)
                self.items.append({"input_ids": ids, "labels": labels})
                continue
            p, r = fit_lengths(encode_prompt(tokenizer, render_prompt(row)),
                               encode_response(tokenizer, response_of(row)), max_len, counter)
            self.items.append({"input_ids": p + r, "labels": [-100] * len(p) + r})
        if verbose:
            print(counter.report(source))


def pad(seqs: list, value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ints to one length; returns a (B, T) long tensor."""
    width = max(len(s) for s in seqs)
    fill = [[value] * (width - len(s)) for s in seqs]
    return torch.tensor([s + f if side == "right" else f + s for s, f in zip(seqs, fill)], dtype=torch.long)


def sft_collate(items: list, pad_id: int) -> dict:
    """Dynamic padding to the longest row of the batch (right side)."""
    input_ids = pad([it["input_ids"] for it in items], pad_id)  # (B, T)
    return {
        "input_ids": input_ids,
        "attention_mask": pad([[1] * len(it["input_ids"]) for it in items], 0),  # (B, T)
        "labels": pad([it["labels"] for it in items], -100),  # (B, T)
    }


def hh_prompt_messages(row: dict) -> list[dict]:
    """An Anthropic HH row's prompt as chat messages: the dialogue both replies share, up to the last
    '\n\nAssistant:' (the reply PPO samples goes there), its turns as user/assistant messages."""
    common = os.path.commonprefix([row["chosen"], row["rejected"]])
    cut = common.rfind("\n\nAssistant:")
    if cut < 0 or not common.startswith("\n\nHuman:"):
        raise DataError(f"{row['_where']}: 'chosen' and 'rejected' are not HH dialogues sharing their turns "
                        "up to an '\\n\\nAssistant:' turn (a prompt file needs instruction/input, prompt or messages)")
    return chat_messages(common[:cut + len("\n\nAssistant:")])


def read_prompts(source: str, limit: int = None) -> list[dict]:
    """Rows with a prompt (Alpaca `instruction`/`input`, `prompt`, `messages` ending with a user turn, or an
    Anthropic HH `chosen`/`rejected` row, whose shared dialogue becomes `messages`), for generation and PPO."""
    rows = read_rows(source, PROMPT_FORMATS, optional=("input",), lists=("messages",),
                     lists_or_strings=("prompt", "completion", "chosen", "rejected"))[:limit]
    rows = [from_conversational(r) for r in rows]  # TRL's conversational prompts become `messages`
    for row in rows:
        if "chosen" in row and not any(k in row for k in ("instruction", "prompt", "messages")):
            row["messages"] = (implicit_prompt_turns(row) if isinstance(row["chosen"], list)
                               else hh_prompt_messages(row))
        if "messages" in row:
            row["messages"] = check_messages(row["messages"], row["_where"], last="user")
        else:
            check_task_row(row)
    return rows


def corpus_texts(paths: list[str]) -> list[str]:
    """Every text of the JSONL files as the stages render it (prompts, responses, comparisons): what the
    embedded tokenizer is trained on (model/load.py build_embedded)."""
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                texts.append(render_prompt(row))
                texts += [row[k] for k in ("output", "chosen", "rejected") if k in row] + row.get("responses", [])
    return texts
