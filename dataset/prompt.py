"""Prompts for PPO rollouts: rendered with the SFT template or the chat template (`messages` rows, or
CHAT_TEMPLATE=True), tokenized, cut from the left when too long."""
from dataset.sft import ItemsDataset, TruncationCounter, fit_lengths, prompt_ids, read_prompts


class PromptDataset(ItemsDataset):
    """Each item: {'prompt_ids': list of ints, 'row': the source row (its 'type' lets the judge report per type)}."""

    def __init__(self, source: str, tokenizer, max_prompt_len: int, limit: int = None, verbose: bool = True,
                 chat_template: bool = False):
        counter = TruncationCounter()
        self.items = []
        for row in read_prompts(source, limit):
            ids, _ = fit_lengths(prompt_ids(tokenizer, row, chat_template), [], max_prompt_len, counter)
            self.items.append({"prompt_ids": ids, "row": row})
        if verbose:
            print(counter.report(source))
