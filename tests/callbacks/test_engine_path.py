"""The measuring engine called exactly as the callbacks call it, without a Trainer (fast).

attach -> start_capture -> backward -> before_step(grad_scale, loss_scale) -> optimizer step ->
after_step, on a tiny model with three LoRA layers; every tag is compared with the dense
definitions of tests/callbacks/test_dense_reference.py (dW, the step, projections, G formed).
"""
import statistics
import warnings

import pytest
import torch

import lora_alpha
from callbacks.engine import SignalDriftEngine, SignalDriftWarning
from callbacks.measurements import summary_tag
from tests.callbacks.test_dense_reference import _dense
from tests.conftest import TinyMLP

LAYERS = ("fc1", "fc2", "head")


def _model(nonzero_init: bool):
    model = TinyMLP()
    lora_alpha.inject(model, list(LAYERS), rank=2, alpha=8.0, rule="standard")
    if nonzero_init:
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name in LAYERS:
                layer = getattr(model, name)
                layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=g))
    return model


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 8, generator=g), torch.randn(8, 2, generator=g)


def _train(loss_scale=1.0, unscale_before_hook=True, nonzero_init=False, steps=3, every=1, full_grad_every=1, skip_at=None):
    """What a Trainer does, step by step, plus an independent record of the factors, gradients and
    the base weights' own autograd gradient G (of the unscaled loss)."""
    torch.manual_seed(0)
    model = _model(nonzero_init)
    layers = {name: getattr(model, name) for name in LAYERS}
    params = [p for layer in layers.values() for p in (layer.lora_A, layer.lora_B)]
    opt = torch.optim.SGD(params, lr=0.05)
    engine = SignalDriftEngine(every_n_steps=every, full_grad_every=full_grad_every)
    engine.attach(model)
    snapshot = {n: (l.lora_A.detach().clone(), l.lora_B.detach().clone()) for n, l in layers.items()}
    x, y = _data()
    before, after, tags = {}, {}, {}
    for step in range(steps):
        if engine.captures_full_grad(step):
            engine.start_capture(model)
        for layer in layers.values():
            layer.base_layer.weight.requires_grad_(True)
        (torch.nn.functional.mse_loss(model(x), y) * loss_scale).backward()
        before[step] = {n: dict(A=l.lora_A.detach().clone(), B=l.lora_B.detach().clone(),
                                gA=l.lora_A.grad.detach() / loss_scale, gB=l.lora_B.grad.detach() / loss_scale,
                                G=l.base_layer.weight.grad.detach() / loss_scale if engine.captures_full_grad(step) else None,
                                scale=l.scaling, W0=l.base_weight_mn().detach().clone())
                        for n, l in layers.items()}
        if unscale_before_hook:  # Lightning: unscaled before on_before_optimizer_step
            for p in params:
                p.grad /= loss_scale
        engine.before_step(model, step, grad_scale=1.0 if unscale_before_hook else loss_scale, loss_scale=loss_scale)
        if not unscale_before_hook:  # a fused optimizer unscales inside step()
            for p in params:
                p.grad /= loss_scale
        if step != skip_at:
            opt.step()
        after[step] = {n: dict(A=l.lora_A.detach().clone(), B=l.lora_B.detach().clone()) for n, l in layers.items()}
        result = engine.after_step(model, step_taken=step != skip_at)
        if result is not None:
            assert result.step == step
            tags[step] = result.tags()
        opt.zero_grad()
        for layer in layers.values():
            layer.base_layer.weight.grad = None
    return engine, tags, before, after, snapshot


