"""The measuring engine shared by every callback: *what* to compute for which layer at a step.

Framework-free (torch + signaldrift only), so the Lightning callbacks and the Hugging Face
Trainer callback call the same code. Callers decide *when* (their hooks) and *where to log*.
"""
from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from signaldrift import (
    FullGradAccumulator,
    NonFiniteError,
    grad_split,
    lora_layers,
    spectral_suppression,
    step_split,
    update_spectrum,
)
from signaldrift.errors import check_int, check_number
from signaldrift.views import LoRAView

from callbacks.measurements import PREFIX, StepMeasurement, measurement, parse_tag



class SignalDriftWarning(UserWarning):
    """A Signal-Drift diagnostic could not be computed as asked (the run goes on)."""


class NoLoRALayersError(ValueError):
    """The model has no LoRA layer the diagnostics can read."""


def check_positive_int(name: str, value: int | None, allow_none: bool = False) -> None:
    check_int(name, value, allow_none=allow_none)


_UNSET = object()


def renamed_full_grad_every(full_grad_every: int | None, probe_every: object, owner: str) -> int | None:
    """``probe_every`` was renamed ``full_grad_every`` ("probe" is the advisor's step-gap probe)."""
    if probe_every is _UNSET:
        return full_grad_every
    if full_grad_every != 50:
        raise ValueError(f"{owner}: pass full_grad_every only (probe_every is its old name), got both")
    warnings.warn(f"{owner}(probe_every=...) is deprecated; use full_grad_every (the old name goes in the next "
                  "release)", FutureWarning, stacklevel=3)
    return probe_every  # type: ignore[return-value]


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


