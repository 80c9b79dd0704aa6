"""Non-zero inits (PiSSA/OLoRA-style, ``B0 != 0``): dW = s (B A - B0 A0) against dense float64 references."""
import math

import pytest
import torch

from signaldrift import grad_split, lowrank_svd, update_factors, update_spectrum


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense_alignment(A, B, gA, gB, s, k, A0, B0):
    """grad_alignment from the definition: dW and g formed, explicit projections on dW's top k."""
    A, B, gA, gB, A0, B0 = (t.double() for t in (A, B, gA, gB, A0, B0))
    dW = s * (B @ A - B0 @ A0)
    U, _, Vh = torch.linalg.svd(dW)
    Pu, Pv = U[:, :k] @ U[:, :k].T, Vh[:k].T @ Vh[:k]
    g = s * (gB @ A + B @ gA)
    g_sig = Pu @ g @ Pv
    return float((g_sig * g_sig).sum() / (g * g).sum()), float(torch.linalg.matrix_norm(g - g_sig) / torch.linalg.matrix_norm(g_sig))


def test_the_spectrums_zero_decision_reaches_the_gradient_split():
    """At fit start with B0 != 0, dW is exactly zero; its factored SVD has round-off singular values
    whose vectors are noise. The engine passes the spectrum's SVD on: no alignment may come out."""
    A, B = _rand(3, 12), _rand(10, 3, seed=1)
    gA, gB = _rand(3, 12, seed=2), _rand(10, 3, seed=3)
    L, R = update_factors(A, B, 2.0, A.clone(), B.clone())
    raw = lowrank_svd(L, R)
    assert 0.0 < float(raw.S[0]) < 1e-12  # round-off, not zero: what used to be projected on
    spec = update_spectrum(A, B, 2.0, 1.0, A.clone(), B.clone())
    assert spec.numerically_zero and spec.delta_norm == 0.0
    assert spec.svd.numerical_rank() == 0 and float(spec.svd.S.abs().max()) == 0.0
    assert grad_split(A, B, gA, gB, 2.0, A.clone(), B.clone(), svd=spec.svd) is None  # production path
    assert grad_split(A, B, gA, gB, 2.0, A.clone(), B.clone()) is None  # direct path, same decision
    # One real step later the split is defined again and equals the dense definition.
    B1 = B + 1e-3 * _rand(10, 3, seed=4)
    spec = update_spectrum(A, B1, 2.0, 1.0, A, B)
    assert not spec.numerically_zero
    got = grad_split(A, B1, gA, gB, 2.0, A, B, svd=spec.svd)
    ref_align, ref_ratio = _dense_alignment(A, B1, gA, gB, 2.0, got.k, A, B)
    assert got.grad_alignment == pytest.approx(ref_align, rel=1e-9)
    assert got.grad_drift_ratio == pytest.approx(ref_ratio, rel=1e-9)


@pytest.mark.parametrize("relative", [1e-5, 1e-3])
def test_float32_factors_with_a_nonzero_init_keep_a_small_update(relative):
    """B A and B0 A0 cancel: dW's factors are computed in float64 whatever the factors' dtype.
    In float32 an update of 1e-5 relative to B0 A0 was lost (delta_norm 0)."""
    A0, B0 = _rand(4, 24, dtype=torch.float32), _rand(16, 4, seed=1, dtype=torch.float32)
    A = A0 + relative * _rand(4, 24, seed=2, dtype=torch.float32)
    B = B0 + relative * _rand(16, 4, seed=3, dtype=torch.float32)
    dW = 1.5 * (B.double() @ A.double() - B0.double() @ A0.double())  # the float32 values, exactly
    got = update_spectrum(A, B, 1.5, 1.0, A0, B0)
    assert got.delta_norm == pytest.approx(float(torch.linalg.matrix_norm(dW)), rel=1e-9)
    S = torch.linalg.svdvals(dW)
    assert got.stable_rank == pytest.approx(float((S**2).sum() / S[0] ** 2), rel=1e-8)
    assert torch.allclose(got.singular_values[:4], S[:4], rtol=1e-8, atol=0)


def test_default_subspace_is_the_rank_not_dws_full_rank():
    """With B0 != 0, dW has rank up to 2r; section 3 projects on its top r (default k = r)."""
    r = 3
    A0, B0 = _rand(r, 14), _rand(11, r, seed=1)
    A, B = _rand(r, 14, seed=2), _rand(11, r, seed=3)  # dW = s (B A - B0 A0): rank 2r = 6
    gA, gB = _rand(r, 14, seed=4), _rand(11, r, seed=5)
    spec = update_spectrum(A, B, 0.7, 1.0, A0, B0)
    assert spec.svd.numerical_rank() == 2 * r
    got = grad_split(A, B, gA, gB, 0.7, A0, B0, svd=spec.svd)
    assert got.k == r
    ref_align, ref_ratio = _dense_alignment(A, B, gA, gB, 0.7, r, A0, B0)
    assert got.grad_alignment == pytest.approx(ref_align, rel=1e-9)
    assert got.grad_drift_ratio == pytest.approx(ref_ratio, rel=1e-9)
    # Projecting on all 2r directions gives a different, larger number: the test can tell them apart.
    wide, _ = _dense_alignment(A, B, gA, gB, 0.7, 2 * r, A0, B0)
    assert wide > ref_align * 1.05
    assert grad_split(A, B, gA, gB, 0.7, A0, B0, top_k=2 * r, svd=spec.svd).grad_alignment == pytest.approx(wide, rel=1e-9)


def test_near_zero_but_learned_update_is_measured_not_called_zero():
    """The zero decision sits at round-off, not above it: an update of 1e-9 relative to B0 A0 (float64
    factors) is measured, and an update of exactly zero is not."""
    A0, B0 = _rand(2, 9), _rand(7, 2, seed=1)
    B = B0 + 1e-9 * _rand(7, 2, seed=2)
    dW = B @ A0 - B0 @ A0
    got = update_spectrum(A0, B, 1.0, 1.0, A0, B0)
    assert not got.numerically_zero
    assert got.delta_norm == pytest.approx(float(torch.linalg.matrix_norm(dW)), rel=1e-5)
    assert math.isclose(update_spectrum(A0, B0.clone(), 1.0, 1.0, A0, B0).delta_norm, 0.0)