def _check(tags, before, after, snapshot, steps):
    for step in steps:
        per_metric = {}
        for name in LAYERS:
            ref = _dense(before[step], after[step], snapshot, name)
            logged = {k.split("/")[-1]: v for k, v in tags[step].items() if k.startswith(f"signaldrift_layers/{name}/")}
            assert set(logged) == set(ref), (step, name, set(logged) ^ set(ref))
            for metric, value in ref.items():
                assert logged[metric] == pytest.approx(value, rel=1e-6, abs=1e-12), (step, name, metric)
                per_metric.setdefault(metric, []).append(logged[metric])
        for metric, values in per_metric.items():  # model-level: median and max over the three layers
            assert tags[step][summary_tag(metric)] == pytest.approx(statistics.median(values), rel=1e-12)
            assert tags[step][summary_tag(metric, "max")] == pytest.approx(max(values), rel=1e-12)


@pytest.mark.parametrize("nonzero_init", [False, True], ids=["B0=0", "B0!=0"])
def test_engine_equals_the_dense_definitions(nonzero_init):
    engine, tags, before, after, snapshot = _train(nonzero_init=nonzero_init)
    _check(tags, before, after, snapshot, range(3))
    assert all(tags[s]["signaldrift/skipped_steps"] == 0.0 for s in tags)
    if nonzero_init:  # nothing learned before step 0: no split on noise
        assert not any("grad_alignment" in k for k in tags[0])


@pytest.mark.parametrize("unscale_before_hook", [True, False], ids=["unscaled", "still-scaled"])
def test_engine_under_a_loss_scale(unscale_before_hook):
    """The factor gradients' divisor and G's divisor are separate: both paths equal the dense
    definitions of the unscaled loss."""
    engine, tags, before, after, snapshot = _train(loss_scale=1024.0, unscale_before_hook=unscale_before_hook)
    _check(tags, before, after, snapshot, range(3))
    assert "signaldrift_layers/fc1/spectral_gain" in tags[1]


def test_schedule_and_probe_only_metrics():
    engine, tags, before, after, snapshot = _train(steps=5, every=2, full_grad_every=4)
    assert sorted(tags) == [0, 2, 4]
    _check(tags, before, after, snapshot, [0, 2, 4])
    assert [s for s in tags if "signaldrift_layers/fc1/spectral_gain" in tags[s]] == [0, 4]
    assert engine.latest("spectral_gain", window=5) == [tags[s]["signaldrift/spectral_gain"] for s in (0, 4)]
    assert engine.latest("drift_ratio", window=2) == [tags[s]["Summary/drift_ratio"] for s in (2, 4)]
    assert engine.measures(6) and not engine.measures(5) and engine.captures_full_grad(8) and not engine.captures_full_grad(6)


def test_a_step_not_taken_is_skipped_and_counted():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine, tags, *_ = _train(steps=3, skip_at=1)
    assert not any(k.startswith("signaldrift_layers/fc1/") for k in tags[1])
    assert tags[1]["signaldrift/skipped_steps"] == 3.0 and tags[2]["signaldrift/skipped_steps"] == 3.0
    assert "signaldrift_layers/fc1/drift_ratio" in tags[2]
    msgs = [str(w.message) for w in caught if issubclass(w.category, SignalDriftWarning)]
    assert len(msgs) == 1 and "did not update" in msgs[0]


def test_engine_refuses_bad_divisors():
    model = _model(False)
    engine = SignalDriftEngine()
    engine.attach(model)
    for kw in (dict(grad_scale=0.0), dict(loss_scale=float("nan")), dict(loss_scale=True), dict(grad_scale=-2.0)):
        with pytest.raises(ValueError, match=r"(grad|loss)_scale must be a positive finite number, got"):
            engine.before_step(model, 0, **kw)


def test_state_round_trip():
    engine, tags, *_ = _train(steps=2)
    fresh = SignalDriftEngine()
    fresh.load_state_dict(engine.state_dict())
    assert fresh.history == engine.history and fresh.skipped_steps == engine.skipped_steps
    assert fresh.base_norms == engine.base_norms
    for name, (A0, B0) in engine.snapshot.items():
        assert torch.equal(fresh.snapshot[name][0], A0) and torch.equal(fresh.snapshot[name][1], B0)