@dataclass
class _Pending:
    """What one layer's measurement holds between the gradient hook and the realized step."""

    A: Tensor
    B: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class SignalDriftEngine:
    """docs/metrics.md §1-§4 for every selected LoRA layer; a caller-driven state machine.

    Per optimizer step ``t`` that is measured: :meth:`before_step` (gradients final, factors at
    ``t``) then :meth:`after_step` (factors at ``t + 1``) returns step t's measurement.
    Full-gradient capture (§4) runs between :meth:`start_capture` and the next
    :meth:`before_step`, through hooks that exist only then.

    Args:
        every_n_steps: measure §1-§3 every this many optimizer steps.
        top_k: subspace size for §3 (default: each layer's rank).
        full_grad_every: capture the full-weight gradient (§4) every this many steps
            (None: never).
        layers: names or dotted suffixes of the layers to watch (default: all).
        probe_every: the old name of ``full_grad_every`` (deprecated; removed in the next release).
    """

    def __init__(self, every_n_steps: int = 1, *, top_k: int | None = None, full_grad_every: int | None = 50,
                 layers: Sequence[str] | None = None, probe_every: object = _UNSET) -> None:
        full_grad_every = renamed_full_grad_every(full_grad_every, probe_every, type(self).__name__)
        check_positive_int("every_n_steps", every_n_steps)
        check_positive_int("top_k", top_k, allow_none=True)
        check_positive_int("full_grad_every", full_grad_every, allow_none=True)
        if layers is not None:
            layers = [layers] if isinstance(layers, str) else list(layers)
            if not layers or not all(isinstance(p, str) and p for p in layers):
                raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
        self.every_n_steps, self.top_k, self.full_grad_every = every_n_steps, top_k, full_grad_every
        self.layer_patterns = layers
        self.names: list[str] = []
        self.snapshot: dict[str, tuple[Tensor, Tensor]] = {}
        self.base_norms: dict[str, float] = {}
        self.history: dict[int, StepMeasurement] = {}
        self.skipped_steps = 0
        self.spectra: dict[str, Tensor] = {}  # latest singular values per layer (for figures)
        self._pending: dict[str, _Pending] = {}
        self._pending_step: int | None = None
        self._pending_views: dict[str, LoRAView] = {}
        self._capture: dict[str, FullGradAccumulator] = {}
        self._handles: list = []
        self._warned: set[str] = set()

    # ----------------------------------------------------------------- discovery
    def views(self, model: nn.Module) -> list[LoRAView]:
        """The selected layers, read live (scale, rank and active adapters at this moment)."""
        chosen = set(self.names)
        return [v for v in lora_layers(model) if v.name in chosen]

    def attach(self, model: nn.Module) -> list[str]:
        """Discover and select layers; snapshot ``(A0, B0)`` unless a snapshot was loaded.

        Raises:
            NoLoRALayersError: no LoRA layer found.
            ValueError: a name in ``layers`` matches no LoRA layer.
        """
        views = lora_layers(model)
        if not views:
            raise NoLoRALayersError(
                f"no LoRA layers found in {type(model).__name__}: searched for this project's LoRALinear "
                "(lora_alpha.inject) and PEFT LoraLayer modules with an active adapter"
            )
        variants = [f"{v.name} ({v.variant})" for v in views if v.variant]
        if variants:
            self._warn_once("variants", f"Signal-Drift skips LoRA variants whose update is not s*B*A: {', '.join(variants)}")
        views = [v for v in views if not v.variant]
        if not views:
            raise NoLoRALayersError(
                f"every LoRA layer in {type(model).__name__} is a variant Signal-Drift cannot measure "
                f"({', '.join(variants)}); plain LoRA layers are needed"
            )
        if self.layer_patterns:
            unknown = [p for p in self.layer_patterns if not any(_matches(v.name, p) for v in views)]
            if unknown:
                raise ValueError(f"layers {unknown} match no LoRA layer; known layers: {[v.name for v in views]}")
            views = [v for v in views if any(_matches(v.name, p) for p in self.layer_patterns)]
        self.names = [v.name for v in views]
        for v in views:
            if v.name not in self.snapshot:
                self.snapshot[v.name] = (v.A.detach().clone(), v.B.detach().clone())
            if v.name not in self.base_norms and not v.merged:
                self.base_norms[v.name] = float(torch.linalg.matrix_norm(v.base_weight.detach().float()))
        return self.names

    # ----------------------------------------------------------------- schedule
    def measures(self, step: int) -> bool:
        return step % self.every_n_steps == 0

    def captures_full_grad(self, step: int) -> bool:
        return self.full_grad_every is not None and step % self.full_grad_every == 0

    # ----------------------------------------------------------------- docs/metrics.md §4 capture
    def start_capture(self, model: nn.Module) -> None:
        """Hook the selected layers to accumulate ``G = g_out^T x`` over the coming backward passes
        (as token matrices while they are smaller than G: see :class:`FullGradAccumulator`)."""
        if self._handles:
            return
        for v in self.views(model):
            if v.kind == "embedding" or v.merged:
                continue
            self._handles.append(v.module.register_forward_hook(self._forward_hook(v.name)))

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if not (isinstance(output, Tensor) and output.requires_grad and inputs and isinstance(inputs[0], Tensor)):
                return
            x = inputs[0].detach()

            def grad_hook(g: Tensor) -> None:
                self._capture.setdefault(name, FullGradAccumulator()).add(x, g)

            output.register_hook(grad_hook)

        return hook

    def stop_capture(self) -> dict[str, FullGradAccumulator]:
        for h in self._handles:
            h.remove()
        self._handles = []
        captured, self._capture = self._capture, {}
        return captured

    # ----------------------------------------------------------------- per step
    def before_step(self, model: nn.Module, step: int, grad_scale: float = 1.0,
                    grads: dict[str, tuple[Tensor, Tensor]] | None = None, loss_scale: float = 1.0) -> None:
        """Gradients are final for step ``step``: docs/metrics.md §1, §3 (and §4 if captured) on factors at t.

        Two divisors, because the two kinds of gradient are unscaled at different moments under a
        loss scaler (fp16 AMP): the factor gradients are usually unscaled by the time they are read,
        the output gradients captured for ``G`` (docs/metrics.md §4) never are.

        Args:
            grad_scale: divide the factor gradients by this (the AMP loss scale still applied to them;
                1.0 once the trainer has unscaled them).
            grads: ``{layer: (grad_A, grad_B)}`` captured earlier (e.g. before clipping); layers
                missing from it use the parameters' ``.grad``.
            loss_scale: divide the captured full-weight gradient ``G`` by this: the scaler's scale
                during this step's backward passes (1.0 without a loss scaler).
        """
        captured = self.stop_capture()
        for name, value in (("grad_scale", grad_scale), ("loss_scale", loss_scale)):
            check_number(name, value)
        self._pending, self._pending_step, self._pending_views = {}, None, {}
        if not self.measures(step):
            return
        views = self.views(model)
        self._pending_views = {v.name: v for v in views}  # live parameters: after_step reads them again
        for v in views:
            if v.merged:
                self._skip(v.name, "merged into its base weight")
                continue
            try:
                grad = (grads or {}).get(v.name) or (v.A.grad, v.B.grad)
                self._pending[v.name] = self._measure_before(v, captured.get(v.name), grad_scale, grad, loss_scale)
            except NonFiniteError:
                self._skip(v.name, "non-finite factors or gradients")
        self._pending_step = step

    def _measure_before(self, v: LoRAView, G: FullGradAccumulator | None, grad_scale: float,
                        grad: tuple[Tensor | None, Tensor | None], loss_scale: float = 1.0) -> _Pending:
        # One float64 copy of each small factor per step: every function below then computes in
        # float64 without converting again (cheaper than repeated float32 -> float64 casts).
        A0, B0 = self.snapshot[v.name]
        A0, B0 = A0.double(), B0.double()
        A = v.A.detach().to(torch.float64, copy=True)  # a copy even for float64 factors: it is the
        B = v.B.detach().to(torch.float64, copy=True)  # "before" that the realized step is compared to
        metrics: dict[str, float] = {}
        spec = update_spectrum(A, B, v.scale, self.base_norms.get(v.name, 0.0), A0, B0)
        self.spectra[v.name] = spec.singular_values
        metrics.update(delta_norm=spec.delta_norm, delta_rel=spec.delta_rel, stable_rank=spec.stable_rank,
                       effective_rank=spec.effective_rank)
        gA, gB = grad
        if gA is not None and gB is not None:
            gA, gB = gA.detach().double() / grad_scale, gB.detach().double() / grad_scale
            split = grad_split(A, B, gA, gB, v.scale, A0, B0, top_k=self.top_k, svd=spec.svd)
            if split is not None:
                metrics.update(grad_alignment=split.grad_alignment, grad_drift_ratio=split.grad_drift_ratio)
            if G is not None:
                # G was summed from output gradients of the scaled loss (never unscaled): ||G||^2 / scale^2,
                # whatever divisor the factor gradients needed (docs/metrics.md §4).
                sup = spectral_suppression(gA, gB, G.sq_norm() / float(loss_scale) ** 2)
                metrics.update(spectral_gain=sup.spectral_gain, spectral_suppression=sup.spectral_suppression)
        return _Pending(A=A, B=B, metrics=metrics)  # float64 copies: the step's "before"

    def after_step(self, model: nn.Module, step_taken: bool = True) -> StepMeasurement | None:
        """The realized step: docs/metrics.md §2, and the step's measurement (also kept in ``history``).
        None when nothing was measured.

        Args:
            step_taken: False when the optimizer skipped the step (AMP overflow); the step's
                metrics are then dropped and counted as skipped.
        """
        step, pending, views = self._pending_step, self._pending, self._pending_views
        self._pending, self._pending_step, self._pending_views = {}, None, {}
        if step is None:
            return None
        after = {n: (views[n].A.detach().double(), views[n].B.detach().double()) for n in pending if n in views}
        layers: dict[str, dict[str, float]] = {}
        for name, p in pending.items():
            v = views.get(name)
            if v is None:
                self._skip(name, "it disappeared")
                continue
            A, B = after[name]
            if not step_taken or (torch.equal(p.A, A) and torch.equal(p.B, B)):
                # a skipped step (AMP overflow), a zero learning rate, or a layer frozen mid-run
                self._skip(name, "the optimizer did not update it")
                continue
            try:
                split = step_split(p.A, p.B, *after[name], v.scale, self.base_norms.get(name, 0.0))
            except NonFiniteError:
                self._skip(name, "non-finite factors after the step")
                continue
            layers[name] = dict(p.metrics, signal_norm=split.signal_norm, drift_norm=split.drift_norm,
                                drift_ratio=split.drift_ratio, step_size=split.step_size)
        record = measurement(step, layers, self.skipped_steps)
        self.history[step] = record
        return record

    def _skip(self, name: str, why: str) -> None:
        self.skipped_steps += 1
        self._warn_once(why, f"Signal-Drift skipped layer {name} at least once: {why} (counted in {PREFIX}/skipped_steps)")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, SignalDriftWarning, stacklevel=3)

    # ----------------------------------------------------------------- summaries and state
    def latest(self, metric: str, window: int = 5) -> list[float]:
        """The model-level median of ``metric`` at the last ``window`` steps that measured it
        (probe-only metrics such as ``spectral_suppression`` exist on probe steps alone)."""
        values = [self.history[s].summary(metric) for s in sorted(self.history)]
        return [v for v in values if v is not None][-window:]

    def state_dict(self) -> dict:
        return {
            "snapshot": {n: (a.cpu(), b.cpu()) for n, (a, b) in self.snapshot.items()},
            "base_norms": dict(self.base_norms),
            "history": {int(k): m.as_dict() for k, m in self.history.items()},
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        self.snapshot = {n: (a.to(device) if device else a, b.to(device) if device else b)
                         for n, (a, b) in state.get("snapshot", {}).items()}
        self.base_norms = dict(state.get("base_norms", {}))
        self.history = {int(k): _restore_measurement(int(k), v) for k, v in state.get("history", {}).items()}
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def to_device(self, device: torch.device) -> None:
        self.snapshot = {n: (a.to(device), b.to(device)) for n, (a, b) in self.snapshot.items()}


def _restore_measurement(step: int, saved: dict) -> StepMeasurement:
    """A measurement from a checkpoint; checkpoints written before measurements were data hold tags."""
    if "layers" in saved:
        return StepMeasurement.from_dict(saved)
    layers: dict[str, dict[str, float]] = {}
    for tag, value in saved.items():
        key = parse_tag(tag)
        if key is not None and key.layer is not None:
            layers.setdefault(key.layer, {})[key.metric] = value
    return measurement(step, layers, int(saved.get(f"{PREFIX}/skipped_steps", 0)))


def medians_of_views(views: Iterable[LoRAView]) -> tuple[float, float, float]:
    """Median alpha, rank and scale over layers (docs/metrics.md §6 summarizes by the median)."""
    views = list(views)
    return (statistics.median(v.alpha for v in views), statistics.median(v.rank for v in views),
            statistics.median(v.scale for v in views))
