"""The DPO loss family: one small function per loss over per-pair tensors, picked by one match.

Pure ring: no Ray import. Formulas and sources: each function's docstring and the README's Losses table.
Every tensor is per pair, shape (B,); log-probs are SUMMED over completion tokens.
Notation: rho = policy - reference log-prob; s = f-divergence score; Delta = s(rho_c) - s(rho_r).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dpo_ray.config import LOSS_TYPES, REFERENCE_FREE, LossConfig  # the names live with the config that validates them


@dataclass
class PreferenceLoss:
    losses: torch.Tensor
    """Per-pair loss, (B,); the training loss is its mean."""
    chosen_rewards: torch.Tensor
    """beta * rho_c, (B,), no gradient (rho_c = policy log-prob when reference-free)."""
    rejected_rewards: torch.Tensor
    """beta * rho_r."""


@dataclass(frozen=True)
class PairLogps:
    """The pairs of one batch as ``preference_loss`` takes them; every tensor (B,), log-probs summed
    over completion tokens (after LD-DPO's ``ld_logps`` when loss.ld_alpha is set)."""

    policy_chosen_logps: torch.Tensor
    policy_rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor | None = None
    """None only for reference-free losses (rho is then the policy log-prob)."""
    ref_rejected_logps: torch.Tensor | None = None
    chosen_lengths: torch.Tensor | None = None
    """|y_c|, completion tokens; None counts 1 (no normalisation), for losses that do not read it."""
    rejected_lengths: torch.Tensor | None = None
    pair_weights: torch.Tensor | None = None
    """Multiplies every preference term, not ``sft`` (e.g. ``wpo_weights``); None is 1."""


@dataclass
class Pairs:
    """Everything a loss may read, explicit: no hidden state. PairLogps with its Nones filled in,
    plus the LossConfig numbers under the papers' short names."""

    chosen: torch.Tensor  # l_c, policy
    rejected: torch.Tensor  # l_r
    ref_chosen: torch.Tensor  # l_c^ref (zeros when reference-free)
    ref_rejected: torch.Tensor
    chosen_lengths: torch.Tensor  # |y_c|
    rejected_lengths: torch.Tensor
    beta: float
    eps: float  # label smoothing
    f_divergence: str
    f_alpha: float
    simpo_gamma: float
    orpo_lambda: float
    discopop_tau: float

    @property
    def rho_c(self) -> torch.Tensor:
        return self.chosen - self.ref_chosen

    @property
    def rho_r(self) -> torch.Tensor:
        return self.rejected - self.ref_rejected

    def score(self, rho: torch.Tensor) -> torch.Tensor:
        return f_divergence_score(rho, self.f_divergence, self.f_alpha)

    @property
    def delta(self) -> torch.Tensor:
        return self.score(self.rho_c) - self.score(self.rho_r)


def f_divergence_score(rho: torch.Tensor, name: str, alpha: float = 0.5) -> torch.Tensor:
    """s(rho) of f-DPO (Wang et al. 2023, arXiv 2309.16240)."""
    match name:
        case "reverse_kl":
            return rho
        case "forward_kl":
            return 1.0 - torch.exp(-rho)
        case "js_divergence":
            return math.log(2.0) + F.logsigmoid(rho)
        case "alpha_divergence":
            exponent = torch.clamp((alpha - 1.0) * rho, min=-50.0, max=50.0)  # exp overflows past ~88
            return (torch.exp(exponent) - 1.0) / (alpha - 1.0)
    raise ValueError(f"unknown f-divergence {name!r}")


def _smoothed(z: torch.Tensor, eps: float) -> torch.Tensor:
    """-(1 - eps) log sigma(z) - eps log sigma(-z) (cDPO)."""
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def sigmoid(p: Pairs) -> torch.Tensor:
    """DPO, Rafailov et al. 2023, eq. 7; cDPO with eps > 0."""
    return _smoothed(p.beta * p.delta, p.eps)


def hinge(p: Pairs) -> torch.Tensor:
    """SLiC (2305.10425) / RSO (2309.06657)."""
    return torch.relu(1.0 - p.beta * p.delta)


def ipo(p: Pairs) -> torch.Tensor:
    """IPO (2310.12036), length-normalised log-ratios."""
    h = p.score(p.rho_c) / p.chosen_lengths - p.score(p.rho_r) / p.rejected_lengths
    return (h - 1.0 / (2.0 * p.beta)) ** 2


def exo_pair(p: Pairs) -> torch.Tensor:
    """EXO (2402.00856): KL(sigma(beta Delta) || label distribution 1 - eps)."""
    z = p.beta * p.delta
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1.0 - p.eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(p.eps)))


