"""Memory: the engine keeps only factor-sized state, and nothing of a step outlives it."""
import dataclasses
import gc
import weakref

import torch
from torch import nn

from callbacks.engine import SignalDriftEngine
from lora_alpha import LoRALinear


def tensor_bytes(obj, seen=None) -> int:
    """Bytes of every distinct tensor storage reachable from ``obj`` (dicts, lists, dataclasses, attributes)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        key = ("storage", obj.untyped_storage().data_ptr())
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(k, seen) + tensor_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return sum(tensor_bytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if hasattr(obj, "__dict__") and not isinstance(obj, (type, nn.Module)):
        return tensor_bytes(vars(obj), seen)
    return 0


def test_4096x11008_r64_layer_holds_only_factor_sized_state():
    m, n, r = 11008, 4096, 64
    torch.manual_seed(0)
    base = nn.Linear(n, m, bias=False).requires_grad_(False)  # W0: (m, n) = 180 MB in float32
    layer = LoRALinear(base, rank=r, alpha=2.0 * r, rule="standard")
    model = nn.Sequential(layer)
    engine = SignalDriftEngine(every_n_steps=1, full_grad_every=1)  # sections 1-4 every step
    engine.attach(model)
    opt = torch.optim.AdamW([layer.lora_A, layer.lora_B], lr=1e-3)
    x = torch.randn(8, n)
    grads, outputs = [], []
    for step in range(3):
        engine.start_capture(model)
        out = model(x)
        loss = out.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads.append(weakref.ref(layer.lora_B.grad))
        outputs.append(weakref.ref(out))
        engine.before_step(model, step)
        opt.step()
        result = engine.after_step(model)
        assert result is not None and "spectral_suppression" in result.layers["0"]
    opt.zero_grad(set_to_none=True)
    del out, loss, result
    gc.collect()
    assert all(ref() is None for ref in grads + outputs), "a step's gradient or activation outlived the step"
    assert engine._pending == {} and engine._capture == {} and engine._handles == []
    held = tensor_bytes(engine)
    factor_elems = (m + n) * r
    assert held <= 2 * factor_elems * 8, (held, factor_elems)  # e.g. the float64 snapshot (A0, B0)
    assert held < m * n * 4 / 20  # far from one dense (m, n) matrix
