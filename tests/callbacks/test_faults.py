"""Faults injected mid-run: training goes on, affected metrics are skipped and counted, one warning per
kind of fault, nothing crashes."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from callbacks import AlphaRegimeAdvisor, SignalDriftMonitor, SignalDriftWarning
from tests.callbacks.helpers import lightning, make_module, make_trainer

L = lightning("lightning.pytorch")
FC1, FC2 = "model.fc1", "model.fc2"


def _fault_callback(at: int, action):
    class Fault(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == at:
                action(pl_module)

    return Fault()


def _inf_grad_once(pl_module):
    layer = pl_module.model.fc1
    handle = None

    def hook(g):
        handle.remove()
        return torch.full_like(g, math.inf)

    handle = layer.lora_B.register_hook(hook)


def _freeze_fc1(pl_module):
    for p in (pl_module.model.fc1.lora_A, pl_module.model.fc1.lora_B):
        p.requires_grad_(False)


def _merge_fc1(pl_module):
    pl_module.model.fc1.merge()


def _train(callbacks, steps: int = 6, module=None, **kw):
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=2, histogram_every=None)
    advisor = AlphaRegimeAdvisor(gap_every=2)
    trainer = make_trainer(max_steps=steps, callbacks=[monitor, advisor, *callbacks], **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module or make_module())
    drift = [w for w in caught if issubclass(w.category, SignalDriftWarning)]
    return trainer, monitor, advisor, drift


def _one_warning_per_reason(drift) -> None:
    texts = [str(w.message) for w in drift]
    assert len(texts) == len(set(texts)), texts


def test_infinite_gradients_once():
    trainer, monitor, advisor, drift = _train([_fault_callback(2, _inf_grad_once)])
    assert trainer.global_step == 6
    assert monitor.engine.skipped_steps >= 1
    assert f"signaldrift_layers/{FC1}/drift_ratio" in monitor.history[1].tags()
    assert f"signaldrift_layers/{FC1}/drift_ratio" not in monitor.history[2].tags()
    assert any("non-finite" in str(w.message) for w in drift)
    _one_warning_per_reason(drift)


def test_zero_learning_rate_skips_every_step():
    trainer, monitor, advisor, drift = _train([], steps=3, module=make_module(lr=0.0))
    assert trainer.global_step == 3 and monitor.engine.skipped_steps == 2 * 3  # two layers, three steps
    assert all(f"signaldrift_layers/{FC1}/drift_ratio" not in h.tags() for h in monitor.history.values())
    assert advisor.probes == []
    assert len([w for w in drift if "did not update" in str(w.message)]) == 1


def test_layer_frozen_mid_run():
    trainer, monitor, advisor, drift = _train([_fault_callback(3, _freeze_fc1)])
    assert trainer.global_step == 6
    assert f"signaldrift_layers/{FC1}/drift_ratio" in monitor.history[2].tags()
    for step in (3, 4, 5):
        assert f"signaldrift_layers/{FC1}/drift_ratio" not in monitor.history[step].tags()
        assert f"signaldrift_layers/{FC2}/drift_ratio" in monitor.history[step].tags()
    assert monitor.history[5].tags()["signaldrift/skipped_steps"] >= 3
    _one_warning_per_reason(drift)


def test_adapter_merged_mid_run():
    trainer, monitor, advisor, drift = _train([_fault_callback(3, _merge_fc1)])
    assert trainer.global_step == 6
    for step in (3, 4, 5):
        assert f"signaldrift_layers/{FC1}/drift_ratio" not in monitor.history[step].tags()
        assert f"signaldrift_layers/{FC2}/drift_ratio" in monitor.history[step].tags()
    assert any("merged" in str(w.message) for w in drift)
    _one_warning_per_reason(drift)
    assert all(math.isfinite(p["step_gap"]) for p in advisor.probes)


def test_rank_larger_than_the_layer_allows():
    """PEFT lets r exceed min(in, out) (fc1 is 16 x 8, r = 12): measured where the math allows, never a crash."""
    peft = pytest.importorskip("peft")
    from tests.conftest import TinyMLP

    model = peft.get_peft_model(TinyMLP(), peft.LoraConfig(r=12, lora_alpha=12, target_modules=["fc1", "fc2"]))
    trainer, monitor, advisor, drift = _train([], steps=4, module=make_module(model=model))
    assert trainer.global_step == 4
    values = [v for h in monitor.history.values() for k, v in h.tags().items() if "fc1" in k]
    assert values and all(math.isfinite(v) for v in values)
    _one_warning_per_reason(drift)


def test_amp_skipped_steps_with_a_cpu_grad_scaler():
    from lightning.pytorch.plugins.precision import MixedPrecision

    try:
        scaler = torch.amp.GradScaler("cpu")
        plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    except (RuntimeError, TypeError, ValueError) as err:  # pragma: no cover - depends on the torch build
        pytest.skip(f"no CPU GradScaler here: {err}")
    trainer, monitor, advisor, drift = _train([_fault_callback(2, _inf_grad_once)], plugins=[plugin])
    assert trainer.global_step == 6
    assert scaler.get_scale() < 65536.0  # the scaler saw the overflow and backed off
    assert f"signaldrift_layers/{FC1}/drift_ratio" not in (monitor.history[2].tags() if 2 in monitor.history else {})
    assert f"signaldrift_layers/{FC1}/drift_ratio" in monitor.history[3].tags()
    assert monitor.history[5].tags()["signaldrift/skipped_steps"] >= 1
    assert any("did not update" in str(w.message) or "non-finite" in str(w.message) for w in drift)
    _one_warning_per_reason(drift)


def test_crash_after_a_checkpoint_then_resume_logs_every_step_once(tmp_path):
    """Steps 3-4 are logged, the run dies at step 5, the resume from step 3 trains 3-4 again:
    TensorBoard shows each step once (the resumed values) and the probe history carries on."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from callbacks.report import read_run
    from tests.callbacks.helpers import read_scalars, scalar_steps

    def crash(pl_module):
        raise RuntimeError("simulated crash")

    def run(max_steps, extra, ckpt_path=None):
        monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=None, histogram_every=None)
        advisor = AlphaRegimeAdvisor(gap_every=2)
        ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=3)
        trainer = make_trainer(max_steps=max_steps, enable_checkpointing=True, log_every_n_steps=1,
                               logger=TensorBoardLogger(str(tmp_path), name="tb", version=0),
                               callbacks=[monitor, advisor, ckpt, *extra])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(make_module(), ckpt_path=ckpt_path)
        return monitor, advisor

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(8, [_fault_callback(5, crash)])
    before = read_scalars(tmp_path / "tb")  # what the crashed run wrote
    assert set(before["Summary/drift_ratio"]) == {0, 1, 2, 3, 4}
    monitor, advisor = run(8, [], ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert sorted(monitor.history) == list(range(8))
    assert [p["step"] for p in advisor.probes] == [2, 4, 6]  # probe 2 from the checkpoint, 4 and 6 after
    steps = scalar_steps(tmp_path / "tb")
    assert len(list((tmp_path / "tb" / "version_0").glob("events.out.tfevents.*"))) == 2
    for tag in ("Summary/drift_ratio", f"signaldrift_layers/{FC1}/drift_ratio", "Summary/step_gap"):
        assert sorted(steps[tag]) == sorted(set(steps[tag])), tag  # no duplicated step
    assert sorted(steps["Summary/drift_ratio"]) == list(range(8))  # none missing
    after = read_scalars(tmp_path / "tb")["Summary/drift_ratio"]
    assert all(after[s] == pytest.approx(monitor.history[s].tags()["Summary/drift_ratio"]) for s in range(8))
    record = read_run(tmp_path / "tb")  # what `signaldrift report` reads: the same, and whole
    assert record.scalars["Summary/drift_ratio"] == after and sorted(record.verdicts) == [2, 4, 6]
    assert record.complete
