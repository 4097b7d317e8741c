"""Pairs of token lists -> one padded [2B, T] batch, chosen rows first, with completion masks.

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


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-pad tokens in a collated batch (the throughput numerator)."""
    return int(batch["attention_mask"].sum())
