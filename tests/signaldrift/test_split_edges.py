"""grad_split and step_split at their edges: each non-finite input is found and named, each shape
mismatch names both tensors, float32 inputs mixed with one float64 input are computed in float64
(against float64 dense references from docs/metrics.md §2-§3), and an SVD with no singular values."""
import pytest
import torch

from signaldrift.errors import NonFiniteError
from signaldrift.grad_split import equivalent_gradient_factors, grad_split
from signaldrift.lowrank import LowRankSVD
from signaldrift.step_split import step_split

M, R, N = 6, 2, 5


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _grad_inputs(dtype=torch.float32):
    return dict(A=_rand(R, N, seed=1, dtype=dtype), B=_rand(M, R, seed=2, dtype=dtype),
                grad_A=_rand(R, N, seed=3, dtype=dtype), grad_B=_rand(M, R, seed=4, dtype=dtype))


def _dense_grad(A, B, gA, gB, s, k):
    d = torch.float64
    A, B, gA, gB = (t.to(d) for t in (A, B, gA, gB))
    U, S, Vh = torch.linalg.svd(s * B @ A)
    g = s * (gB @ A + B @ gA)
    sig = U[:, :k] @ U[:, :k].T @ g @ Vh[:k].T @ Vh[:k]
    return float(torch.linalg.matrix_norm(sig)), float(torch.linalg.matrix_norm(g))


@pytest.mark.parametrize("wide", ["A", "B", "grad_A", "grad_B"])
def test_grad_split_with_one_float64_input_is_float64(wide):
    x = _grad_inputs()
    x[wide] = x[wide].double()
    L, Rf = equivalent_gradient_factors(x["A"], x["B"], x["grad_A"], x["grad_B"], 1.5)
    assert L.dtype == Rf.dtype == torch.float64 and L.shape == (M, 2 * R) and Rf.shape == (2 * R, N)
    g = 1.5 * (x["grad_B"].double() @ x["A"].double() + x["B"].double() @ x["grad_A"].double())
    assert torch.allclose(L @ Rf, g, rtol=0, atol=1e-13)
    res = grad_split(x["A"], x["B"], x["grad_A"], x["grad_B"], 1.5, top_k=1)
    sig, tot = _dense_grad(x["A"], x["B"], x["grad_A"], x["grad_B"], 1.5, 1)
    # the subspace (and the split) follow dW's factors: float32 when A and B are
    rel = 1e-12 if wide in ("A", "B") else 1e-5
    assert res.grad_norm == pytest.approx(tot, rel=rel)
    assert res.signal_norm == pytest.approx(sig, rel=rel)
    assert res.grad_alignment == pytest.approx(sig**2 / tot**2, rel=rel)


@pytest.mark.parametrize("name", ["A", "B", "grad_A", "grad_B", "A0", "B0"])
def test_grad_split_names_the_non_finite_input(name):
    x = _grad_inputs(torch.float64)
    x["A0"], x["B0"] = _rand(R, N, seed=5), _rand(M, R, seed=6)
    x[name] = x[name].clone()
    x[name][0, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=f"^{name} holds"):
        grad_split(x["A"], x["B"], x["grad_A"], x["grad_B"], 1.0, A0=x["A0"], B0=x["B0"])


def test_grad_split_shape_messages():
    x = _grad_inputs(torch.float64)
    with pytest.raises(ValueError, match=r"^grad_A has shape \(2, 4\) but A has shape \(2, 5\); they must match$"):
        grad_split(x["A"], x["B"], x["grad_A"][:, :4], x["grad_B"], 1.0)
    with pytest.raises(ValueError, match=r"^grad_B has shape \(5, 2\) but B has shape \(6, 2\); they must match$"):
        grad_split(x["A"], x["B"], x["grad_A"], x["grad_B"][:5], 1.0)


def test_grad_split_top_k_must_be_a_positive_int():
    x = _grad_inputs(torch.float64)
    for bad in (0, -1, True, 1.0, "2"):
        with pytest.raises(ValueError):
            grad_split(x["A"], x["B"], x["grad_A"], x["grad_B"], 1.0, top_k=bad)
    assert grad_split(x["A"], x["B"], x["grad_A"], x["grad_B"], 1.0, top_k=5).k == R  # capped at the rank


