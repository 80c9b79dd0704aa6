import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from signaldrift import NonFiniteError, full_grad_sq_norm, grad_split, spectral_suppression, update_spectrum


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense_grad_split(A, B, gA, gB, s, k, A0=None, B0=None):
    dW = s * (B @ A - (B0 @ A0 if A0 is not None else 0))
    U, S, Vh = torch.linalg.svd(dW)
    Pu = U[:, :k] @ U[:, :k].T  # explicit projection matrices
    Pv = Vh[:k].T @ Vh[:k]
    g = s * (gB @ A + B @ gA)
    g_sig = Pu @ g @ Pv
    g_drift = g - g_sig
    return g, g_sig, g_drift


@settings(max_examples=30, deadline=None)
@given(m=st.integers(3, 25), n=st.integers(3, 25), r=st.integers(1, 4), s=st.floats(0.1, 20.0),
       seed=st.integers(0, 1000), snapshot=st.booleans())
def test_grad_split_matches_explicit_projections(m, n, r, s, seed, snapshot):
    A, B = _rand(r, n, seed=seed), _rand(m, r, seed=seed + 1)
    gA, gB = _rand(r, n, seed=seed + 2), _rand(m, r, seed=seed + 3)
    A0 = _rand(r, n, seed=seed + 4) if snapshot else None
    B0 = _rand(m, r, seed=seed + 5) if snapshot else None
    got = grad_split(A, B, gA, gB, s, A0, B0)
    assert got is not None
    g, g_sig, g_drift = _dense_grad_split(A, B, gA, gB, s, got.k, A0, B0)
    assert abs(float((g_sig * g_drift).sum())) < 1e-9 * float((g * g).sum())  # Frobenius-orthogonal
    assert math.isclose(got.signal_norm, float(torch.linalg.matrix_norm(g_sig)), rel_tol=1e-7, abs_tol=1e-10)
    assert math.isclose(got.drift_norm, float(torch.linalg.matrix_norm(g_drift)), rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(got.grad_norm, float(torch.linalg.matrix_norm(g)), rel_tol=1e-9)
    ref_align = float(torch.linalg.matrix_norm(g_sig) ** 2 / torch.linalg.matrix_norm(g) ** 2)
    assert 0.0 <= got.grad_alignment <= 1.0
    assert math.isclose(got.grad_alignment, ref_align, rel_tol=1e-6, abs_tol=1e-12)


def test_top_k_and_reuse_of_the_spectrum_svd():
    A, B = _rand(4, 20), _rand(15, 4, seed=1)
    gA, gB = _rand(4, 20, seed=2), _rand(15, 4, seed=3)
    spec = update_spectrum(A, B, 2.0, 1.0)
    a = grad_split(A, B, gA, gB, 2.0, top_k=2)
    b = grad_split(A, B, gA, gB, 2.0, top_k=2, svd=spec.svd)
    assert a.k == b.k == 2 and math.isclose(a.grad_alignment, b.grad_alignment, rel_tol=1e-12)
    _, g_sig, _ = _dense_grad_split(A, B, gA, gB, 2.0, 2)
    assert math.isclose(a.signal_norm, float(torch.linalg.matrix_norm(g_sig)), rel_tol=1e-8)
    # The subspace is capped at dW's numerical rank (here 1).
    B1 = _rand(15, 1, seed=4) @ _rand(1, 4, seed=5)
    assert grad_split(A, B1, gA, gB, 1.0).k == 1


def test_gradient_inside_subspace_has_no_drift():
    A, B = _rand(3, 12), _rand(10, 3, seed=1)
    got = grad_split(A, B, A.clone(), B.clone(), 1.0)  # g = 2 B A lies in dW's subspace
    assert got.grad_alignment == pytest.approx(1.0, abs=1e-12)
    assert got.grad_drift_ratio == pytest.approx(0.0, abs=1e-6)


def test_undefined_while_nothing_learned():
    A, gA, gB = _rand(3, 12), _rand(3, 12, seed=1), _rand(10, 3, seed=2)
    assert grad_split(A, torch.zeros(10, 3, dtype=torch.float64), gA, gB, 1.0) is None
    B = _rand(10, 3, seed=3)
    assert grad_split(A, B, gA, gB, 1.0, A.clone(), B.clone()) is None  # PiSSA-style start
    zero = grad_split(A, B, torch.zeros_like(gA), torch.zeros_like(gB), 1.0)
    assert zero.grad_alignment is None and zero.grad_drift_ratio is None


def test_grad_split_bad_input():
    A, B = torch.ones(3, 5), torch.ones(4, 3)
    with pytest.raises(ValueError, match=r"grad_A has shape \(3, 4\)"):
        grad_split(A, B, torch.ones(3, 4), B, 1.0)
    with pytest.raises(ValueError, match="top_k"):
        grad_split(A, B, A, B, 1.0, top_k=0)
    with pytest.raises(NonFiniteError, match="grad_B"):
        grad_split(A, B, A, B * float("nan"), 1.0)


def test_spectral_suppression_against_dense_chain_rule():
    torch.manual_seed(0)
    m, n, r, s, T = 12, 9, 3, 4.0, 17
    A, B = _rand(r, n), _rand(m, r, seed=1)
    X, Gout = _rand(T, n, seed=2), _rand(T, m, seed=3)
    G = Gout.T @ X  # dL/dW for L = sum(Gout * (X W^T))
    gA, gB = s * B.T @ G, s * G @ A.T
    # Autograd on the LoRA path gives the same factor gradients.
    Ap, Bp = A.clone().requires_grad_(), B.clone().requires_grad_()
    (Gout * (s * X @ Ap.T @ Bp.T)).sum().backward()
    assert torch.allclose(Ap.grad, gA) and torch.allclose(Bp.grad, gB)
    g2 = full_grad_sq_norm(X.reshape(1, T, n), Gout.reshape(1, T, m))
    assert math.isclose(g2, float((G * G).sum()), rel_tol=1e-12)
    got = spectral_suppression(gA, gB, g2)
    ref = float((gA * gA).sum() + (gB * gB).sum()) / float((G * G).sum())
    assert math.isclose(got.spectral_gain, ref, rel_tol=1e-12)
    assert math.isclose(got.spectral_suppression, 1 / ref, rel_tol=1e-12)
    # Gain scales with s^2 at fixed factors: the factor gradients at scale 2s, by autograd on the
    # LoRA path (not the reference's own formula), against the same G.
    Ap, Bp = A.clone().requires_grad_(), B.clone().requires_grad_()
    (Gout * (2 * s * X @ Ap.T @ Bp.T)).sum().backward()
    got2 = spectral_suppression(Ap.grad, Bp.grad, g2)
    assert math.isclose(got2.spectral_gain, 4 * got.spectral_gain, rel_tol=1e-12)
    assert math.isclose(got2.spectral_suppression, got.spectral_suppression / 4, rel_tol=1e-12)


def test_full_grad_norm_both_forms_agree():
    X, Gout = _rand(3, 40, 6, seed=1), _rand(3, 40, 5, seed=2)  # T = 120 > m, n: (m, n) form
    dense = float(((Gout.reshape(-1, 5).T @ X.reshape(-1, 6)) ** 2).sum())
    assert math.isclose(full_grad_sq_norm(X, Gout), dense, rel_tol=1e-12)
    X, Gout = _rand(2, 200, seed=3), _rand(2, 300, seed=4)  # T = 2 << m, n: token Gram form
    dense = float(((Gout.T @ X) ** 2).sum())
    assert math.isclose(full_grad_sq_norm(X, Gout), dense, rel_tol=1e-12)


def test_suppression_degenerate_and_bad_input():
    zero = spectral_suppression(torch.zeros(2, 3), torch.zeros(4, 2), 0.0)
    assert zero.spectral_gain is None and zero.spectral_suppression is None
    assert spectral_suppression(torch.zeros(2, 3), torch.zeros(4, 2), 5.0).spectral_suppression is None
    with pytest.raises(ValueError, match="leading"):
        full_grad_sq_norm(torch.zeros(3, 4), torch.zeros(2, 5))
    with pytest.raises(NonFiniteError):
        spectral_suppression(torch.zeros(2, 3), torch.zeros(4, 2), float("inf"))
    with pytest.raises(ValueError, match=">= 0"):
        spectral_suppression(torch.zeros(2, 3), torch.zeros(4, 2), -1.0)


def test_full_weight_grad_is_the_dense_gradient():
    from signaldrift import full_weight_grad

    lin = torch.nn.Linear(6, 4, bias=False).double()
    x = _rand(2, 3, 6, seed=7)
    out = lin(x)
    gout = _rand(2, 3, 4, seed=8)
    out.backward(gout)
    assert torch.allclose(full_weight_grad(x, gout), lin.weight.grad, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), passes=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       seed=st.integers(0, 10_000))
def test_full_grad_accumulator_equals_the_dense_sum_over_passes(m, n, passes, seed):
    """Token form and folded form (past min(T (m+n), m n)) both equal ||sum_p g_p^T x_p||^2 in float64."""
    from signaldrift import FullGradAccumulator

    g = torch.Generator().manual_seed(seed)
    acc = FullGradAccumulator()
    G = torch.zeros(m, n, dtype=torch.float64)
    for T in passes:
        x, go = torch.randn(T, n, generator=g), torch.randn(T, m, generator=g)
        acc.add(x, go)
        G += go.double().T @ x.double()
    assert acc.tokens == sum(passes)
    assert acc.sq_norm() == pytest.approx(float(G.square().sum()), rel=1e-5, abs=1e-8)
    folded = sum(passes) * (m + n) > m * n
    assert (acc._G is not None) == folded and (not acc._X) == folded


def test_full_grad_accumulator_bad_input():
    from signaldrift import FullGradAccumulator

    with pytest.raises(ValueError, match="empty"):
        FullGradAccumulator().sq_norm()
    acc = FullGradAccumulator()
    acc.add(torch.tensor([[math.inf, 1.0]]), torch.ones(1, 30))
    with pytest.raises(NonFiniteError):
        acc.sq_norm()
