"""The engine's own logic without a Trainer (fast): argument checks and their messages, layer
selection, warnings and skips, the top_k and grads arguments against dense definitions, capture
hooks, checkpoint state, and the summaries."""
import warnings

import pytest
import torch
from torch import nn

import lora_alpha
from callbacks.engine import NoLoRALayersError, SignalDriftEngine, SignalDriftWarning, medians_of_views
from callbacks.measurements import layer_tag
from signaldrift import lora_layers
from tests.conftest import TinyMLP

LAYERS = ("fc1", "fc2", "head")
PREFIX_MSG = "Signal-Drift skipped layer"


def _model(seed=0):
    torch.manual_seed(seed)
    model = TinyMLP()
    lora_alpha.inject(model, list(LAYERS), rank=2, alpha=8.0, rule="standard")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a learned update of full rank 2, so every metric is defined
        for name in LAYERS:
            getattr(model, name).lora_B.copy_(0.3 * torch.randn(getattr(model, name).lora_B.shape, generator=g))
    return model


def _backward(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 8, generator=g), torch.randn(8, 2, generator=g)
    nn.functional.mse_loss(model(x), y).backward()


def _zero_snapshot(engine, model):
    """dW = s B A from here on: the snapshot's B0 is zero (the usual init)."""
    for name in LAYERS:
        A, B = engine.snapshot[name]
        engine.snapshot[name] = (A, torch.zeros_like(B))


def _step(engine, model, step=0, lr=0.05, **kw):
    _backward(model)
    engine.before_step(model, step, **kw)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None and p.requires_grad:
                p -= lr * p.grad
    model.zero_grad()
    return engine.after_step(model)


def _skip_messages(caught):
    return [str(w.message) for w in caught if issubclass(w.category, SignalDriftWarning)]


# ----------------------------------------------------------------- arguments


@pytest.mark.parametrize("kw, msg", [
    (dict(every_n_steps=0), "every_n_steps must be a positive int, got 0"),
    (dict(top_k=0), "top_k must be a positive int or None, got 0"),
    (dict(full_grad_every=0), "full_grad_every must be a positive int or None, got 0"),
    (dict(full_grad_every=2.5), "full_grad_every must be a positive int or None, got 2.5"),
    (dict(layers=[]), "layers must be a non-empty list of layer names, got []"),
    (dict(layers=["fc1", ""]), "layers must be a non-empty list of layer names, got ['fc1', '']"),
    (dict(layers=["fc1", 3]), "layers must be a non-empty list of layer names, got ['fc1', 3]"),
])
def test_constructor_refuses_with_the_message(kw, msg):
    with pytest.raises(ValueError) as e:
        SignalDriftEngine(**kw)
    assert str(e.value) == msg


def test_constructor_accepts_none_and_a_single_name():
    e = SignalDriftEngine(top_k=None, full_grad_every=None, layers="fc2")
    assert e.layer_patterns == ["fc2"] and e.full_grad_every is None and e.top_k is None
    assert SignalDriftEngine(layers=("fc1", "head")).layer_patterns == ["fc1", "head"]


def test_probe_every_is_the_old_name():
    with pytest.warns(FutureWarning) as rec:
        e = SignalDriftEngine(probe_every=7)
    assert e.full_grad_every == 7
    assert str(rec[0].message) == ("SignalDriftEngine(probe_every=...) is deprecated; use full_grad_every "
                                   "(the old name goes in the next release)")
    assert rec[0].filename == __file__ or "mutmut" in rec[0].filename  # the caller's line (mutmut adds a frame)
    with pytest.raises(ValueError) as err:
        SignalDriftEngine(full_grad_every=51, probe_every=7)
    assert str(err.value) == "SignalDriftEngine: pass full_grad_every only (probe_every is its old name), got both"
    assert SignalDriftEngine(full_grad_every=51).full_grad_every == 51


# ----------------------------------------------------------------- discovery


