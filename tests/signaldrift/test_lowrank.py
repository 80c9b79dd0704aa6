import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from signaldrift import NonFiniteError, frob_inner, frob_norm, lowrank_svd, update_factors


def _rand(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 12), seed=st.integers(0, 10_000),
       deficient=st.booleans())
def test_singular_values_match_dense_float64(m, n, k, seed, deficient):
    L, R = _rand(m, k, seed=seed), _rand(k, n, seed=seed + 1)
    if deficient and k > 1:
        L[:, -1] = L[:, 0]  # rank-deficient factor
    svd = lowrank_svd(L, R)
    dense = torch.linalg.svdvals(L @ R)
    kk = min(m, n, k)
    assert svd.S.shape == (kk,)
    assert torch.allclose(svd.S, dense[:kk], atol=1e-10 * max(1.0, float(dense[0])), rtol=0)
    assert torch.allclose(svd.U @ torch.diag(svd.S) @ svd.V.T, L @ R, atol=1e-9)


def test_singular_values_float32_relative():
    L, R = _rand(256, 8, dtype=torch.float32), _rand(8, 300, dtype=torch.float32, seed=3)
    S = lowrank_svd(L, R).S
    ref = torch.linalg.svdvals((L.double() @ R.double()))[:8]
    assert S.dtype == torch.float32
    assert float(((S.double() - ref).abs() / ref).max()) < 1e-5


def test_half_inputs_are_computed_in_float32():
    L, R = _rand(64, 4).to(torch.bfloat16), _rand(4, 32, seed=1).to(torch.bfloat16)
    svd = lowrank_svd(L, R)
    assert svd.S.dtype == torch.float32
    ref = torch.linalg.svdvals(L.double() @ R.double())[:4]
    assert torch.allclose(svd.S.double(), ref, rtol=1e-5)


def test_frobenius_algebra_matches_dense():
    L1, R1, L2, R2 = _rand(30, 3), _rand(3, 20, seed=1), _rand(30, 5, seed=2), _rand(5, 20, seed=3)
    assert math.isclose(frob_inner(L1, R1, L2, R2), float(((L1 @ R1) * (L2 @ R2)).sum()), rel_tol=1e-12)
    assert math.isclose(frob_norm(L1, R1), float(torch.linalg.matrix_norm(L1 @ R1)), rel_tol=1e-12)


def test_update_factors_with_snapshot_equal_dense_difference():
    A, B, A0, B0 = _rand(4, 20), _rand(10, 4, seed=1), _rand(4, 20, seed=2), _rand(10, 4, seed=3)
    L, R = update_factors(A, B, 2.5, A0, B0)
    assert L.shape == (10, 8) and R.shape == (8, 20)
    assert torch.allclose(L @ R, 2.5 * (B @ A - B0 @ A0), atol=1e-12)
    L, R = update_factors(A, B, 2.5, A0, torch.zeros_like(B0))  # usual init: inner dim stays r
    assert L.shape == (10, 4)


def test_degenerate_inputs_are_well_defined():
    svd = lowrank_svd(torch.zeros(5, 3), torch.zeros(3, 7))
    assert torch.equal(svd.S, torch.zeros(3)) and svd.numerical_rank() == 0
    one_row = lowrank_svd(_rand(1, 4), _rand(4, 6, seed=1))  # m = 1 < k
    assert one_row.S.shape == (1,)
    assert torch.allclose(one_row.S, torch.linalg.svdvals(_rand(1, 4) @ _rand(4, 6, seed=1)))


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4, 7\)"):
        lowrank_svd(torch.zeros(5, 3), torch.zeros(4, 7))
    with pytest.raises(ValueError, match="2-D"):
        lowrank_svd(torch.zeros(5), torch.zeros(5, 7))
    bad = torch.ones(5, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="L holds non-finite"):
        lowrank_svd(bad, torch.ones(3, 2))
    assert issubclass(NonFiniteError, ValueError)
    with pytest.raises(ValueError, match="A0 has shape"):
        update_factors(torch.ones(2, 3), torch.ones(4, 2), 1.0, torch.ones(3, 3), torch.ones(4, 2))
