"""Data order as a pure function of (seed, sample index), so resuming needs no dataloader state.

Sample k of a run is item perm_e[k % N] of the dataset, with perm_e a seeded permutation for
epoch e = k // N; with GROUP_BY_LENGTH, each epoch's permutation is rearranged so that each batch holds
items of similar length. A resumed run at step s therefore sees exactly the batches the
uninterrupted run would have.
"""
import torch


def epoch_order(data, seed: int, epoch: int, group_batch: int = 0) -> torch.Tensor:
    """The order of the items of `data` in `epoch`: a permutation seeded by (seed, epoch);
    group_batch > 0: rearranged into runs of group_batch items of similar length (group_by_length)."""
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(len(data), generator=gen)
    if group_batch:
        lengths = [item_length(data[int(i)]) for i in order]
        order = group_by_length(order, lengths, group_batch, gen)
    return order


def item_length(item: dict) -> int:
    """Tokens an item puts in a batch: an SFT row's ids, a PPO prompt, or all the sequences of an RM
    group."""
    if "input_ids" in item:
        return len(item["input_ids"])
    if "prompt_ids" in item:
        return len(item["prompt_ids"])
    return sum(len(s) for s in item["sequences"])


def group_by_length(order: torch.Tensor, lengths: list, batch: int, gen: torch.Generator,
                    chunk_batches: int = 50) -> torch.Tensor:
    """Rearrange `order` (lengths[i]: the length of order[i]) so that consecutive runs of `batch`
    items have similar lengths: within each chunk of chunk_batches * batch items (random, as `order`
    is), sort by length, cut into batches, and shuffle those batches. Padding drops while data order
    stays random at the chunk scale (as in the length-grouped samplers of common trainers). Returns
    a permutation of `order`."""
    out, size = [], chunk_batches * batch
    for start in range(0, len(order), size):
        # stable
        idx = sorted(range(start, min(start + size, len(order))), key=lambda i: -lengths[i])
        batches = [idx[i: i + batch] for i in range(0, len(idx), batch)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            out += batches[b]
    return order[torch.tensor(out, dtype=torch.long)]
