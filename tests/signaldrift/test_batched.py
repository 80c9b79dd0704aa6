"""Batched sections 1-3 (signaldrift.batched): equal to the per-layer functions and to dense definitions."""
import math

import pytest
import torch

from signaldrift import grad_split, step_split, update_spectrum
from signaldrift.batched import BatchedStep, LayerState


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense(ly: LayerState, k: int | None, A1=None, B1=None) -> dict:
    """Every metric from its definition, with (m, n) matrices formed (float64)."""
    d = torch.float64
    A, B, s = ly.A.to(d), ly.B.to(d), ly.scale
    dW = s * B @ A if ly.B0 is None else s * (B @ A - ly.B0.to(d) @ ly.A0.to(d))
    U, S, Vh = torch.linalg.svd(dW)
    out = {"delta_norm": float(torch.linalg.matrix_norm(dW)), "S": S[: A.shape[0]]}
    out["delta_rel"] = out["delta_norm"] / ly.base_norm
    if out["delta_norm"] > 1e-12:
        out["stable_rank"] = float((S**2).sum() / S[0] ** 2)
        p = S[S > 1e-12 * S[0]] / S[S > 1e-12 * S[0]].sum()
        out["effective_rank"] = math.exp(float(-(p * p.log()).sum()))
    if ly.grad_A is not None and k:
        gA, gB = ly.grad_A.to(d) / ly.grad_scale, ly.grad_B.to(d) / ly.grad_scale
        g = s * (gB @ A + B @ gA)
        Pu, Pv = U[:, :k] @ U[:, :k].T, Vh[:k].T @ Vh[:k]
        g_sig = Pu @ g @ Pv
        sig, drift = float(torch.linalg.matrix_norm(g_sig)), float(torch.linalg.matrix_norm(g - g_sig))
        out.update(grad_alignment=sig**2 / float((g * g).sum()), grad_drift_ratio=drift / sig, signal_norm=sig,
                   drift_norm=drift)
    if A1 is not None:
        dA, dB = A1.to(d) - A, B1.to(d) - B
        Sg, D = s * (dB @ A + B @ dA), s * dB @ dA
        out.update(step_signal=float(torch.linalg.matrix_norm(Sg)), step_drift=float(torch.linalg.matrix_norm(D)),
                   step_size=float(torch.linalg.matrix_norm(Sg + D)) / ly.base_norm)
    return out


def _layers(dtype=torch.float64):
    """Three shapes; a fresh B0 = 0 layer (dW = 0), a non-zero init, a rank-deficient B, a gradient inside
    span(B), a layer without gradients, an AMP-scaled gradient: the fast path and every exact route."""
    ls = []
    for i, (m, r, n) in enumerate([(9, 3, 7), (9, 3, 7), (9, 3, 7), (6, 2, 11), (6, 2, 11), (5, 4, 8)]):
        A, B = _rand(r, n, seed=10 * i, dtype=dtype), _rand(m, r, seed=10 * i + 1, dtype=dtype)
        gA, gB = _rand(r, n, seed=10 * i + 2, dtype=dtype), _rand(m, r, seed=10 * i + 3, dtype=dtype)
        ls.append(LayerState(A, B, 0.5 + 0.25 * i, 3.0 + i, gA, gB, grad_scale=1.0 if i != 4 else 8.0))
    m, r, n = 9, 3, 7
    A = _rand(r, n, seed=99, dtype=dtype)
    ls.append(LayerState(A, torch.zeros(m, r, dtype=dtype), 2.0, 4.0, _rand(r, n, seed=98, dtype=dtype),
                         _rand(m, r, seed=97, dtype=dtype)))  # B0 = 0 at fit start: dW = 0
    B0, A0 = _rand(m, r, seed=96, dtype=dtype), _rand(r, n, seed=95, dtype=dtype)
    ls.append(LayerState(A0 + 1e-3 * _rand(r, n, seed=94, dtype=dtype), B0 + 1e-3 * _rand(m, r, seed=93, dtype=dtype),
                         1.5, 5.0, _rand(r, n, seed=92, dtype=dtype), _rand(m, r, seed=91, dtype=dtype), A0=A0, B0=B0))
    ls.append(LayerState(A0.clone(), B0.clone(), 1.5, 5.0, _rand(r, n, seed=90, dtype=dtype),
                         _rand(m, r, seed=89, dtype=dtype), A0=A0, B0=B0))  # B0 != 0 and dW = 0
    Bdef = _rand(m, 1, seed=88, dtype=dtype) @ _rand(1, r, seed=87, dtype=dtype)  # rank 1
    ls.append(LayerState(_rand(r, n, seed=86, dtype=dtype), Bdef, 1.0, 2.0, _rand(r, n, seed=85, dtype=dtype),
                         _rand(m, r, seed=84, dtype=dtype)))
    Bin = _rand(m, r, seed=83, dtype=dtype)
    ls.append(LayerState(_rand(r, n, seed=82, dtype=dtype), Bin, 1.0, 2.0, _rand(r, n, seed=81, dtype=dtype),
                         Bin @ _rand(r, r, seed=80, dtype=dtype)))  # g_B inside span(B)
    ls.append(LayerState(_rand(r, n, seed=79, dtype=dtype), _rand(m, r, seed=78, dtype=dtype), 1.0, 2.0))
    return ls


