"""Sequence log-probs of completions: ONE implementation, shared by the reference scorer and the trainer.

Pure ring: no Ray import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from dpo_ray.train.collate import budget_cuts, pack_rows


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


def label_layout(completion_mask: torch.Tensor, seq_ids: torch.Tensor | None = None,
                 prefix_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """Which next-token predictions are summed, and into which sequence.

    Label position t (logits at t scoring token t + 1) counts when token t + 1 is a completion token of
    the same sequence as token t. Padded rows (``seq_ids`` None): each row is one sequence. Packed rows
    (collate.pack_rows): ``seq_ids`` (R, T) names each token's sequence, so the last token of one
    sequence never scores the first of the next. Returns mask (R, T-1) float32, prefix_mask (the
    first ``prefix_lengths[seq]`` counted labels of each sequence, default all), seg (R, T-1) (None:
    the row) and the number of sequences."""
    mask = completion_mask[:, 1:].to(torch.float32)
    seg = None
    if seq_ids is not None:
        seg = seq_ids[:, 1:]
        mask = mask * (seg == seq_ids[:, :-1])
    n = mask.shape[0] if seg is None else int(seq_ids.max()) + 1
    running = torch.cumsum(mask, dim=-1)  # counted labels so far, per row
    if seg is not None:  # restart the count at each sequence: subtract the count before its first label
        starts = torch.ones_like(seg, dtype=torch.bool)
        starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
        # the count before a sequence never falls along a row, so a running max carries it forward
        running = running - torch.cummax((running - mask) * starts, dim=-1).values
    num_tokens = per_sequence(mask, seg, n)
    limit = num_tokens if prefix_lengths is None else prefix_lengths.to(mask.dtype)
    prefix_mask = mask * (running <= (limit.unsqueeze(-1) if seg is None else limit[seg]))
    return mask, prefix_mask, seg, n


def per_sequence(values: torch.Tensor, seg: torch.Tensor | None, n: int) -> torch.Tensor:
    """(R, T-1) per-label values -> (n,) sums per sequence: per row, or by ``seg`` for packed rows."""
    if seg is None:
        return values.sum(-1)
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, seg.flatten(), values.flatten())


def sequence_logps(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    prefix_lengths: torch.Tensor | None = None,
    with_wpo: bool = False,
    seq_ids: torch.Tensor | None = None,
) -> SequenceStats:
    """Summed completion log-probs.

    logits (R, T, V) predict the next token: logits[:, t] scores input_ids[:, t + 1].
    completion_mask (R, T) marks completion tokens of input_ids; prefix_lengths (N,) counts the
    completion tokens summed into ``prefix_logps`` (default: all). Padded rows: N = R, one sequence
    a row; packed rows: ``seq_ids`` (R, T) numbers the N sequences (label_layout). Computed in
    float32 at least.
    """
    mask, prefix_mask, seg, n = label_layout(completion_mask, seq_ids, prefix_lengths)
    logits = logits[:, :-1]  # (R, T-1, V)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> fp32
    labels = input_ids[:, 1:]  # (R, T-1)
    mask, prefix_mask = mask.to(logits.dtype), prefix_mask.to(logits.dtype)
    log_norm = torch.logsumexp(logits, dim=-1)  # (R, T-1)
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - log_norm
    num_tokens = per_sequence(mask, seg, n)
    wpo_logw = None
    if with_wpo:
        with torch.no_grad():
            # log sum_v p(v)^2 = logsumexp_v(2 logit_v) - 2 logsumexp_v(logit_v)
            log_sq = torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * log_norm
            wpo_logw = per_sequence((token_logps - log_sq) * mask, seg, n) / num_tokens.clamp(min=1.0)
    return SequenceStats(
        logps=per_sequence(token_logps * mask, seg, n),
        num_tokens=num_tokens,
        logits_sum=per_sequence(logits.mean(-1).detach() * mask, seg, n),
        prefix_logps=per_sequence(token_logps * prefix_mask, seg, n),
        wpo_logw=wpo_logw,
    )


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's inputs for a padded batch (attention_mask) or a packed one (position_ids restarting
    at 0 per sequence and no mask: transformers builds the block-diagonal causal mask from them)."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def forward_sequence_stats(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], with_wpo: bool = False, chunk_size: int | None = None
) -> SequenceStats:
    """One forward of the 2B sequences of collate_pairs (chosen first) -> per-sequence stats; the
    batch is padded (2B, T) or packed by collate.pack_rows (same sequence order).

    The LD-DPO prefix of both rows of a pair is the shorter completion's length, l_p = min(|y_c|, |y_r|).
    With ``chunk_size``, the LM head runs on chunks of the sequence, each recomputed in the backward
    pass, so the (2B, T, V) logits never exist at once (large vocabularies).
    """
    seq_ids = batch.get("seq_ids")
    mask, _, seg, n = label_layout(batch["completion_mask"], seq_ids)
    chosen_len, rejected_len = split_pairs(per_sequence(mask, seg, n))
    shared = torch.minimum(chosen_len, rejected_len)
    prefix = torch.cat([shared, shared])
    if chunk_size is None:
        out = model(**model_inputs(batch), use_cache=False)
        return sequence_logps(out.logits, batch["input_ids"], batch["completion_mask"], prefix_lengths=prefix,
                              with_wpo=with_wpo, seq_ids=seq_ids)
    hidden = model.get_decoder()(**model_inputs(batch), use_cache=False).last_hidden_state
    return chunked_sequence_logps(hidden, model.get_output_embeddings(), batch["input_ids"], batch["completion_mask"],
                                  prefix_lengths=prefix, with_wpo=with_wpo, chunk_size=chunk_size, seq_ids=seq_ids)


def chunked_sequence_logps(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    prefix_lengths: torch.Tensor,
    with_wpo: bool,
    chunk_size: int,
    seq_ids: torch.Tensor | None = None,
) -> SequenceStats:
    """sequence_logps over hidden states (R, T, H): the same sums, one sequence chunk of logits at a time."""
    t = input_ids.shape[1]
    # Which labels count, and where, depends only on the masks: computed once for the whole row.
    mask, prefix_mask, seg, n = label_layout(completion_mask, seq_ids, prefix_lengths)
    rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(-1).expand_as(mask)
    seg = rows if seg is None else seg
    totals = [torch.zeros(n, device=hidden.device) for _ in range(4)]  # logps, prefix, logits, wpo
    for start in range(0, t - 1, chunk_size):
        stop = min(start + chunk_size, t - 1)
        args = (hidden[:, start:stop], input_ids[:, start + 1 : stop + 1], mask[:, start:stop], prefix_mask[:, start:stop],
                seg[:, start:stop])
        parts = torch.utils.checkpoint.checkpoint(_chunk_sums, head, with_wpo, n, *args, use_reentrant=False)
        totals = [a + b for a, b in zip(totals, parts)]
    num_tokens = per_sequence(mask, seg, n)
    return SequenceStats(
        logps=totals[0], num_tokens=num_tokens, logits_sum=totals[2].detach(), prefix_logps=totals[1],
        wpo_logw=(totals[3] / num_tokens.clamp(min=1.0)).detach() if with_wpo else None,
    )


def _chunk_sums(head: torch.nn.Module, with_wpo: bool, n: int, hidden: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor, prefix_mask: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, ...]:
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (R, C, V)
    log_norm = torch.logsumexp(logits, dim=-1)
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - log_norm
    wpo = torch.zeros(n, device=logits.device)
    if with_wpo:
        log_sq = torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * log_norm
        wpo = per_sequence((token_logps - log_sq).detach() * mask, seg, n)
    return (per_sequence(token_logps * mask, seg, n), per_sequence(token_logps * prefix_mask, seg, n),
            per_sequence(logits.mean(-1).detach() * mask, seg, n), wpo)


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B,) -> chosen (B,), rejected (B,): collate_pairs puts chosen rows first."""
    half = values.shape[0] // 2
    return values[:half], values[half:]