def nca_pair(p: Pairs) -> torch.Tensor:
    """NCA (2402.05369)."""
    zc, zr = p.beta * p.rho_c, p.beta * p.rho_r
    return -F.logsigmoid(zc) - 0.5 * F.logsigmoid(-zc) - 0.5 * F.logsigmoid(-zr)


def robust(p: Pairs) -> torch.Tensor:
    """Robust DPO (2403.00409), unbiased under label-flip rate eps."""
    z = p.beta * p.delta
    return (-(1.0 - p.eps) * F.logsigmoid(z) + p.eps * F.logsigmoid(-z)) / (1.0 - 2.0 * p.eps)


def bco_pair(p: Pairs) -> torch.Tensor:
    """BCO (2404.04656), without the paper's running reward mean (no hidden state)."""
    return -F.logsigmoid(p.beta * p.rho_c) - F.logsigmoid(-p.beta * p.rho_r)


def sppo_hard(p: Pairs) -> torch.Tensor:
    """SPPO (2405.00675), hard-label variant."""
    target = 1.0 / (2.0 * p.beta)
    return (p.rho_c - target) ** 2 + (p.rho_r + target) ** 2


def aot(p: Pairs) -> torch.Tensor:
    """AOT (2406.05882), paired: sorted policy margins against sorted reference margins."""
    d = torch.sort(p.chosen - p.rejected).values - torch.sort(p.ref_chosen - p.ref_rejected).values
    return _smoothed(p.beta * d, p.eps)


def aot_unpaired(p: Pairs) -> torch.Tensor:
    """AOT (2406.05882), unpaired: sorted chosen log-ratios against sorted rejected ones."""
    d = torch.sort(p.rho_c).values - torch.sort(p.rho_r).values
    return _smoothed(p.beta * d, p.eps)


def apo_zero(p: Pairs) -> torch.Tensor:
    """APO-zero (2408.06266): push chosen up and rejected down."""
    return (1.0 - torch.sigmoid(p.beta * p.rho_c)) + torch.sigmoid(p.beta * p.rho_r)


def apo_down(p: Pairs) -> torch.Tensor:
    """APO-down (2408.06266): push both down, rejected more."""
    return torch.sigmoid(p.beta * p.rho_c) + (1.0 - torch.sigmoid(p.beta * (p.rho_c - p.rho_r)))


def discopop(p: Pairs) -> torch.Tensor:
    """DiscoPOP (2406.08414): log-ratio modulated logistic/exponential mix."""
    z = p.beta * p.delta
    m = torch.sigmoid(z / p.discopop_tau)
    return (1.0 - m) * -F.logsigmoid(z) + m * torch.exp(-z)


def sigmoid_norm(p: Pairs) -> torch.Tensor:
    """Length-normalised DPO (Tulu 3)."""
    h = p.score(p.rho_c) / p.chosen_lengths - p.score(p.rho_r) / p.rejected_lengths
    return -F.logsigmoid(p.beta * h)


def sft(p: Pairs) -> torch.Tensor:
    """Mean token NLL of the chosen completions over the batch, spread so its pair-mean is that."""
    per_token_mean = -p.chosen.sum() / p.chosen_lengths.sum()
    return per_token_mean * p.chosen_lengths / p.chosen_lengths.mean()


def simpo(p: Pairs) -> torch.Tensor:
    """SimPO (2405.14734): reference-free, length-normalised, target margin gamma."""
    h = p.chosen / p.chosen_lengths - p.rejected / p.rejected_lengths
    return -F.logsigmoid(p.beta * h - p.simpo_gamma)


def orpo(p: Pairs) -> torch.Tensor:
    """ORPO (2403.07691): chosen NLL + lambda * odds-ratio term; p(y) = exp(mean token log-prob)."""
    mc, mr = p.chosen / p.chosen_lengths, p.rejected / p.rejected_lengths
    log_odds = (mc - torch.log(-torch.expm1(mc))) - (mr - torch.log(-torch.expm1(mr)))
    return -mc - p.orpo_lambda * F.logsigmoid(log_odds)


