"""Pairs of token lists -> one padded [2B, T] batch, chosen rows first, with completion masks; packed
rows (padding-free) and token-budget cuts of a micro-batch.

Pure ring: no Ray import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def collate_pairs(
    prompt_ids: Sequence[Sequence[int]],
    chosen_ids: Sequence[Sequence[int]],
    rejected_ids: Sequence[Sequence[int]],
    *,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """B pairs -> input_ids, attention_mask, completion_mask, each (2B, T), right padded.

    Row i is prompt_i + chosen_i, row B + i is prompt_i + rejected_i; completion_mask is 1 on the
    completion tokens of each row (the only tokens the loss sees). T is the longest row.
    """
    prompts = [np.asarray(p, dtype=np.int64) for p in prompt_ids]
    completions = [np.asarray(c, dtype=np.int64) for c in chosen_ids] + [
        np.asarray(r, dtype=np.int64) for r in rejected_ids
    ]
    prompts = prompts + prompts
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    n, width = len(completions), max(lengths)
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    attention = np.zeros((n, width), dtype=np.int64)
    completion = np.zeros((n, width), dtype=np.int64)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        end = len(p) + len(c)
        input_ids[row, : len(p)] = p
        input_ids[row, len(p) : end] = c
        attention[row, :end] = 1
        completion[row, len(p) : end] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "completion_mask": torch.from_numpy(completion),
    }


def pack_rows(batch: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Rows of a padded batch (collate_pairs; default all, in order) -> ONE packed row (1, L), no pads:
    their real tokens end to end, position_ids restarting at 0 per sequence, seq_ids numbering the
    sequences in ``rows`` order, and no attention mask (transformers builds the block-diagonal causal
    mask from the position ids; flash-attention reads them as varlen boundaries)."""
    if rows is not None:
        batch = {k: v[rows] for k, v in batch.items()}
    keep = batch["attention_mask"].bool()  # right padding: each row's real tokens are its first ones
    n, width = keep.shape
    positions = torch.arange(width, device=keep.device).expand(n, width)
    seq = torch.arange(n, device=keep.device).unsqueeze(-1).expand(n, width)
    return {"input_ids": batch["input_ids"][keep].unsqueeze(0), "position_ids": positions[keep].unsqueeze(0),
            "completion_mask": batch["completion_mask"][keep].unsqueeze(0), "seq_ids": seq[keep].unsqueeze(0)}


def pair_costs(prompt_ids: Sequence[Sequence[int]], chosen_ids: Sequence[Sequence[int]],
               rejected_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: its padded width x 2 (a padded micro-batch of n pairs costs n x the largest) and its
    real tokens (a packed one costs their sum), both rows of the pair."""
    p = np.fromiter((len(x) for x in prompt_ids), dtype=np.int64, count=len(prompt_ids))
    c = np.fromiter((len(x) for x in chosen_ids), dtype=np.int64, count=len(chosen_ids))
    r = np.fromiter((len(x) for x in rejected_ids), dtype=np.int64, count=len(rejected_ids))
    return 2 * (p + np.maximum(c, r)), 2 * p + c + r


def budget_cuts(widths: np.ndarray, tokens: np.ndarray, budget: int, packed: bool) -> list[np.ndarray]:
    """Items in their given order cut into consecutive groups whose cost stays within ``budget``
    token slots: packed, the sum of ``tokens``; padded, the group's size times its largest
    ``widths``. An item over the budget on its own is a group of one. Packed, the cuts are greedy
    (fewest groups; a packed group has no pads). Padded, they are the fewest groups too, and of
    those the ones with the fewest token slots (the fewest pads: a greedy fill from the short end
    lets its first groups reach far into longer items), by dynamic programming over the cut points.
    Returns index arrays."""
    if packed or not len(widths):
        return _greedy_cuts(tokens, budget)
    n, w = len(widths), [int(x) for x in widths]
    best: list[tuple[int, int]] = [(0, 0)] + [(n + 1, 0)] * n  # (groups, token slots) of the first j items
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        largest = 0
        for i in range(j - 1, -1, -1):  # the group [i, j): its cost only grows as it reaches back
            largest = max(largest, w[i])
            slots = (j - i) * largest
            if i < j - 1 and slots > budget:
                break
            cand = (best[i][0] + 1, best[i][1] + slots)
            if cand < best[j]:
                best[j], start[j] = cand, i
    cuts, j = [], n
    while j:
        cuts.append(np.arange(start[j], j))
        j = start[j]
    return cuts[::-1]


def _greedy_cuts(tokens: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive groups whose summed ``tokens`` stay within ``budget``, each filled before the next."""
    cuts, start, total = [], 0, 0
    for i in range(len(tokens)):
        total += int(tokens[i])
        if i > start and total > budget:
            cuts.append(np.arange(start, i))
            start, total = i, int(tokens[i])
    if len(tokens):
        cuts.append(np.arange(start, len(tokens)))
    return cuts


def split_to(cuts: list[np.ndarray], count: int, costs: np.ndarray) -> list[np.ndarray]:
    """``cuts`` split until there are ``count`` groups: the costliest group (by summed ``costs``) with
    two items or more is halved each time. Needs count <= the number of items."""
    cuts = list(cuts)
    while len(cuts) < count:
        i = max((j for j in range(len(cuts)) if len(cuts[j]) > 1), key=lambda j: int(costs[cuts[j]].sum()))
        half = len(cuts[i]) // 2
        cuts[i:i + 1] = [cuts[i][:half], cuts[i][half:]]
    return cuts


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-pad tokens in a collated batch (the throughput numerator); a packed batch has no pads."""
    if "position_ids" in batch:
        return int(batch["input_ids"].numel())
    return int(batch["attention_mask"].sum())
