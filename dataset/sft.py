"""SFT data: demonstrations tokenized with a response-only loss mask, and the collator.

Alpaca rows render with the project's prompt template (dataset/chat.py `render_prompt`; the Input
block is left out when a row has no input), followed by the response and EOS. `prompt`/`completion`
rows use their prompt text as is. `messages` rows (system/user/assistant turns), and every row under
CHAT_TEMPLATE=True, go through the tokenizer's chat template instead (dataset/chat.py); then every
assistant turn is supervised and nothing else. Only response tokens and the final EOS are supervised
(label = token id); prompt and padding tokens get label -100, which cross-entropy ignores.
Over-long rows follow the shared truncation policy (dataset/tokens.py `fit_lengths`).
"""
from dataset.chat import check_messages, encode_conversation, render_prompt, row_messages
from dataset.io import read_rows
from dataset.tokens import (ItemsDataset, TruncationCounter, encode_prompt, encode_response,
                            fit_conversation, fit_lengths, pad)
from dataset.trl_formats import from_conversational

SFT_FORMATS = [["instruction", "input", "output"], ["prompt", "completion"], ["messages"]]


def response_of(row: dict) -> str:
    return row["output"] if "output" in row else row["completion"]


class SFTDataset(ItemsDataset):
    """Tokenized demonstrations: each item is {'input_ids', 'labels'} as lists of ints."""

    def __init__(
        self,
        source: str,
        tokenizer,
        max_len: int,
        limit: int = None,
        verbose: bool = True,
        chat_template: bool = False,
    ):
        rows = read_rows(source, SFT_FORMATS, optional=("input",), lists=("messages",),
                         lists_or_strings=("prompt", "completion"))[:limit]
        rows = [from_conversational(r) for r in rows]  # TRL's conversational prompt-completion rows
        self.rows, self.items, counter = rows, [], TruncationCounter()
        for row in rows:
            if "messages" in row or chat_template:
                messages = (
                    check_messages(row["messages"], row["_where"], need_assistant=True)
                    if "messages" in row
                    else row_messages(row) + [{"role": "assistant", "content": response_of(row)}]
                )
                ids, labels = fit_conversation(
                    *encode_conversation(tokenizer, messages), max_len, counter
                )
                self.items.append({"input_ids": ids, "labels": labels})
                continue
            p, r = fit_lengths(encode_prompt(tokenizer, render_prompt(row)),
                               encode_response(tokenizer, response_of(row)), max_len, counter)
            self.items.append({"input_ids": p + r, "labels": [-100] * len(p) + r})
        if verbose:
            print(counter.report(source))


def sft_collate(items: list, pad_id: int) -> dict:
    """Dynamic padding to the longest row of the batch (right side)."""
    input_ids = pad([it["input_ids"] for it in items], pad_id)  # (B, T)
    return {
        "input_ids": input_ids,
        "attention_mask": pad([[1] * len(it["input_ids"]) for it in items], 0),  # (B, T)
        "labels": pad([it["labels"] for it in items], -100),  # (B, T)
    }
