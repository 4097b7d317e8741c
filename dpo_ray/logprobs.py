"""Sequence log-probs of completions: ONE implementation, shared by the reference scorer and the trainer.

Pure ring: no Ray import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceStats:
    """Per-sequence sums over completion tokens, each of shape (N,)."""

    logps: torch.Tensor
    """Sum of log p(token) over completion tokens."""
    num_tokens: torch.Tensor
    """Completion token count |y|."""
    logits_sum: torch.Tensor
    """Sum over completion tokens of the mean logit over the vocabulary (TRL's logits/* metric)."""


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> SequenceStats:
    """Summed completion log-probs.

    logits (N, T, V) predict the next token: logits[:, t] scores input_ids[:, t + 1].
    completion_mask (N, T) marks completion tokens of input_ids. Computed in float32 at least.
    """
    logits = logits[:, :-1]  # (N, T-1, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> fp32
    labels = input_ids[:, 1:]  # (N, T-1)
    mask = completion_mask[:, 1:].to(logits.dtype)  # (N, T-1)
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return SequenceStats(
        logps=(token_logps * mask).sum(-1),
        num_tokens=mask.sum(-1),
        logits_sum=(logits.mean(-1).detach() * mask).sum(-1),
    )


def forward_sequence_stats(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> SequenceStats:
    """One forward of the concatenated (2B, T) batch from collate_pairs -> per-sequence stats."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return sequence_logps(out.logits, batch["input_ids"], batch["completion_mask"])


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B,) -> chosen (B,), rejected (B,): collate_pairs puts chosen rows first."""
    half = values.shape[0] // 2
    return values[:half], values[half:]
