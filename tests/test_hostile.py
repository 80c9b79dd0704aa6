"""Hostile inputs, property-based: every public signaldrift function and inject() either answers or
raises one ValueError (LoRAConfigError and NonFiniteError are ValueErrors) with a message; never
another exception, and inject never half-changes a model."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import signaldrift as sd
from lora_alpha import LoRAConfigError, inject
from tests.conftest import TinyMLP

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]
ODD_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.none(),
                       st.just("2"), st.booleans())


@st.composite
def tensors(draw, max_dims: int = 3):
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=max_dims))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 1000))
    t = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)) * draw(st.sampled_from([1e-30, 1.0, 1e30]))
    if t.numel() and draw(st.booleans()):
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return t.to(dtype)


@st.composite
def factor_pairs(draw):
    """Mostly well-shaped (r, n) / (m, r) pairs, sometimes not; any dtype, sometimes non-finite."""
    if draw(st.booleans()):
        return draw(tensors()), draw(tensors())
    m, r, n = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES[:4]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 1000)))
    A, B = torch.randn(r, n, generator=g), torch.randn(m, r, generator=g) * draw(st.sampled_from([0.0, 1e-20, 1.0, 1e20]))
    if draw(st.booleans()):
        A[0, 0] = draw(st.sampled_from([math.nan, math.inf]))
    return A.to(dtype), B.to(dtype)


def _answers_or_value_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        assert str(err), "an error without a message"
        return None


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(AB=factor_pairs(), s=ODD_FLOATS, base=ODD_FLOATS)
def test_section_0_and_1(AB, s, base):
    A, B = AB
    _answers_or_value_error(sd.lowrank_svd, B, A)
    _answers_or_value_error(sd.frob_norm, B, A)
    out = _answers_or_value_error(sd.update_spectrum, A, B, s, base)
    if out is not None:
        assert all(v is None or math.isfinite(v) for v in (out.delta_norm, out.stable_rank, out.effective_rank))


@SETTINGS
@given(before=factor_pairs(), after=factor_pairs(), s=ODD_FLOATS, base=ODD_FLOATS)
def test_section_2(before, after, s, base):
    out = _answers_or_value_error(sd.step_split, *before, *after, s, base)
    if out is not None and out.drift_ratio is not None:
        assert 0.0 <= out.drift_ratio < math.inf


@SETTINGS
@given(AB=factor_pairs(), grads=factor_pairs(), s=ODD_FLOATS, top_k=st.one_of(st.none(), st.integers(-2, 8)))
def test_section_3(AB, grads, s, top_k):
    out = _answers_or_value_error(sd.grad_split, *AB, *grads, s, top_k=top_k)
    if out is not None:
        assert 0.0 <= out.grad_alignment <= 1.0 + 1e-9
        assert out.grad_drift_ratio is None or 0.0 <= out.grad_drift_ratio < math.inf


@SETTINGS
@given(x=tensors(), go=tensors(), gA=tensors(2), gB=tensors(2), g2=ODD_FLOATS)
def test_section_4(x, go, gA, gB, g2):
    _answers_or_value_error(sd.full_grad_sq_norm, x, go)
    _answers_or_value_error(sd.spectral_suppression, gA, gB, g2)
    acc = sd.FullGradAccumulator()
    if _answers_or_value_error(acc.add, x, go) is None and acc.tokens:
        _answers_or_value_error(acc.sq_norm)


@SETTINGS
@given(losses=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=6),
       taus=st.lists(st.floats(-2, 100, allow_nan=False), min_size=0, max_size=6))
def test_section_5(losses, taus):
    p = torch.zeros(3)
    it = iter(losses * 10)
    _answers_or_value_error(sd.step_gap_probe, lambda: next(it), [p], [torch.ones(3)], taus)
    _answers_or_value_error(sd.step_gap_probe, lambda: 1.0, [p], [torch.ones(2)], (0.0, 1.0))
    assert torch.equal(p, torch.zeros(3))  # restored whatever happened


@SETTINGS
@given(alpha=ODD_FLOATS, rank=ODD_FLOATS, scale=ODD_FLOATS,
       k_stars=st.one_of(st.none(), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4)),
       zs=st.one_of(st.none(), st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), max_size=4)),
       drifts=st.one_of(st.none(), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4)))
def test_section_6(alpha, rank, scale, k_stars, zs, drifts):
    v = _answers_or_value_error(sd.regime_verdict, alpha, rank, scale, k_stars, gain_zs=zs, help_zs=zs,
                                drift_ratios=drifts, step_sizes=drifts)
    if v is not None:
        assert v.verdict in sd.regime.VERDICTS
    _answers_or_value_error(sd.recommended_alpha, rank)


@SETTINGS
@given(losses=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                 st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3)),
                       min_size=1, max_size=6),
       ks=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=2)),
                   min_size=0, max_size=6))
def test_section_7(losses, ks):
    p = torch.ones(3)
    it = iter(losses * 10)
    probe = _answers_or_value_error(sd.scale_probe, lambda: next(it), [p], ks)
    if probe is not None:
        assert probe.k_star != probe.k_star or probe.k_star >= 0
    assert torch.equal(p, torch.ones(3))  # restored whatever happened


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, {n: p.requires_grad for n, p in model.named_parameters()},
            repr(model))


TARGETS = st.one_of(st.sampled_from(["fc1", "fc2", "head", "act", "fc[12]", "nope", "", "(", ".*", "fc1.weight"]),
                    st.lists(st.sampled_from(["fc1", "fc2", "nope", "(", ""]), max_size=3), st.integers(), st.none())


@settings(max_examples=80, deadline=None)
@given(targets=TARGETS, rank=ODD_FLOATS, alpha=ODD_FLOATS, rule=st.sampled_from(["standard", "rslora", "lora-alpha", "LoRA", ""]),
       dropout=ODD_FLOATS, trainable=st.one_of(st.sampled_from(["head", "nope", "", "fc1"]), st.lists(st.sampled_from(["head", "x"]), max_size=2)))
def test_inject_answers_or_refuses_without_half_changing(targets, rank, alpha, rule, dropout, trainable):
    model = TinyMLP()
    before = _state(model)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    y0 = model(x)
    try:
        summary = inject(model, targets, rank, alpha=alpha, rule=rule, dropout=dropout, trainable=trainable)
    except LoRAConfigError as err:
        assert str(err)
        after = _state(model)
        assert after[1:] == before[1:] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
        return
    assert summary.layers and summary.rank == rank
    assert torch.allclose(model.eval()(x), y0)  # B = 0: the wrapped model starts equal to the base
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or any(n.startswith(t + ".") for t in summary.trainable_modules) for n in trainable_names)


def test_inject_type_errors_are_value_errors_too():
    for bad in (dict(rank="8"), dict(rank=2.5), dict(rank=True), dict(alpha="16"), dict(dropout="0.1")):
        kwargs = dict(targets="fc1", rank=2) | bad
        with pytest.raises(LoRAConfigError):
            inject(TinyMLP(), **kwargs)