def test_grad_split_honours_a_given_svd():
    x = _grad_inputs(torch.float64)
    empty = LowRankSVD(U=torch.zeros(M, 0, dtype=torch.float64), S=torch.zeros(0, dtype=torch.float64),
                       V=torch.zeros(N, 0, dtype=torch.float64))
    assert grad_split(x["A"], x["B"], x["grad_A"], x["grad_B"], 1.0, svd=empty) is None
    # a one-direction SVD (S[0] = 1): the split uses it, with k = 1
    U, S, Vh = torch.linalg.svd(x["B"] @ x["A"])
    one = LowRankSVD(U=U[:, :1], S=torch.ones(1, dtype=torch.float64), V=Vh[:1].T)
    res = grad_split(x["A"], x["B"], x["grad_A"], x["grad_B"], 1.0, svd=one)
    sig, tot = _dense_grad(x["A"], x["B"], x["grad_A"], x["grad_B"], 1.0, 1)
    assert res.k == 1 and res.signal_norm == pytest.approx(sig, rel=1e-12)
    assert res.grad_alignment == pytest.approx(sig**2 / tot**2, rel=1e-12)


def test_grad_alignment_is_one_for_a_gradient_inside_the_subspace():
    A, B = _rand(R, N, seed=7), _rand(M, R, seed=8)
    # g = s (gB A + B gA) = c B A: inside span(U) x span(V), so the alignment is exactly 1
    res = grad_split(A, B, 0.5 * A, 0.5 * B, 2.0)
    assert res.grad_alignment == pytest.approx(1.0, abs=1e-12) and res.grad_alignment <= 1.0


# ----------------------------------------------------------------- step_split
def _step_inputs(dtype=torch.float32):
    A, B = _rand(R, N, seed=11, dtype=dtype), _rand(M, R, seed=12, dtype=dtype)
    return dict(A_prev=A, B_prev=B, A_next=A + 0.1 * _rand(R, N, seed=13, dtype=dtype),
                B_next=B + 0.1 * _rand(M, R, seed=14, dtype=dtype))


def _dense_step(x, s, base):
    d = torch.float64
    A, B, An, Bn = (x[k].to(d) for k in ("A_prev", "B_prev", "A_next", "B_next"))
    dA, dB = An - A, Bn - B
    S = s * (dB @ A + B @ dA)
    D = s * dB @ dA
    n = lambda t: float(torch.linalg.matrix_norm(t))  # noqa: E731
    return dict(signal_norm=n(S), drift_norm=n(D), drift_ratio=n(D) / n(S), update_norm=n(S + D),
                step_size=n(S + D) / base)


@pytest.mark.parametrize("wide", [None, "A_prev", "B_prev", "A_next", "B_next"])
def test_step_split_with_one_float64_input_is_float64(wide):
    x = _step_inputs()
    if wide is not None:
        x[wide] = x[wide].double()
    res = step_split(x["A_prev"], x["B_prev"], x["A_next"], x["B_next"], 1.5, 4.0)
    ref = _dense_step(x, 1.5, 4.0)
    rel = 1e-12 if wide is not None else 1e-5  # all float32: differences taken in float32
    for f, v in ref.items():
        assert getattr(res, f) == pytest.approx(v, rel=rel), f


@pytest.mark.parametrize("name", ["A_prev", "B_prev", "A_next", "B_next"])
def test_step_split_names_the_non_finite_input(name):
    x = _step_inputs(torch.float64)
    x[name] = x[name].clone()
    x[name][1, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=f"^{name} holds"):
        step_split(x["A_prev"], x["B_prev"], x["A_next"], x["B_next"], 1.0, 1.0)


def test_step_split_shape_messages():
    x = _step_inputs(torch.float64)
    with pytest.raises(ValueError, match=r"^A_next has shape \(2, 4\) but A_prev has shape \(2, 5\); they must match$"):
        step_split(x["A_prev"], x["B_prev"], x["A_next"][:, :4], x["B_next"], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^B_next has shape \(5, 2\) but B_prev has shape \(6, 2\); they must match$"):
        step_split(x["A_prev"], x["B_prev"], x["A_next"], x["B_next"][:5], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^prev A must be a 2-D matrix"):
        step_split(x["A_prev"][0], x["B_prev"], x["A_next"], x["B_next"], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^factor shapes do not chain: prev B is \(6, 2\) and prev A is \(3, 5\)"):
        step_split(_rand(3, N), x["B_prev"], _rand(3, N), x["B_next"], 1.0, 1.0)
