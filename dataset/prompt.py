"""Prompt rows for generation, PPO, GRPO and DPO rollouts: read and validated (Alpaca
`instruction`/`input`, `prompt`, `messages`, or Anthropic HH `chosen`/`rejected`), rendered with the SFT
template or the chat template (`messages` rows, or CHAT_TEMPLATE=True), tokenized, and cut from the left
when too long."""
import os

from dataset.chat import chat_messages, check_messages, prompt_ids, render_prompt
from dataset.io import DataError, read_rows
from dataset.task import reference_answer
from dataset.tokens import ItemsDataset, TruncationCounter, fit_lengths
from dataset.trl_formats import from_conversational, implicit_prompt_turns

PROMPT_FORMATS = [["instruction", "input"], ["prompt"], ["messages"], ["chosen", "rejected"]]


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
            raise DataError(
                f"{row['_where']}: the row has a 'type', so the shipped task's gold judge scores it, but "
                f"the judge cannot read it ({type(e).__name__}: {e}) (fix the row, or drop 'type' from "
                "rows of another task)"
            ) from None
    return prompt


def hh_prompt_messages(row: dict) -> list[dict]:
    """An Anthropic HH row's prompt as chat messages: the dialogue both replies share, up to the last
    '\n\nAssistant:' (the reply PPO samples goes there), its turns as user/assistant messages."""
    common = os.path.commonprefix([row["chosen"], row["rejected"]])
    cut = common.rfind("\n\nAssistant:")
    if cut < 0 or not common.startswith("\n\nHuman:"):
        raise DataError(
            f"{row['_where']}: 'chosen' and 'rejected' are not HH dialogues sharing their turns "
            "up to an '\\n\\nAssistant:' turn (a prompt file needs instruction/input, prompt or messages)"
        )
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


class PromptDataset(ItemsDataset):
    """Each item: {'prompt_ids': list of ints, 'row': the source row (its 'type' lets the judge report
    per type)}."""

    def __init__(self, source: str, tokenizer, max_prompt_len: int, limit: int = None,
                 verbose: bool = True, chat_template: bool = False):
        counter = TruncationCounter()
        self.items = []
        for row in read_prompts(source, limit):
            ids, _ = fit_lengths(
                prompt_ids(tokenizer, row, chat_template), [], max_prompt_len, counter
            )
            self.items.append({"prompt_ids": ids, "row": row})
        if verbose:
            print(counter.report(source))
