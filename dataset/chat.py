"""Chat formats: every prompt format as a tokenizer chat template, and conversational (`messages`) rows.

One setting, CHAT_TEMPLATE, means the same in every stage (train_sft.py, train_rm.py, train_rlhf.py):

* False (default): the project's Alpaca format. `use_chat_format` installs it as the tokenizer's
  `chat_template` (ALPACA_TEMPLATE), so `messages` rows go through it, and the saved checkpoint carries
  it: `pipeline("text-generation", model="out/sft")` called with a list of messages, and chat.py, then
  render exactly the prompts the model was trained on. Alpaca rows render as text (`render_prompt`),
  built from the same pieces as the template, which gives the same text and tokens (tested).
* True: the tokenizer's own chat template (a chat model's, e.g. SmolLM2-Instruct's ChatML, or the
  embedded tokenizer's small EMBEDDED_TEMPLATE); Alpaca rows become one user message ("instruction",
  then the input on the next line).

The Alpaca template reads a user message as: first line = the instruction, any further lines = the
"### Input:" block, so "Add the two numbers.\\n12 and 30" renders as the shipped task's prompts do.

`messages` rows: a list of {"role": "system" | "user" | "assistant", "content": str} turns. SFT supervises
the assistant turns only (each turn's text and its end-of-turn token); comparison rows hold `chosen` /
`rejected` message lists (TRL's conversational preference format, implicit or explicit `prompt`); PPO
prompt rows end with a user turn. A bad turn is a DataError naming file:line.
"""
import json
import os
import re

from dataset.io import DataError
from dataset.tokens import encode_prompt
from utils import ConfigError

ROLES = ("system", "user", "assistant")
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")  # Anthropic HH dialogue turns
# The Alpaca format, written once: `render_prompt` and ALPACA_TEMPLATE are both built from these pieces.
INSTRUCTION_HEADER = "### Instruction:\n"
INPUT_HEADER = "### Input:\n"
RESPONSE_HEADER = "### Response:\n"
BLOCK_END = "\n\n"  # closes the system preamble, the instruction and the input
# As a chat template: system text as a preamble, each user turn as an instruction (first line) with an
# optional input (further lines), each assistant turn as the response + EOS.
ALPACA_TEMPLATE = (
    "{{ bos }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}" + BLOCK_END +
    "{% elif m['role'] == 'user' %}{% set parts = m['content'].split('\\n', 1) %}"
    + INSTRUCTION_HEADER + "{{ parts[0] }}" + BLOCK_END +
    "{% if parts | length > 1 and parts[1] | trim %}"
    + INPUT_HEADER + "{{ parts[1] | trim }}" + BLOCK_END + "{% endif %}"
    "{% else %}" + RESPONSE_HEADER + "{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}" + RESPONSE_HEADER + "{% endif %}")
# The embedded tokenizer's own small chat template (role markers are plain text to the BPE).
EMBEDDED_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def render_prompt(row: dict) -> str:
    """The prompt text of a row (Alpaca `instruction`/`input`, or a raw `prompt`). For a `messages` row,
    the last user turn: what the gold judge reads (its tokens come from the chat template, `prompt_ids`)."""
    if "messages" in row:
        return last_user_text(row["messages"])
    if "instruction" in row:
        body = f"{INSTRUCTION_HEADER}{row['instruction']}{BLOCK_END}"
        if row.get("input"):
            body += f"{INPUT_HEADER}{row['input']}{BLOCK_END}"
        return body + RESPONSE_HEADER
    return row["prompt"]


def prompt_ids(tokenizer, row: dict, chat_template: bool = False) -> list[int]:
    """A row's prompt tokens: `messages` rows, and every row under CHAT_TEMPLATE=True, through the
    tokenizer's chat template; Alpaca and raw-prompt rows otherwise as text."""
    if chat_template or "messages" in row:
        return chat_prompt_ids(tokenizer, row_messages(row))
    return encode_prompt(tokenizer, render_prompt(row))


def alpaca_template(tokenizer) -> str:
    """ALPACA_TEMPLATE with the BOS written in where the tokenizer adds one itself (OPT prepends </s>),
    since a chat template is tokenized without special tokens."""
    ids = tokenizer("a")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    return ALPACA_TEMPLATE.replace("{{ bos }}", "{{ bos_token }}" if adds_bos else "")


def use_chat_format(tokenizer, chat_template: bool, setting: str = "CHAT_TEMPLATE") -> None:
    """Install the format every stage renders with and saves: Alpaca (False) or the tokenizer's own (True)."""
    if not chat_template:
        tokenizer.chat_template = alpaca_template(tokenizer)
    elif not tokenizer.chat_template:
        raise ConfigError(
            f"{setting}=True needs a tokenizer with a chat template (this one has none); "
            f"set {setting}=False for the Alpaca format"
        )


