"""The DPO loss family: one small function per loss over per-pair tensors, picked by one match.

Pure ring: no Ray import. Formulas and sources: ../shared/DPO-LOSSES.md.
All inputs are per-pair tensors of shape (B,): log-probs SUMMED over completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PreferenceLoss:
    losses: torch.Tensor
    """Per-pair loss, (B,)."""
    chosen_rewards: torch.Tensor
    """beta * (policy - reference) log-prob of the chosen completion, (B,), no gradient."""
    rejected_rewards: torch.Tensor
    """Same for the rejected completion."""


def sigmoid_loss(delta: torch.Tensor, *, beta: float, label_smoothing: float) -> torch.Tensor:
    """-log sigma(beta * delta), with cDPO label smoothing eps:
    -(1 - eps) log sigma(beta delta) - eps log sigma(-beta delta). DPO, Rafailov et al. 2023, eq. 7."""
    z = beta * delta
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    loss_type: str,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """Per-pair losses and implicit rewards for ``loss_type``."""
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratios - rejected_logratios
    match loss_type:
        case "sigmoid":
            losses = sigmoid_loss(delta, beta=beta, label_smoothing=label_smoothing)
        case _:
            raise ValueError(f"loss.type={loss_type!r} is not implemented")
    return PreferenceLoss(
        losses=losses,
        chosen_rewards=beta * chosen_logratios.detach(),
        rejected_rewards=beta * rejected_logratios.detach(),
    )
