"""Values under a loss scaler (fp16 AMP): every metric equals the unscaled run's, in both callbacks.

A GradScaler at 65536 multiplies the loss, so every gradient of the backward pass (the factor
gradients and the layer-output gradients the full-weight gradient G is summed from) carries the
scale until someone divides it out. Only the values tell whether each was divided exactly once.
With autocast off the scaled run is the same arithmetic times a power of two, so the two runs
agree to round-off; with real fp16 autocast they agree to fp16's precision.
"""
import contextlib
import math
import warnings

import pytest
import torch

from callbacks import SignalDriftMonitor
from tests.callbacks.helpers import make_module, make_trainer

SCALE = 65536.0
LAYER = "model.fc1"


def _scaler():
    try:
        return torch.amp.GradScaler("cpu", init_scale=SCALE)
    except (RuntimeError, TypeError, ValueError) as err:  # pragma: no cover - depends on the torch build
        pytest.skip(f"no CPU GradScaler here: {err}")


def _same_metrics(ref: dict, got: dict, rel: float) -> None:
    assert sorted(ref) == sorted(got)
    for step in ref:
        assert sorted(ref[step]) == sorted(got[step]), step
        for tag, value in ref[step].items():
            assert math.isclose(got[step][tag], value, rel_tol=rel, abs_tol=1e-12), (step, tag, value, got[step][tag])


def _lightning_history(plugins=(), optimizer="adamw"):
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=1, histogram_every=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(max_steps=4, callbacks=[monitor], plugins=list(plugins)).fit(make_module(optimizer=optimizer))
    return {step: m.tags() for step, m in monitor.history.items()}


def _scaled_fp32_plugin(scaler):
    """Lightning's 16-mixed plugin with its GradScaler, autocast off: the loss scale is the only change."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    class ScaledFloat32(MixedPrecision):
        def autocast_context_manager(self):
            return contextlib.nullcontext()

    return ScaledFloat32("16-mixed", "cpu", scaler=scaler)


@pytest.mark.parametrize("optimizer", ["adamw", "fused-adamw"])
def test_lightning_every_metric_under_a_loss_scale_equals_the_unscaled_run(optimizer, monkeypatch):
    """Lightning unscales the factor gradients before the hook (for a fused optimizer it does not):
    either way, every logged number, spectral_gain included, is the unscaled run's."""
    if optimizer == "fused-adamw":
        try:
            torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)
        except (RuntimeError, TypeError) as err:  # pragma: no cover - depends on the torch build
            pytest.skip(f"no fused AdamW on CPU here: {err}")
        real = torch.optim.AdamW
        monkeypatch.setattr(torch.optim, "AdamW", lambda params, **kw: real(params, fused=True, **kw))
    ref = _lightning_history()
    scaler = _scaler()
    got = _lightning_history([_scaled_fp32_plugin(scaler)])
    assert scaler.get_scale() == SCALE  # no step overflowed: the scale was 65536 throughout
    assert f"signaldrift_layers/{LAYER}/spectral_gain" in got[1]
    _same_metrics(ref, got, rel=1e-3)
    # Tighter than the contract: only the order of float32 operations differs.
    assert got[2][f"signaldrift_layers/{LAYER}/spectral_gain"] == pytest.approx(ref[2][f"signaldrift_layers/{LAYER}/spectral_gain"], rel=1e-5)


def test_lightning_16_mixed_spectral_gain_is_the_float32_value():
    """The real fp16 path (autocast to float16 on the CPU): the gain agrees to fp16 precision,
    not off by the loss scale squared (65536^2 = 4.3e9)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    ref = _lightning_history()
    scaler = _scaler()
    got = _lightning_history([MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert scaler.get_scale() == SCALE
    for step in range(4):
        for layer in ("model.fc1", "model.fc2"):
            tag = f"signaldrift_layers/{layer}/spectral_gain"
            assert got[step][tag] == pytest.approx(ref[step][tag], rel=2e-2), (step, layer)
            assert got[step][f"signaldrift_layers/{layer}/step_size"] == pytest.approx(ref[step][f"signaldrift_layers/{layer}/step_size"], rel=2e-2)


# ----------------------------------------------------------------- Hugging Face Trainer


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.randn(n, 2, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class _Regressor(torch.nn.Module):
    """TinyMLP with this project's LoRA on fc1 and fc2, returning (loss, output) as Trainer expects."""

    def __init__(self):
        super().__init__()
        import lora_alpha
        from tests.conftest import TinyMLP

        self.model = TinyMLP()
        lora_alpha.inject(self.model, ["fc1", "fc2"], rank=2, alpha=8.0, rule="standard")

    def forward(self, x, labels=None):
        out = self.model(x)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


