"""BatchedStep.measure against dense references built from docs/metrics.md §1 and §3: every field of
every layer, on the Gram route and the exact route, with loss scales other than 1, several top-k,
singular vectors, and layers of different shapes in one call."""
import math

import pytest
import torch

from signaldrift.batched import BatchedStep, LayerState


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense(ly: LayerState, top_k):
    d = torch.float64
    A, B, s = ly.A.to(d), ly.B.to(d), ly.scale
    dW = s * B @ A if ly.B0 is None else s * (B @ A - ly.B0.to(d) @ ly.A0.to(d))
    U, S, Vh = torch.linalg.svd(dW)
    r = A.shape[0]
    R = min(r if ly.B0 is None else 2 * r, *dW.shape)  # dW's rank is at most r, or 2r with a snapshot
    S = S[:R]
    delta = float(torch.linalg.matrix_norm(dW))
    p = S / S.sum()
    p = p[p > 0]
    out = dict(delta_norm=delta, delta_rel=delta / ly.base_norm if ly.base_norm > 0 else None,
               stable_rank=delta**2 / float(S[0]) ** 2, effective_rank=math.exp(float(-(p * p.log()).sum())),
               S=S, U=U[:, :R], V=Vh[:R].T)
    if ly.grad_A is not None:
        rank = int((S > max(dW.shape) * torch.finfo(d).eps * S[0]).sum())
        k = min(top_k if top_k is not None else r, rank)
        gA, gB = ly.grad_A.to(d) / ly.grad_scale, ly.grad_B.to(d) / ly.grad_scale
        g = s * (gB @ A + B @ gA)
        sig = U[:, :k] @ U[:, :k].T @ g @ Vh[:k].T @ Vh[:k]
        gn, sn, dn = (float(torch.linalg.matrix_norm(x)) for x in (g, sig, g - sig))
        out.update(k=k, grad_norm=gn, signal_norm=sn, drift_norm=dn, grad_alignment=sn**2 / gn**2,
                   grad_drift_ratio=dn / sn)
    return out


def _check(res, ref, rel):
    sp = res.spectrum
    for f in ("delta_norm", "delta_rel", "stable_rank", "effective_rank"):
        assert getattr(sp, f) == pytest.approx(ref[f], rel=rel), f
    assert torch.allclose(sp.singular_values.double(), ref["S"], rtol=rel, atol=rel * float(ref["S"][0]))
    if "k" in ref:
        g = res.grad
        assert g.k == ref["k"]
        for f in ("grad_norm", "signal_norm", "drift_norm", "grad_alignment", "grad_drift_ratio"):
            assert getattr(g, f) == pytest.approx(ref[f], rel=rel), f
    else:
        assert res.grad is None


def _layers(dtype=torch.float64):
    shapes = [(9, 3, 7), (6, 2, 11), (5, 4, 8)]
    out = []
    for i, (m, r, n) in enumerate(shapes):
        gs = [1.0, 256.0, 65536.0][i]
        out.append(LayerState(_rand(r, n, seed=10 * i + 1, dtype=dtype), _rand(m, r, seed=10 * i + 2, dtype=dtype),
                              [0.5, 2.0, 1.25][i], [3.0, 0.7, 12.0][i],
                              _rand(r, n, seed=10 * i + 3, dtype=dtype) * gs,
                              _rand(m, r, seed=10 * i + 4, dtype=dtype) * gs, grad_scale=gs))
    return out


@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_gram_route_every_field_against_dense_with_loss_scales(top_k):
    layers = _layers()
    step = BatchedStep.measure(layers, top_k=top_k)
    assert step.exact_layers == 0
    for ly, res in zip(layers, step.results):
        assert res.exact is False and res.nonfinite is False
        _check(res, _dense(ly, top_k), 1e-9)


def test_gram_route_float32_inputs_and_float32_grams():
    layers = _layers(torch.float32)
    for gram_dtype, rel in ((torch.float64, 1e-5), (torch.float32, 1e-3)):
        for ly, res in zip(layers, BatchedStep.measure(layers, gram_dtype=gram_dtype).results):
            _check(res, _dense(ly, None), rel)