def cpo(p: Pairs) -> torch.Tensor:
    """CPO (2401.08417): reference-free sigmoid on summed log-probs + chosen NLL."""
    return -F.logsigmoid(p.beta * (p.chosen - p.rejected)) - p.chosen / p.chosen_lengths


def single_loss(loss_type: str, p: Pairs) -> torch.Tensor:
    match loss_type:
        case "sigmoid": return sigmoid(p)
        case "hinge": return hinge(p)
        case "ipo": return ipo(p)
        case "exo_pair": return exo_pair(p)
        case "nca_pair": return nca_pair(p)
        case "robust": return robust(p)
        case "bco_pair": return bco_pair(p)
        case "sppo_hard": return sppo_hard(p)
        case "aot": return aot(p)
        case "aot_unpaired": return aot_unpaired(p)
        case "apo_zero": return apo_zero(p)
        case "apo_down": return apo_down(p)
        case "discopop": return discopop(p)
        case "sigmoid_norm": return sigmoid_norm(p)
        case "sft": return sft(p)
        case "simpo": return simpo(p)
        case "orpo": return orpo(p)
        case "cpo": return cpo(p)
    raise ValueError(f"loss.type={loss_type!r} is not implemented (known: {', '.join(LOSS_TYPES)})")


def wpo_weights(chosen_wpo_logw: torch.Tensor, rejected_wpo_logw: torch.Tensor) -> torch.Tensor:
    """WPO (2406.11827): w(y_c) w(y_r) from per-sequence log-weights (logprobs.SequenceStats.wpo_logw)."""
    return torch.exp(chosen_wpo_logw + rejected_wpo_logw).detach()


def ld_logps(full: torch.Tensor, prefix: torch.Tensor, alpha: float) -> torch.Tensor:
    """LD-DPO (2409.06411): log-prob over the first l_p tokens plus alpha times the rest."""
    return prefix + alpha * (full - prefix)


def preference_loss(pairs: PairLogps, loss: LossConfig) -> PreferenceLoss:
    """Per-pair losses sum_k w_k L_k over loss.type (w = loss.loss_weights()) and implicit rewards beta * rho.

    Reads loss.type, weights, beta, label_smoothing, f_divergence, f_alpha, simpo_gamma, orpo_lambda,
    discopop_tau; loss.wpo and loss.ld_alpha act before, on ``pairs`` (``batch_objective``).
    """
    types, weights = loss.type, loss.loss_weights()
    policy_chosen = pairs.policy_chosen_logps
    zeros, ones = torch.zeros_like(policy_chosen), torch.ones_like(policy_chosen)
    if pairs.ref_chosen_logps is None or pairs.ref_rejected_logps is None:
        needs_ref = [t for t in types if t not in REFERENCE_FREE]
        if needs_ref:
            raise ValueError(f"loss.type {needs_ref[0]} needs reference log-probs")
    p = Pairs(
        chosen=policy_chosen, rejected=pairs.policy_rejected_logps,
        ref_chosen=zeros if pairs.ref_chosen_logps is None else pairs.ref_chosen_logps,
        ref_rejected=zeros if pairs.ref_rejected_logps is None else pairs.ref_rejected_logps,
        chosen_lengths=ones if pairs.chosen_lengths is None else pairs.chosen_lengths,
        rejected_lengths=ones if pairs.rejected_lengths is None else pairs.rejected_lengths,
        beta=loss.beta, eps=loss.label_smoothing, f_divergence=loss.f_divergence, f_alpha=loss.f_alpha,
        simpo_gamma=loss.simpo_gamma, orpo_lambda=loss.orpo_lambda, discopop_tau=loss.discopop_tau,
    )
    total = zeros
    for name, w in zip(types, weights):
        term = single_loss(name, p)
        if pairs.pair_weights is not None and name != "sft":
            term = term * pairs.pair_weights
        total = total + w * term
    return PreferenceLoss(
        losses=total,
        chosen_rewards=loss.beta * p.rho_c.detach(),
        rejected_rewards=loss.beta * p.rho_r.detach(),
    )
