from __future__ import annotations

import math

import pytest
import torch

from dpo_ray.logprobs import SequenceStats
from dpo_ray.losses import preference_loss
from dpo_ray.metrics import finalize, metric_sums


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_sigmoid_hand_worked() -> None:
    # Pair 1: rho_c = -1 - (-2) = 1, rho_r = -3 - (-2) = -1, Delta = 2, beta*Delta = 0.2
    #   loss = -log sigma(0.2) = log(1 + e^-0.2) = 0.598138869...
    # Pair 2: policy == reference, Delta = 0: loss = ln 2 = 0.693147...
    out = preference_loss(t(-1.0, -5.0), t(-3.0, -6.0), t(-2.0, -5.0), t(-2.0, -6.0), loss_type="sigmoid", beta=0.1)
    assert out.losses[0].item() == pytest.approx(math.log(1 + math.exp(-0.2)), abs=1e-12)
    assert out.losses[0].item() == pytest.approx(0.5981388693815918, abs=1e-12)
    assert out.losses[1].item() == pytest.approx(math.log(2), abs=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.1, 0.0])


def test_sigmoid_label_smoothing_hand_worked() -> None:
    # cDPO, eps = 0.2, beta*Delta = 0.5:
    # 0.8 * log(1 + e^-0.5) + 0.2 * log(1 + e^0.5) = 0.8 * 0.474077 + 0.2 * 0.974077 = 0.574077
    out = preference_loss(t(0.0), t(-5.0), t(0.0), t(0.0), loss_type="sigmoid", beta=0.1, label_smoothing=0.2)
    expected = 0.8 * math.log(1 + math.exp(-0.5)) + 0.2 * math.log(1 + math.exp(0.5))
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.5740769841801067, abs=1e-12)


def test_sigmoid_gradcheck() -> None:
    inputs = [torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: preference_loss(a, b, c, d, loss_type="sigmoid", beta=0.3, label_smoothing=0.1).losses,
        inputs,
    )


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="not implemented"):
        preference_loss(t(0.0), t(0.0), t(0.0), t(0.0), loss_type="nope", beta=0.1)


def test_metrics_follow_trl_definitions() -> None:
    # Two pairs: rewards chosen (0.1, 0), rejected (-0.1, 0): accuracies strict -> (1 + 0) / 2.
    out = preference_loss(t(-1.0, -5.0), t(-3.0, -6.0), t(-2.0, -5.0), t(-2.0, -6.0), loss_type="sigmoid", beta=0.1)
    stats = SequenceStats(logps=t(-1.0, -5.0, -3.0, -6.0), num_tokens=t(2, 3, 1, 1), logits_sum=t(2.0, 3.0, 4.0, 6.0))
    sums = metric_sums(out, stats) * 2  # two "workers" with the same batch add up
    m = finalize(sums, prefix="eval/")
    assert m["eval/rewards/accuracies"] == pytest.approx(0.5)
    assert m["eval/rewards/margins"] == pytest.approx(0.1)  # (0.2 + 0) / 2
    assert m["eval/rewards/chosen"] == pytest.approx(0.05)
    assert m["eval/logps/chosen"] == pytest.approx(-3.0)
    assert m["eval/logps/rejected"] == pytest.approx(-4.5)
    assert m["eval/logits/chosen"] == pytest.approx(5.0 / 5)  # token mean: (2 + 3) / (2 + 3)
    assert m["eval/logits/rejected"] == pytest.approx(10.0 / 2)
    assert m["eval/loss"] == pytest.approx((0.5981388693815918 + math.log(2)) / 2)