def saved_chat_format(model_dir: str, value, setting: str = "CHAT_TEMPLATE") -> bool:
    """CHAT_TEMPLATE='auto': the format the checkpoint in model_dir was trained with (its run_config.json),
    False (Alpaca) where it recorded none; True/False (or their text) as given."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value != "auto":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{setting}={value!r}: expected True, False or 'auto'")
    try:
        with open(os.path.join(model_dir, "run_config.json")) as f:
            return bool(json.load(f).get("CHAT_TEMPLATE", False))
    except (OSError, ValueError, AttributeError):
        return False


def row_messages(row: dict) -> list[dict]:
    """The conversation of a row: its `messages`, or Alpaca/prompt fields as one user message."""
    if "messages" in row:
        return row["messages"]
    if "instruction" in row:
        text = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
        return [{"role": "user", "content": text}]
    return chat_messages(row["prompt"])  # HH-style prompts become alternating turns


def chat_messages(prompt: str) -> list[dict]:
    """A prompt as chat messages: HH turns ('\\n\\nHuman: ...\\n\\nAssistant: ...', ending in an open
    Assistant turn) -> alternating user/assistant messages; any other text -> one user message."""
    if not prompt.startswith("\n\nHuman:"):
        return [{"role": "user", "content": prompt}]
    parts = HH_TURN.split(prompt)  # ['', 'Human', text, 'Assistant', text, ..., 'Assistant', '']
    turns = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
             for who, text in zip(parts[1::2], parts[2::2])]
    return (
        turns[:-1]
        if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]
        else turns
    )


def check_messages(messages, where: str, field: str = "messages", need_assistant: bool = False,
                   last: str = None) -> list[dict]:
    """Validate a list of turns. need_assistant: at least one assistant turn (SFT); last: the role the
    final turn must have ('user' for prompts, 'assistant' for a reply). Raises DataError naming file:line,
    the field and the turn."""
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where}: field {field!r} must be a non-empty list of {{'role', 'content'}} turns"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(
                f"{where}: {field}[{i}] must be an object with 'role' and 'content', got {type(m).__name__}"
            )
        if "role" not in m:
            raise DataError(f"{where}: {field}[{i}] has no 'role' (one of {', '.join(ROLES)})")
        if m["role"] not in ROLES:
            raise DataError(
                f"{where}: {field}[{i}] has role {m['role']!r}; expected one of {', '.join(ROLES)}"
            )
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise DataError(f"{where}: {field}[{i}] ({m['role']}) has no text in 'content'")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field {field!r} has no assistant turn (nothing to learn from)")
    first = next((m["role"] for m in messages if m["role"] != "system"), None)
    if need_assistant and first != "user":  # an assistant turn needs a user turn to answer
        raise DataError(f"{where}: field {field!r} starts with an {first} turn; a conversation "
                        "starts with a user turn (after an optional system turn) (fix the row)")
    if last is not None and messages[-1]["role"] != last:
        raise DataError(
            f"{where}: field {field!r} must end with a{'n' if last == 'assistant' else ''} {last} turn, "
            f"not {messages[-1]['role']}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def last_user_text(messages: list[dict]) -> str:
    """What the gold judge reads of a conversation: its last user turn."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of rendered chat text (its special tokens, BOS included, are written in the text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The conversation so far plus the assistant's header: what the model continues."""
    return encode_text(tokenizer, render(tokenizer, messages, add_generation_prompt=True))


def reply_text(tokenizer, messages: list[dict], reply: str) -> tuple[str, str]:
    """(prompt text, the assistant turn's text): the turn's content and its end-of-turn, nothing after.

    Each turn is rendered after the conversation before it, so the template must render a prefix the
    same way once a reply follows (every common template does)."""
    prompt = render(tokenizer, messages, add_generation_prompt=True)
    full = render(tokenizer, messages + [{"role": "assistant", "content": reply}])
    if not full.startswith(prompt):
        raise ConfigError("the chat template renders the prompt differently once a reply follows "
                          "(set CHAT_TEMPLATE=False for the Alpaca format)")
    turn = full[len(prompt):]
    eos = tokenizer.eos_token or ""
    end = turn.find(eos, turn.find(reply) + len(reply)) if eos else -1
    return prompt, turn[: end + len(eos)] if end >= 0 else turn.rstrip()


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a whole conversation: labels are the ids on assistant turns (content and
    end-of-turn) and -100 elsewhere (system, user, template markup). Ends with the last assistant turn."""
    ids, labels, done = [], [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, turn = reply_text(tokenizer, messages[:i], m["content"])
        if not prompt.startswith(done):
            raise ConfigError(
                "the chat template renders earlier turns differently as the conversation "
                "grows (set CHAT_TEMPLATE=False for the Alpaca format)"
            )
        context, supervised = encode_text(tokenizer, prompt[len(done) :]), encode_text(
            tokenizer, turn
        )
        ids += context + supervised
        labels += [-100] * len(context) + supervised
        done = prompt + turn
    return ids, labels


def corpus_texts(paths: list[str]) -> list[str]:
    """Every text of the JSONL files as the stages render it (prompts, responses, comparisons): what the
    embedded tokenizer is trained on (model/load.py build_embedded)."""
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                texts.append(render_prompt(row))
                texts += [row[k] for k in ("output", "chosen", "rejected") if k in row] + row.get(
                    "responses", []
                )
    return texts
