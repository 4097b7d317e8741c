"""Sequence log-probs of completions: ONE implementation, shared by the reference scorer and the trainer.

Pure ring: no Ray import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint


@dataclass
class SequenceStats:
    """Per-sequence sums over completion tokens, each of shape (N,)."""

    logps: torch.Tensor
    """Sum of log p(token) over completion tokens."""
    num_tokens: torch.Tensor
    """Completion token count |y|."""
    logits_sum: torch.Tensor
    """Sum over completion tokens of the mean logit over the vocabulary (TRL's logits/* metric)."""
    prefix_logps: torch.Tensor
    """Sum of log p over the first prefix_lengths completion tokens (LD-DPO's l_p part)."""
    wpo_logw: torch.Tensor | None = None
    """WPO log-weight: mean over completion tokens of log p(y_t) - log sum_v p(v)^2, no gradient."""


def sequence_logps(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    prefix_lengths: torch.Tensor | None = None,
    with_wpo: bool = False,
) -> SequenceStats:
    """Summed completion log-probs.

    logits (N, T, V) predict the next token: logits[:, t] scores input_ids[:, t + 1].
    completion_mask (N, T) marks completion tokens of input_ids; prefix_lengths (N,) counts the
    completion tokens summed into ``prefix_logps`` (default: all). Computed in float32 at least.
    """
    logits = logits[:, :-1]  # (N, T-1, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> fp32
    labels = input_ids[:, 1:]  # (N, T-1)
    mask = completion_mask[:, 1:].to(logits.dtype)  # (N, T-1)
    log_norm = torch.logsumexp(logits, dim=-1)  # (N, T-1)
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - log_norm
    num_tokens = mask.sum(-1)
    limit = num_tokens if prefix_lengths is None else prefix_lengths.to(mask.dtype)
    prefix_mask = mask * (torch.cumsum(mask, dim=-1) <= limit.unsqueeze(-1))
    wpo_logw = None
    if with_wpo:
        with torch.no_grad():
            # log sum_v p(v)^2 = logsumexp_v(2 logit_v) - 2 logsumexp_v(logit_v)
            log_sq = torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * log_norm
            wpo_logw = ((token_logps - log_sq) * mask).sum(-1) / num_tokens.clamp(min=1.0)
    return SequenceStats(
        logps=(token_logps * mask).sum(-1),
        num_tokens=num_tokens,
        logits_sum=(logits.mean(-1).detach() * mask).sum(-1),
        prefix_logps=(token_logps * prefix_mask).sum(-1),
        wpo_logw=wpo_logw,
    )


def forward_sequence_stats(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], with_wpo: bool = False, chunk_size: int | None = None
) -> SequenceStats:
    """One forward of the concatenated (2B, T) batch from collate_pairs -> per-sequence stats.

    The LD-DPO prefix of both rows of a pair is the shorter completion's length, l_p = min(|y_c|, |y_r|).
    With ``chunk_size``, the LM head runs on chunks of the sequence, each recomputed in the backward
    pass, so the (2B, T, V) logits never exist at once (large vocabularies).
    """
    lengths = batch["completion_mask"][:, 1:].sum(-1)
    chosen_len, rejected_len = split_pairs(lengths)
    shared = torch.minimum(chosen_len, rejected_len)
    prefix = torch.cat([shared, shared])
    if chunk_size is None:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return sequence_logps(out.logits, batch["input_ids"], batch["completion_mask"], prefix_lengths=prefix, with_wpo=with_wpo)
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    return chunked_sequence_logps(hidden, model.get_output_embeddings(), batch["input_ids"], batch["completion_mask"],
                                  prefix_lengths=prefix, with_wpo=with_wpo, chunk_size=chunk_size)


