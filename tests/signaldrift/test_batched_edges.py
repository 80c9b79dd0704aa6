"""signaldrift.batched at its edges: which route each layer takes, the flags of each result, the
exact route's dtype and loss-scale handling against dense definitions, and the messages of refused input."""
import math

import pytest
import torch

from signaldrift.batched import BatchedStep, LayerState


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense(ly, k):
    d = torch.float64
    A, B, s = ly.A.to(d), ly.B.to(d), ly.scale
    dW = s * B @ A if ly.B0 is None else s * (B @ A - ly.B0.to(d) @ ly.A0.to(d))
    U, S, Vh = torch.linalg.svd(dW)
    gA, gB = ly.grad_A.to(d) / ly.grad_scale, ly.grad_B.to(d) / ly.grad_scale
    g = s * (gB @ A + B @ gA)
    sig = U[:, :k] @ U[:, :k].T @ g @ Vh[:k].T @ Vh[:k]
    return float(torch.linalg.matrix_norm(dW)), float((sig**2).sum() / (g**2).sum())


def test_exact_route_reads_float32_inputs_in_float64_and_divides_by_the_loss_scale():
    f = torch.float32
    m, r, n = 9, 3, 7
    B0, A0 = _rand(m, r, seed=1, dtype=f), _rand(r, n, seed=2, dtype=f)
    ly = LayerState(A0 + 0.1 * _rand(r, n, seed=3, dtype=f), B0 + 0.1 * _rand(m, r, seed=4, dtype=f), 1.5, 5.0,
                    _rand(r, n, seed=5, dtype=f) * 1024, _rand(m, r, seed=6, dtype=f) * 1024, A0=A0, B0=B0,
                    grad_scale=1024.0)
    res = BatchedStep.measure([ly]).results[0]
    assert res.exact is True and res.nonfinite is False
    delta, align = _dense(ly, r)
    assert res.spectrum.delta_norm == pytest.approx(delta, rel=1e-12)
    assert res.grad.grad_alignment == pytest.approx(align, rel=1e-10)
    assert res.grad.k == r


def test_routes_and_flags():
    m, r, n = 9, 3, 7
    well = LayerState(_rand(r, n, seed=1), _rand(m, r, seed=2), 0.5, 2.0, _rand(r, n, seed=3), _rand(m, r, seed=4))
    Bdef = _rand(m, 1, seed=5) @ _rand(1, r, seed=6)  # B^T B singular: exact route
    ill = LayerState(_rand(r, n, seed=7), Bdef, 0.5, 2.0, _rand(r, n, seed=8), _rand(m, r, seed=9))
    Ain = _rand(r, n, seed=10)  # g_A inside span(A^T): exact route
    inspan = LayerState(Ain, _rand(m, r, seed=11), 0.5, 2.0, _rand(r, r, seed=12) @ Ain, _rand(m, r, seed=13))
    res = BatchedStep.measure([well, ill, inspan]).results
    assert [x.exact for x in res] == [False, True, True]
    assert all(x.nonfinite is False for x in res)
    for ly, x in zip([well, ill, inspan], res):
        delta, align = _dense(ly, min(r, 1 if ly is ill else r))
        assert x.spectrum.delta_norm == pytest.approx(delta, rel=1e-10)
        assert x.grad.grad_alignment == pytest.approx(align, rel=1e-8)
    assert BatchedStep.measure([well, ill, inspan]).exact_layers == 2


def test_non_finite_on_each_route():
    m, r, n = 9, 3, 7
    B0, A0 = _rand(m, r, seed=1), _rand(r, n, seed=2)
    gA = _rand(r, n, seed=3)
    gA[0, 0] = float("nan")
    A0bad = A0.clone()
    A0bad[1, 1] = float("nan")  # the snapshot is not in the Gram matrices: the exact route finds it
    exact = LayerState(A0 + 0.1, B0 + 0.1, 1.0, 1.0, _rand(r, n, seed=9), _rand(m, r, seed=4), A0=A0bad, B0=B0)
    fast = LayerState(_rand(r, n, seed=5), _rand(m, r, seed=6), 1.0, 1.0, gA, _rand(m, r, seed=7))
    a, b = BatchedStep.measure([exact, fast]).results
    assert (a.spectrum, a.grad, a.nonfinite, a.exact) == (None, None, True, True)
    assert (b.spectrum, b.grad, b.nonfinite, b.exact) == (None, None, True, False)


