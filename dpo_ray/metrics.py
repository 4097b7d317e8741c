"""Preference metrics with TRL's names, kept as sums so micro-batches and workers add up exactly.

Pure ring: no Ray import. A metric vector is a float64 tensor in SUM_FIELDS order; workers
all-reduce it with SUM and ``finalize`` divides once.
"""

from __future__ import annotations

import torch

from dpo_ray.logprobs import SequenceStats, split_pairs
from dpo_ray.losses import PreferenceLoss

SUM_FIELDS = (
    "pairs", "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "logits/chosen", "tokens/chosen", "logits/rejected", "tokens/rejected",
)
METRIC_NAMES = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected",
)


def metric_sums(result: PreferenceLoss, stats: SequenceStats, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One micro-batch -> SUM_FIELDS vector (float64, on the losses' device); only the pairs where
    ``mask`` is true, when given (per-source eval metrics)."""
    chosen_logps, rejected_logps = split_pairs(stats.logps.detach())
    chosen_logits, rejected_logits = split_pairs(stats.logits_sum)
    chosen_tokens, rejected_tokens = split_pairs(stats.num_tokens)
    rc, rr, losses = result.chosen_rewards, result.rejected_rewards, result.losses.detach()
    if mask is not None:
        rc, rr, losses = rc[mask], rr[mask], losses[mask]
        chosen_logps, rejected_logps = chosen_logps[mask], rejected_logps[mask]
        chosen_logits, rejected_logits = chosen_logits[mask], rejected_logits[mask]
        chosen_tokens, rejected_tokens = chosen_tokens[mask], rejected_tokens[mask]
    values = [
        float(rc.shape[0]),
        losses.sum(),
        rc.sum(),
        rr.sum(),
        (rc > rr).float().sum(),  # strict: ties count 0, as TRL
        (rc - rr).sum(),
        chosen_logps.sum(),
        rejected_logps.sum(),
        chosen_logits.sum(),
        chosen_tokens.sum(),
        rejected_logits.sum(),
        rejected_tokens.sum(),
    ]
    return torch.stack([torch.as_tensor(v, dtype=torch.float64, device=rc.device) for v in values])


def finalize(sums: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """SUM_FIELDS vector -> {prefix + TRL metric name: mean}. Pair means; logits are token means."""
    s = dict(zip(SUM_FIELDS, sums.double().cpu().tolist()))
    pairs = max(s["pairs"], 1.0)
    out = {name: s[name] / pairs for name in METRIC_NAMES if not name.startswith("logits/")}
    out["logits/chosen"] = s["logits/chosen"] / max(s["tokens/chosen"], 1.0)
    out["logits/rejected"] = s["logits/rejected"] / max(s["tokens/rejected"], 1.0)
    return {f"{prefix}{name}": out[name] for name in METRIC_NAMES}
