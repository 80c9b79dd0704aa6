import math
import warnings

import pytest
import torch

import signaldrift as sd
from callbacks import NoLoRALayersError, SignalDriftMonitor, SignalDriftWarning
from tests.callbacks.helpers import lightning, make_module, make_recorder, make_trainer, read_scalars, read_tags

LAYER = "model.fc1"


def _tb(ns, tmp_path):
    L = lightning(ns)
    return L.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)


def _independent(rec_before, rec_after, snapshot, name):
    """The signaldrift functions on the recorder's own copies of the factors."""
    b, a = rec_before[name], rec_after[name]
    A0, B0 = snapshot[name]
    norm = float(torch.linalg.matrix_norm(b["W0"]))
    spec = sd.update_spectrum(b["A"], b["B"], b["scale"], norm, A0, B0)
    split = sd.step_split(b["A"], b["B"], a["A"], a["B"], b["scale"], norm)
    gs = sd.grad_split(b["A"], b["B"], b["gA"], b["gB"], b["scale"], A0, B0)
    out = dict(delta_norm=spec.delta_norm, drift_ratio=split.drift_ratio, step_size=split.step_size,
               signal_norm=split.signal_norm)
    if gs is not None:
        out["grad_alignment"] = gs.grad_alignment
    if b["G"] is not None:
        sup = sd.spectral_suppression(b["gA"], b["gB"], float((b["G"].double() ** 2).sum()))
        out["spectral_suppression"] = sup.spectral_suppression
    return out


@pytest.mark.parametrize("ns", ["lightning.pytorch", "pytorch_lightning"])
def test_logged_values_equal_independent_signaldrift(ns, tmp_path):
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=2, histogram_every=2)
    rec = make_recorder(ns, capture_full_grad_at=(0, 2))
    trainer = make_trainer(ns, max_steps=4, logger=_tb(ns, tmp_path), callbacks=[monitor, rec], log_every_n_steps=1)
    trainer.fit(make_module(ns))
    scalars = read_scalars(tmp_path)
    for step in range(4):
        ref = _independent(rec.before[step], rec.after[step], rec.snapshot, LAYER)
        for metric, value in ref.items():
            if value is None:
                continue
            got = scalars[f"signaldrift_layers/{LAYER}/{metric}"][step]
            assert got == pytest.approx(value, rel=1e-4, abs=1e-9), (step, metric)
            assert monitor.history[step].tags()[f"signaldrift_layers/{LAYER}/{metric}"] == pytest.approx(value, rel=1e-6, abs=1e-12)
    # section 4 only on probe steps; aggregates are the median and max over layers
    assert set(scalars[f"signaldrift_layers/{LAYER}/spectral_suppression"]) == {0, 2}
    h = monitor.history[3].tags()
    vals = [h[f"signaldrift_layers/model.{n}/drift_ratio"] for n in ("fc1", "fc2")]
    assert h["Summary/drift_ratio"] == pytest.approx(sorted(vals)[0] / 2 + sorted(vals)[1] / 2)
    assert h["Summary/drift_ratio_max"] == pytest.approx(max(vals))
    tags = read_tags(tmp_path)
    assert f"signaldrift_layers/{LAYER}/singular_values" in tags["histograms"]
    assert "signaldrift/update_spectra" in tags["images"]


def test_gradients_before_clipping_with_accumulation(tmp_path):
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=None)
    rec = make_recorder()
    trainer = make_trainer(max_steps=3, accumulate_grad_batches=2, gradient_clip_val=1e-4, callbacks=[monitor, rec])
    trainer.fit(make_module(optimizer="sgd", lr=0.5))
    for step in range(3):
        ref = _independent(rec.before[step], rec.after[step], rec.snapshot, LAYER)
        got = monitor.history[step].tags()
        assert got[f"signaldrift_layers/{LAYER}/step_size"] == pytest.approx(ref["step_size"], rel=1e-6)
        if "grad_alignment" in ref:
            assert got[f"signaldrift_layers/{LAYER}/grad_alignment"] == pytest.approx(ref["grad_alignment"], rel=1e-6)
    # Clipped SGD: the realized step is lr * clipped grad, much smaller than lr * the gradient read.
    b = rec.before[1][LAYER]
    moved = float((rec.after[1][LAYER]["B"] - b["B"]).norm())
    assert moved < 0.5 * float(b["gB"].norm()) * 0.5


def test_bf16_mixed_on_cpu(tmp_path):
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=1)
    trainer = make_trainer(max_steps=3, precision="bf16-mixed", callbacks=[monitor])
    trainer.fit(make_module())
    assert all(math.isfinite(v) for h in monitor.history.values() for v in h.tags().values())
    assert f"signaldrift_layers/{LAYER}/spectral_gain" in monitor.history[2].tags()