def test_attach_selects_by_name_or_dotted_suffix():
    outer = nn.Module()
    outer.block = _model()
    e = SignalDriftEngine(layers=["fc1", "block.head"])
    assert e.attach(outer) == ["block.fc1", "block.head"]
    assert set(e.snapshot) == set(e.base_norms) == {"block.fc1", "block.head"}
    assert SignalDriftEngine(layers=["block.fc1"]).attach(outer) == ["block.fc1"]
    with pytest.raises(ValueError) as err:
        SignalDriftEngine(layers=["c1", "fc1", "nope"]).attach(outer)  # "c1" is not a dotted suffix of fc1
    assert str(err.value) == ("layers ['c1', 'nope'] match no LoRA layer; known layers: "
                              "['block.fc1', 'block.fc2', 'block.head']")


def test_attach_snapshots_copies_and_base_norms():
    model = _model()
    e = SignalDriftEngine()
    assert e.attach(model) == list(LAYERS)
    for name in LAYERS:
        layer = getattr(model, name)
        A0, B0 = e.snapshot[name]
        assert torch.equal(A0, layer.lora_A) and torch.equal(B0, layer.lora_B)
        assert A0.data_ptr() != layer.lora_A.data_ptr()
        assert e.base_norms[name] == pytest.approx(float(torch.linalg.matrix_norm(layer.base_weight_mn().double())))


def test_attach_keeps_a_loaded_snapshot_and_skips_merged_base_norms():
    model = _model()
    model.fc2.merge()
    e = SignalDriftEngine()
    e.snapshot["fc1"] = (torch.zeros(2, 8), torch.zeros(16, 2))
    e.attach(model)
    assert torch.equal(e.snapshot["fc1"][0], torch.zeros(2, 8))
    assert set(e.base_norms) == {"fc1", "head"}