def chunked_sequence_logps(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    prefix_lengths: torch.Tensor,
    with_wpo: bool,
    chunk_size: int,
) -> SequenceStats:
    """sequence_logps over hidden states (N, T, H): the same sums, one sequence chunk of logits at a time."""
    n, t = input_ids.shape
    mask = completion_mask[:, 1:].to(torch.float32)  # (N, T-1)
    # Prefix membership depends only on the mask, so compute it once for the whole sequence.
    prefix_mask = mask * (torch.cumsum(mask, dim=-1) <= prefix_lengths.to(mask.dtype).unsqueeze(-1))
    totals = [torch.zeros(n, device=hidden.device) for _ in range(4)]  # logps, prefix, logits, wpo
    for start in range(0, t - 1, chunk_size):
        stop = min(start + chunk_size, t - 1)
        args = (hidden[:, start:stop], input_ids[:, start + 1 : stop + 1], mask[:, start:stop], prefix_mask[:, start:stop])
        parts = torch.utils.checkpoint.checkpoint(_chunk_sums, head, with_wpo, *args, use_reentrant=False)
        totals = [a + b for a, b in zip(totals, parts)]
    num_tokens = mask.sum(-1)
    return SequenceStats(
        logps=totals[0], num_tokens=num_tokens, logits_sum=totals[2].detach(), prefix_logps=totals[1],
        wpo_logw=(totals[3] / num_tokens.clamp(min=1.0)).detach() if with_wpo else None,
    )


def _chunk_sums(head: torch.nn.Module, with_wpo: bool, hidden: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor, prefix_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (N, C, V)
    log_norm = torch.logsumexp(logits, dim=-1)
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - log_norm
    wpo = torch.zeros_like(log_norm[:, 0])
    if with_wpo:
        log_sq = torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * log_norm
        wpo = ((token_logps - log_sq).detach() * mask).sum(-1)
    return (token_logps * mask).sum(-1), (token_logps * prefix_mask).sum(-1), (logits.mean(-1).detach() * mask).sum(-1), wpo


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B,) -> chosen (B,), rejected (B,): collate_pairs puts chosen rows first."""
    half = values.shape[0] // 2
    return values[:half], values[half:]


@torch.inference_mode()
def sorted_sequence_stats(model: torch.nn.Module, batch: dict[str, torch.Tensor], rows_per_forward: int,
                          by_length: bool = True) -> tuple[SequenceStats, torch.Tensor]:
    """Scoring without gradients: the (2B, T) rows of collate_pairs sorted by length (``by_length``;
    else in row order) and run ``rows_per_forward`` at a time, each group cut to its own longest row,
    so a chosen row does not pad to its longer rejected partner and memory is bounded by the group.
    Returns the stats in row order and each row's pad count. Per-row results equal one plain
    forward's (right padding, causal attention)."""
    lengths = batch["attention_mask"].sum(-1)
    chosen_len, rejected_len = split_pairs(batch["completion_mask"][:, 1:].sum(-1))
    shared = torch.minimum(chosen_len, rejected_len)
    prefix = torch.cat([shared, shared])
    order = torch.argsort(lengths, stable=True) if by_length else torch.arange(len(lengths), device=lengths.device)
    parts, pads = [], torch.zeros_like(lengths)
    for start in range(0, len(order), rows_per_forward):
        rows = order[start:start + rows_per_forward]
        width = int(lengths[rows].max())
        sub = {k: v[rows, :width] for k, v in batch.items()}
        out = model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"], use_cache=False)
        # A model spread over GPUs (device_map) may return the logits on another device than its inputs: read them there.
        at = out.logits.device
        parts.append((rows, sequence_logps(out.logits, sub["input_ids"].to(at), sub["completion_mask"].to(at),
                                           prefix_lengths=prefix[rows].to(at))))
        pads[rows] = width - lengths[rows]
    fields = {}
    for name in ("logps", "num_tokens", "logits_sum", "prefix_logps"):
        first = getattr(parts[0][1], name)
        merged = torch.empty((len(order),), dtype=first.dtype, device=first.device)
        for rows, stats in parts:
            merged[rows.to(first.device)] = getattr(stats, name)
        fields[name] = merged
    return SequenceStats(**fields), pads