def test_singular_vectors_span_the_dense_ones():
    layers = _layers()
    for ly, res in zip(layers, BatchedStep.measure(layers, vectors=True).results):
        ref = _dense(ly, None)
        U, V = res.spectrum.svd.U.double(), res.spectrum.svd.V.double()
        assert U.shape == ref["U"].shape and V.shape == ref["V"].shape
        # the same singular vectors up to sign, and U diag(S) V^T is dW
        signs = (U * ref["U"]).sum(0).sign()
        assert torch.allclose(U * signs, ref["U"], atol=1e-9)
        assert torch.allclose(V * signs, ref["V"], atol=1e-9)
        dW = ly.scale * ly.B @ ly.A
        assert torch.allclose(U @ torch.diag(res.spectrum.svd.S.double()) @ V.T, dW, atol=1e-10)
    for res in BatchedStep.measure(layers).results:
        assert res.spectrum.svd.U is None and res.spectrum.svd.V is None


def test_exact_route_with_snapshot_and_loss_scale_against_dense():
    m, r, n = 8, 3, 6
    A0, B0 = _rand(r, n, seed=40), _rand(m, r, seed=41)
    ly = LayerState(A0 + 0.2 * _rand(r, n, seed=42), B0 + 0.2 * _rand(m, r, seed=43), 0.75, 4.0,
                    _rand(r, n, seed=44) * 512, _rand(m, r, seed=45) * 512, A0=A0, B0=B0, grad_scale=512.0)
    plain = _layers()[1]
    for top_k in (None, 2):
        a, b = BatchedStep.measure([ly, plain], top_k=top_k).results
        assert a.exact is True and b.exact is False
        _check(a, _dense(ly, top_k), 1e-9)
        _check(b, _dense(plain, top_k), 1e-9)


def test_rank_deficient_update_limits_k_to_the_numerical_rank():
    m, r, n = 7, 3, 6
    B = _rand(m, 2, seed=50) @ _rand(2, r, seed=51)  # dW of rank 2
    ly = LayerState(_rand(r, n, seed=52), B, 1.5, 2.0, _rand(r, n, seed=53), _rand(m, r, seed=54))
    (res,) = BatchedStep.measure([ly]).results
    ref = _dense(ly, None)
    assert ref["k"] == 2 and res.grad.k == 2
    assert res.grad.grad_alignment == pytest.approx(ref["grad_alignment"], rel=1e-8)
    assert res.spectrum.delta_norm == pytest.approx(ref["delta_norm"], rel=1e-10)


def test_a_tiny_update_is_measured_not_called_zero():
    m, r, n = 6, 2, 5
    ly = LayerState(_rand(r, n, seed=60) * 1e-6, _rand(m, r, seed=61) * 1e-6, 1.0, 1.0,
                    _rand(r, n, seed=62), _rand(m, r, seed=63))
    (res,) = BatchedStep.measure([ly]).results
    ref = _dense(ly, None)
    assert res.spectrum.delta_norm == pytest.approx(ref["delta_norm"], rel=1e-9)
    assert res.spectrum.stable_rank == pytest.approx(ref["stable_rank"], rel=1e-9)
    assert res.grad.grad_alignment == pytest.approx(ref["grad_alignment"], rel=1e-8)


def test_singular_vectors_of_float32_layers():
    layers = _layers(torch.float32)
    for ly, res in zip(layers, BatchedStep.measure(layers, vectors=True).results):
        U, V, S = res.spectrum.svd.U.double(), res.spectrum.svd.V.double(), res.spectrum.svd.S.double()
        dW = ly.scale * ly.B.double() @ ly.A.double()
        assert torch.allclose(U @ torch.diag(S) @ V.T, dW, rtol=0, atol=1e-5 * float(S[0]))
        assert torch.allclose(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), atol=1e-5)