def test_no_layers_and_variant_only_models():
    with pytest.raises(NoLoRALayersError) as err:
        SignalDriftEngine().attach(nn.Sequential(nn.Linear(2, 2)))
    assert str(err.value) == ("no LoRA layers found in Sequential: searched for this project's LoRALinear "
                              "(lora_alpha.inject) and PEFT LoraLayer modules with an active adapter")
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(nn.Sequential(nn.Linear(4, 4)), LoraConfig(r=2, target_modules=["0"], use_dora=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NoLoRALayersError) as err:
            SignalDriftEngine().attach(dora)
    name = lora_layers(dora)[0].name
    assert str(err.value) == (f"every LoRA layer in PeftModel is a variant Signal-Drift cannot measure "
                              f"({name} (dora)); plain LoRA layers are needed")
    (w,) = [w for w in caught if issubclass(w.category, SignalDriftWarning)]
    assert str(w.message) == f"Signal-Drift skips LoRA variants whose update is not s*B*A: {name} (dora)"
    assert w.filename == __file__ or "mutmut" in w.filename  # the caller's line (mutmut adds a frame)


# ----------------------------------------------------------------- measurements against dense definitions


def _dense_split(layer, gA, gB, k):
    A, B, s = layer.lora_A.detach().double(), layer.lora_B.detach().double(), float(layer.scaling)
    dW = s * B @ A
    U, S, Vh = torch.linalg.svd(dW)
    g = s * (gB.double() @ A + B @ gA.double())
    sig = U[:, :k] @ U[:, :k].T @ g @ Vh[:k].T @ Vh[:k]
    return float((sig**2).sum() / (g**2).sum()), float(torch.linalg.matrix_norm(g - sig) / torch.linalg.matrix_norm(sig))


@pytest.mark.parametrize("top_k", [None, 1])
def test_top_k_and_grads_given_against_dense(top_k):
    model = _model()
    e = SignalDriftEngine(top_k=top_k, full_grad_every=None)
    e.attach(model)
    _zero_snapshot(e, model)
    _backward(model)
    g = torch.Generator().manual_seed(9)
    given = {"fc2": (torch.randn(model.fc2.lora_A.shape, generator=g),  # e.g. read before clipping
                     torch.randn(model.fc2.lora_B.shape, generator=g))}
    expected = {}
    for name in LAYERS:
        layer = getattr(model, name)
        gA, gB = given.get(name, (layer.lora_A.grad, layer.lora_B.grad))
        expected[name] = _dense_split(layer, gA, gB, top_k or 2)
    e.before_step(model, 0, grads=given)
    with torch.no_grad():
        for name in LAYERS:
            getattr(model, name).lora_A += 0.01
    m = e.after_step(model)
    for name in LAYERS:
        assert m.layers[name]["grad_alignment"] == pytest.approx(expected[name][0], rel=1e-9)
        assert m.layers[name]["grad_drift_ratio"] == pytest.approx(expected[name][1], rel=1e-9)


def test_gradients_in_float32_are_read_in_float64():
    model = _model()
    e = SignalDriftEngine(full_grad_every=None)
    e.attach(model)
    _zero_snapshot(e, model)
    _backward(model)
    e.before_step(model, 0, grad_scale=4.0)
    expected = _dense_split(model.fc1, model.fc1.lora_A.grad / 4.0, model.fc1.lora_B.grad / 4.0, 2)
    with torch.no_grad():
        model.fc1.lora_A += 1e-9  # a tiny step: the "before" must be an exact float64 copy, not a view
    m = e.after_step(model)
    assert m.layers["fc1"]["grad_alignment"] == pytest.approx(expected[0], rel=1e-9)
    assert set(m.layers) == {"fc1"}  # the others did not move
    assert m.layers["fc1"]["signal_norm"] > 0


def test_loss_scale_defaults_to_one():
    model = _model()
    e = SignalDriftEngine(full_grad_every=1)
    e.attach(model)
    for layer in (model.fc1, model.fc2, model.head):
        layer.base_layer.weight.requires_grad_(True)
    e.start_capture(model)
    _backward(model)
    G = model.fc1.base_layer.weight.grad.double()
    gA, gB = model.fc1.lora_A.grad.double(), model.fc1.lora_B.grad.double()
    e.before_step(model, 0)
    with torch.no_grad():
        model.fc1.lora_A += 0.01
    m = e.after_step(model)
    gain = float((gA**2).sum() + (gB**2).sum()) / float((G**2).sum())
    assert m.layers["fc1"]["spectral_gain"] == pytest.approx(gain, rel=1e-9)


def test_capture_ignores_forward_passes_without_gradients():
    model = _model()
    e = SignalDriftEngine(full_grad_every=1)
    e.attach(model)
    e.start_capture(model)
    e.start_capture(model)  # a second call is a no-op
    with torch.no_grad():
        model(torch.randn(3, 8))
    model(torch.randn(3, 8))  # no backward: nothing captured either
    assert e.stop_capture() == {}


def test_merged_layer_without_base_norm_is_skipped_then_measured_after_unmerge():
    model = _model()
    model.head.merge()
    e = SignalDriftEngine(full_grad_every=None)
    e.attach(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = _step(e, model)
    assert set(m.layers) == {"fc1", "fc2"} and m.skipped_steps == 1 and e.skipped_steps == 1
    assert _skip_messages(caught) == [f"{PREFIX_MSG} head at least once: merged into its base weight "
                                      "(counted in signaldrift/skipped_steps)"]
    model.head.unmerge()
    m = _step(e, model, step=1)
    # no base norm known: the relative metrics are undefined (None values are not logged)
    assert "step_size" not in m.layers["head"] and "delta_rel" not in m.layers["head"]
    assert m.layers["head"]["drift_ratio"] > 0
    assert m.layers["fc1"]["step_size"] > 0


def test_non_finite_before_and_after_are_skipped_with_the_reason():
    model = _model()
    e = SignalDriftEngine(full_grad_every=None)
    e.attach(model)
    _backward(model)
    model.fc1.lora_A.grad[0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e.before_step(model, 0)
        with torch.no_grad():
            model.fc2.lora_A[0, 0] = float("inf")
            model.head.lora_A += 0.01
        m = e.after_step(model)
    assert set(m.layers) == {"head"} and e.skipped_steps == 2
    assert _skip_messages(caught) == [
        f"{PREFIX_MSG} fc1 at least once: non-finite factors or gradients (counted in signaldrift/skipped_steps)",
        f"{PREFIX_MSG} fc2 at least once: non-finite factors after the step (counted in signaldrift/skipped_steps)",
    ]


def test_skipped_step_message():
    model = _model()
    e = SignalDriftEngine(full_grad_every=None)
    e.attach(model)
    _backward(model)
    e.before_step(model, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = e.after_step(model, step_taken=False)
        _backward(model)
        e.before_step(model, 1)
        with torch.no_grad():
            model.fc1.lora_A += 0.01
        m2 = e.after_step(model, step_taken=True)  # fc2, head did not move: skipped, no new warning
    assert m.layers == {} and set(m2.layers) == {"fc1"} and e.skipped_steps == 5
    assert _skip_messages(caught) == [
        f"{PREFIX_MSG} fc1 at least once: the optimizer did not update it (counted in signaldrift/skipped_steps)"]


def test_after_step_without_before_step():
    e = SignalDriftEngine()
    e.attach(_model())
    assert e.after_step(_model()) is None


# ----------------------------------------------------------------- state and summaries


def test_state_round_trip_and_defaults():
    model = _model()
    e = SignalDriftEngine(full_grad_every=None)
    e.attach(model)
    m = _step(e, model)
    e.skipped_steps = 3
    state = e.state_dict()
    assert set(state) == {"snapshot", "base_norms", "history", "skipped_steps"} and state["skipped_steps"] == 3
    f = SignalDriftEngine()
    f.load_state_dict(state)
    assert f.skipped_steps == 3 and f.base_norms == e.base_norms
    assert all(torch.equal(f.snapshot[n][0], e.snapshot[n][0]) and torch.equal(f.snapshot[n][1], e.snapshot[n][1])
               for n in LAYERS)
    assert f.history[0].layers == m.layers
    f.load_state_dict(state, device=torch.device("meta"))
    assert {t.device.type for pair in f.snapshot.values() for t in pair} == {"meta"}
    g = SignalDriftEngine()
    g.load_state_dict({})
    assert (g.snapshot, g.base_norms, g.history, g.skipped_steps) == ({}, {}, {}, 0)
    e.to_device(torch.device("meta"))
    assert {t.device.type for pair in e.snapshot.values() for t in pair} == {"meta"}


def test_old_checkpoints_hold_tags():
    saved = {layer_tag("fc1", "delta_norm"): 1.5, layer_tag("fc2", "drift_ratio"): 0.25,
             "signaldrift/fc1/step_size": 0.01,  # the old per-layer scheme
             "Summary/drift_ratio": 0.25, "not/ours": 3.0, "signaldrift/skipped_steps": 4}
    e = SignalDriftEngine()
    e.load_state_dict({"history": {"7": saved}})
    m = e.history[7]
    assert m.step == 7 and m.skipped_steps == 4
    assert m.layers == {"fc1": {"delta_norm": 1.5, "step_size": 0.01}, "fc2": {"drift_ratio": 0.25}}
    e.load_state_dict({"history": {"2": {layer_tag("fc1", "delta_norm"): 1.0}}})
    assert e.history[2].skipped_steps == 0 and e.history[2].layers == {"fc1": {"delta_norm": 1.0}}


def test_medians_of_views():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    for i, (rank, alpha) in enumerate([(1, 2.0), (2, 16.0), (4, 4.0)]):
        lora_alpha.inject(model, [str(i)], rank=rank, alpha=alpha, rule="standard")
    views = lora_layers(model)
    assert medians_of_views(views) == (4.0, 2, 2.0)  # scales 2, 8, 1
