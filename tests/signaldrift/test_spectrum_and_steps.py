import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from signaldrift import NonFiniteError, step_split, update_spectrum


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense_spectrum(dW, W0):
    S = torch.linalg.svdvals(dW)
    p = S / S.sum()
    p = p[p > 0]
    return {
        "delta_norm": float(torch.linalg.matrix_norm(dW)),
        "delta_rel": float(torch.linalg.matrix_norm(dW) / torch.linalg.matrix_norm(W0)),
        "stable_rank": float(torch.linalg.matrix_norm(dW) ** 2 / S[0] ** 2),
        "effective_rank": math.exp(float(-(p * p.log()).sum())),
    }


@settings(max_examples=30, deadline=None)
@given(m=st.integers(2, 30), n=st.integers(2, 30), r=st.integers(1, 6), s=st.floats(0.01, 100.0),
       seed=st.integers(0, 1000), snapshot=st.booleans())
def test_update_spectrum_matches_dense(m, n, r, s, seed, snapshot):
    A, B, W0 = _rand(r, n, seed=seed), _rand(m, r, seed=seed + 1), _rand(m, n, seed=seed + 2)
    A0 = _rand(r, n, seed=seed + 3) if snapshot else None
    B0 = _rand(m, r, seed=seed + 4) if snapshot else None
    dW = s * (B @ A - (B0 @ A0 if snapshot else 0))
    got = update_spectrum(A, B, s, float(torch.linalg.matrix_norm(W0)), A0, B0)
    ref = _dense_spectrum(dW, W0)
    for key, value in ref.items():
        assert math.isclose(getattr(got, key), value, rel_tol=1e-8), key
    k = got.singular_values.numel()
    assert torch.allclose(got.singular_values, torch.linalg.svdvals(dW)[:k], atol=1e-10 * float(ref["delta_norm"]))


def test_doubling_scale_doubles_delta_norm():
    A, B = _rand(4, 20), _rand(12, 4, seed=1)
    one, two = update_spectrum(A, B, 1.5, 1.0), update_spectrum(A, B, 3.0, 1.0)
    assert math.isclose(two.delta_norm, 2 * one.delta_norm, rel_tol=1e-12)
    assert math.isclose(two.stable_rank, one.stable_rank, rel_tol=1e-9)


def test_zero_update_reports_zeros_and_none():
    A = _rand(4, 20)
    got = update_spectrum(A, torch.zeros(12, 4, dtype=torch.float64), 2.0, 3.0)
    assert got.delta_norm == 0.0 and got.delta_rel == 0.0
    assert got.stable_rank is None and got.effective_rank is None
    # PiSSA-style non-zero init, nothing learned yet: dW = s (B A - B0 A0) is numerically zero.
    B = _rand(12, 4, seed=1)
    got = update_spectrum(A, B, 2.0, 3.0, A.clone(), B.clone())
    assert got.stable_rank is None and got.delta_norm == 0.0
    assert update_spectrum(A, B, 2.0, 0.0).delta_rel is None


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 25), n=st.integers(1, 25), r=st.integers(1, 6), s=st.floats(0.01, 50.0),
       seed=st.integers(0, 1000), step=st.floats(1e-4, 1.0))
def test_step_split_equals_dense_difference(m, n, r, s, seed, step):
    A, B = _rand(r, n, seed=seed), _rand(m, r, seed=seed + 1)
    dA, dB = step * _rand(r, n, seed=seed + 2), step * _rand(m, r, seed=seed + 3)
    W0 = _rand(m, n, seed=seed + 4)
    got = step_split(A, B, A + dA, B + dB, s, float(torch.linalg.matrix_norm(W0)))
    S = s * (dB @ A + B @ dA)
    D = s * (dB @ dA)
    dense_diff = s * ((B + dB) @ (A + dA) - B @ A)
    assert torch.allclose(S + D, dense_diff, atol=1e-10)
    assert math.isclose(got.signal_norm, float(torch.linalg.matrix_norm(S)), rel_tol=1e-7, abs_tol=1e-12)
    assert math.isclose(got.drift_norm, float(torch.linalg.matrix_norm(D)), rel_tol=1e-7, abs_tol=1e-12)
    assert math.isclose(got.update_norm, float(torch.linalg.matrix_norm(dense_diff)), rel_tol=1e-7, abs_tol=1e-12)
    assert math.isclose(got.step_size, float(torch.linalg.matrix_norm(dense_diff) / torch.linalg.matrix_norm(W0)),
                        rel_tol=1e-7, abs_tol=1e-12)
    assert math.isclose(got.drift_ratio, got.drift_norm / got.signal_norm, rel_tol=1e-12)


def test_drift_ratio_is_invariant_to_scale_for_fixed_step():
    A, B = _rand(4, 30), _rand(20, 4, seed=1)
    dA, dB = 0.01 * _rand(4, 30, seed=2), 0.01 * _rand(20, 4, seed=3)
    one = step_split(A, B, A + dA, B + dB, 1.0, 1.0)
    two = step_split(A, B, A + dA, B + dB, 2.0, 1.0)
    assert math.isclose(one.drift_ratio, two.drift_ratio, rel_tol=1e-12)
    assert math.isclose(two.step_size, 2 * one.step_size, rel_tol=1e-12)


def test_step_split_float32_is_accurate_for_small_steps():
    A, B = _rand(8, 512, dtype=torch.float32), _rand(512, 8, seed=1, dtype=torch.float32)
    dA, dB = 1e-4 * _rand(8, 512, seed=2, dtype=torch.float32), 1e-4 * _rand(512, 8, seed=3, dtype=torch.float32)
    got = step_split(A, B, A + dA, B + dB, 2.0, 1.0)
    An, Bn = (A + dA).double(), (B + dB).double()
    ref = float(torch.linalg.matrix_norm(2.0 * (Bn @ An - B.double() @ A.double())))
    assert math.isclose(got.update_norm, ref, rel_tol=1e-5)


def test_step_split_degenerate_and_bad_input():
    A, B = torch.zeros(3, 5), torch.zeros(4, 3)
    got = step_split(A, B, A, B, 1.0, 1.0)
    assert got.signal_norm == 0.0 and got.drift_ratio is None and got.step_size == 0.0
    got = step_split(A, B, A + 1, B + 1, 1.0, 0.0)  # S = 0 (A = B = 0), D != 0: ratio undefined
    assert got.drift_ratio is None and got.drift_norm > 0 and got.step_size is None
    with pytest.raises(ValueError, match=r"A_next has shape \(3, 6\)"):
        step_split(A, B, torch.zeros(3, 6), B, 1.0, 1.0)
    with pytest.raises(ValueError, match="do not chain"):
        step_split(A, torch.zeros(4, 2), A, torch.zeros(4, 2), 1.0, 1.0)
    with pytest.raises(NonFiniteError, match="B_next"):
        step_split(A, B, A, B + float("inf"), 1.0, 1.0)
    with pytest.raises(NonFiniteError, match="scale"):
        step_split(A, B, A, B, float("nan"), 1.0)


def test_a_scale_that_overflows_the_factor_dtype_is_non_finite_not_a_linalg_error():
    """Found by the hostile-input property test: s = float32 max rounds to inf in float32, and
    inf * 0 is NaN inside s B; one NonFiniteError (a ValueError), not a LinAlgError."""
    import torch

    from signaldrift import update_spectrum
    from signaldrift.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match="scaled_factor holds non-finite values"):
        update_spectrum(torch.tensor([[1.541]]), torch.tensor([[-0.0]]), 3.4028235677973366e38, 1.0)
