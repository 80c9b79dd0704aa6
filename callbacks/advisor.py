"""AlphaRegimeAdvisor: the optimization-gap probe (docs/metrics.md §5) and the alpha-regime verdict (§6)."""
from __future__ import annotations

import contextlib
import logging
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from callbacks._lightning import CallbackBase, log_metrics, rank_mean, refuse_sharded, tensorboard_writers
from callbacks.batches import map_tensors, move_to_device
from callbacks.engine import check_positive_int, medians_of_views
from callbacks.measurements import PREFIX, summary_tag, threshold_tag
from callbacks.tensorboard import mark_restart
from signaldrift import DEFAULT_TAUS, NonFiniteError, RegimeVerdict, lora_layers, regime_verdict, step_gap_probe, step_split
from signaldrift import regime
from signaldrift.sharded import base_weight_norm, gather_full, is_dtensor

log = logging.getLogger("signaldrift")

VERDICT_CODES = {"alpha-too-small": -1.0, "in-regime": 0.0, "too-aggressive": 1.0}
# The levels charts draw next to the values (constant series): the verdict's step-gap thresholds and the
# collapse evidence's levels (signaldrift.regime; docs/metrics.md section 6).
THRESHOLD_VALUES = {"step_gap_too_small": regime.GAP_TOO_SMALL, "step_gap_too_aggressive": regime.GAP_TOO_AGGRESSIVE,
                    "step_size_high": regime.STEP_SIZE_HIGH}


class AlphaRegimeWarning(UserWarning):
    """The advisor judged alpha too small (raised once per fit, on rank zero)."""


def _detached(batch: Any) -> Any:
    return map_tensors(batch, lambda t: t.detach().clone())


@contextlib.contextmanager
def _silenced_logging(pl_module):
    """``self.log`` inside training_step must not log (or sync) during the probe's forward passes."""
    pl_module.log = lambda *a, **k: None
    pl_module.log_dict = lambda *a, **k: None
    try:
        yield
    finally:
        del pl_module.log
        del pl_module.log_dict


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (sharing its storage), else ``t``."""
    if not is_dtensor(t):
        return t
    with torch.no_grad():
        return t.to_local()


def _reshard(pl_module) -> None:
    """Free every FSDP2 unit's gathered parameters, so that the next forward gathers the shards again."""
    from torch.distributed.fsdp import FSDPModule

    for m in pl_module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _loss_value(out: Any) -> float:
    if isinstance(out, Tensor):
        return float(out.detach().float())
    if isinstance(out, dict) and "loss" in out:
        return float(out["loss"].detach().float())
    if hasattr(out, "loss"):
        return float(out.loss.detach().float())
    raise TypeError(f"the probe's loss function returned {type(out).__name__}; expected a scalar tensor or a dict with 'loss'")