def _after(ls, seed=0):
    """Factors after a step: every layer moves except the last one."""
    out = []
    for i, ly in enumerate(ls):
        if i == len(ls) - 1:
            out.append((ly.A.clone(), ly.B.clone()))
        else:
            out.append((ly.A + 0.01 * _rand(*ly.A.shape, seed=500 + i, dtype=ly.A.dtype),
                        ly.B + 0.01 * _rand(*ly.B.shape, seed=600 + i, dtype=ly.B.dtype)))
    return out


def _close(a, b, rel=1e-9, abs_=1e-12):
    if a is None or b is None:
        assert a is None and b is None, (a, b)
    else:
        assert math.isclose(a, b, rel_tol=rel, abs_tol=abs_), (a, b)


@pytest.mark.parametrize("top_k", [None, 1])
def test_equal_to_the_per_layer_functions_and_the_dense_definitions(top_k):
    ls = _layers()
    batch = BatchedStep.measure(ls, top_k=top_k)
    fast = [r.exact for r in batch.results]
    assert fast[:6] == [False] * 6 and fast[6] is False  # the Gram algebra, not the fallback, on plain layers
    assert fast[7] and fast[8] and fast[9] and fast[10]  # non-zero init (x2), rank-deficient B, g_B in span(B)
    after = _after(ls)
    steps = batch.step_splits(after)
    for i, (ly, res, st) in enumerate(zip(ls, batch.results, steps)):
        assert not res.nonfinite
        spec = update_spectrum(ly.A, ly.B, ly.scale, ly.base_norm, ly.A0, ly.B0)
        for f in ("delta_norm", "delta_rel", "stable_rank", "effective_rank"):
            _close(getattr(res.spectrum, f), getattr(spec, f))
        assert torch.allclose(res.spectrum.singular_values.double(), spec.singular_values.double(), rtol=1e-9, atol=1e-13)
        ref_split = None
        if ly.grad_A is not None:
            ref_split = grad_split(ly.A, ly.B, ly.grad_A / ly.grad_scale, ly.grad_B / ly.grad_scale, ly.scale,
                                   ly.A0, ly.B0, top_k=top_k, svd=spec.svd)
        if ref_split is None:
            assert res.grad is None, i
        else:
            assert res.grad.k == ref_split.k
            for f in ("grad_alignment", "grad_drift_ratio", "signal_norm", "drift_norm", "grad_norm"):
                _close(getattr(res.grad, f), getattr(ref_split, f), rel=1e-8, abs_=1e-10)
        dense = _dense(ly, res.grad.k if res.grad else None, *after[i])
        _close(res.spectrum.delta_norm, dense["delta_norm"], abs_=1e-10)
        for f in ("stable_rank", "effective_rank"):
            if f in dense:
                _close(getattr(res.spectrum, f), dense[f], rel=1e-8)
        if res.grad is not None:
            for f in ("grad_alignment", "grad_drift_ratio", "signal_norm", "drift_norm"):
                _close(getattr(res.grad, f), dense[f], rel=1e-8, abs_=1e-10)
        ref_step = step_split(ly.A, ly.B, *after[i], ly.scale, ly.base_norm)
        if i == len(ls) - 1:
            assert not st.updated and st.split is None
            continue
        assert st.updated and not st.nonfinite
        for f in ("signal_norm", "drift_norm", "drift_ratio", "step_size", "update_norm"):
            _close(getattr(st.split, f), getattr(ref_step, f))
        _close(st.split.signal_norm, dense["step_signal"])
        _close(st.split.drift_norm, dense["step_drift"])
        _close(st.split.step_size, dense["step_size"])