@torch.inference_mode()
def sorted_sequence_stats(model: torch.nn.Module, batch: dict[str, torch.Tensor], rows_per_forward: int,
                          by_length: bool = True, batch_tokens: int | None = None,
                          padding_free: bool = False) -> tuple[SequenceStats, torch.Tensor]:
    """Scoring without gradients: the (2B, T) rows of collate_pairs sorted by length (``by_length``;
    else in row order) and run in groups, so a chosen row does not pad to its longer rejected
    partner and memory is bounded by the group: ``rows_per_forward`` rows at a time, or with
    ``batch_tokens`` as many as fit that many token slots (collate.budget_cuts). Padded, each group
    is cut to its own longest row; ``padding_free``, its rows are packed into one (collate.pack_rows).
    Returns the stats in row order and each row's pad count. Per-row results equal one plain
    forward's (right padding, causal attention)."""
    lengths = batch["attention_mask"].sum(-1)
    chosen_len, rejected_len = split_pairs(batch["completion_mask"][:, 1:].sum(-1))
    shared = torch.minimum(chosen_len, rejected_len)
    prefix = torch.cat([shared, shared])
    order = torch.argsort(lengths, stable=True) if by_length else torch.arange(len(lengths), device=lengths.device)
    if batch_tokens is None:
        groups = [order[start:start + rows_per_forward] for start in range(0, len(order), rows_per_forward)]
    else:
        ordered = lengths[order].cpu().numpy()
        groups = [order[torch.as_tensor(cut, device=order.device)] for cut in budget_cuts(ordered, ordered, batch_tokens, padding_free)]
    parts, pads = [], torch.zeros_like(lengths)
    for rows in groups:
        if padding_free:
            sub, width = pack_rows(batch, rows), lengths[rows]  # no pads
        else:
            width = lengths[rows].max()
            sub = {k: v[rows, :int(width)] for k, v in batch.items()}
        out = model(**model_inputs(sub), use_cache=False)
        # A model spread over GPUs (device_map) may return the logits on another device than its inputs: read them there.
        at = out.logits.device
        seq_ids = sub["seq_ids"].to(at) if padding_free else None
        parts.append((rows, sequence_logps(out.logits, sub["input_ids"].to(at), sub["completion_mask"].to(at),
                                           prefix_lengths=prefix[rows].to(at), seq_ids=seq_ids)))
        pads[rows] = width - lengths[rows]
    fields = {}
    for name in ("logps", "num_tokens", "logits_sum", "prefix_logps"):
        first = getattr(parts[0][1], name)
        merged = torch.empty((len(order),), dtype=first.dtype, device=first.device)
        for rows, stats in parts:
            merged[rows.to(first.device)] = getattr(stats, name)
        fields[name] = merged
    return SequenceStats(**fields), pads