class AlphaRegimeAdvisor(CallbackBase):
    """Probe the optimization gap along the realized LoRA step and judge the alpha regime.

    Every ``gap_every`` optimizer steps (not at step 0: from ``B0 = 0`` Adam's first step moves
    only B, a step unlike the rest), after the step, the loss on one fixed probe batch is
    evaluated at ``theta_t + tau * delta`` for tau in ``taus`` (eval mode, no gradients,
    parameters restored exactly): ``step_gap`` and ``gap_gain`` (§5). The verdict
    (§6) counts the last ``window`` probes and their steps' drift ratios, once
    ``min_probes`` probes exist (before that, the configuration alone). When
    alpha is judged too small, one :class:`AlphaRegimeWarning` (rank zero) names the evidence and
    an alpha to try. The probe runs on every rank at the same steps, each rank on its own probe batch,
    the losses averaged over ranks (DDP, FSDP2). Under FSDP2 every rank moves its shard of the factors
    in place and the forward passes gather them as in training; the step split reads the factors whole.
    The base norm ``||W0||_F`` is computed once per layer per fit, as the engine does (from the shards,
    or the dequantized weight of a 4/8-bit base).

    The loss: ``loss_fn(pl_module, batch)`` if given, else ``pl_module.probe_loss(batch)`` if the
    module defines it, else ``pl_module.training_step(batch, 0)`` with its ``self.log`` silenced.

    Logged (step = the optimizer step probed), to every logger, from rank zero:

    * ``Summary/step_gap``, ``signaldrift/gap_gain``: this probe's values; ``Summary/step_gap_median``:
      the median step gap of the probes the verdict counts (once there are ``min_probes``);
    * ``Summary/alpha`` (median over layers, read live) and ``Summary/alpha_verdict`` (-1
      alpha-too-small, 0 in-regime, 1 too-aggressive; before the first probes, the verdict of the
      configuration alone) at every optimizer step, so that a chart's smoothing bends only the
      step where the verdict changes;
    * ``signaldrift/thresholds/<name>`` at every step: constant series of ``THRESHOLD_VALUES``
      (``step_gap_too_small``, ``step_gap_too_aggressive``, ``step_size_high``);
    * TensorBoard text ``signaldrift/verdict``: verdict, evidence and suggestion.

    Args:
        gap_every: probe every this many optimizer steps (> 0).
        probe_batch: the batch to probe on (default: the first training batch).
        taus: step multiples (must include 1).
        window: how many recent probes the verdict counts (a side of a threshold needs a majority of
            them: see :func:`signaldrift.regime_verdict`). One probe is one batch along one step, so
            single probes are noisy; over the alpha x lr grid the median of the last 5 (for an odd
            window the same rule) named the grid's label in 17 of 20 cells, of the last 3 in 15
            (benchmarks/results/gap_calibration.md).
        min_probes: probes needed before the step gap counts as evidence.
        loss_fn: optional ``(pl_module, batch) -> loss``.

    Example::

        advisor = AlphaRegimeAdvisor(gap_every=50)
        Trainer(callbacks=[SignalDriftMonitor(), advisor]).fit(model)
        advisor.verdict.verdict, advisor.verdict.suggestion
    """

    def __init__(self, gap_every: int = 50, *, probe_batch: Any = None, taus: Sequence[float] = DEFAULT_TAUS,
                 window: int = 5, min_probes: int = 2, loss_fn: Callable[[Any, Any], Any] | None = None) -> None:
        super().__init__()
        check_positive_int("gap_every", gap_every)
        check_positive_int("window", window)
        check_positive_int("min_probes", min_probes)
        if min_probes > window:
            raise ValueError(f"min_probes ({min_probes}) must not exceed window ({window})")
        self.min_probes = min_probes
        taus = tuple(float(t) for t in taus)
        if 1.0 not in taus or any(t < 0 for t in taus):
            raise ValueError(f"taus must be >= 0 and include 1, got {taus}")
        self.gap_every, self.taus, self.window, self.loss_fn = gap_every, taus, window, loss_fn
        self.probe_batch = probe_batch
        self.probes: list[dict[str, float]] = []
        self.verdict: RegimeVerdict | None = None
        self._config_verdict: RegimeVerdict | None = None  # the configuration alone, until probes count
        self._warned = False
        self._before: list[Tensor] | None = None
        self._base_norms: dict[str, float] = {}  # ||W0||_F per layer, once per fit (sharded, quantized or plain)

    # ----------------------------------------------------------------- hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        refuse_sharded(trainer, "AlphaRegimeAdvisor", pl_module, allow_fsdp2=True)
        self._base_norms = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step > 0:  # resumed: see callbacks.tensorboard.mark_restart
            for w in tensorboard_writers(trainer):
                mark_restart(w, trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.probe_batch is None:
            self.probe_batch = _detached(batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._before = None
        if trainer.global_step > 0 and trainer.global_step % self.gap_every == 0:
            self._before = [p.detach().clone() for v in self._views(pl_module) for p in (v.A, v.B)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._before is not None:
            self._probe_step(trainer, pl_module)
        self._log_state(trainer, pl_module, trainer.global_step - 1)

    def _log_state(self, trainer, pl_module, step: int) -> None:
        """Alpha, the current verdict's code and the thresholds, at ``step``."""
        views = self._views(pl_module)
        if not views or step < 0:
            return
        alpha, rank, scale = medians_of_views(views)
        verdict = self.verdict
        if verdict is None:
            if self._config_verdict is None:
                self._config_verdict = regime_verdict(alpha, rank, scale)
            verdict = self._config_verdict
        metrics = {summary_tag("alpha"): alpha, summary_tag("alpha_verdict"): VERDICT_CODES[verdict.verdict]}
        metrics.update({threshold_tag(k): v for k, v in THRESHOLD_VALUES.items()})
        log_metrics(trainer, metrics, step)

    def _probe_step(self, trainer, pl_module) -> None:
        before, self._before = self._before, None
        views = self._views(pl_module)
        params = [p for v in views for p in (v.A, v.B)]
        if len(params) != len(before):
            return
        # Whole factors before and after the step for the step split (a collective under FSDP2: every
        # rank gathers the same tensors in the same order), and so every rank sees the same delta.
        sharded = any(is_dtensor(p) for p in params)
        full_before = [gather_full(b) for b in before]
        full_after = [gather_full(p) for p in params]
        if not any(bool((a - b).any()) for a, b in zip(full_after, full_before)):
            return  # the optimizer skipped the step (AMP overflow, zero learning rate)
        # The probe moves each rank's own shard in place (a DTensor's local tensor shares its storage);
        # the forward passes all-gather the moved factors as FSDP does.
        params = [_local(p) for p in params]
        before = [_local(b) for b in before]
        delta = [p.detach() - b for p, b in zip(params, before)]
        step = trainer.global_step - 1
        record = self._probe(trainer, pl_module, views, params, full_before, full_after, delta, sharded)
        if record is None:
            return
        record["step"] = step
        self.probes.append(record)
        self._update_verdict(pl_module, views)
        metrics = {summary_tag("step_gap"): record["step_gap"]}
        recent = self.probes[-self.window:]
        if len(recent) >= self.min_probes:
            metrics[summary_tag("step_gap_median")] = statistics.median(p["step_gap"] for p in recent)
        if record.get("gap_gain") is not None:
            metrics[summary_tag("gap_gain")] = record["gap_gain"]
        log_metrics(trainer, metrics, step)
        for w in tensorboard_writers(trainer):
            w.add_text(f"{PREFIX}/verdict", self._verdict_text(), global_step=step)
        if self.verdict.verdict == "alpha-too-small" and not self._warned and trainer.is_global_zero:
            self._warned = True
            warnings.warn(f"alpha looks too small: {self.verdict.evidence}. {self.verdict.suggestion}",
                          AlphaRegimeWarning, stacklevel=3)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.verdict is not None:
            log.info("%s", self.summary())

    # ----------------------------------------------------------------- work
    @staticmethod
    def _views(pl_module):
        return [v for v in lora_layers(pl_module) if not v.variant and not v.merged]

    def _loss(self, pl_module, batch) -> float:
        if self.loss_fn is not None:
            return _loss_value(self.loss_fn(pl_module, batch))
        if hasattr(pl_module, "probe_loss"):
            return _loss_value(pl_module.probe_loss(batch))
        with _silenced_logging(pl_module):
            return _loss_value(pl_module.training_step(batch, 0))

    def _base_norm(self, view) -> float:
        """``||W0||_F`` as the engine computes it (:func:`signaldrift.sharded.base_weight_norm`: from the
        shards, or the dequantized weight), once per layer per fit; a collective under sharding."""
        if view.name not in self._base_norms:
            self._base_norms[view.name] = base_weight_norm(view.base_weight)
        return self._base_norms[view.name]

    def _probe(self, trainer, pl_module, views, params, before, after, delta, sharded) -> dict[str, float] | None:
        batch = move_to_device(self.probe_batch, pl_module.device)
        was_training = pl_module.training
        context = trainer.precision_plugin.forward_context()
        norms = [self._base_norm(v) for v in views]  # every rank, the same order
        pl_module.eval()

        def loss() -> float:
            if sharded:  # the next forward gathers the moved shards (FSDP's root keeps its gathered ones)
                _reshard(pl_module)
            return self._loss(pl_module, batch)

        try:
            with torch.no_grad(), context:
                probe = step_gap_probe(loss, params, delta, self.taus, reduce=rank_mean(trainer, pl_module.device))
        except NonFiniteError:
            return None
        finally:
            if sharded:  # training's next forward gathers the restored factors
                _reshard(pl_module)
            pl_module.train(was_training)
        drifts, sizes = [], []
        for i, v in enumerate(views):
            try:
                split = step_split(before[2 * i], before[2 * i + 1], after[2 * i], after[2 * i + 1], v.scale, norms[i])
            except NonFiniteError:
                continue
            if split.drift_ratio is not None:
                drifts.append(split.drift_ratio)
            if split.step_size is not None:
                sizes.append(split.step_size)
        return {
            "step_gap": probe.step_gap,
            "gap_gain": probe.gap_gain,
            "losses": list(probe.losses),
            "drift_ratio": statistics.median(drifts) if drifts else None,
            "step_size": statistics.median(sizes) if sizes else None,
        }

    def _update_verdict(self, pl_module, views) -> None:
        alpha, rank, scale = medians_of_views(views)
        recent = self.probes[-self.window:]
        self.verdict = regime_verdict(
            alpha, rank, scale,
            step_gaps=[p["step_gap"] for p in recent] if len(recent) >= self.min_probes else None,
            drift_ratios=[p["drift_ratio"] for p in recent if p.get("drift_ratio") is not None],
            step_sizes=[p["step_size"] for p in recent if p.get("step_size") is not None],
        )

    def _verdict_text(self) -> str:
        v = self.verdict
        return f"**{v.verdict}**  \n{v.evidence}  \n{v.suggestion}"

    def summary(self) -> str:
        """A one-screen summary of the probes and the verdict."""
        if self.verdict is None:
            return "Alpha regime: no probe yet."
        lines = [f"Alpha regime: {self.verdict.verdict}", f"  evidence:   {self.verdict.evidence}",
                 f"  suggestion: {self.verdict.suggestion}", "  probes (step: step_gap, gap_gain, drift_ratio):"]
        for p in self.probes[-8:]:
            dr = "n/a" if p.get("drift_ratio") is None else f"{p['drift_ratio']:.3g}"
            gg = "n/a" if p.get("gap_gain") is None else f"{p['gap_gain']:.3g}"
            lines.append(f"    {int(p['step']):>6}: {p['step_gap']:.3g}, {gg}, {dr}")
        return "\n".join(lines)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        batch = move_to_device(self.probe_batch, torch.device("cpu")) if self.probe_batch is not None else None
        return {"probes": [dict(p) for p in self.probes], "warned": self._warned, "probe_batch": batch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.probes = [dict(p) for p in state_dict.get("probes", [])]
        self._warned = bool(state_dict.get("warned", False))
        if state_dict.get("probe_batch") is not None:
            self.probe_batch = state_dict["probe_batch"]
