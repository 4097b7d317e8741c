"""The loss family: hand-worked numbers, a direct transcription on random inputs, gradients, properties."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_ray.config import F_DIVERGENCE_LOSSES, LABEL_SMOOTHING_LOSSES, LOSS_TYPES, NO_WPO_LOSSES, REFERENCE_FREE, ConfigError, LossConfig
from dpo_ray.config_load import load_config
from dpo_ray.train.logprobs import SequenceStats, sequence_logps, split_pairs
from dpo_ray.train.losses import PairLogps, ld_logps, preference_loss, wpo_weights
from dpo_ray.train.metrics import finalize, metric_sums

L3 = math.log(3.0)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Two pairs, beta = 0.5, |y_c| = 2, |y_r| = 1 (see each test's arithmetic):
#   A: l_c = -4 + 2 ln3, l_c^ref = -4, l_r = -3,          l_r^ref = -3  -> rho_c = 2 ln3, rho_r = 0
#   B: l_c = -2,         l_c^ref = -2, l_r = -5 + 2 ln3,  l_r^ref = -5  -> rho_c = 0,     rho_r = 2 ln3
# so beta*rho_c = (ln3, 0), beta*rho_r = (0, ln3), beta*Delta = (ln3, -ln3), and
# sigma(ln3) = 3/4, sigma(-ln3) = 1/4, sigma(0) = 1/2.
POLICY_C, POLICY_R = t(-4 + 2 * L3, -2.0), t(-3.0, -5 + 2 * L3)
REF_C, REF_R = t(-4.0, -2.0), t(-3.0, -5.0)
LEN_C, LEN_R = t(2.0, 2.0), t(1.0, 1.0)


def hand(loss_type: str, **kw: float) -> list[float]:
    ref_free = loss_type in REFERENCE_FREE
    out = preference_loss(
        PairLogps(POLICY_C, POLICY_R, None if ref_free else REF_C, None if ref_free else REF_R,
                  chosen_lengths=LEN_C, rejected_lengths=LEN_R),
        LossConfig(type=[loss_type], beta=0.5, **kw),
    )
    return out.losses.tolist()


HAND_WORKED = {
    # -log sigma(ln3) = log(4/3); -log sigma(-ln3) = log 4
    "sigmoid": ({}, [math.log(4 / 3), math.log(4)]),
    # cDPO eps = 1/4: 3/4 * (-log sigma(z)) + 1/4 * (-log sigma(-z))
    "cdpo": ({"label_smoothing": 0.25}, [0.75 * math.log(4 / 3) + 0.25 * math.log(4), 0.75 * math.log(4) + 0.25 * math.log(4 / 3)]),
    # relu(1 - ln3) = 0 since ln3 > 1; relu(1 + ln3)
    "hinge": ({}, [0.0, 1 + L3]),
    # h = rho_c/2 - rho_r/1 = (ln3, -2 ln3); (h - 1/(2*0.5))^2
    "ipo": ({}, [(L3 - 1) ** 2, (2 * L3 + 1) ** 2]),
    # A: sigma(z) = 3/4 = 1 - eps, so both log terms vanish; B: 1/4 (log 1/4 - log 3/4) + 3/4 (log 3/4 - log 1/4) = ln3 / 2
    "exo_pair": ({"label_smoothing": 0.25}, [0.0, L3 / 2]),
    # A: -log 3/4 - 1/2 log 1/4 - 1/2 log 1/2; B: -log 1/2 - 1/2 log 1/2 - 1/2 log 1/4
    "nca_pair": ({}, [math.log(4 / 3) + 0.5 * math.log(4) + 0.5 * math.log(2), math.log(2) + 0.5 * math.log(2) + 0.5 * math.log(4)]),
    # [-(3/4) log sigma(z) + (1/4) log sigma(-z)] / (1/2)
    "robust": ({"label_smoothing": 0.25}, [1.5 * math.log(4 / 3) - 0.5 * math.log(4), 1.5 * math.log(4) - 0.5 * math.log(4 / 3)]),
    # A: -log 3/4 - log sigma(0); B: -log sigma(0) - log 1/4
    "bco_pair": ({}, [math.log(4 / 3) + math.log(2), math.log(2) + math.log(4)]),
    # 1/(2 beta) = 1: (rho_c - 1)^2 + (rho_r + 1)^2
    "sppo_hard": ({}, [(2 * L3 - 1) ** 2 + 1, 1 + (2 * L3 + 1) ** 2]),
    # margins l_c - l_r = (2ln3 - 1, 3 - 2ln3) sorted -> (3 - 2ln3, 2ln3 - 1); ref margins (-1, 3) sorted;
    # d = (4 - 2ln3, 2ln3 - 4), beta d = +-(2 - ln3): log(1 + e^{-(2-ln3)}) = log(1 + 3e^-2), log(1 + e^2/3)
    "aot": ({}, [math.log(1 + 3 * math.exp(-2)), math.log(1 + math.exp(2) / 3)]),
    # sorted rho_c = (0, 2ln3) = sorted rho_r: d = 0, loss ln 2
    "aot_unpaired": ({}, [math.log(2), math.log(2)]),
    # (1 - sigma(beta rho_c)) + sigma(beta rho_r): A 1/4 + 1/2, B 1/2 + 3/4
    "apo_zero": ({}, [0.75, 1.25]),
    # sigma(beta rho_c) + 1 - sigma(beta (rho_c - rho_r)): A 3/4 + 1/4, B 1/2 + 3/4
    "apo_down": ({}, [1.0, 1.25]),
    # tau = 1: m = sigma(z); A: 1/4 log(4/3) + 3/4 * e^{-ln3}; B: 3/4 log 4 + 1/4 * e^{ln3}
    "discopop": ({"discopop_tau": 1.0}, [0.25 * math.log(4 / 3) + 0.25, 0.75 * math.log(4) + 0.75]),
    # beta h = (ln3/2, -ln3): log(1 + 3^-1/2), log 4
    "sigmoid_norm": ({}, [math.log(1 + 3 ** -0.5), math.log(4)]),
    # token-mean NLL of chosen over the batch: -((-4 + 2ln3) + (-2)) / (2 + 2), the same on every pair
    "sft": ({}, [(6 - 2 * L3) / 4] * 2),
    # h = l_c/2 - l_r = (1 + ln3, 4 - 2ln3); beta h - gamma(0.5) = (ln3/2, 1.5 - ln3)
    "simpo": ({"simpo_gamma": 0.5}, [math.log(1 + 3 ** -0.5), math.log(1 + 3 * math.exp(-1.5))]),
    # beta (l_c - l_r) = (ln3 - 1/2, 3/2 - ln3); + chosen NLL per token (2 - ln3, 1)
    "cpo": ({}, [math.log(1 + math.exp(0.5) / 3) + 2 - L3, math.log(1 + 3 * math.exp(-1.5)) + 1]),
}


def _orpo_expected(mc: float, mr: float, lam: float) -> float:
    # log odds(m) = m - log(1 - e^m); loss = -m_c + lam * log(1 + exp(-(lo_c - lo_r)))
    lo = lambda m: m - math.log(1 - math.exp(m))  # noqa: E731
    return -mc + lam * math.log(1 + math.exp(-(lo(mc) - lo(mr))))


# A: m_c = (-4 + 2ln3)/2 = ln3 - 2, m_r = -3; B: m_c = -1, m_r = 2ln3 - 5
HAND_WORKED["orpo"] = ({"orpo_lambda": 0.1}, [_orpo_expected(L3 - 2, -3.0, 0.1), _orpo_expected(-1.0, 2 * L3 - 5, 0.1)])


@pytest.mark.parametrize("case", sorted(HAND_WORKED))
def test_hand_worked(case: str) -> None:
    kwargs, expected = HAND_WORKED[case]
    assert hand("sigmoid" if case == "cdpo" else case, **kwargs) == pytest.approx(expected, abs=1e-12)


def test_every_loss_has_a_hand_worked_case() -> None:
    assert set(LOSS_TYPES) <= set(HAND_WORKED)


def test_rewards_are_beta_rho_and_reference_free_uses_policy() -> None:
    out = preference_loss(PairLogps(POLICY_C, POLICY_R, REF_C, REF_R), LossConfig(type=["sigmoid"], beta=0.5))
    assert out.chosen_rewards.tolist() == pytest.approx([L3, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([0.0, L3])
    free = preference_loss(PairLogps(POLICY_C, POLICY_R), LossConfig(type=["simpo"], beta=0.5))
    assert free.chosen_rewards.tolist() == pytest.approx((0.5 * POLICY_C).tolist())
    with pytest.raises(ValueError, match="needs reference log-probs"):
        preference_loss(PairLogps(POLICY_C, POLICY_R), LossConfig(type=["simpo", "sigmoid"], beta=0.5))


def test_weighted_sum_of_losses_rpo() -> None:
    # RPO = sigmoid + alpha * sft
    combined = preference_loss(PairLogps(POLICY_C, POLICY_R, REF_C, REF_R, chosen_lengths=LEN_C, rejected_lengths=LEN_R),
                               LossConfig(type=["sigmoid", "sft"], weights=[1.0, 0.5], beta=0.5)).losses
    expected = [a + 0.5 * b for a, b in zip(HAND_WORKED["sigmoid"][1], HAND_WORKED["sft"][1])]
    assert combined.tolist() == pytest.approx(expected, abs=1e-12)


def test_f_divergence_hand_worked() -> None:
    # forward_kl: s = 1 - e^{-rho}. A: s(2ln3) - s(0) = 1 - 1/9 = 8/9; beta Delta = 4/9; loss = log(1 + e^{-4/9})
    out = hand("sigmoid", f_divergence="forward_kl")
    assert out[0] == pytest.approx(math.log(1 + math.exp(-4 / 9)), abs=1e-12)
    # js: s = log 2 + log sigma(rho). A: log sigma(2ln3) - log sigma(0) = log(9/10) + log 2 = log(9/5)
    out = hand("sigmoid", f_divergence="js_divergence")
    assert out[0] == pytest.approx(math.log(1 + math.exp(-0.5 * math.log(9 / 5))), abs=1e-12)
    # alpha = 0.5: s = (e^{-rho/2} - 1) / (-1/2) = 2 (1 - e^{-rho/2}). A: 2 (1 - 1/3) = 4/3; beta Delta = 2/3
    out = hand("sigmoid", f_divergence="alpha_divergence", f_alpha=0.5)
    assert out[0] == pytest.approx(math.log(1 + math.exp(-2 / 3)), abs=1e-12)


def test_ld_logps_hand_worked() -> None:
    # prefix -1, full -4, alpha 0.5: -1 + 0.5 * (-3)
    assert ld_logps(t(-4.0), t(-1.0), 0.5).item() == pytest.approx(-2.5)


# ---------------------------------------------------------------- direct transcription, random inputs

def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sig(x: float) -> float:
    return math.exp(_logsig(x))


def _score(rho: float, f: str, a: float) -> float:
    return {"reverse_kl": rho, "forward_kl": 1 - math.exp(-rho), "js_divergence": math.log(2) + _logsig(rho),
            "alpha_divergence": (math.exp((a - 1) * rho) - 1) / (a - 1) if f == "alpha_divergence" else 0.0}[f]


def _transcribe(name: str, lc, lr, rc, rr, nc, nr, *, beta, eps, f, a, gamma, lam, tau) -> list[float]:
    """The DPO-LOSSES.md table, written out per pair with the math module."""
    n = len(lc)
    rho_c = [lc[i] - rc[i] for i in range(n)]
    rho_r = [lr[i] - rr[i] for i in range(n)]
    d = [_score(rho_c[i], f, a) - _score(rho_r[i], f, a) for i in range(n)]
    out = []
    if name in ("aot", "aot_unpaired"):
        x = sorted(lc[i] - lr[i] for i in range(n)) if name == "aot" else sorted(rho_c)
        y = sorted(rc[i] - rr[i] for i in range(n)) if name == "aot" else sorted(rho_r)
        return [-(1 - eps) * _logsig(beta * (x[i] - y[i])) - eps * _logsig(-beta * (x[i] - y[i])) for i in range(n)]
    if name == "sft":
        mean = -sum(lc) / sum(nc)
        return [mean * nc[i] / (sum(nc) / n) for i in range(n)]
    for i in range(n):
        z = beta * d[i]
        zc, zr = beta * rho_c[i], beta * rho_r[i]
        h = _score(rho_c[i], f, a) / nc[i] - _score(rho_r[i], f, a) / nr[i]
        mc, mr = lc[i] / nc[i], lr[i] / nr[i]
        value = {
            "sigmoid": lambda: -(1 - eps) * _logsig(z) - eps * _logsig(-z),
            "hinge": lambda: max(0.0, 1 - z),
            "ipo": lambda: (h - 1 / (2 * beta)) ** 2,
            "exo_pair": lambda: _sig(z) * (_logsig(z) - math.log(1 - eps)) + _sig(-z) * (_logsig(-z) - math.log(eps)),
            "nca_pair": lambda: -_logsig(zc) - 0.5 * _logsig(-zc) - 0.5 * _logsig(-zr),
            "robust": lambda: (-(1 - eps) * _logsig(z) + eps * _logsig(-z)) / (1 - 2 * eps),
            "bco_pair": lambda: -_logsig(zc) - _logsig(-zr),
            "sppo_hard": lambda: (rho_c[i] - 1 / (2 * beta)) ** 2 + (rho_r[i] + 1 / (2 * beta)) ** 2,
            "apo_zero": lambda: (1 - _sig(zc)) + _sig(zr),
            "apo_down": lambda: _sig(zc) + (1 - _sig(beta * (rho_c[i] - rho_r[i]))),
            "discopop": lambda: (1 - _sig(z / tau)) * -_logsig(z) + _sig(z / tau) * math.exp(-z),
            "sigmoid_norm": lambda: -_logsig(beta * h),
            "simpo": lambda: -_logsig(beta * (mc - mr) - gamma),
            "orpo": lambda: -mc - lam * _logsig((mc - math.log(1 - math.exp(mc))) - (mr - math.log(1 - math.exp(mr)))),
            "cpo": lambda: -_logsig(beta * (lc[i] - lr[i])) - mc,
        }[name]()
        out.append(value)
    return out


def _token_sums(token_logps, mask, prefix):
    """Masked sums and LD prefix sums with loops: (sum, count, prefix sum) per row."""
    rows = []
    for i in range(len(token_logps)):
        total, count, pre = 0.0, 0, 0.0
        for j in range(len(token_logps[i])):
            if mask[i][j]:
                count += 1
                total += token_logps[i][j]
                if count <= prefix[i]:
                    pre += token_logps[i][j]
        rows.append((total, count, pre))
    return rows


def _random_batch(gen: torch.Generator, b: int = 6, t_len: int = 9, vocab: int = 7):
    logits = torch.randn(2 * b, t_len, vocab, generator=gen, dtype=torch.float64)
    ref_logits = logits + 0.3 * torch.randn(2 * b, t_len, vocab, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, vocab, (2 * b, t_len), generator=gen)
    mask = torch.zeros(2 * b, t_len, dtype=torch.long)
    for i in range(2 * b):  # prompt of 1-3 tokens, completion of >= 1 token, then padding
        start = int(torch.randint(1, 4, (1,), generator=gen))
        end = int(torch.randint(start + 1, t_len + 1, (1,), generator=gen))
        mask[i, start:end] = 1
    return logits, ref_logits, ids, mask


CASES = [(name, "plain") for name in LOSS_TYPES]
CASES += [(name, "wpo") for name in LOSS_TYPES if name not in NO_WPO_LOSSES and name != "sft"]
CASES += [(name, "ld") for name in LOSS_TYPES]
CASES += [(name, f) for name in sorted(F_DIVERGENCE_LOSSES) for f in ("forward_kl", "js_divergence", "alpha_divergence")]


@pytest.mark.parametrize("name, variant", CASES)
def test_matches_direct_transcription(name: str, variant: str) -> None:
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}-{variant}".encode()))
    logits, ref_logits, ids, mask = _random_batch(gen)
    b = ids.shape[0] // 2
    lengths = mask[:, 1:].sum(-1)
    shared = torch.minimum(lengths[:b], lengths[b:])
    prefix = torch.cat([shared, shared])
    alpha = 0.4 if variant == "ld" else None
    f = variant if variant in ("forward_kl", "js_divergence", "alpha_divergence") else "reverse_kl"
    eps = 0.2 if name in LABEL_SMOOTHING_LOSSES else 0.0
    params = dict(beta=0.7, eps=eps, f=f, a=0.5, gamma=0.3, lam=0.2, tau=0.5)

    # Ours: library log-probs -> LD -> WPO -> preference_loss.
    stats = sequence_logps(logits, ids, mask, prefix_lengths=prefix, with_wpo=variant == "wpo")
    ref = sequence_logps(ref_logits, ids, mask, prefix_lengths=prefix)
    full, pre = stats.logps, stats.prefix_logps
    ref_full, ref_pre = ref.logps, ref.prefix_logps
    if alpha is not None:
        full, ref_full = ld_logps(full, pre, alpha), ld_logps(ref_full, ref_pre, alpha)
    lc, lr = split_pairs(full)
    rc, rr = split_pairs(ref_full)
    nc, nr = split_pairs(stats.num_tokens)
    weights = wpo_weights(*split_pairs(stats.wpo_logw)) if variant == "wpo" else None
    free = name in REFERENCE_FREE
    ours = preference_loss(
        PairLogps(lc, lr, None if free else rc, None if free else rr, chosen_lengths=nc, rejected_lengths=nr,
                  pair_weights=weights),
        LossConfig(type=[name], beta=0.7, label_smoothing=eps, f_divergence=f, f_alpha=0.5, simpo_gamma=0.3,
                   orpo_lambda=0.2, discopop_tau=0.5),
    ).losses.tolist()

    # Transcription: per-token log-probs by hand, loops for masked and prefix sums, then the formula.
    def token_logps(lg):
        return [[lg[i, j - 1, ids[i, j]].item() - math.log(sum(math.exp(v) for v in lg[i, j - 1].tolist()))
                 if j > 0 else 0.0 for j in range(ids.shape[1])] for i in range(ids.shape[0])]

    pol_tok, ref_tok = token_logps(logits), token_logps(ref_logits)
    m = mask.tolist()
    pol, rf = _token_sums(pol_tok, m, prefix.tolist()), _token_sums(ref_tok, m, prefix.tolist())
    seq = lambda r: r[0] if alpha is None else r[2] + alpha * (r[0] - r[2])  # noqa: E731
    t_lc, t_lr = [seq(r) for r in pol[:b]], [seq(r) for r in pol[b:]]
    t_rc, t_rr = ([0.0] * b, [0.0] * b) if free else ([seq(r) for r in rf[:b]], [seq(r) for r in rf[b:]])
    t_nc, t_nr = [r[1] for r in pol[:b]], [r[1] for r in pol[b:]]
    expected = _transcribe(name, t_lc, t_lr, t_rc, t_rr, t_nc, t_nr, **params)
    if variant == "wpo":
        def logw(i):  # mean over completion tokens of log p(y_t) - log sum_v p(v)^2
            vals = []
            for j in range(1, ids.shape[1]):
                if m[i][j]:
                    probs = [math.exp(v) for v in logits[i, j - 1].tolist()]
                    z = sum(probs)
                    vals.append(pol_tok[i][j] - math.log(sum((p / z) ** 2 for p in probs)))
            return sum(vals) / len(vals)
        expected = [expected[i] * math.exp(logw(i) + logw(b + i)) for i in range(b)]
    assert ours == pytest.approx(expected, abs=1e-10, rel=0)


# ---------------------------------------------------------------- gradients and properties

@pytest.mark.parametrize("name", LOSS_TYPES)
def test_gradcheck(name: str) -> None:
    gen = torch.Generator().manual_seed(7)
    policy = [(-torch.rand(4, generator=gen, dtype=torch.float64) * 3 - 0.2).requires_grad_() for _ in range(2)]
    ref = [(-torch.rand(4, generator=gen, dtype=torch.float64) * 3 - 0.2) for _ in range(2)]
    lengths = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    eps = 0.1 if name in LABEL_SMOOTHING_LOSSES else 0.0
    free = name in REFERENCE_FREE
    loss = LossConfig(type=[name], beta=0.4, label_smoothing=eps)

    def fn(c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        pairs = PairLogps(c, r, None if free else ref[0], None if free else ref[1],
                          chosen_lengths=lengths, rejected_lengths=lengths.flip(0))
        return preference_loss(pairs, loss).losses

    assert torch.autograd.gradcheck(fn, policy)


@pytest.mark.parametrize("name", ["sigmoid", "hinge", "robust"])
@settings(max_examples=60, deadline=None)
@given(
    rho_c=st.floats(-20, 20), rho_r=st.floats(-20, 20), step=st.floats(0, 10),
    beta=st.floats(0.01, 2.0), eps=st.floats(0.0, 0.45),
)
def test_loss_does_not_increase_as_chosen_ratio_grows(name: str, rho_c: float, rho_r: float, step: float, beta: float, eps: float) -> None:
    config = LossConfig(type=[name], beta=beta, label_smoothing=eps if name == "robust" else 0.0)

    def loss(rc: float) -> float:
        return preference_loss(PairLogps(t(rc), t(rho_r), t(0.0), t(0.0)), config).losses.item()

    assert loss(rho_c + step) <= loss(rho_c) + 1e-12


# ---------------------------------------------------------------- config refusals and metrics

@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.type=[aot]", "loss.wpo=true"], "loss.wpo is not defined for aot"),
        (["loss.type=exo_pair"], "exo_pair needs loss.label_smoothing > 0"),
        (["loss.type=apo_zero", "loss.f_divergence=js_divergence"], "not defined for loss.type apo_zero"),
        (["loss.type=robust", "loss.label_smoothing=0.5"], "loss.label_smoothing=0.5: must be in [0, 0.5)"),
        (["loss.type=ipo", "loss.label_smoothing=0.1"], "loss.label_smoothing is read only by"),
        (["loss.type=[sigmoid,sft]", "loss.weights=[1.0]"], "loss.weights has 1 entries for 2 losses"),
        (["loss.type=dpo"], "loss.type[0]='dpo': must be one of"),
        (["loss.ld_alpha=1.5"], "loss.ld_alpha=1.5: must be in [0, 1]"),
    ],
)
def test_invalid_combinations_are_refused_at_load(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_reference_free_detection() -> None:
    assert load_config(None, ["loss.type=simpo"]).loss.reference_free()
    assert load_config(None, ["loss.type=[cpo,sft]"]).loss.reference_free()
    assert not load_config(None, ["loss.type=[sigmoid,sft]"]).loss.reference_free()


def test_metrics_follow_trl_definitions() -> None:
    # Two pairs: rewards chosen (0.1, 0), rejected (-0.1, 0): accuracies strict -> (1 + 0) / 2.
    out = preference_loss(PairLogps(t(-1.0, -5.0), t(-3.0, -6.0), t(-2.0, -5.0), t(-2.0, -6.0)), LossConfig(type=["sigmoid"], beta=0.1))
    stats = SequenceStats(logps=t(-1.0, -5.0, -3.0, -6.0), num_tokens=t(2, 3, 1, 1), logits_sum=t(2.0, 3.0, 4.0, 6.0),
                          prefix_logps=t(-1.0, -5.0, -3.0, -6.0))
    sums = metric_sums(out, stats, beta=0.1) * 2  # two "workers" with the same batch add up
    m = finalize(sums, prefix="eval/")
    assert m["eval/rewards/accuracies"] == pytest.approx(0.5)
    assert m["eval/rewards/margins"] == pytest.approx(0.1)  # (0.2 + 0) / 2
    assert m["eval/rewards/chosen"] == pytest.approx(0.05)
    assert m["eval/logps/chosen"] == pytest.approx(-3.0)
    assert m["eval/logps/rejected"] == pytest.approx(-4.5)
    assert m["eval/logits/chosen"] == pytest.approx(5.0 / 5)  # token mean: (2 + 3) / (2 + 3)
    assert m["eval/logits/rejected"] == pytest.approx(10.0 / 2)
    # sigmoid with beta*Delta = 0.2 and 0: log(1 + e^-0.2) and ln 2
    assert m["eval/loss"] == pytest.approx((math.log(1 + math.exp(-0.2)) + math.log(2)) / 2)
