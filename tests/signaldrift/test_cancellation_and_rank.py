"""The two numbers docs/metrics.md promises and the Gram forms missed: §2's norms at a step whose parts cancel
(references exact in dyadic arithmetic), and every direction of a spread float32-Gram spectrum kept (§1, §3)."""
import math

import pytest
import torch

from signaldrift import grad_split, step_split, update_spectrum
from signaldrift.batched import BatchedStep, LayerState

D = torch.float64


def _ints(*shape, seed):
    """Small integers: every sum and product of them below 2^53 is exact in float64."""
    return torch.randint(-8, 9, shape, generator=torch.Generator().manual_seed(seed)).to(D)


def _cancelling_step(m=40, n=24, r=4):
    """dB = [u, u, 0...], dA = [v; -v + 2^-20 w; 0...]: dB dA = 2^-20 u w^T while ||dB|| ||dA|| is 2^20 times
    larger. All entries dyadic, so the dense products below are exact."""
    A, B = _ints(r, n, seed=1), _ints(m, r, seed=2)
    u, v, w = _ints(m, seed=3), _ints(n, seed=4), _ints(n, seed=5)
    dB = torch.zeros(m, r, dtype=D)
    dB[:, 0] = dB[:, 1] = u
    dA = torch.zeros(r, n, dtype=D)
    dA[0], dA[1] = v, -v + 2.0**-20 * w
    return A, B, A + dA, B + dB


def _exact_norms(A, B, A1, B1, s):
    dA, dB = A1 - A, B1 - B
    S, Dr = s * (dB @ A + B @ dA), s * (dB @ dA)  # exact: dyadic entries of few bits
    return [float(torch.linalg.matrix_norm(x)) for x in (S, Dr, S + Dr)]


def test_a_cancelling_step_is_split_to_round_off_on_every_route():
    s, base = 0.5, 7.0
    A, B, A1, B1 = _cancelling_step()
    signal, drift, update = _exact_norms(A, B, A1, B1, s)
    dA, dB = A1 - A, B1 - B
    gram_drift = s * math.sqrt(max(float(((dB.T @ dB) * (dA @ dA.T)).sum()), 0.0))
    assert abs(gram_drift - drift) > 1e-6 * drift  # the case is hard: the Gram-trace form is off
    got = step_split(A, B, A1, B1, s, base)
    assert got.drift_norm == pytest.approx(drift, rel=1e-9)
    assert got.signal_norm == pytest.approx(signal, rel=1e-9)
    assert got.update_norm == pytest.approx(update, rel=1e-9)
    assert got.step_size == pytest.approx(update / base, rel=1e-9)
    for gram in (torch.float64, torch.float32):
        batch = BatchedStep.measure([LayerState(A, B, s, base)], gram_dtype=gram)
        split = batch.step_splits([(A1, B1)])[0].split
        assert split.drift_norm == pytest.approx(drift, rel=1e-9), gram
        assert split.signal_norm == pytest.approx(signal, rel=1e-9), gram
        assert split.drift_ratio == pytest.approx(drift / signal, rel=1e-9), gram


def _spread_layer(m, n, r, ratio, seed=0):
    """B (m, r) and A (r, n) with orthonormal columns/rows and singular values from 1 down to ``ratio``."""
    g = torch.Generator().manual_seed(seed)
    Qb = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=D)).Q
    Qa = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=D)).Q
    sv = torch.logspace(0, math.log10(ratio), r, dtype=D)
    return (sv[:, None] * Qa.T).float(), (Qb * sv).float(), torch.randn(r, n, generator=g).float(), \
        torch.randn(m, r, generator=g).float()


def test_a_spread_spectrum_keeps_every_direction_with_float32_grams():
    """B and A each spread 30x (condition 1e3 in their Grams: still the batched route), so dW's last singular
    value is ~1.1e-3 of its first: above float64's max(m, n) * eps but below float32's (1.3e-3 at n = 11008)."""
    m, n, r = 11008, 512, 8
    A, B, gA, gB = _spread_layer(m, n, r, ratio=1 / 30)
    ref_svd = update_spectrum(A.double(), B.double(), 1.0, 1.0)
    ref = grad_split(A.double(), B.double(), gA.double(), gB.double(), 1.0)
    assert ref_svd.svd.numerical_rank() == r and ref.k == r
    batch = BatchedStep.measure([LayerState(A, B, 1.0, 1.0, gA, gB)], gram_dtype=torch.float32)
    res = batch.results[0]
    assert not res.exact  # the batched float32 route, where the old threshold dropped a direction
    assert res.grad.k == r
    assert res.grad.grad_alignment == pytest.approx(ref.grad_alignment, rel=1e-4)
    assert res.grad.grad_drift_ratio == pytest.approx(ref.grad_drift_ratio, rel=1e-4)