def test_resume_continues_snapshot_and_history(tmp_path):
    L = lightning("lightning.pytorch")
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=3)
    first = SignalDriftMonitor(every_n_steps=1, full_grad_every=None)
    make_trainer(max_steps=3, enable_checkpointing=True, callbacks=[first, ckpt]).fit(make_module())
    resumed = SignalDriftMonitor(every_n_steps=1, full_grad_every=None)
    make_trainer(max_steps=6, enable_checkpointing=True, default_root_dir=tmp_path, callbacks=[resumed]).fit(
        make_module(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert sorted(resumed.history) == list(range(6))
    A0, B0 = first.engine.snapshot[LAYER]
    assert torch.equal(resumed.engine.snapshot[LAYER][0], A0) and torch.equal(resumed.engine.snapshot[LAYER][1], B0)
    for step in range(3):
        assert resumed.history[step].tags() == first.history[step].tags()


def test_csv_logger_only(tmp_path):
    import csv

    L = lightning("lightning.pytorch")
    logger = L.loggers.CSVLogger(str(tmp_path), name="csv", version=0)
    make_trainer(max_steps=2, logger=logger, callbacks=[SignalDriftMonitor(full_grad_every=None)]).fit(make_module())
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert any(r.get(f"signaldrift_layers/{LAYER}/drift_ratio") for r in rows)
    assert "signaldrift/skipped_steps" in rows[0]


def test_no_logger_warns_once_and_keeps_history():
    monitor = SignalDriftMonitor(full_grad_every=None)
    with pytest.warns(SignalDriftWarning, match="no logger"):
        make_trainer(max_steps=2, callbacks=[monitor]).fit(make_module())
    assert sorted(monitor.history) == [0, 1]


def test_non_finite_step_is_skipped_and_counted():
    monitor = SignalDriftMonitor(full_grad_every=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_steps=4, callbacks=[monitor]).fit(make_module(nan_at_step=1))
    assert monitor.engine.skipped_steps >= 2
    assert monitor.history[3].tags()["signaldrift/skipped_steps"] >= 2
    assert f"signaldrift_layers/{LAYER}/drift_ratio" in monitor.history[0].tags()
    skipped = [w for w in caught if issubclass(w.category, SignalDriftWarning) and "skipped" in str(w.message)]
    assert 1 <= len(skipped) <= 3  # one warning per reason, not per step


def test_bad_input():
    with pytest.raises(ValueError, match="every_n_steps must be a positive int, got 0"):
        SignalDriftMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="full_grad_every"):
        SignalDriftMonitor(full_grad_every=-1)
    with pytest.raises(ValueError, match="layers must be"):
        SignalDriftMonitor(layers=[])
    plain = make_module(model=torch.nn.Sequential(torch.nn.Linear(8, 2)))
    with pytest.raises(NoLoRALayersError, match="no LoRA layers found in .*searched for"):
        make_trainer(max_steps=1, callbacks=[SignalDriftMonitor()]).fit(plain)
    with pytest.raises(ValueError, match=r"layers \['nope'\] match no LoRA layer; known layers: \['model.fc1'"):
        make_trainer(max_steps=1, callbacks=[SignalDriftMonitor(layers=["nope"])]).fit(make_module())


def test_layer_selection():
    monitor = SignalDriftMonitor(layers=["fc2"], full_grad_every=None)
    make_trainer(max_steps=1, callbacks=[monitor]).fit(make_module())
    assert monitor.layer_names == ["model.fc2"]
    assert not any("model.fc1" in k for k in monitor.history[0].tags())


def test_peft_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    from tests.conftest import TinyMLP

    peft_model = get_peft_model(TinyMLP(), LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"]))
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=1)
    make_trainer(max_steps=3, callbacks=[monitor]).fit(make_module(model=peft_model))
    names = monitor.layer_names
    assert len(names) == 2 and all("fc" in n for n in names)
    h = monitor.history[2].tags()
    assert all(f"signaldrift_layers/{n}/drift_ratio" in h and f"signaldrift_layers/{n}/spectral_suppression" in h for n in names)


def test_logging_cadence(tmp_path):
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=None, layer_log_every=2, histogram_every=3)
    make_trainer(max_steps=4, logger=_tb("lightning.pytorch", tmp_path), callbacks=[monitor]).fit(make_module())
    scalars = read_scalars(tmp_path)
    assert set(scalars[f"signaldrift_layers/{LAYER}/drift_ratio"]) == {0, 2}
    assert set(scalars["Summary/drift_ratio"]) == {0, 1, 2, 3}
    assert sorted(monitor.history) == [0, 1, 2, 3] and f"signaldrift_layers/{LAYER}/drift_ratio" in monitor.history[1].tags()
    with pytest.raises(ValueError, match="histogram_every"):
        SignalDriftMonitor(histogram_every=0)


def test_latest_reads_probe_only_metrics_back():
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=2)
    make_trainer(max_steps=4, callbacks=[monitor]).fit(make_module())
    assert len(monitor.latest("spectral_suppression", window=10)) == 2  # steps 0 and 2 only
    assert monitor.latest("drift_ratio", window=2) == [monitor.history[s].tags()["Summary/drift_ratio"] for s in (2, 3)]