def test_zero_update_layers_report_no_gradient_split():
    ls = _layers()
    res = BatchedStep.measure(ls).results
    assert res[6].spectrum.delta_norm == 0.0 and res[6].spectrum.stable_rank is None and res[6].grad is None
    assert res[8].spectrum.numerically_zero and res[8].grad is None  # B0 != 0, nothing learned yet


def test_float32_factors_match_the_per_layer_path_in_float64():
    ls = _layers(torch.float32)[:6]
    batch = BatchedStep.measure(ls)
    d = torch.float64
    for ly, res in zip(ls, batch.results):
        A, B = ly.A.to(d), ly.B.to(d)
        spec = update_spectrum(A, B, ly.scale, ly.base_norm)
        ref = grad_split(A, B, ly.grad_A.to(d) / ly.grad_scale, ly.grad_B.to(d) / ly.grad_scale, ly.scale, svd=spec.svd)
        _close(res.spectrum.effective_rank, spec.effective_rank)
        _close(res.grad.grad_alignment, ref.grad_alignment, rel=1e-8)
    assert batch.step_splits([(ly.A, ly.B) for ly in ls])[0].updated is False


def test_singular_vectors_on_request():
    ly = _layers()[0]
    res = BatchedStep.measure([ly], vectors=True).results[0]
    svd = res.spectrum.svd
    assert torch.allclose(svd.U @ torch.diag(svd.S) @ svd.V.T, ly.scale * ly.B @ ly.A, atol=1e-12)
    assert torch.allclose(svd.U.T @ svd.U, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert BatchedStep.measure([ly]).results[0].spectrum.svd.U is None


def test_non_finite_layers_are_flagged_alone():
    ls = _layers()[:3]
    bad = LayerState(ls[1].A, ls[1].B, ls[1].scale, ls[1].base_norm, ls[1].grad_A.clone(), ls[1].grad_B)
    bad.grad_A[0, 0] = float("nan")
    res = BatchedStep.measure([ls[0], bad, ls[2]]).results
    assert [r.nonfinite for r in res] == [False, True, False]
    ref = BatchedStep.measure(ls).results
    assert res[2].grad.grad_alignment == ref[2].grad.grad_alignment
    after = _after(ls)
    after[0] = (after[0][0].clone(), after[0][1].clone())
    after[0][1][2, 1] = float("inf")
    steps = BatchedStep.measure(ls).step_splits(after)
    assert steps[0].nonfinite and steps[0].split is None and steps[1].split is not None


def test_bad_inputs_are_refused():
    ly = _layers()[0]
    with pytest.raises(ValueError, match="do not chain"):
        BatchedStep.measure([LayerState(ly.A, ly.B.T, 1.0, 1.0)])
    with pytest.raises(ValueError, match="grad_B"):
        BatchedStep.measure([LayerState(ly.A, ly.B, 1.0, 1.0, ly.grad_A, ly.grad_B.T)])
    with pytest.raises(ValueError, match="top_k"):
        BatchedStep.measure([ly], top_k=0)
    with pytest.raises(ValueError, match="expected 1"):
        BatchedStep.measure([ly]).step_splits([])


def test_float32_products_agree_to_about_1e_6():
    ls = _layers()[:6]
    fast, exact = BatchedStep.measure(ls, gram_dtype=torch.float32), BatchedStep.measure(ls)
    after = _after(ls)  # the last layer does not move
    for a, b, sa, sb in zip(fast.results, exact.results, fast.step_splits(after), exact.step_splits(after)):
        _close(a.spectrum.effective_rank, b.spectrum.effective_rank, rel=1e-5)
        _close(a.grad.grad_alignment, b.grad.grad_alignment, rel=1e-4)
        assert sa.updated == sb.updated
        if sb.split is not None:
            _close(sa.split.drift_ratio, sb.split.drift_ratio, rel=1e-4)
    with pytest.raises(ValueError, match="gram_dtype"):
        BatchedStep.measure(ls, gram_dtype=torch.float16)
