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
    lora_layers,
    spectral_suppression,
)
from signaldrift.batched import BatchedStep, LayerState
from signaldrift.errors import check_int, check_number
from signaldrift.sharded import base_weight_norm, gather_full
from signaldrift.views import LoRAView

from callbacks.measurements import PREFIX, StepMeasurement, measurement, parse_tag



class SignalDriftWarning(UserWarning):
    """A Signal-Drift diagnostic could not be computed as asked (the run goes on)."""


class NoLoRALayersError(ValueError):
    """The model has no LoRA layer the diagnostics can read."""


class MergedLoRAError(ValueError):
    """Every LoRA layer is merged into its base weight and nothing else is trainable: a fit cannot train."""


def refuse_merged_untrainable(model: nn.Module, who: str) -> None:
    """Raise :class:`MergedLoRAError` when the model's LoRA layers are all merged and no other
    parameter is trainable: the merged factors take no part in the forward pass, so the first
    backward pass would fail with autograd's "element 0 of tensors does not require grad"."""
    views = lora_layers(model)
    merged = [v for v in views if v.merged]
    if not merged or len(merged) < len(views):
        return
    factors = {id(p) for v in merged for p in (v.A, v.B)}
    if any(p.requires_grad and id(p) not in factors for p in model.parameters()):
        return
    names = ", ".join(v.name for v in merged[:5]) + (f", ... ({len(merged)} in all)" if len(merged) > 5 else "")
    raise MergedLoRAError(
        f"{who}: every LoRA layer of {type(model).__name__} is merged into its base weight ({names}) and no other "
        "parameter is trainable, so there is nothing to train (the merged factors take no part in the forward pass); "
        "unmerge them before fitting (lora_alpha.unmerge_adapters(model), or PEFT's unmerge_adapter())"
    )


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
    """What one layer's measurement holds between the gradient hook and the realized step: its
    position in the step's :class:`~signaldrift.batched.BatchedStep` (which keeps the factors at t)."""

    index: int
    metrics: dict[str, float] = field(default_factory=dict)


