"""Prompts for PPO rollouts: rendered with the SFT template, tokenized, cut from the left when too long."""
from dataset.sft import ItemsDataset, TruncationCounter, encode_prompt, fit_lengths, read_prompts, render_prompt


class PromptDataset(ItemsDataset):
    """Each item: {'prompt_ids': list of ints, 'row': the source row (its 'type' lets the judge report per type)}."""

    def __init__(self, source: str, tokenizer, max_prompt_len: int, limit: int = None, verbose: bool = True):
        counter = TruncationCounter()
        self.items = []
        for row in read_prompts(source, limit):
            ids, _ = fit_lengths(encode_prompt(tokenizer, render_prompt(row)), [], max_prompt_len, counter)
            self.items.append({"prompt_ids": ids, "row": row})
        if verbose:
            print(counter.report(source))
