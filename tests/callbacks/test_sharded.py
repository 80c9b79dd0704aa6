"""Sharded factors (FSDP2 on gloo, the ZeRO-3 layout on gloo) and quantized bases (QLoRA): gathered or
dequantized once, then measured; every number equal to one process and to dense definitions."""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from signaldrift import lora_layers
from signaldrift.batched import BatchedStep
from signaldrift.sharded import base_weight_norm, gathered_states

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(script: str, out: Path, world: int) -> list[dict]:
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "tests" / "callbacks" / script), str(out), str(world)]
    if world == 1:
        procs = [subprocess.Popen(cmd, env=env, cwd=out, stderr=subprocess.PIPE, text=True)]
    else:
        port = str(_port())
        procs = [subprocess.Popen([*cmd, port], env={**env, "RANK": str(r)}, cwd=out, stderr=subprocess.PIPE, text=True)
                 for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def _dense(raw: dict) -> dict:
    d = torch.float64
    A, B, gA, gB, A1, B1 = (torch.tensor(raw[k], dtype=d) for k in ("A", "B", "gA", "gB", "A1", "B1"))
    s = raw["s"]
    dW = s * B @ A
    U, S, Vh = torch.linalg.svd(dW)
    k = A.shape[0]
    g = s * (gB @ A + B @ gA)
    g_sig = U[:, :k] @ U[:, :k].T @ g @ Vh[:k].T @ Vh[:k]
    dA, dB = A1 - A, B1 - B
    sig, drift = s * (dB @ A + B @ dA), s * dB @ dA
    return {"delta_norm": float(S.norm()), "stable_rank": float((S**2).sum() / S[0] ** 2),
            "grad_alignment": float((g_sig**2).sum() / (g**2).sum()),
            "drift_ratio": float(torch.linalg.matrix_norm(drift) / torch.linalg.matrix_norm(sig))}


@pytest.mark.slow
def test_fsdp2_two_processes_and_zero3_layout_equal_one_process(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    one = _run("fsdp_run.py", tmp_path / "one", 1)[0]
    fsdp = _run("fsdp_run.py", tmp_path / "fsdp", 2)
    zero3 = _run("zero3_run.py", tmp_path / "zero3", 2)
    assert one["sharded"] == [False, False] and all(r["sharded"] == [True, True] for r in fsdp)
    for r in (*fsdp, *zero3):  # the base norms from the shards, all-reduced
        for name, value in one["base_norms"].items():
            assert math.isclose(r["base_norms"][name], value, rel_tol=1e-12)
    for step, rec in enumerate(one["history"]):
        for name in ("fc1", "fc2"):
            ref = _dense(rec["raw"][name])
            for metric, value in ref.items():  # one process against the definitions
                assert math.isclose(rec[name][metric], value, rel_tol=1e-9), (step, name, metric)
            for r in fsdp + (zero3 if step < len(zero3[0]["history"]) else []):
                got = r["history"][step][name]
                for metric in got:  # every rank measured what one process measured on the global batch
                    assert math.isclose(got[metric], rec[name][metric], rel_tol=1e-5, abs_tol=1e-9), (step, name, metric)


# ----------------------------------------------------------------- QLoRA
class _FakeQuantState:
    def __init__(self, absmax: torch.Tensor, shape: torch.Size) -> None:
        self.absmax, self.shape = absmax, shape


class StandInParams4bit(torch.nn.Parameter):
    """bitsandbytes' Params4bit interface: packed uint8 data (two 4-bit codes a byte), a quant_state."""


def _quantize_4bit(W: torch.Tensor, block: int = 16):
    levels = torch.linspace(-1, 1, 16)
    flat = W.detach().reshape(-1, block)
    absmax = flat.abs().amax(1, keepdim=True)
    codes = ((flat / absmax).unsqueeze(-1) - levels).abs().argmin(-1).to(torch.uint8).reshape(-1)
    packed = (codes[0::2] << 4) | codes[1::2]
    p = StandInParams4bit(packed.reshape(-1, 1), requires_grad=False)
    p.quant_state = _FakeQuantState(absmax, W.shape)
    return p


def _dequantize_4bit(data: torch.Tensor, state: _FakeQuantState) -> torch.Tensor:
    levels = torch.linspace(-1, 1, 16)
    packed = data.reshape(-1)
    codes = torch.stack([packed >> 4, packed & 15], 1).reshape(-1).long()
    return (levels[codes].reshape(-1, 16) * state.absmax).reshape(state.shape)


class StandInLinear4bit(torch.nn.Module):
    """bitsandbytes' Linear4bit interface: ``weight`` a Params4bit, dequantized inside forward."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = _quantize_4bit(linear.weight)
        self.bias = linear.bias

    def forward(self, x):
        return torch.nn.functional.linear(x, _dequantize_4bit(self.weight.data, self.weight.quant_state), self.bias)


def _install_fake_bnb(monkeypatch) -> list:
    """``bitsandbytes.functional.dequantize_4bit`` for the stand-in, counting the calls the measurement makes
    (installed after PEFT has wrapped the model, so PEFT's own bitsandbytes detection is not fooled)."""
    from tests.conftest import install_fake_module

    calls = []
    install_fake_module(monkeypatch, "bitsandbytes.functional",
                        dequantize_4bit=lambda data, state: calls.append(1) or _dequantize_4bit(data, state))
    return calls


def test_qlora_stand_in_base_norm_once_and_no_dequantize_per_step(monkeypatch):
    peft = pytest.importorskip("peft")
    from tests.conftest import TinyMLP

    torch.manual_seed(0)
    model = TinyMLP()
    dense_w = {n: getattr(model, n).weight.detach().clone() for n in ("fc1", "fc2")}
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"],
                                                       init_lora_weights=False))
    for name in ("fc1", "fc2"):  # quantize the bases under PEFT's LoRA layers
        layer = getattr(model.base_model.model, name)
        layer.base_layer = StandInLinear4bit(layer.base_layer)
    fake_bnb = _install_fake_bnb(monkeypatch)
    views = lora_layers(model)
    assert [v.name.split(".")[-1] for v in views] == ["fc1", "fc2"]
    assert all(isinstance(v.base_weight, StandInParams4bit) for v in views)
    assert [tuple(v.A.shape) for v in views] == [(2, 8), (2, 16)] and [tuple(v.B.shape) for v in views] == [(16, 2), (4, 2)]
    norms = {v.name: base_weight_norm(v.base_weight) for v in views}
    assert len(fake_bnb) == 2  # once per layer, at attach
    for v, w in zip(views, dense_w.values()):
        deq = _dequantize_4bit(v.base_weight.data, v.base_weight.quant_state).double()
        assert math.isclose(norms[v.name], float(torch.linalg.matrix_norm(deq)), rel_tol=1e-12)
        assert math.isclose(norms[v.name], float(torch.linalg.matrix_norm(w.double())), rel_tol=0.1)  # 4-bit error
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        batch = BatchedStep.measure(gathered_states(views, norms))
        opt.step()
        steps = batch.step_splits([(v.A, v.B) for v in views])
        assert all(r.grad is not None and s.split is not None for r, s in zip(batch.results, steps))
        assert batch.results[0].spectrum.delta_rel == pytest.approx(batch.results[0].spectrum.delta_norm / norms[views[0].name])
    assert len(fake_bnb) == 2  # nothing dequantized per step


def test_qlora_real_bitsandbytes_on_cpu():
    bnb = pytest.importorskip("bitsandbytes")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q4 = bnb.nn.Linear4bit(64, 32, quant_type="nf4", compute_dtype=torch.float32)
            self.q8 = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
            for m in (self.q4, self.q8):
                m.load_state_dict(lin.state_dict())

        def forward(self, x):
            return self.q4(x) + self.q8(x)

    net = Net().to("cpu")  # quantizes
    model = peft.get_peft_model(net, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q4", "q8"], init_lora_weights=False))
    views = lora_layers(model)
    assert sorted(v.name.split(".")[-1] for v in views) == ["q4", "q8"]
    ref = float(torch.linalg.matrix_norm(lin.weight.double()))
    for v in views:
        assert tuple(v.A.shape) == (2, 64) and tuple(v.B.shape) == (32, 2)
        assert math.isclose(base_weight_norm(v.base_weight), ref, rel_tol=0.05)  # quantization error only
