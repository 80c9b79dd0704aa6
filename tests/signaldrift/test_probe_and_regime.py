import math

import numpy as np
import pytest
import torch

from signaldrift import (
    MAX_SUGGESTED_FACTOR,
    SQRT_LAW_C,
    NonFiniteError,
    VerdictRules,
    recommended_alpha,
    regime_verdict,
    step_gap_probe,
)


def _quadratic_setup(step_fraction):
    """Loss (p - target)^2 summed; the step covers ``step_fraction`` of the way to the minimum."""
    p0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    target = torch.tensor([3.0, 1.0, -1.5], dtype=torch.float64)
    delta = step_fraction * (target - p0)
    p = torch.nn.Parameter(p0 + delta)  # the step has been applied
    return p, delta, lambda: float(((p.detach() - target) ** 2).sum())


def _reference_vertex(taus, losses):
    """Independent reference: numpy's least-squares parabola through the best point and neighbours."""
    i = int(np.argmin(losses))
    x = np.log(np.array(taus[i - 1:i + 2]))
    a, b, _ = np.polyfit(x, np.array(losses[i - 1:i + 2]), 2)
    return float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))


def test_probe_finds_the_gap_of_a_conservative_step():
    p, delta, loss = _quadratic_setup(1 / 8)  # the optimum is at tau = 8
    before = p.detach().clone()
    got = step_gap_probe(loss, [p], [delta])
    assert got.losses[got.taus.index(8.0)] == pytest.approx(0.0, abs=1e-20)
    assert got.step_gap == pytest.approx(_reference_vertex(got.taus, got.losses), rel=1e-9)
    assert 4.0 < got.step_gap < 16.0
    assert got.gap_gain == pytest.approx(1.0, abs=1e-9)  # the best measured loss, loss(8), is 0
    assert torch.equal(p.detach(), before)
    assert got.losses[got.taus.index(1.0)] == pytest.approx(loss())


def test_probe_refines_between_grid_points_and_reports_overshoot():
    p, delta, loss = _quadratic_setup(1 / 3)  # optimum at tau = 3, between 2 and 4
    got = step_gap_probe(loss, [p], [delta])
    assert 2.0 < got.step_gap < 4.0
    assert got.step_gap == pytest.approx(_reference_vertex(got.taus, got.losses), rel=1e-9)
    p, delta, loss = _quadratic_setup(3.0)  # overshooting: the optimum is at tau = 1/3
    got = step_gap_probe(loss, [p], [delta])
    assert got.step_gap < 1.0


def test_probe_not_applied_and_non_finite_losses():
    p0 = torch.tensor([0.0], dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    delta = torch.tensor([0.25], dtype=torch.float64)

    def loss():
        x = float(p)
        return float("nan") if x > 5 else (x - 1.0) ** 2

    got = step_gap_probe(loss, [p], [delta], applied=False)
    assert got.losses[got.taus.index(4.0)] == 0.0
    assert got.step_gap == pytest.approx(_reference_vertex(got.taus, got.losses), rel=1e-9)
    assert math.isinf(got.losses[-1])  # tau = 64 gave NaN: recorded as inf, never chosen
    assert torch.equal(p.detach(), p0)


def test_probe_restores_parameters_bit_exactly_when_the_closure_raises():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4).to(torch.bfloat16))]
    deltas = [torch.randn(5, 3) * 1e-3, torch.randn(4).to(torch.bfloat16)]
    before = [p.detach().clone() for p in params]
    calls = []

    def loss():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return 1.0

    with pytest.raises(RuntimeError, match="boom"):
        step_gap_probe(loss, params, deltas)
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_probe_bad_input():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="include 1"):
        step_gap_probe(lambda: 0.0, [p], [torch.zeros(3)], taus=(0, 2))
    with pytest.raises(ValueError, match=r"delta\[0\] has shape \(2,\)"):
        step_gap_probe(lambda: 0.0, [p], [torch.zeros(2)])
    with pytest.raises(ValueError, match="pair up"):
        step_gap_probe(lambda: 0.0, [p], [])
    with pytest.raises(NonFiniteError, match="tau=1"):
        step_gap_probe(lambda: float("nan"), [p], [torch.zeros(3)])