class SignalDriftEngine:
    """docs/metrics.md §1-§4 for every selected LoRA layer; a caller-driven state machine.

    Per optimizer step ``t`` that is measured: :meth:`before_step` (gradients final, factors at
    ``t``) then :meth:`after_step` (factors at ``t + 1``) returns step t's measurement.
    Full-gradient capture (§4) runs between :meth:`start_capture` and the next
    :meth:`before_step`, through hooks that exist only then.

    Sections 1-3 of all layers are computed together (:class:`signaldrift.batched.BatchedStep`:
    layers of one shape share each batched product; ill-conditioned layers and fits from
    ``B0 != 0`` take the exact per-layer route). Under parameter sharding (FSDP2 ``DTensor``
    factors) each rank gathers the small factors and gradients whole (a collective: every rank calls
    :meth:`attach`, :meth:`before_step` and :meth:`after_step` at the same steps), and the base
    weights' norms come from their shards once, at :meth:`attach`; quantized bases (QLoRA) are
    dequantized once there (:func:`signaldrift.sharded.base_weight_norm`).

    Args:
        every_n_steps: measure §1-§3 every this many optimizer steps.
        top_k: subspace size for §3 (default: each layer's rank).
        full_grad_every: capture the full-weight gradient (§4) every this many steps
            (None: never).
        layers: names or dotted suffixes of the layers to watch (default: all).
        probe_every: the old name of ``full_grad_every`` (deprecated; removed in the next release).
        gram_dtype: dtype of the tall (m or n long) products of sections 1-3: ``torch.float64``
            (default; equal to the per-layer definitions to round-off) or ``torch.float32`` (about
            1e-7 relative from them, and two to four times faster on a CPU: what meets 0.3 s per
            measured step for a 7B-shaped adapter set on a 2-core CPU; docs/metrics.md, Notation).
    """

    def __init__(self, every_n_steps: int = 1, *, top_k: int | None = None, full_grad_every: int | None = 50,
                 layers: Sequence[str] | None = None, probe_every: object = _UNSET,
                 gram_dtype: torch.dtype = torch.float64) -> None:
        full_grad_every = renamed_full_grad_every(full_grad_every, probe_every, type(self).__name__)
        if gram_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"gram_dtype must be torch.float32 or torch.float64, got {gram_dtype!r}")
        self.gram_dtype = gram_dtype
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
        self._batch: BatchedStep | None = None
        self._zero_init: dict[str, tuple[tuple[Tensor, Tensor], bool]] = {}  # snapshot -> is A0 or B0 zero
        self._pending_views: dict[str, LoRAView] = {}
        self._capture: dict[str, FullGradAccumulator] = {}
        self._handles: list = []
        self._warned: set[str] = set()

    def reset(self) -> None:
        """Forget the previous fit: selection, snapshot ``(A0, B0)``, base norms, history, counts and
        warnings. A new fit (not a resume, whose checkpoint restores the state) starts from here."""
        self.stop_capture()
        self.names = []
        self.snapshot, self.base_norms, self.history, self.spectra = {}, {}, {}, {}
        self.skipped_steps = 0
        self._pending, self._pending_step, self._pending_views, self._batch = {}, None, {}, None
        self._zero_init = {}
        self._warned = set()

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
        for v in views:  # the same order on every rank: gathers and all-reduces are collectives
            if v.name not in self.snapshot:
                self.snapshot[v.name] = (gather_full(v.A).clone(), gather_full(v.B).clone())
            if v.name not in self.base_norms and not v.merged:
                self.base_norms[v.name] = base_weight_norm(v.base_weight)
        return self.names

    def _starts_from_zero(self, name: str) -> bool:
        """Whether the snapshot's ``A0`` or ``B0`` is zero (then ``dW = s B A``): decided once per snapshot."""
        snap = self.snapshot[name]
        cached = self._zero_init.get(name)
        if cached is None or cached[0] is not snap:
            cached = (snap, not bool(snap[0].any()) or not bool(snap[1].any()))
            self._zero_init[name] = cached
        return cached[1]

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
        self._pending, self._pending_step, self._pending_views, self._batch = {}, None, {}, None
        if not self.measures(step):
            return
        views = []
        for v in self.views(model):
            if v.merged:
                self._skip(v.name, "merged into its base weight")
            else:
                views.append(v)
        states = []
        for v in views:  # whole factors and gradients (gathered under sharding), in the same order on every rank
            gA, gB = (grads or {}).get(v.name) or (v.A.grad, v.B.grad)
            gA, gB = gather_full(gA), gather_full(gB)
            if gA is None or gB is None:
                gA = gB = None
            A0, B0 = (None, None) if self._starts_from_zero(v.name) else self.snapshot[v.name]
            states.append(LayerState(gather_full(v.A), gather_full(v.B), v.scale, self.base_norms.get(v.name, 0.0),
                                     gA, gB, A0, B0, grad_scale))
        batch = BatchedStep.measure(states, top_k=self.top_k, gram_dtype=self.gram_dtype)
        for i, (v, state, res) in enumerate(zip(views, states, batch.results)):
            if res.nonfinite:
                self._skip(v.name, "non-finite factors or gradients")
                continue
            spec = res.spectrum
            self.spectra[v.name] = spec.singular_values
            metrics = dict(delta_norm=spec.delta_norm, delta_rel=spec.delta_rel, stable_rank=spec.stable_rank,
                           effective_rank=spec.effective_rank)
            if res.grad is not None:
                metrics.update(grad_alignment=res.grad.grad_alignment, grad_drift_ratio=res.grad.grad_drift_ratio)
            G = captured.get(v.name)
            if G is not None and state.grad_A is not None:
                # G was summed from output gradients of the scaled loss (never unscaled): ||G||^2 / scale^2,
                # whatever divisor the factor gradients needed (docs/metrics.md §4).
                try:
                    sup = spectral_suppression(state.grad_A.double() / grad_scale, state.grad_B.double() / grad_scale,
                                               G.sq_norm() / float(loss_scale) ** 2)
                except NonFiniteError:
                    self._skip(v.name, "non-finite factors or gradients")
                    continue
                metrics.update(spectral_gain=sup.spectral_gain, spectral_suppression=sup.spectral_suppression)
            self._pending[v.name] = _Pending(index=i, metrics=metrics)
        self._pending_views = {v.name: v for v in views}  # live parameters: after_step reads them again
        self._batch = batch  # holds the factors at t (one copy, their own dtype): the step's "before"
        self._pending_step = step

    def after_step(self, model: nn.Module, step_taken: bool = True) -> StepMeasurement | None:
        """The realized step: docs/metrics.md §2, and the step's measurement (also kept in ``history``).
        None when nothing was measured.

        Args:
            step_taken: False when the optimizer skipped the step (AMP overflow); the step's
                metrics are then dropped and counted as skipped.
        """
        step, pending, views, batch = self._pending_step, self._pending, self._pending_views, self._batch
        self._pending, self._pending_step, self._pending_views, self._batch = {}, None, {}, None
        if step is None:
            return None
        # every layer of the batch, gathered whole in the same order on every rank (a collective under sharding)
        splits = batch.step_splits([(gather_full(v.A), gather_full(v.B)) for v in views.values()]) if views else []
        layers: dict[str, dict[str, float]] = {}
        for name, p in pending.items():
            st = splits[p.index]
            if not step_taken or not st.updated:
                # a skipped step (AMP overflow), a zero learning rate, or a layer frozen mid-run
                self._skip(name, "the optimizer did not update it")
                continue
            if st.nonfinite:
                self._skip(name, "non-finite factors after the step")
                continue
            split = st.split
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
        self._zero_init = {}

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
