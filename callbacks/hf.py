"""SignalDriftTrainerCallback: the monitor's measurements inside a Hugging Face ``transformers.Trainer``."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import TrainerCallback

from callbacks.engine import (
    _UNSET,
    SignalDriftEngine,
    SignalDriftWarning,
    refuse_merged_untrainable,
    renamed_full_grad_every,
)
from callbacks.measurements import StepMeasurement
from callbacks.parallel import factors_sharded, parallel_mode
from signaldrift import lora_layers


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def loss_scaler(optimizer):
    """The enabled AMP GradScaler behind the Trainer's (accelerate-wrapped) optimizer, else None."""
    scaler = getattr(optimizer, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def unscaled(scaler, optimizer) -> bool:
    """Whether ``scaler`` has already unscaled this optimizer's gradients in the current step.

    Recent transformers versions always do so before ``on_pre_optimizer_step`` (they compute the
    gradient norm even without clipping); older ones only when clipping. The stage is read from the
    scaler's per-optimizer state (no entry yet: not unscaled); where that state cannot be read at
    all, the gradients count as unscaled, as recent versions leave them.
    """
    raw = getattr(optimizer, "optimizer", optimizer)
    states = getattr(scaler, "_per_optimizer_states", None)
    if raw is None or not isinstance(states, dict):
        return True
    if id(raw) not in states:
        return False
    stage = states[id(raw)].get("stage")
    return getattr(stage, "name", "UNSCALED") != "READY"


class SignalDriftTrainerCallback(TrainerCallback):
    """docs/metrics.md §1-§4 for a PEFT (or this project's) model trained by ``Trainer``.

    The same :class:`~callbacks.engine.SignalDriftEngine` as :class:`callbacks.SignalDriftMonitor`
    computes the numbers. The realized update is read after the optimizer step; steps the
    optimizer skipped are not counted.

    Where the gradients are read. ``Trainer`` offers no hook between the last backward pass and
    gradient clipping, so on one process the factor gradients are captured when they are final
    (post-accumulate hooks on the LoRA factors): before clipping, and, under a loss scaler (``fp16``),
    still scaled, so they are divided by the scaler's scale. Under data parallelism those hooks would
    see each rank's own gradients before the all-reduce, so there they are read at
    ``on_pre_optimizer_step`` instead: all-reduced, unscaled, **and after clipping** (``max_grad_norm``).
    What clipping after the read means, per metric:

    * §1 and §2 (``delta_*``, ranks, ``signal_norm``, ``drift_*``, ``step_size``) use no
      gradient: unaffected;
    * §3 (``grad_alignment``, ``grad_drift_ratio``): ratios of norms of the equivalent gradient,
      which clipping by the global norm multiplies by one factor: unaffected;
    * §4 (``spectral_gain``, ``spectral_suppression``): the captured full-weight gradient is never
      clipped, so while clipping is active the gain read after it is a lower bound (times the clip
      factor squared); it is only measured on one process, where the gradients are read before clipping.

    The full-weight gradient ``G`` is summed from output gradients of the scaled loss and is always
    divided by the scaler's scale, whatever divisor the factor gradients needed.
    Logged through the Trainer's own reporting: at each training log event the latest measurement's
    tags (``signaldrift/<layer>/<metric>``, ``signaldrift/<metric>``, ``signaldrift/<metric>_max``,
    ``signaldrift/skipped_steps``; see :class:`callbacks.SignalDriftMonitor`) are added to the logs,
    so ``report_to="tensorboard"`` writes them (as ``train/signaldrift/...``). Every measured step is
    kept in ``history``. The reporting callbacks must see the logs after this one: register it with
    :meth:`attach` (once per Trainer: a second call returns the callback already attached). A
    callback reused for another ``train()`` starts clean (snapshot, history, counts) unless that run
    resumes from a checkpoint (``global_step > 0`` at its start).

    Example::

        trainer = Trainer(model=peft_model, args=TrainingArguments(..., report_to="tensorboard"), ...)
        drift = SignalDriftTrainerCallback.attach(trainer, every_n_steps=1)
        trainer.train()
        drift.history[10].summary("drift_ratio")
    """

    def __init__(self, every_n_steps: int = 1, *, top_k: int | None = None, full_grad_every: int | None = 50,
                 layers: Sequence[str] | None = None, probe_every: object = _UNSET,
                 gram_dtype: torch.dtype = torch.float64) -> None:
        full_grad_every = renamed_full_grad_every(full_grad_every, probe_every, type(self).__name__)
        self.engine = SignalDriftEngine(every_n_steps, top_k=top_k, full_grad_every=full_grad_every, layers=layers,
                                        gram_dtype=gram_dtype)
        self._settings = dict(every_n_steps=every_n_steps, top_k=top_k, full_grad_every=full_grad_every,
                              layers=self.engine.layer_patterns, gram_dtype=gram_dtype)
        self._grads: dict[str, dict[str, Tensor]] = {}
        self._hooks: list = []
        self._latest: dict[str, float] = {}
        self._probing = full_grad_every is not None
        self._hooked = True  # gradients from post-accumulate hooks (one process) or from .grad (DDP)

    @classmethod
    def attach(cls, trainer, **kwargs) -> SignalDriftTrainerCallback:
        """Create the callback and put it first, before the Trainer's reporting callbacks.

        Idempotent: when the Trainer already has one (attached before, or passed in ``callbacks``), that
        one is moved first and returned, never a second one measuring the same steps.

        Raises:
            TypeError: ``trainer`` is not a ``transformers.Trainer`` (it has no ``callback_handler``).
            ValueError: the Trainer already has this callback with other settings than ``kwargs``.
        """
        callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", None)
        if not isinstance(callbacks, list):
            raise TypeError(f"{cls.__name__}.attach needs a transformers.Trainer (with a callback_handler), got a "
                            f"{type(trainer).__name__}: {_shown(trainer)}")
        callback = cls(**kwargs)  # settings checked before anything changes
        present = [c for c in callbacks if isinstance(c, SignalDriftTrainerCallback)]
        if present:
            existing = present[0]
            if existing._settings != callback._settings:
                raise ValueError(f"the Trainer already has a {type(existing).__name__} with {existing._settings}; "
                                 f"attach with {callback._settings} would measure every step twice: use the one "
                                 "attached, or remove it first (trainer.remove_callback)")
            callbacks.remove(existing)
            callbacks.insert(0, existing)
            return existing
        callbacks.insert(0, callback)
        return callback

    @property
    def history(self) -> dict[int, StepMeasurement]:
        return self.engine.history

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{type(self).__name__}.on_train_begin: model must be the nn.Module being trained, got "
                            f"{type(model).__name__}; the Trainer passes it (add the callback with attach())")
        refuse_merged_untrainable(model, type(self).__name__)
        world = int(getattr(args, "world_size", 1) or 1)
        mode = parallel_mode("SignalDriftTrainerCallback", [n for n in ("fsdp", "deepspeed") if getattr(args, n, None)],
                             world, sharded=model is not None and factors_sharded(lora_layers(model)),
                             devices="one device")
        self._probing = self.engine.full_grad_every is not None and mode == "single"
        if self.engine.full_grad_every is not None and not self._probing:
            warnings.warn("SignalDriftTrainerCallback: spectral_suppression and spectral_gain (docs/metrics.md §4) are not "
                          "measured under data parallelism or sharding (they need the global batch's full-weight "
                          "gradient)", SignalDriftWarning, stacklevel=2)
        self._remove_hooks()
        if int(getattr(state, "global_step", 0) or 0) == 0:  # a new run, not a resume: forget the previous one
            self.engine.reset()
            self._grads, self._latest = {}, {}
        self.engine.attach(model)
        self._hooked = mode == "single"  # see the class docstring
        if self._hooked:
            for v in self.engine.views(model):
                for key, param in (("A", v.A), ("B", v.B)):
                    self._hooks.append(param.register_post_accumulate_grad_hook(self._grad_hook(v.name, key)))

    def _grad_hook(self, name: str, key: str):
        def hook(param: Tensor) -> None:
            self._grads.setdefault(name, {})[key] = param.grad.detach().clone()  # final after the last micro-batch

        return hook

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self._probing and self.engine.captures_full_grad(state.global_step):
            self.engine.start_capture(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        grads = {n: (g["A"], g["B"]) for n, g in self._grads.items() if "A" in g and "B" in g}
        self._grads = {}
        scaler = loss_scaler(optimizer)
        loss_scale = float(scaler.get_scale()) if scaler is not None else 1.0  # the scale of this step's backward
        if self._hooked:
            grad_scale = loss_scale  # captured at backward time: still scaled
        else:
            grad_scale = loss_scale if scaler is not None and not unscaled(scaler, optimizer) else 1.0
        self.engine.before_step(model, state.global_step, grad_scale=grad_scale, grads=grads, loss_scale=loss_scale)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        result = self.engine.after_step(model)
        if result is not None:
            self._latest = result.tags()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self._latest and "loss" in logs:  # training log events only
            logs.update(self._latest)

    def on_train_end(self, args, state, control, **kwargs):
        self._remove_hooks()
        self.engine.stop_capture()

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
