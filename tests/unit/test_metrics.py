"""rewards/accuracies: a margin inside float32 noise of the summed log-probs is a tie (metrics.TIE_BAND)."""

from __future__ import annotations

import torch

from dpo_ray.train.logprobs import SequenceStats
from dpo_ray.config import LossConfig
from dpo_ray.train.losses import PairLogps, preference_loss
from dpo_ray.train.metrics import TIE_BAND, finalize, metric_sums, reward_wins


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_reward_wins_by_hand() -> None:
    # Every pair: logp_c = -60, logp_r = -40, beta = 0.1 -> band = 0.1 x 2^-18 x 100 = 3.815e-5.
    # Margins rc - rr: 1e-5 (inside: tie), 1e-4 (win), -1e-4 (loss), 0 (tie) -> 1 win of 4.
    band = 0.1 * 2.0**-18 * 100
    assert band == 0.1 * TIE_BAND * 100 and 3.81e-5 < band < 3.82e-5
    rejected = t(0.0, 0.0, 0.0, 0.0)
    chosen = t(1e-5, 1e-4, -1e-4, 0.0)
    wins = reward_wins(chosen, rejected, t(-60, -60, -60, -60), t(-40, -40, -40, -40), beta=0.1)
    assert wins.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert (chosen > rejected).float().tolist() == [1.0, 1.0, 0.0, 0.0]  # TRL's strict ">": the noise counts


def test_step0_accuracy_is_zero_when_reference_sums_differ_in_the_last_bits() -> None:
    # Policy == reference, but the reference sums its float32 token log-probs in another order (as a
    # forward padded to another width does): the sums differ by a few ulps, as on the quickstart.
    gen = torch.Generator().manual_seed(0)
    token_logps = -3.0 * torch.rand(2, 512, 40, generator=gen, dtype=torch.float32)  # (chosen/rejected, B, T)
    policy = token_logps.sum(-1)
    reference = token_logps.double().sum(-1).float()  # the same numbers, rounded once
    assert (policy != reference).float().mean() > 0.3
    out = preference_loss(PairLogps(policy[0], policy[1], reference[0], reference[1]), LossConfig(type=["sigmoid"], beta=0.1))
    stats = SequenceStats(logps=policy.reshape(-1), num_tokens=torch.full((1024,), 40.0),
                          logits_sum=torch.zeros(1024), prefix_logps=policy.reshape(-1))
    strict = (out.chosen_rewards > out.rejected_rewards).float().mean().item()
    assert strict > 0.1  # what a strict ">" would report at step 0
    metrics = finalize(metric_sums(out, stats, beta=0.1), prefix="eval/")
    assert metrics["eval/rewards/accuracies"] == 0.0
    assert abs(metrics["eval/rewards/margins"]) < 1e-5


def test_a_real_margin_still_counts() -> None:
    # Chosen log-ratio +0.01 nats above the rejected one on 300-nat pairs: band 0.1 x 2^-18 x 300 ~ 1.1e-4
    # in reward units, margin 0.1 x 0.01 = 1e-3: a win.
    out = preference_loss(PairLogps(t(-150.0 + 0.01), t(-150.0), t(-150.0), t(-150.0)), LossConfig(type=["sigmoid"], beta=0.1))
    stats = SequenceStats(logps=t(-149.99, -150.0), num_tokens=t(50, 50), logits_sum=t(0, 0), prefix_logps=t(-149.99, -150.0))
    assert finalize(metric_sums(out, stats, beta=0.1))["rewards/accuracies"] == 1.0
