"""signaldrift.sharded and signaldrift.quantized in one process: the ZeRO-3 flat layout and its
reassembly, ||W||_F^2 from shards (a DTensor on a world of one, a ZeRO-3 stand-in), the gathered
layer states, and the quantized base weights' values and norms, all against dense definitions.

A second rank is simulated where a collective's result matters: ``all_reduce`` adds the other
rank's part, ``all_gather`` hands back every rank's partition. The multi-process runs are in
tests/callbacks/test_sharded.py (slow)."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from signaldrift import sharded
from signaldrift.batched import LayerState
from signaldrift.quantized import dequantize, is_quantized
from tests.conftest import install_fake_module


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _sq(t: torch.Tensor) -> float:
    return math.fsum(float(x) ** 2 for x in t.detach().double().reshape(-1))


# ----------------------------------------------------------------- ZeRO-3 flat layout
def test_flat_partition_is_the_zero_padded_flat_tensor_split_evenly():
    t = _rand(2, 5, seed=1)  # 10 numbers over 3 ranks: parts of 4, 2 zeros of padding
    flat = torch.cat([t.reshape(-1), torch.zeros(2, dtype=t.dtype)])
    parts = [sharded.flat_partition(t, rank, 3) for rank in range(3)]
    for rank, part in enumerate(parts):
        assert part.dtype == torch.float64 and part.shape == (4,)
        assert torch.equal(part, flat[4 * rank:4 * (rank + 1)])
    # even split, one part per rank
    parts2 = [sharded.flat_partition(t, rank, 2) for rank in range(2)]
    assert torch.equal(parts2[0], t.reshape(-1)[:5]) and torch.equal(parts2[1], t.reshape(-1)[5:])


def test_gather_flat_partitions_reassembles_the_tensor(monkeypatch):
    t = _rand(3, 4, seed=2, dtype=torch.float32)  # 12 numbers over 5 ranks: parts of 3, 3 of padding
    world, group = 5, object()
    parts = [sharded.flat_partition(t, rank, world) for rank in range(world)]
    seen = []

    def all_gather(out, tensor, group=None):
        seen.append(group)
        assert torch.equal(tensor, parts[1])  # this rank's partition is what is sent
        for o, p in zip(out, parts):
            o.copy_(p)

    monkeypatch.setattr(dist, "get_world_size", lambda g=None: seen.append(g) or world)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    got = sharded.gather_flat_partitions(parts[1], t.shape, group=group)
    assert torch.equal(got, t)
    assert seen == [group, group]  # the collective runs over the group asked for


# ----------------------------------------------------------------- ||W||_F^2 from shards
def test_sharded_sq_norm_of_a_plain_tensor_is_summed_in_float64():
    W = torch.tensor([[1.0e4, 1.0e-1], [3.0, -2.5e-3]], dtype=torch.float32)
    ref = _sq(W)
    assert sharded.sharded_sq_norm(W) == pytest.approx(ref, rel=1e-15)
    assert sharded.base_weight_norm(W) == pytest.approx(math.sqrt(ref), rel=1e-15)
    assert not sharded.is_sharded(W) and not sharded.is_dtensor(W) and not sharded.is_zero3(W)


def _zero3(t, world, rank):
    return SimpleNamespace(ds_tensor=sharded.flat_partition(t, rank, world), ds_status="NOT_AVAILABLE",
                           shape=t.shape)


def test_sharded_sq_norm_of_a_zero3_parameter_all_reduces_the_local_sums(monkeypatch):
    W = _rand(3, 5, seed=3, dtype=torch.float32)
    p0, p1 = _zero3(W, 2, 0), _zero3(W, 2, 1)
    other = float((p1.ds_tensor.double() ** 2).sum())
    group, seen = object(), []

    def all_reduce(t, group=None):
        seen.append(group)
        assert t.dtype == torch.float64
        t += other  # the other rank's part

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    assert sharded.is_zero3(p0) and sharded.is_sharded(p0) and not sharded.is_dtensor(p0)
    assert sharded.sharded_sq_norm(p0, group=group) == pytest.approx(_sq(W), rel=1e-12)
    assert seen == [group]


def test_zero3_needs_both_attributes():
    assert not sharded.is_zero3(SimpleNamespace(ds_tensor=torch.zeros(2)))
    assert not sharded.is_zero3(SimpleNamespace(ds_status="AVAILABLE"))
    assert not sharded.is_sharded(SimpleNamespace(ds_status="AVAILABLE"))


@pytest.fixture
def world_of_one():
    pytest.importorskip("torch.distributed.tensor")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_dtensor_norm_and_gather_on_a_world_of_one(world_of_one, monkeypatch):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    W = _rand(4, 3, seed=4, dtype=torch.float32)
    shard = distribute_tensor(W, world_of_one, [Shard(0)])
    repl = distribute_tensor(W, world_of_one, [Replicate()])
    assert sharded.is_dtensor(shard) and sharded.is_sharded(shard) and not sharded.is_zero3(shard)
    full = sharded.gather_full(shard)
    assert type(full) is torch.Tensor and torch.equal(full, W)
    assert sharded.sharded_sq_norm(shard) == pytest.approx(_sq(W), rel=1e-12)
    # a simulated second rank holding the same shard: a sharded dimension is summed over, a
    # replicated one is not (it holds the same numbers on each rank)
    seen = []

    def all_reduce(t, group=None):
        seen.append(group)
        assert t.dtype == torch.float64
        t *= 2

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    assert sharded.sharded_sq_norm(shard) == pytest.approx(2 * _sq(W), rel=1e-12)
    assert seen == [world_of_one.get_group(0)]
    assert sharded.sharded_sq_norm(repl) == pytest.approx(_sq(W), rel=1e-12)
    assert len(seen) == 1
    assert sharded.base_weight_norm(repl) == pytest.approx(math.sqrt(_sq(W)), rel=1e-12)


# ----------------------------------------------------------------- gathering through DeepSpeed's API
def _install_fake_deepspeed(monkeypatch, params: dict, grads: dict) -> list:
    calls = []
    install_fake_module(monkeypatch, "deepspeed.utils",
                        safe_get_full_fp32_param=lambda p: calls.append(("param", p)) or params[id(p)],
                        safe_get_full_grad=lambda p: calls.append(("grad", p)) or grads[id(p)])
    return calls


def test_gather_full_plain_zero2_and_zero3(monkeypatch):
    t = _rand(2, 3, seed=5)
    assert sharded.gather_full(None) is None
    p = torch.nn.Parameter(t.clone())
    got = sharded.gather_full(p)
    assert torch.equal(got, t) and not got.requires_grad
    assert torch.equal(sharded.gather_full(p, grad_of=p), t)  # a plain parameter: t itself

    z3 = _zero3(t, 2, 0)
    z2 = SimpleNamespace(ds_id=7)  # ZeRO-2: whole parameters, partitioned gradients
    g3, g2, w3 = _rand(2, 3, seed=6), _rand(2, 3, seed=7), _rand(2, 3, seed=8)
    calls = _install_fake_deepspeed(monkeypatch, {id(z3): w3}, {id(z3): g3, id(z2): g2})
    assert sharded.gather_full(None, grad_of=z3) is g3
    assert sharded.gather_full(None, grad_of=z2) is g2
    assert sharded.gather_full(z3) is w3
    assert calls == [("grad", z3), ("grad", z2), ("param", z3)]


def _view(name, A, B, scale):
    return SimpleNamespace(name=name, A=A, B=B, scale=scale)


def test_gathered_states_are_the_whole_factors_gradients_and_snapshot():
    m, r, n = 5, 2, 4
    A, B = torch.nn.Parameter(_rand(r, n, seed=10)), torch.nn.Parameter(_rand(m, r, seed=11))
    A.grad, B.grad = _rand(r, n, seed=12), _rand(m, r, seed=13)
    A2, B2 = torch.nn.Parameter(_rand(r, n, seed=14)), torch.nn.Parameter(_rand(m, r, seed=15))
    B2.grad = _rand(m, r, seed=16)  # one gradient missing: no gradient split
    A0, B0 = _rand(r, n, seed=17), _rand(m, r, seed=18)
    views = [_view("a", A, B, 1.5), _view("b", A2, B2, 0.25)]
    states = sharded.gathered_states(views, {"a": 3.0, "b": 7.0}, snapshot={"b": (A0, B0)})
    assert [type(s) for s in states] == [LayerState, LayerState]
    a, b = states
    assert torch.equal(a.A, A) and torch.equal(a.B, B) and a.scale == 1.5 and a.base_norm == 3.0
    assert torch.equal(a.grad_A, A.grad) and torch.equal(a.grad_B, B.grad)
    assert a.A0 is None and a.B0 is None and a.grad_scale == 1.0
    assert torch.equal(b.A, A2) and torch.equal(b.B, B2) and b.scale == 0.25 and b.base_norm == 7.0
    assert b.grad_A is None and b.grad_B is None
    assert b.A0 is A0 and b.B0 is B0
    B2.grad, A2.grad = None, _rand(r, n, seed=19)
    (b,) = sharded.gathered_states(views[1:], {"b": 7.0}, grad_scale=4.0)
    assert b.grad_A is None and b.grad_B is None and b.grad_scale == 4.0 and b.A0 is None
    assert [(x.shape, y.shape) for x, y in sharded.gathered_factors(views)] == [((r, n), (m, r))] * 2
    (fa, fb), _ = sharded.gathered_factors(views)
    assert torch.equal(fa, A) and torch.equal(fb, B)


def test_gathered_states_read_zero3_factors_and_gradients_through_deepspeed(monkeypatch):
    m, r, n = 4, 2, 3
    A, B, gA, gB = _rand(r, n, seed=20), _rand(m, r, seed=21), _rand(r, n, seed=22), _rand(m, r, seed=23)
    zA, zB = _zero3(A, 2, 0), _zero3(B, 2, 0)
    zA.grad = zB.grad = None  # DeepSpeed keeps gradients in its own buffers
    _install_fake_deepspeed(monkeypatch, {id(zA): A, id(zB): B}, {id(zA): gA, id(zB): gB})
    (s,) = sharded.gathered_states([_view("z", zA, zB, 2.0)], {"z": 1.0})
    assert s.A is A and s.B is B and s.grad_A is gA and s.grad_B is gB


# ----------------------------------------------------------------- quantized base weights
def test_int8_base_weight_values_and_norm():
    W = _rand(3, 4, seed=30, dtype=torch.float32)
    scb = W.abs().amax(1)
    codes = torch.round(W / scb[:, None] * 127).to(torch.int8)
    q = torch.nn.Parameter(codes, requires_grad=False)
    q.SCB = scb
    dense = codes.double() * scb.double()[:, None] / 127
    assert is_quantized(q)
    got = dequantize(q)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), dense, rtol=1e-6, atol=0)
    norm = sharded.base_weight_norm(q)
    assert norm == pytest.approx(float(torch.linalg.matrix_norm(dense)), rel=1e-6)
    assert norm != pytest.approx(math.sqrt(_sq(codes)), rel=1e-2)  # not the norm of the codes


def test_only_int8_with_scales_or_a_quant_state_counts_as_quantized():
    f = torch.nn.Parameter(torch.ones(2, 2), requires_grad=False)
    f.SCB = torch.ones(2)  # float data with scales: not Int8Params
    i = torch.ones(2, 2, dtype=torch.int8)  # int8 without scales
    assert not is_quantized(SimpleNamespace(SCB=torch.ones(2)))
    for w in (f, i, torch.ones(2, 2)):
        assert not is_quantized(w)
        with pytest.raises(TypeError, match="not a quantized weight: "):
            dequantize(w)
    assert is_quantized(SimpleNamespace(quant_state=object()))


def test_4bit_base_weight_is_dequantized_by_bitsandbytes(monkeypatch):
    data = torch.tensor([[0, 15], [3, 8]], dtype=torch.uint8)
    state = SimpleNamespace(absmax=torch.tensor(2.5), shape=(2, 2))
    seen = []

    def dequantize_4bit(d, s):
        seen.append((d, s))
        return ((d.to(torch.float64) - 7.5) / 7.5 * s.absmax).to(torch.float16)

    install_fake_module(monkeypatch, "bitsandbytes.functional", dequantize_4bit=dequantize_4bit)
    p = torch.nn.Parameter(data, requires_grad=False)
    p.quant_state = state
    dense = (data.double() - 7.5) / 7.5 * 2.5
    got = dequantize(p)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), dense, rtol=1e-3)
    assert seen[0][1] is state and torch.equal(seen[0][0], data)
    assert sharded.base_weight_norm(p) == pytest.approx(float(torch.linalg.matrix_norm(dense)), rel=1e-3)