def test_dora_is_skipped_with_a_warning_naming_it():
    from peft import LoraConfig, get_peft_model

    from tests.conftest import TinyMLP

    dora = get_peft_model(TinyMLP(), LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"], use_dora=True))
    with pytest.warns(SignalDriftWarning, match=r"skips LoRA variants.*fc1 \(dora\)"):
        with pytest.raises(NoLoRALayersError, match="every LoRA layer .* is a variant"):
            make_trainer(max_steps=1, callbacks=[SignalDriftMonitor()]).fit(make_module(model=dora))


def test_float64_training_is_measured():
    monitor = SignalDriftMonitor(full_grad_every=None)
    module = make_module().double()

    class Float64(type(module)):
        def train_dataloader(self):
            from tests.callbacks.helpers import teacher_data
            ds = teacher_data()
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*(t.double() for t in ds.tensors)), batch_size=8)

    module.__class__ = Float64
    make_trainer(max_steps=2, callbacks=[monitor]).fit(module)
    assert monitor.engine.skipped_steps == 0 and f"signaldrift_layers/{LAYER}/step_size" in monitor.history[1].tags()


def test_probe_every_is_a_deprecated_alias_of_full_grad_every():
    from callbacks.hf import SignalDriftTrainerCallback

    for cls in (SignalDriftMonitor, SignalDriftTrainerCallback):
        with pytest.warns(FutureWarning, match=r"probe_every=\.\.\.\) is deprecated; use full_grad_every"):
            cb = cls(probe_every=7)
        assert cb.engine.full_grad_every == 7
        with pytest.raises(ValueError, match="pass full_grad_every only"):
            cls(full_grad_every=3, probe_every=7)
    with pytest.raises(TypeError):
        SignalDriftMonitor(1, None)  # keyword-only after every_n_steps


@pytest.mark.parametrize("hook, args", [
    ("setup", ("fit",)), ("on_fit_start", ()), ("on_train_start", ()), ("on_train_batch_start", (None, 0)),
    ("on_before_optimizer_step", (None,)), ("on_train_batch_end", (None, None, 0)), ("on_fit_end", ()),
])
def test_hooks_called_without_a_trainer_or_module_say_so(hook, args):
    """Hooks called by hand with None: one TypeError naming the hook and the argument, not an AttributeError."""
    monitor = SignalDriftMonitor(full_grad_every=None)
    with pytest.raises(TypeError, match=rf"SignalDriftMonitor\.{hook}: trainer is None"):
        getattr(monitor, hook)(None, make_module(), *args)
    trainer = make_trainer(max_steps=1)
    with pytest.raises(TypeError, match=rf"SignalDriftMonitor\.{hook}: pl_module must be the LightningModule .*got NoneType"):
        getattr(monitor, hook)(trainer, None, *args)


def test_a_monitor_reused_for_a_new_fit_starts_clean_and_a_resume_keeps_its_state(tmp_path):
    """The second fit (a new trainer, the same module trained on) measures from its own start: its history
    holds only its steps and its snapshot is the factors it started from, not the first fit's."""
    module = make_module()
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=None)
    make_trainer(max_steps=3, callbacks=[monitor]).fit(module)
    first_step2 = monitor.history[2]
    start = module.model.fc1.lora_A.detach().clone()
    make_trainer(max_steps=2, callbacks=[monitor]).fit(module)
    assert sorted(monitor.history) == [0, 1] and 2 not in monitor.history and first_step2 is not None
    assert torch.equal(monitor.engine.snapshot[LAYER][0], start)
    assert monitor.engine.skipped_steps == 0
    # A resume (ckpt_path) is not a new fit: the checkpoint's snapshot and history come back.
    L = lightning("lightning.pytorch")
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=3)
    reused = SignalDriftMonitor(every_n_steps=1, full_grad_every=None)
    make_trainer(max_steps=3, enable_checkpointing=True, callbacks=[reused, ckpt]).fit(make_module())
    first = {s: reused.history[s].tags() for s in range(3)}
    make_trainer(max_steps=5, enable_checkpointing=True, default_root_dir=tmp_path, callbacks=[reused]).fit(
        make_module(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert sorted(reused.history) == list(range(5))
    assert all(reused.history[s].tags() == first[s] for s in range(3))


def test_a_module_whose_lora_is_all_merged_and_nothing_else_trainable_is_refused_before_training():
    from lora_alpha import merge_adapters

    module = make_module()
    merge_adapters(module.model)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=r"SignalDriftMonitor: every LoRA layer of TinyModule is merged into its base "
                                              r"weight \(model.fc1, model.fc2\) and no other parameter is trainable.*"
                                              r"unmerge_adapters") as err:  # was autograd's RuntimeError at step 0
        make_trainer(max_steps=2, callbacks=[SignalDriftMonitor(full_grad_every=None)]).fit(module)
    assert type(err.value).__name__ == "MergedLoRAError"
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    module.model.head.weight.requires_grad_(True)  # something else trains: the merged layers are skipped, as before
    with pytest.warns(SignalDriftWarning, match="merged into its base weight"):
        make_trainer(max_steps=1, callbacks=[SignalDriftMonitor(full_grad_every=None)]).fit(module)