def _hf_history(tmp_path, scaler=None, max_grad_norm=0.0, optim="adamw_torch"):
    from transformers import Trainer, TrainingArguments

    from callbacks.hf import SignalDriftTrainerCallback

    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, fp16=scaler is not None, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, learning_rate=1e-2, max_grad_norm=max_grad_norm, save_strategy="no",
                             disable_tqdm=True, seed=0, logging_strategy="no", optim=optim)
    trainer = Trainer(model=_Regressor(), args=args, train_dataset=_Data())
    if scaler is not None:
        # What accelerate sets up for fp16 on a GPU (the scaler scales the loss, the norm computation
        # unscales the gradients before on_pre_optimizer_step), here on the CPU with autocast off.
        from accelerate.utils import AutocastKwargs

        trainer.accelerator.scaler = scaler
        trainer.accelerator.native_amp = True
        trainer.accelerator.autocast_handler = AutocastKwargs(enabled=False)
    drift = SignalDriftTrainerCallback.attach(trainer, every_n_steps=1, full_grad_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return {step: m.tags() for step, m in drift.history.items()}


def test_hf_every_metric_under_a_loss_scale_equals_the_unscaled_run(tmp_path):
    ref = _hf_history(tmp_path / "fp32")
    scaler = _scaler()
    got = _hf_history(tmp_path / "scaled", scaler)
    assert scaler.get_scale() == SCALE and scaler._per_optimizer_states == {}  # used, and stepped
    assert f"signaldrift_layers/{LAYER}/spectral_gain" in got[1] and f"signaldrift_layers/{LAYER}/grad_alignment" in got[1]
    _same_metrics(ref, got, rel=1e-3)


def test_hf_reads_gradients_before_clipping(tmp_path):
    """Clipping hard (max_grad_norm 1e-6) changes the realized steps, not the gradients read at
    step 0: the first step's gradient metrics equal the unclipped run's (SGD, so the step shows it)."""
    ref = _hf_history(tmp_path / "free", optim="sgd")
    got = _hf_history(tmp_path / "clipped", max_grad_norm=1e-6, optim="sgd")
    for tag in (f"signaldrift_layers/{LAYER}/spectral_gain", "signaldrift_layers/model.fc2/spectral_gain"):
        assert got[0][tag] == pytest.approx(ref[0][tag], rel=1e-6)
    # ...while the step itself was clipped: the realized update is far smaller.
    assert got[0][f"signaldrift_layers/{LAYER}/step_size"] < 1e-3 * ref[0][f"signaldrift_layers/{LAYER}/step_size"]


def test_hf_unscaled_reads_the_scalers_stage():
    """Under DDP the callback reads .grad at on_pre_optimizer_step, scaled or not depending on whether
    the Trainer has unscaled them yet (it does when it computes the norm)."""
    from callbacks.hf import loss_scaler, unscaled

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = _scaler()

    class Wrapped:  # accelerate's AcceleratedOptimizer: .optimizer and .scaler
        optimizer, scaler = opt, None

    Wrapped.scaler = scaler
    assert loss_scaler(Wrapped) is scaler and loss_scaler(opt) is None
    scaler.scale(p.sum()).backward()
    assert p.grad[0] == SCALE and not unscaled(scaler, Wrapped)
    scaler.unscale_(opt)
    assert p.grad[0] == 1.0 and unscaled(scaler, Wrapped)
