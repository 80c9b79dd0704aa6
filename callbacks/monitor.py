"""SignalDriftMonitor: docs/metrics.md §1-§4, logged from any Lightning Trainer."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from callbacks._lightning import (
    CallbackBase,
    check_hook_call,
    grad_scaler,
    log_metrics,
    refuse_sharded,
    tensorboard_writers,
    unscale_divisor,
    world_size,
)
from callbacks.engine import (
    _UNSET,
    SignalDriftEngine,
    SignalDriftWarning,
    check_positive_int,
    refuse_merged_untrainable,
    renamed_full_grad_every,
)
from callbacks.measurements import METRICS, PREFIX, StepMeasurement, summary_tag
from callbacks.tensorboard import add_custom_layout, add_spectra_figure, add_spectrum_histograms, mark_restart


class SignalDriftMonitor(CallbackBase):
    """Measure every LoRA layer's update, step split, gradient split and suppression.

    Works with this project's layers and PEFT's ``LoraLayer`` (Linear, GPT-2 Conv1D, Embedding);
    DoRA and other variants are skipped with one warning. ``(A0, B0)`` are snapshotted at fit
    start; scale, rank and active adapters are read live at each measurement. A monitor reused for
    a new fit starts clean (snapshot, history, counts); a fit resumed from a checkpoint gets the
    checkpoint's back. A module whose LoRA layers are all merged, with nothing else trainable, is
    refused at setup (:class:`~callbacks.engine.MergedLoRAError`). Gradients are read
    in ``on_before_optimizer_step`` (after accumulation and AMP unscaling, before clipping); the
    realized update after the step. A step that AMP skipped (nothing moved) is not counted.
    Runs on one device, under DDP and under FSDP2 (``ModelParallelStrategy`` or ``fully_shard``:
    the factors and gradients are gathered whole on every rank for the measurement, the base norms
    come from the shards); FSDP1 and DeepSpeed are refused at setup (:mod:`callbacks.parallel`).

    Logged (step = the optimizer step measured, 0-based), to every logger, from rank zero:

    * ``signaldrift_layers/<layer>/<metric>`` (every ``layer_log_every`` steps; every measured
      step in ``monitor.history``) for each layer and each metric of
      ``callbacks.measurements.METRICS`` (docs/metrics.md sections 1-4: section 1 is dW before
      step t, section 2 the step t, section 4 on full-gradient steps only). Undefined values are
      left out.
    * the median over layers and the maximum (``<metric>_max``), every measured step: under
      ``Summary/`` for drift_ratio and step_size, under ``signaldrift/`` for the other metrics
      (``callbacks.measurements.summary_tag``).
    * ``signaldrift/skipped_steps``: cumulative count of layer-steps skipped (non-finite values,
      merged layers, steps the optimizer did not take).

    With a TensorBoard logger also: histograms ``signaldrift_layers/<layer>/singular_values`` and
    the figure ``signaldrift/update_spectra`` (the largest updates' spectra, labelled) every
    ``histogram_every`` steps and at fit end, and a Custom Scalars dashboard ("Signal-Drift",
    :func:`callbacks.tensorboard.dashboard_layout`) charting only tags that are logged.

    Args:
        every_n_steps: measure every this many optimizer steps (> 0).
        top_k: subspace size for the gradient split (default: the layer's rank).
        full_grad_every: capture the full-weight gradient every this many steps (None: never; off
            under DDP and FSDP2, with one warning).
        layers: names or dotted suffixes of the layers to watch (default: all LoRA layers).
        gram_dtype: ``torch.float32`` for faster, about 1e-7 relative, products in sections 1-3
            (default ``torch.float64``; see :class:`~callbacks.engine.SignalDriftEngine`).
        histogram_every: write singular-value histograms every this many steps (TensorBoard only;
            None: never).
        layer_log_every: send per-layer scalars to the loggers every this many steps (default: the
            Trainer's ``log_every_n_steps``). Writing hundreds of scalars costs more than computing
            them, so per-layer values follow Lightning's logging cadence; aggregates do not.
        dashboard: more charts for the dashboard's first category, ``title -> [tag patterns]``
            (regular expressions of tags the caller logs, e.g. its validation loss: a multiline
            chart, which TensorBoard draws before the margin charts) or ``title -> ["Margin",
            [[value, lower, upper]]]`` (exact tags: a margin chart, drawn after ours; log a series'
            three tags in one call, at the same steps).

    Example::

        trainer = Trainer(callbacks=[SignalDriftMonitor(every_n_steps=10)], logger=TensorBoardLogger("runs"))
        trainer.fit(model)
        monitor.history[10].summary("drift_ratio")           # median over layers at step 10
        monitor.history[10].layers["model.fc1"]["drift_ratio"]
    """

    def __init__(self, every_n_steps: int = 1, *, top_k: int | None = None, full_grad_every: int | None = 50,
                 layers: Sequence[str] | None = None, histogram_every: int | None = 50,
                 layer_log_every: int | None = None, probe_every: object = _UNSET,
                 dashboard: dict[str, list] | None = None, gram_dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        full_grad_every = renamed_full_grad_every(full_grad_every, probe_every, type(self).__name__)
        self.engine = SignalDriftEngine(every_n_steps, top_k=top_k, full_grad_every=full_grad_every, layers=layers,
                                        gram_dtype=gram_dtype)
        check_positive_int("histogram_every", histogram_every, allow_none=True)
        check_positive_int("layer_log_every", layer_log_every, allow_none=True)
        self.histogram_every, self.layer_log_every = histogram_every, layer_log_every
        self.dashboard = dict(dashboard or {})
        self._scale_before: float | None = None
        self._warned_no_logger = False
        self._probing = full_grad_every is not None

    @property
    def history(self) -> dict[int, StepMeasurement]:
        """Every measured step (step -> layer -> metric -> value), kept with or without a logger."""
        return self.engine.history

    @property
    def layer_names(self) -> list[str]:
        return list(self.engine.names)

    def setup(self, trainer, pl_module, stage: str) -> None:
        check_hook_call("SignalDriftMonitor", "setup", trainer, pl_module)
        if stage != "fit":
            return
        mode = refuse_sharded(trainer, "SignalDriftMonitor", pl_module, allow_fsdp2=True)
        refuse_merged_untrainable(pl_module, "SignalDriftMonitor")
        # A new fit starts clean; a resumed one gets its state back from the checkpoint after this hook.
        self.engine.reset()
        self._scale_before = None
        self._probing = self.engine.full_grad_every is not None and world_size(trainer) == 1 and mode == "single"
        if self.engine.full_grad_every is not None and not self._probing:
            warnings.warn("SignalDriftMonitor: spectral_suppression and spectral_gain (docs/metrics.md §4) are not measured "
                          "under data parallelism or sharding: they need the full-weight gradient of the global batch, "
                          "which only an all-reduce of an (m, n) matrix per layer would give", SignalDriftWarning,
                          stacklevel=2)
        self.engine.attach(pl_module)  # raises a clear error when there is no LoRA layer
        if not trainer.loggers and not self._warned_no_logger:
            self._warned_no_logger = True
            warnings.warn("SignalDriftMonitor: the trainer has no logger; values are kept in monitor.history only",
                          SignalDriftWarning, stacklevel=2)

    def on_fit_start(self, trainer, pl_module) -> None:
        check_hook_call("SignalDriftMonitor", "on_fit_start", trainer, pl_module)
        self.engine.attach(pl_module)  # a snapshot restored from a checkpoint is kept
        self.engine.to_device(pl_module.device)
        from callbacks.advisor import AlphaRegimeAdvisor

        advisor = any(isinstance(cb, AlphaRegimeAdvisor) for cb in trainer.callbacks)
        for w in tensorboard_writers(trainer):
            add_custom_layout(w, advisor=advisor, full_grad=self._probing, extra=self.dashboard)

    def on_train_start(self, trainer, pl_module) -> None:
        check_hook_call("SignalDriftMonitor", "on_train_start", trainer, pl_module)
        if trainer.global_step > 0:  # resumed (the loops are restored by now): steps after the checkpoint
            for w in tensorboard_writers(trainer):  # are trained, and logged, again
                mark_restart(w, trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        check_hook_call("SignalDriftMonitor", "on_train_batch_start", trainer, pl_module)
        if self._probing and self.engine.captures_full_grad(trainer.global_step):
            self.engine.start_capture(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        check_hook_call("SignalDriftMonitor", "on_before_optimizer_step", trainer, pl_module)
        scaler = grad_scaler(trainer)
        self._scale_before = float(scaler.get_scale()) if scaler is not None else None
        # The factor gradients are unscaled by now (unless the optimizer unscales inside step());
        # the output gradients captured for G never are: they carry the scale of this step's backward.
        self.engine.before_step(pl_module, trainer.global_step, unscale_divisor(trainer, optimizer),
                                loss_scale=self._scale_before or 1.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        check_hook_call("SignalDriftMonitor", "on_train_batch_end", trainer, pl_module)
        scaler = grad_scaler(trainer)
        taken = not (scaler is not None and self._scale_before is not None
                     and float(scaler.get_scale()) < self._scale_before)  # the scaler backs off on overflow
        self._scale_before = None
        result = self.engine.after_step(pl_module, step_taken=taken)
        if result is None:
            return
        step = result.step
        every = self.layer_log_every or max(int(getattr(trainer, "log_every_n_steps", 1) or 1), 1)
        log_metrics(trainer, result.tags(layers=step % every == 0), step)
        if self.histogram_every is not None and step % self.histogram_every == 0:
            for w in tensorboard_writers(trainer):
                add_spectrum_histograms(w, self.engine.spectra, step)
                add_spectra_figure(w, self.engine.spectra, step)

    def on_fit_end(self, trainer, pl_module) -> None:
        check_hook_call("SignalDriftMonitor", "on_fit_end", trainer, pl_module)
        self.engine.stop_capture()
        for w in tensorboard_writers(trainer):
            add_spectra_figure(w, self.engine.spectra, trainer.global_step)
            w.flush()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.engine.stop_capture()

    def state_dict(self) -> dict:
        return self.engine.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.engine.load_state_dict(state_dict)

    def latest(self, metric: str, window: int = 5) -> list[float]:
        """Recent model-level medians of a metric (e.g. "drift_ratio")."""
        return self.engine.latest(metric, window)


__all__ = ["METRICS", "PREFIX", "SignalDriftMonitor", "summary_tag"]
