"""Preference metrics with TRL's names, kept as sums so micro-batches and workers add up exactly.

Pure ring: no Ray import. A metric vector is a float64 tensor in SUM_FIELDS order; workers
all-reduce it with SUM and ``finalize`` divides once.

``rewards/accuracies`` is TRL's share of pairs whose chosen reward beats the rejected one, except that
a margin inside float32 rounding of the summed log-probs is a tie (``reward_wins``, TIE_BAND).
"""

from __future__ import annotations

import torch

from dpo_ray.train.logprobs import SequenceStats, split_pairs
from dpo_ray.train.losses import PreferenceLoss

SUM_FIELDS = (
    "pairs", "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "logits/chosen", "tokens/chosen", "logits/rejected", "tokens/rejected",
)
TIE_BAND = 2.0**-18
"""Relative width of the tie band of rewards/accuracies: 32 float32 epsilons (2^-23 each).

A pair is a win when beta * (rho_c - rho_r) > beta * TIE_BAND * (|logp_c| + |logp_r|), logp the
policy's summed completion log-probs. Why: at step 0 the policy is the reference, yet the cached
reference log-probs come from the scorer's forwards, whose rows are padded to other widths than the
trainer's, so the four float32 sums differ in their last bits. On the quickstart (305 eval pairs)
|rho_c - rho_r| was at most 0.9 x 2^-23 x (|logp_c| + |logp_r|) (1-2 ulps of the sums) and a strict
">" counted 14% of the pairs as wins; TRL scores both models on the same batch, so its margins are
exactly 0 there and its strict ">" gives 0. The band leaves 35x headroom above that noise and is
far below a trained pair's margin (a 300-nat pair: 1e-3 nats of log-ratio margin). bf16 (GPU) keeps
8 mantissa bits to float32's 24, so its last-bit noise is ~2^16 times coarser (not measured here):
a band that wide would swallow real wins, so in bf16 step-0 accuracy may still count noise."""
METRIC_NAMES = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected",
)


def reward_wins(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen_logps: torch.Tensor,
                rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """(B,) 1.0 where the chosen reward beats the rejected one by more than the tie band
    beta * TIE_BAND * (|chosen_logps| + |rejected_logps|) (policy log-probs, summed), else 0.0."""
    band = beta * TIE_BAND * (chosen_logps.abs() + rejected_logps.abs())
    return (chosen_rewards - rejected_rewards > band).float()


def metric_sums(result: PreferenceLoss, stats: SequenceStats, mask: torch.Tensor | None = None, *, beta: float) -> torch.Tensor:
    """One micro-batch -> SUM_FIELDS vector (float64, on the losses' device); only the pairs where
    ``mask`` is true, when given (per-source eval metrics). ``beta`` (loss.beta) scales the tie band."""
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
        reward_wins(rc, rr, chosen_logps, rejected_logps, beta).sum(),  # ties (within float noise) count 0
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