def test_recommended_alpha_is_the_square_root_law():
    assert recommended_alpha(16) == pytest.approx(4 * SQRT_LAW_C)
    assert recommended_alpha(4, c=10) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="rank"):
        recommended_alpha(0)
    with pytest.raises(ValueError, match="c must"):
        recommended_alpha(4, c=-1)


def _two_sig(x):
    """Two significant figures, halves up (the docs' round2), from the number as written."""
    from decimal import ROUND_HALF_UP, Decimal
    d = Decimal(repr(x))
    return float(d.quantize(Decimal(1).scaleb(d.adjusted() - 1), rounding=ROUND_HALF_UP))


def test_verdicts():
    """The verdict's rules v3 in one pass (docs/metrics.md §6); thresholds read from the rules."""
    rules = VerdictRules(window=5, agree=2)  # the shipped thresholds in a window that can hold a split
    k, big, mid, low = rules.agree, 2 * rules.k_too_small, 1.0, rules.k_too_aggressive / 2
    z, helped = rules.z_min, abs(rules.help_z_max) + 1.0
    r = 16
    alpha = recommended_alpha(r)  # on the law: not too small by configuration
    s = alpha / r

    def v_(ks, **kw):
        kw.setdefault("gain_zs", [z] * len(ks))
        kw.setdefault("help_zs", [helped] * len(ks))
        return regime_verdict(alpha, r, s, ks, rules=rules, **kw)

    ks = [big * 1.5] * (k - 1) + [big]  # k say larger; the suggestion uses their median
    v = v_(ks, drift_ratios=[0.0] * k)
    assert v.verdict == "alpha-too-small" and v.agreeing == k
    ordered = sorted(ks)
    median = ordered[k // 2] if k % 2 else (ordered[k // 2 - 1] + ordered[k // 2]) / 2
    assert v.suggested_alpha == _two_sig(alpha * min(median, MAX_SUGGESTED_FACTOR))
    v = v_([MAX_SUGGESTED_FACTOR * 3] * k)
    assert v.suggested_alpha == _two_sig(alpha * MAX_SUGGESTED_FACTOR) and "capped" in v.suggestion
    assert "try alpha" in v.suggestion and f"{k} say larger" in v.evidence
    v = v_([low] * k)
    assert v.verdict == "too-aggressive" and v.suggested_alpha is None and "learning rate" in v.suggestion
    v = v_([mid] * k, help_zs=[rules.help_z_max] * k)
    assert v.verdict == "too-aggressive"  # the update made the probe set worse: collapse
    v = v_([big] * k, drift_ratios=[rules.drift_ratio_high] * k)
    assert v.verdict == "too-aggressive"  # high drift: alpha is not the knob
    v = v_([mid] * k, step_sizes=[rules.step_size_high] * k)
    assert v.verdict == "too-aggressive"  # so are large steps
    assert v_([mid], drift_ratios=[0.0]).verdict == "in-regime"
    # not significant: the large k* do not vote
    v = v_([big] * k, gain_zs=[rules.z_min - 0.5] * k)
    assert v.verdict == "in-regime" and v.votes["in range"] == k
    # both sides: uncertain; and no direct flip from the other side
    assert v_([big] * rules.split + [low] * rules.split).verdict == "uncertain"
    v = v_([big] * k, previous="too-aggressive")
    assert v.verdict == "uncertain" and v.held_back == "alpha-too-small"
    # Below a quarter of c*sqrt(r), with no probe yet.
    v = regime_verdict(2.0, r, 2.0 / r)
    assert v.verdict == "alpha-too-small" and v.suggested_alpha == _two_sig(alpha)
    # ...but once a probe measured k*, the measurement outranks the law (c holds at one lr).
    assert regime_verdict(2.0, r, 2.0 / r, [mid]).verdict == "in-regime"
    # Under rslora (scale alpha/sqrt r) the same scale gives the same verdict, suggested in rslora's alpha.
    v = regime_verdict((2.0 / r) * math.sqrt(r), r, 2.0 / r)  # rslora alpha for scale 2/r
    assert v.verdict == "alpha-too-small"
    assert v.suggested_alpha / math.sqrt(r) == pytest.approx(alpha / r, rel=0.05)  # rslora scale
    with pytest.raises(ValueError, match="alpha must be"):
        regime_verdict(0, r, s)
