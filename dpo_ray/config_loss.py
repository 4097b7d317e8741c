"""The loss family's part of the run configuration (loss.*): the loss names, their groups and LossConfig.
Re-exported by config.py, which holds the whole schema."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from dpo_ray.config_check import require

LossName = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft", "simpo", "orpo", "cpo",
]
LOSS_TYPES: tuple[str, ...] = typing.get_args(LossName)
REFERENCE_FREE = frozenset({"simpo", "orpo", "cpo", "sft"})
"""Losses that never read reference log-probs; a run made only of them skips the reference stage."""
F_DIVERGENCE_LOSSES = frozenset({"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"})
LABEL_SMOOTHING_LOSSES = frozenset({"sigmoid", "exo_pair", "robust", "aot", "aot_unpaired"})
NO_WPO_LOSSES = frozenset({"aot", "aot_unpaired"})
BATCH_WIDE_LOSSES = frozenset({"aot", "aot_unpaired", "sft"})
"""Losses whose per-pair value reads the whole micro-batch (a sort across it; sft's token mean)."""


@dataclass(frozen=True)
class LossConfig:
    type: list[LossName] = field(default_factory=lambda: ["sigmoid"])
    """One loss or several summed with ``weights`` (e.g. [sigmoid, sft] is RPO); see README's table."""
    weights: list[float] | None = None
    """Weight per entry of ``type`` (default 1.0 each)."""
    beta: float = 0.1
    """Inverse temperature of the implicit reward beta * log(pi / pi_ref)."""
    label_smoothing: float = 0.0
    """eps: cDPO label noise (sigmoid), robust's flip rate, exo_pair's eps (needs > 0), aot's smoothing."""
    f_divergence: Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"] = "reverse_kl"
    """f-DPO score s(rho); reverse_kl is plain DPO."""
    f_alpha: float = 0.5
    """alpha of alpha_divergence."""
    simpo_gamma: float = 0.5
    """SimPO target reward margin gamma (SimPO paper: gamma / beta about 0.5)."""
    orpo_lambda: float = 0.1
    """ORPO weight of the odds-ratio term."""
    discopop_tau: float = 0.05
    """DiscoPOP temperature tau."""
    wpo: bool = False
    """WPO: weight each pair's preference loss by w(y_c) w(y_r) under the current policy."""
    ld_alpha: float | None = None
    """LD-DPO alpha in [0, 1]: weight of completion tokens past the shorter completion's length."""

    def __post_init__(self) -> None:
        types, smoothing, f_div = self.type, sorted(LABEL_SMOOTHING_LOSSES), sorted(F_DIVERGENCE_LOSSES)
        not_f = [t for t in types if t not in F_DIVERGENCE_LOSSES]
        require(
            (bool(types), "loss.type: name at least one loss"),
            (len(set(types)) == len(types), f"loss.type={types}: a loss is listed twice"),
            (self.weights is None or len(self.weights) == len(types),
             f"loss.weights has {len(self.weights or [])} entries for {len(types)} losses in loss.type"),
            (self.beta > 0, f"loss.beta={self.beta}: must be > 0"),
            (0.0 <= self.label_smoothing < 0.5, f"loss.label_smoothing={self.label_smoothing}: must be in [0, 0.5)"),
            (self.label_smoothing == 0 or bool(set(types) & LABEL_SMOOTHING_LOSSES),
             f"loss.label_smoothing is read only by {', '.join(smoothing)}; loss.type={types} would ignore it"),
            ("exo_pair" not in types or self.label_smoothing > 0,
             "loss.type exo_pair needs loss.label_smoothing > 0 (its log(eps) term; the paper uses 1e-3)"),
            (self.f_divergence == "reverse_kl" or not not_f,
             f"loss.f_divergence={self.f_divergence} is not defined for loss.type {next(iter(not_f), '')} (only {', '.join(f_div)})"),
            (self.f_divergence != "alpha_divergence" or 0 < self.f_alpha < 1, f"loss.f_alpha={self.f_alpha}: must be in (0, 1)"),
            (not (self.wpo and set(types) & NO_WPO_LOSSES),
             "loss.wpo is not defined for aot / aot_unpaired (they sort log-ratios across the batch)"),
            (self.ld_alpha is None or 0.0 <= self.ld_alpha <= 1.0, f"loss.ld_alpha={self.ld_alpha}: must be in [0, 1]"),
            (self.discopop_tau > 0, f"loss.discopop_tau={self.discopop_tau}: must be > 0"),
        )

    def reference_free(self) -> bool:
        """True when no listed loss reads reference log-probs: the reference stage is skipped."""
        return set(self.type) <= REFERENCE_FREE

    def loss_weights(self) -> list[float]:
        return list(self.weights) if self.weights is not None else [1.0] * len(self.type)
