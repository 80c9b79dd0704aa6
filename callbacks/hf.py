"""SignalDriftTrainerCallback: the monitor's measurements inside a Hugging Face ``transformers.Trainer``."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

from torch import Tensor
from transformers import TrainerCallback

from callbacks.engine import SignalDriftEngine, SignalDriftWarning


class SignalDriftTrainerCallback(TrainerCallback):
    """Sections 1-4 of the Signal-Drift contract for a PEFT (or this project's) model trained by ``Trainer``.

    The same :class:`~callbacks.engine.SignalDriftEngine` as :class:`callbacks.SignalDriftMonitor`
    computes the numbers. Gradients are captured when they are final (post-accumulate hooks on the
    LoRA factors), i.e. before the Trainer clips them; with ``fp16`` (a loss scaler) they are read
    after clipping, unscaled, at ``on_pre_optimizer_step``. The realized update is read after the
    optimizer step; steps the optimizer skipped are not counted.

    Logged through the Trainer's own reporting: at each training log event the latest measurement's
    tags (``signaldrift/<layer>/<metric>``, ``signaldrift/<metric>``, ``signaldrift/<metric>_max``,
    ``signaldrift/skipped_steps``; see :class:`callbacks.SignalDriftMonitor`) are added to the logs,
    so ``report_to="tensorboard"`` writes them (as ``train/signaldrift/...``). Every measured step is
    kept in ``history``. The reporting callbacks must see the logs after this one: register it with
    :meth:`attach`.

    Example::

        trainer = Trainer(model=peft_model, args=TrainingArguments(..., report_to="tensorboard"), ...)
        drift = SignalDriftTrainerCallback.attach(trainer, every_n_steps=1)
        trainer.train()
        drift.history[10]["signaldrift/drift_ratio"]
    """

    def __init__(self, every_n_steps: int = 1, top_k: int | None = None, probe_every: int | None = 50,
                 layers: Sequence[str] | None = None) -> None:
        self.engine = SignalDriftEngine(every_n_steps, top_k, probe_every, layers)
        self._grads: dict[str, dict[str, Tensor]] = {}
        self._hooks: list = []
        self._latest: dict[str, float] = {}
        self._probing = probe_every is not None

    @classmethod
    def attach(cls, trainer, **kwargs) -> SignalDriftTrainerCallback:
        """Create the callback and put it first, before the Trainer's reporting callbacks."""
        callback = cls(**kwargs)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    @property
    def history(self) -> dict[int, dict[str, float]]:
        return self.engine.history

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        sharded = [name for name in ("fsdp", "deepspeed") if getattr(args, name, None)]
        if sharded:
            raise RuntimeError(
                f"SignalDriftTrainerCallback does not support {sharded[0]}: it shards the LoRA factors across ranks, "
                "so each rank would measure a shard instead of the factor. Supported: one device and DDP; see README, "
                "'Running at scale'.")
        self._probing = self.engine.probe_every is not None and int(getattr(args, "world_size", 1) or 1) == 1
        if self.engine.probe_every is not None and not self._probing:
            warnings.warn("SignalDriftTrainerCallback: spectral_suppression and spectral_gain (section 4) are not "
                          "measured under data parallelism (they need the global batch's full-weight gradient)",
                          SignalDriftWarning, stacklevel=2)
        self.engine.attach(model)
        self._remove_hooks()
        if not getattr(args, "fp16", False):
            for v in self.engine.views(model):
                for key, param in (("A", v.A), ("B", v.B)):
                    self._hooks.append(param.register_post_accumulate_grad_hook(self._grad_hook(v.name, key)))

    def _grad_hook(self, name: str, key: str):
        def hook(param: Tensor) -> None:
            self._grads.setdefault(name, {})[key] = param.grad.detach().clone()  # final after the last micro-batch

        return hook

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self._probing and self.engine.probes(state.global_step):
            self.engine.start_capture(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = {n: (g["A"], g["B"]) for n, g in self._grads.items() if "A" in g and "B" in g}
        self._grads = {}
        self.engine.before_step(model, state.global_step, grads=grads)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        result = self.engine.after_step(model)
        if result is not None:
            self._latest = result[1]

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
