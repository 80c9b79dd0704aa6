"""signaldrift.lowrank and signaldrift.suppression at their edges: mixed input dtypes are computed in
float64 (against float64 dense references), every refused input is named in its message, and the
numerical-rank threshold on both sides."""
import math

import pytest
import torch

from signaldrift.errors import NonFiniteError
from signaldrift.lowrank import LowRankSVD, frob_inner, lowrank_svd, update_factors
from signaldrift.suppression import (FullGradAccumulator, full_grad_sq_norm, full_weight_grad,
                                     spectral_suppression)


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------- lowrank
@pytest.mark.parametrize("wide", ["L", "R"])
def test_lowrank_svd_of_mixed_dtypes_is_float64(wide):
    L, R = _rand(7, 3, seed=1), _rand(3, 5, seed=2)
    if wide == "L":
        L = L.float()
    else:
        R = R.float()
    svd = lowrank_svd(L, R)
    ref = torch.linalg.svdvals(L.double() @ R.double())[:3]
    assert svd.S.dtype == torch.float64
    assert torch.allclose(svd.S, ref, rtol=1e-13, atol=0)


def test_lowrank_svd_names_the_bad_input():
    L, R = _rand(4, 2, seed=3), _rand(2, 3, seed=4)
    bad = R.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="^R holds"):
        lowrank_svd(L, bad)
    with pytest.raises(NonFiniteError, match="^L holds"):
        lowrank_svd(L * float("inf"), R)
    with pytest.raises(ValueError, match="^L must be a 2-D"):
        lowrank_svd(L[0], R)
    with pytest.raises(ValueError, match="^R must be a 2-D"):
        lowrank_svd(L, R[0])


def test_frob_inner_is_float64_for_float32_inputs():
    L1, R1, L2, R2 = (_rand(*s, seed=i, dtype=torch.float32) for i, s in
                      enumerate([(6, 2), (2, 5), (6, 3), (3, 5)]))
    ref = float((L1.double() @ R1.double() * (L2.double() @ R2.double())).sum())
    assert frob_inner(L1, R1, L2, R2) == pytest.approx(ref, rel=1e-13)


def test_frob_inner_refuses_products_of_different_shapes():
    L1, R1 = _rand(3, 2, seed=5), _rand(2, 4, seed=6)
    with pytest.raises(ValueError, match=r"^products have different shapes: \(3, 4\) vs \(5, 4\)$"):
        frob_inner(L1, R1, _rand(5, 2, seed=7), R1)
    with pytest.raises(ValueError, match=r"^products have different shapes: \(3, 4\) vs \(3, 6\)$"):
        frob_inner(L1, R1, L1, _rand(2, 6, seed=8))


def test_update_factors_dtypes_and_snapshots():
    m, r, n = 5, 2, 4
    A, B = _rand(r, n, seed=9, dtype=torch.float32), _rand(m, r, seed=10)
    L, R = update_factors(A, B, 1.5)
    assert L.dtype == R.dtype == torch.float64
    assert torch.allclose(L @ R, 1.5 * B @ A.double(), rtol=1e-14)
    L, R = update_factors(B.T.float(), A.T.double(), 2.0)  # the other factor float64
    assert L.dtype == R.dtype == torch.float64
    # half a snapshot is no snapshot: dW = s B A
    L, R = update_factors(A, B, 1.5, A0=_rand(r, n, seed=11), B0=None)
    assert L.shape == (m, r) and torch.allclose(L @ R, 1.5 * B @ A.double(), rtol=1e-14)
    A0, B0 = _rand(r, n, seed=12, dtype=torch.float32), _rand(m, r, seed=13, dtype=torch.float32)
    L, R = update_factors(A.float(), B.float(), 1.5, A0=A0, B0=B0)
    assert L.dtype == R.dtype == torch.float64 and L.shape == (m, 2 * r) and R.shape == (2 * r, n)
    ref = 1.5 * (B.float().double() @ A.double() - B0.double() @ A0.double())
    assert torch.allclose(L @ R, ref, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=r"^A0 has shape \(2, 3\) but A has shape \(2, 4\); they must match$"):
        update_factors(A, B, 1.0, A0=A0[:, :3], B0=B0)
    with pytest.raises(ValueError, match=r"^B0 has shape \(4, 2\) but B has shape \(5, 2\); they must match$"):
        update_factors(A, B, 1.0, A0=A0, B0=B0[:4])


def _svd(S, m, n):
    k = len(S)
    return LowRankSVD(U=torch.zeros(m, k, dtype=torch.float64), S=torch.tensor(S, dtype=torch.float64),
                      V=torch.zeros(n, k, dtype=torch.float64))


def test_numerical_rank_threshold():
    eps = torch.finfo(torch.float64).eps
    assert _svd([], 3, 4).numerical_rank() == 0
    assert _svd([0.0, 0.0], 3, 4).numerical_rank() == 0
    assert _svd([1.0, 0.5], 3, 4).numerical_rank() == 2
    assert _svd([1.0, 0.5], 3, 4).numerical_rank(rtol=0.5) == 1  # strictly above rtol * S[0]
    assert _svd([1.0, 0.5], 3, 4).numerical_rank(rtol=0.4999) == 2
    # the default tolerance is max(m, n) * eps, from the tall dimensions whichever is larger
    tiny = 100 * eps
    assert _svd([1.0, tiny], 1000, 3).numerical_rank() == 1
    assert _svd([1.0, tiny], 3, 1000).numerical_rank() == 1
    assert _svd([1.0, tiny], 3, 50).numerical_rank() == 2


