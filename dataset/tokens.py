"""Token-level pieces every stage shares: encoding a prompt and a response, the truncation policy,
the dataset of pre-tokenized items, and padding.

Truncation policy (`fit_lengths`): when prompt + response exceed the limit, the prompt is cut from the
left (its first token, the BOS, is kept) down to MIN_PROMPT_TOKENS; only a response that does not fit
beside those is cut from the right. Rows are never dropped; truncated rows are counted and reported.
"""
import torch

MIN_PROMPT_TOKENS = 8  # the prompt keeps at least this many tokens when the response is long


def encode_prompt(tokenizer, prompt: str) -> list:
    return tokenizer(prompt)["input_ids"]  # adds BOS where the tokenizer does (OPT: </s>)


def encode_response(tokenizer, response: str) -> list:
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


class TruncationCounter:
    """Counts rows cut by `fit_lengths`, for the report printed after tokenizing a file."""

    def __init__(self):
        # a row cut at both ends counts once in `truncated`
        self.rows = self.truncated = self.prompt_cut = self.response_cut = 0

    def report(self, name: str) -> str:
        return (f"{name}: {self.rows} rows, {self.truncated} truncated (prompt cut from the left: "
                f"{self.prompt_cut}, response cut from the right: {self.response_cut})")


def fit_lengths(
    prompt_ids: list, response_ids: list, max_len: int, counter: TruncationCounter = None
):
    """Apply the truncation policy; returns (prompt_ids, response_ids) with total length <= max_len."""
    if counter is not None:
        counter.rows += 1
    if len(prompt_ids) + len(response_ids) <= max_len:
        return prompt_ids, response_ids
    if counter is not None:
        counter.truncated += 1
    room = max(max_len - len(response_ids), min(MIN_PROMPT_TOKENS, len(prompt_ids)))
    if room < len(prompt_ids):
        # keep BOS, cut from the left
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - room + 1:]
        if counter is not None:
            counter.prompt_cut += 1
    if len(prompt_ids) + len(response_ids) > max_len:
        response_ids = response_ids[: max_len - len(prompt_ids)]
        if counter is not None:
            counter.response_cut += 1
    return prompt_ids, response_ids


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


def pad(seqs: list, value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ints to one length; returns a (B, T) long tensor."""
    width = max(len(s) for s in seqs)
    fill = [[value] * (width - len(s)) for s in seqs]
    return torch.tensor(
        [s + f if side == "right" else f + s for s, f in zip(seqs, fill)], dtype=torch.long
    )