def test_zero_scale_and_zero_base_norm():
    m, r, n = 9, 3, 7
    zero = LayerState(_rand(r, n, seed=1), _rand(m, r, seed=2), 0.0, 2.0, _rand(r, n, seed=3), _rand(m, r, seed=4))
    nobase = LayerState(_rand(r, n, seed=5), _rand(m, r, seed=6), 0.5, 0.0, _rand(r, n, seed=7), _rand(m, r, seed=8))
    z, nb = BatchedStep.measure([zero, nobase]).results
    assert z.spectrum.delta_norm == 0.0 and z.spectrum.delta_rel == 0.0 and z.grad is None and z.exact is False
    assert z.nonfinite is False and z.spectrum.stable_rank is None
    assert nb.spectrum.delta_rel is None and nb.spectrum.delta_norm > 0 and nb.grad is not None
    nozero = LayerState(torch.zeros(r, n), torch.zeros(m, r), 1.0, 0.0)
    x = BatchedStep.measure([nozero]).results[0]
    assert x.spectrum.delta_norm == 0.0 and x.spectrum.delta_rel is None and x.exact is False


def test_step_results():
    m, r, n = 6, 2, 5
    ly = LayerState(_rand(r, n, seed=1), _rand(m, r, seed=2), 2.0, 0.0)
    batch = BatchedStep.measure([ly, ly])
    A1, B1 = ly.A + 0.01 * _rand(r, n, seed=3), ly.B + 0.01 * _rand(m, r, seed=4)
    moved, still = batch.step_splits([(A1, B1), (ly.A, ly.B)])
    assert moved.updated is True and moved.nonfinite is False and moved.split.step_size is None  # no base norm
    S = 2.0 * ((B1 - ly.B) @ ly.A + ly.B @ (A1 - ly.A))
    assert moved.split.signal_norm == pytest.approx(float(torch.linalg.matrix_norm(S)), rel=1e-10)
    assert (still.split, still.updated, still.nonfinite) == (None, False, False)


@pytest.mark.parametrize("make, msg", [
    (lambda ly: ([ly], dict(top_k=True)), "top_k must be a positive int or None, got True"),
    (lambda ly: ([ly], dict(gram_dtype=torch.float16)),
     "gram_dtype must be torch.float32 or torch.float64, got torch.float16"),
    (lambda ly: ([LayerState(ly.A, ly.B, 1.0, 1.0, ly.grad_A)], {}), "grad_A and grad_B must both be given or both be None"),
    (lambda ly: ([LayerState(ly.A, ly.B, 1.0, 1.0, A0=ly.A)], {}), "A0 and B0 must both be given or both be None"),
    (lambda ly: ([LayerState(ly.A, ly.B, 1.0, 1.0, A0=ly.A, B0=ly.B.T)], {}),
     "B0 has shape (3, 9) but B has shape (9, 3); they must match"),
    (lambda ly: ([LayerState(ly.A, ly.B, 1.0, 1.0, A0=ly.A.T, B0=ly.B)], {}),
     "A0 has shape (7, 3) but A has shape (3, 7); they must match"),
    (lambda ly: ([LayerState(ly.A, ly.B, 1.0, 1.0, ly.grad_A.T, ly.grad_B)], {}),
     "grad_A has shape (7, 3) but A has shape (3, 7); they must match"),
    (lambda ly: ([LayerState(ly.A, ly.B, 1.0, 1.0, grad_scale=0.0)], {}),
     "grad_scale must be a positive finite number, got 0.0"),
    (lambda ly: ([LayerState(ly.A, ly.B, 1.0, 1.0, grad_scale=True)], {}),
     "grad_scale must be a positive finite number, got True"),
    (lambda ly: ([LayerState(ly.A, ly.B, 1.0, 1.0, grad_scale=math.inf)], {}),
     "grad_scale must be a positive finite number, got inf"),
    (lambda ly: ([LayerState(ly.A, ly.B, 1.0, -1.0)], {}), "base_norm must be >= 0, got -1.0"),
])
def test_refused_input_messages(make, msg):
    m, r, n = 9, 3, 7
    ly = LayerState(_rand(r, n, seed=1), _rand(m, r, seed=2), 1.0, 1.0, _rand(r, n, seed=3), _rand(m, r, seed=4))
    layers, kw = make(ly)
    with pytest.raises(ValueError) as e:
        BatchedStep.measure(layers, **kw)
    assert str(e.value) == msg


def test_step_split_messages():
    m, r, n = 9, 3, 7
    ly = LayerState(_rand(r, n, seed=1), _rand(m, r, seed=2), 1.0, 1.0)
    batch = BatchedStep.measure([ly])
    with pytest.raises(ValueError) as e:
        batch.step_splits([])
    assert str(e.value) == "expected 1 (A_next, B_next) pairs, got 0"
    with pytest.raises(ValueError) as e:
        batch.step_splits([(ly.A, ly.B.T)])
    assert str(e.value) == "B_next has shape (3, 9) but B has shape (9, 3); they must match"
    with pytest.raises(ValueError) as e:
        batch.step_splits([(ly.A.T, ly.B)])
    assert str(e.value) == "A_next has shape (7, 3) but A has shape (3, 7); they must match"