# ----------------------------------------------------------------- suppression
def test_spectral_suppression_names_the_bad_input():
    gA, gB = _rand(2, 5, seed=20), _rand(4, 2, seed=21)
    with pytest.raises(ValueError, match="^grad_A must be a 2-D"):
        spectral_suppression(gA[0], gB, 1.0)
    with pytest.raises(ValueError, match="^grad_B must be a 2-D"):
        spectral_suppression(gA, gB[0], 1.0)
    with pytest.raises(ValueError, match="^full_grad_sq_norm must be a real number"):
        spectral_suppression(gA, gB, "1.0")
    for name in ("grad_A", "grad_B"):
        bad = {"grad_A": gA.clone(), "grad_B": gB.clone()}
        bad[name][0, 0] = float("nan")
        with pytest.raises(NonFiniteError, match=f"^{name} holds"):
            spectral_suppression(bad["grad_A"], bad["grad_B"], 1.0)
    g2 = 3.0
    res = spectral_suppression(gA, gB, g2)
    ref = float((gA**2).sum() + (gB**2).sum()) / g2
    assert res.spectral_gain == pytest.approx(ref, rel=1e-14)


def test_token_matrices_refusals_are_named():
    x, g = _rand(3, 4, seed=22), _rand(3, 5, seed=23)
    with pytest.raises(ValueError, match="^inputs must be a torch.Tensor, got list$"):
        full_grad_sq_norm([1.0], g)
    with pytest.raises(ValueError, match="^grad_outputs must be a torch.Tensor, got list$"):
        full_grad_sq_norm(x, [1.0])
    with pytest.raises(ValueError, match=r"^inputs needs a non-empty feature \(last\) dimension, got shape \(\)$"):
        full_grad_sq_norm(torch.tensor(1.0), g)
    with pytest.raises(ValueError, match=r"^grad_outputs needs a non-empty feature \(last\) dimension, got shape \(3, 0\)$"):
        full_grad_sq_norm(x, g[:, :0])
    with pytest.raises(ValueError, match=r"must share their leading \(token\) dimensions$"):
        full_grad_sq_norm(x, g[:2])


def test_one_token_without_a_token_dimension():
    x, g = _rand(4, seed=24), _rand(5, seed=25)
    G = torch.outer(g, x)
    assert full_grad_sq_norm(x, g) == pytest.approx(float((G**2).sum()), rel=1e-14)
    assert torch.allclose(full_weight_grad(x, g), G, rtol=1e-14)


@pytest.mark.parametrize("T", [2, 40])  # both exact forms: (m, n) product and (T, T) token Gram
def test_full_grad_sq_norm_of_float32_tokens_is_float64(T):
    x, g = _rand(T, 6, seed=26, dtype=torch.float32), _rand(T, 5, seed=27, dtype=torch.float32)
    G = g.double().T @ x.double()
    assert full_grad_sq_norm(x, g) == pytest.approx(float((G**2).sum()), rel=1e-13)
    bad = g.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="^grad_outputs holds"):
        full_grad_sq_norm(x, bad)


def test_full_weight_grad_and_accumulator_with_mixed_dtypes():
    x, g = _rand(3, 4, seed=28, dtype=torch.float32), _rand(3, 5, seed=29)
    G = g.T @ x.double()
    got = full_weight_grad(x, g)
    assert got.dtype == torch.float64 and torch.allclose(got, G, rtol=1e-14)
    got = full_weight_grad(g, x)
    assert got.dtype == torch.float64
    acc = FullGradAccumulator()
    with pytest.raises(ValueError, match="^FullGradAccumulator is empty: add\\(\\) was never called$"):
        acc.sq_norm()
    acc.add(x, g)
    acc.add(g[:, :4].float(), x.double()[:, :4].repeat(1, 2)[:, :5])
    G2 = G + x.double()[:, :4].repeat(1, 2)[:, :5].T @ g[:, :4].float().double()
    assert acc.sq_norm() == pytest.approx(float((G2**2).sum()), rel=1e-12)


def test_accumulator_finds_non_finite_values_in_either_form():
    for T in (1, 8):  # 8 tokens of (4 + 5) numbers is more than 4 x 5: folded into G
        x, g = _rand(T, 4, seed=30), _rand(T, 5, seed=31)
        g[0, 0] = float("nan")
        acc = FullGradAccumulator()
        acc.add(x, g)
        with pytest.raises(NonFiniteError):
            acc.sq_norm()
    x, g = _rand(8, 4, seed=32), _rand(8, 5, seed=33)
    g[0, 0] = float("nan")
    acc = FullGradAccumulator()
    acc.add(x, g)
    with pytest.raises(NonFiniteError, match="^full_weight_grad holds"):
        acc.sq_norm()
