"""AlphaRegimeAdvisor: the optimization-gap probe (docs/metrics.md §5) and the alpha-regime verdict (§6)."""
from __future__ import annotations

import contextlib
import logging
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from callbacks._lightning import CallbackBase, check_hook_call, log_metrics, rank_mean, refuse_sharded, tensorboard_writers
from callbacks.batches import map_tensors, move_to_device
from callbacks.engine import NoLoRALayersError, SignalDriftWarning, check_positive_int, medians_of_views
from callbacks.measurements import PREFIX, summary_tag, threshold_tag
from callbacks.tensorboard import mark_restart
from signaldrift import DEFAULT_TAUS, NonFiniteError, RegimeVerdict, lora_layers, regime_verdict, step_gap_estimate, step_split
from signaldrift.gap_probe import check_estimate_taus
from signaldrift.scale_probe import DEFAULT_KS, check_ks, scale_probe
from signaldrift.regime import DEFAULT_RULES, GAP_TOO_AGGRESSIVE, GAP_TOO_SMALL, VerdictRules
from signaldrift.sharded import base_weight_norm, gather_full, is_dtensor

log = logging.getLogger("signaldrift")

# uncertain sits half-way between in-regime and too-aggressive only so that a chart shows it apart from both;
# the TEXT tab and run.json say it in words.
VERDICT_CODES = {"alpha-too-small": -1.0, "in-regime": 0.0, "uncertain": 0.5, "too-aggressive": 1.0}

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


def _validation_loader(trainer):
    """The fit's validation loader, or None (no validation, or a loader that cannot be built)."""
    loaders = getattr(trainer, "val_dataloaders", None)
    if loaders is None and getattr(trainer, "datamodule", None) is not None:
        try:
            loaders = trainer.datamodule.val_dataloader()
        except Exception:  # a datamodule without validation data (Lightning raises for a missing hook)
            return None
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return loaders


def _first_batches(loader, n: int) -> list[Any]:
    """Detached CPU copies of the loader's first ``n`` batches ([] without a loader)."""
    if loader is None:
        return []
    out: list[Any] = []
    try:
        for batch in loader:
            out.append(move_to_device(_detached(batch), torch.device("cpu")))
            if len(out) >= n:
                break
    except Exception:  # an exhausted or broken loader: fall back to the training probe set
        return []
    return out


def _curve_text(record: dict) -> str:
    """The scale probe's curve as a Markdown table row pair (TensorBoard's TEXT tab)."""
    ks = " | ".join(f"{k:g}" for k in record["scale_ks"])
    losses = " | ".join(f"{v:.4g}" for v in record["scale_losses"])
    sep = " | ".join("---" for _ in record["scale_ks"])
    return f"k | {ks}\n--- | {sep}\nloss | {losses}\n\nk* = {record['k_star']:.3g}"


def _loss_value(out: Any) -> float:
    if isinstance(out, Tensor):
        return float(out.detach().float())
    if isinstance(out, dict) and "loss" in out:
        return float(out["loss"].detach().float())
    if hasattr(out, "loss"):
        return float(out.loss.detach().float())
    raise TypeError(f"the probe's loss function returned {type(out).__name__}; expected a scalar tensor or a dict with 'loss'")


def _escaped(text: str) -> str:
    """Asterisks escaped for TensorBoard's Markdown ("c*sqrt(r) ... k*" would turn italic)."""
    return text.replace("*", "\\*")


class AlphaRegimeAdvisor(CallbackBase):
    """Probe the optimization gap along the realized LoRA step and judge the alpha regime.

    Every ``gap_every`` optimizer steps (not at step 0: from ``B0 = 0`` Adam's first step moves
    only B, a step unlike the rest), after the step, the step-gap estimate of §5 (v2): the loss on
    the probe set (the first ``probe_batches`` training batches, one unit per example when the module
    has ``probe_losses``) along the net update of the last ``W = min(window_steps, gap_every)`` steps
    divided by W, by a descent search over ``taus`` (eval mode, no gradients, parameters restored
    exactly): ``step_gap``, its spread ``step_gap_lo``/``step_gap_hi``, ``gap_z`` and ``gap_gain``. The
    verdict (§6, rules v2) counts the last ``rules.window`` probes with their steps' drift ratios and
    step sizes, and never flips straight between ``alpha-too-small`` and ``too-aggressive``. When
    alpha is judged too small, one :class:`AlphaRegimeWarning` (rank zero) names the evidence and
    an alpha to try. The probe runs on every rank at the same steps, each rank on its own probe batch,
    the losses averaged over ranks (DDP, FSDP2). Under FSDP2 every rank moves its shard of the factors
    in place and the forward passes gather them as in training; the step split reads the factors whole.
    The base norm ``||W0||_F`` is computed once per layer per fit, as the engine does (from the shards,
    or the dequantized weight of a 4/8-bit base).

    The loss: ``loss_fn(pl_module, batch)`` if given (one unit per batch, or per value when it returns a
    1-D tensor), else ``pl_module.probe_losses(batch)`` (one loss per example) or ``pl_module.probe_loss(batch)``
    if the module defines them, else ``pl_module.training_step(batch, 0)`` with its ``self.log`` silenced.
    A run resumed between a window's start and its probe skips that probe (the window's start is not
    checkpointed).

    Logged (step = the optimizer step probed), to every logger, from rank zero:

    * ``Summary/step_gap``, ``Summary/step_gap_lo``, ``Summary/step_gap_hi``, ``signaldrift/gap_z``,
      ``signaldrift/gap_gain``: this probe's values; ``Summary/step_gap_median``: the median step gap of
      the probes the verdict counts;
    * ``Summary/alpha`` (median over layers, read live) and ``Summary/alpha_verdict`` (-1
      alpha-too-small, 0 in-regime, 0.5 uncertain, 1 too-aggressive; before the first probe, the verdict
      of the configuration alone) at every optimizer step, so that a chart's smoothing bends only the
      step where the verdict changes;
    * ``signaldrift/thresholds/<name>``: constant series of :meth:`thresholds` (the advisor's ``rules``):
      ``step_size_high`` at every step, ``step_gap_too_small`` and ``step_gap_too_aggressive`` at each
      probe, with its step_gap (the dashboard draws them as step_gap's band, which needs the same steps;
      a chart that ignores outliers also keeps the probes' extremes in view);
    * TensorBoard text ``signaldrift/verdict``: verdict, evidence and suggestion.

    Args:
        gap_every: probe every this many optimizer steps (> 0).
        probe_batch: the batch to probe on (default: the first ``probe_batches`` training batches).
        probe_batches: how many of the first training batches form the probe set (> 0).
        window_steps: the direction is the net update over the last ``min(window_steps, gap_every)``
            steps (> 0; 1: the last step alone, as in version 1).
        size_every: every this many steps (and at each probe) the step's median step size over layers
            is measured; the largest so far (``step_size_peak``) is the verdict's collapse evidence (> 0).
        taus: step multiples (must include 1 and a value above 1).
        rules: the verdict's thresholds and counts (:class:`signaldrift.VerdictRules`).
        loss_fn: optional ``(pl_module, batch) -> loss``.

    Example::

        advisor = AlphaRegimeAdvisor(gap_every=50)
        Trainer(callbacks=[SignalDriftMonitor(), advisor]).fit(model)
        advisor.verdict.verdict, advisor.verdict.suggestion
    """

    warns_too_small = True  # one AlphaRegimeWarning on the first alpha-too-small

    def __init__(self, gap_every: int = 50, *, probe_batch: Any = None, probe_batches: int = 2,
                 window_steps: int = 8, size_every: int = 10, taus: Sequence[float] = DEFAULT_TAUS,
                 rules: VerdictRules = DEFAULT_RULES, loss_fn: Callable[[Any, Any], Any] | None = None,
                 ks: Sequence[float] = DEFAULT_KS, scale_batches: int = 2) -> None:
        super().__init__()
        check_positive_int("gap_every", gap_every)
        check_positive_int("size_every", size_every)
        check_positive_int("probe_batches", probe_batches)
        check_positive_int("window_steps", window_steps)
        check_positive_int("scale_batches", scale_batches)
        self.scale_batches = scale_batches
        if not isinstance(rules, VerdictRules):
            raise ValueError(f"rules must be a signaldrift.VerdictRules, got {type(rules).__name__}")
        taus = tuple(check_estimate_taus(taus))
        self.ks = check_ks(ks)
        self.gap_every, self.taus, self.rules, self.loss_fn = gap_every, taus, rules, loss_fn
        self.window_steps = min(window_steps, gap_every)
        self.size_every = size_every
        self.step_size_peak: float | None = None  # the largest step size watched so far (shown)
        self._interval_peak: float | None = None  # the largest since the last probe (the verdict's evidence)
        self._probe_now = False
        self.probe_batches_wanted = probe_batches
        self.probe_set: list[Any] = [probe_batch] if probe_batch is not None else []
        self._fixed_probe_set = probe_batch is not None
        self.scale_set: list[Any] = []  # the scale probe's batches: validation batches when the run has them
        self.from_zero: bool | None = None  # every B was 0 at the fit's first step (the scale probe needs it)
        self.probes: list[dict[str, float]] = []
        self.evidence_from = 0  # the verdict counts probes[evidence_from:] (docs/metrics.md §8)
        self.verdict: RegimeVerdict | None = None
        self._config_verdict: RegimeVerdict | None = None  # the configuration alone, until probes count
        self._warned = False
        self._warned_nonzero = False
        self._before: list[Tensor] | None = None
        self._window_start: list[Tensor] | None = None
        self._base_norms: dict[str, float] = {}  # ||W0||_F per layer, once per fit (sharded, quantized or plain)

    # ----------------------------------------------------------------- hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        check_hook_call("AlphaRegimeAdvisor", "setup", trainer, pl_module)
        refuse_sharded(trainer, "AlphaRegimeAdvisor", pl_module, allow_fsdp2=True)
        if stage == "fit" and not [v for v in lora_layers(pl_module) if not v.variant]:
            raise NoLoRALayersError(
                f"AlphaRegimeAdvisor found no LoRA layer it can probe in {type(pl_module).__name__}: it looks for this "
                "project's LoRALinear (lora_alpha.inject) and PEFT LoraLayer modules with an active, non-DoRA adapter")
        if stage == "fit":  # a new fit starts clean; a resume restores the state after setup (load_state_dict)
            self._reset()
        self._base_norms = {}
        # a fit (or a resumed one) starts without a window or a step in flight from an earlier fit
        self._before = self._window_start = None
        self._probe_now = False

    def on_train_start(self, trainer, pl_module) -> None:
        check_hook_call("AlphaRegimeAdvisor", "on_train_start", trainer, pl_module)
        if trainer.global_step > 0:  # resumed: see callbacks.tensorboard.mark_restart
            for w in tensorboard_writers(trainer):
                mark_restart(w, trainer.global_step)
        if self.probes and self.verdict is None:  # resumed: the verdict the last probe reached, as it was reached
            self._update_verdict(pl_module, self._views(pl_module))
        if not self.scale_set:
            self.scale_set = _first_batches(_validation_loader(trainer), self.scale_batches)
        if trainer.global_step == 0:
            self.from_zero = all(not bool(gather_full(v.B).any()) for v in self._views(pl_module))

    def thresholds(self) -> dict[str, float]:
        """The levels this advisor's verdict compares against (its ``rules``), as charts draw them."""
        return {"k_star_too_small": self.rules.k_too_small, "k_star_too_aggressive": self.rules.k_too_aggressive,
                "step_gap_too_small": GAP_TOO_SMALL, "step_gap_too_aggressive": GAP_TOO_AGGRESSIVE,
                "step_size_high": self.rules.step_size_high}

    @property
    def window(self) -> int:
        """How many recent probes the verdict counts (``rules.window``)."""
        return self.rules.window

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        check_hook_call("AlphaRegimeAdvisor", "on_train_batch_start", trainer, pl_module)
        if not self._fixed_probe_set and len(self.probe_set) < self.probe_batches_wanted:
            self.probe_set.append(_detached(batch))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        check_hook_call("AlphaRegimeAdvisor", "on_before_optimizer_step", trainer, pl_module)
        self._before = None
        step, w = trainer.global_step, self.window_steps
        # The window of the probe after step k*gap_every + 1 starts W steps earlier (W = 1: this step).
        if step + w - 1 > 0 and (step + w - 1) % self.gap_every == 0:
            self._window_start = [_local(p).detach().clone() for v in self._views(pl_module) for p in (v.A, v.B)]
        self._probe_now = step > 0 and step % self.gap_every == 0
        # not at step 0: from B0 = 0 Adam's first step moves only B, a step unlike the rest (and unlike the
        # calibration's, whose first measurement was at step 12)
        if self._probe_now or (step > 0 and step % self.size_every == 0):
            self._before = [p.detach().clone() for v in self._views(pl_module) for p in (v.A, v.B)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        check_hook_call("AlphaRegimeAdvisor", "on_train_batch_end", trainer, pl_module)
        if self._before is not None:
            (self._probe_step if self._probe_now else self._watch_step)(trainer, pl_module)
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
        metrics = {summary_tag("alpha"): alpha, summary_tag("alpha_verdict"): VERDICT_CODES[verdict.verdict],
                   threshold_tag("step_size_high"): self.rules.step_size_high}
        log_metrics(trainer, metrics, step)

    def _watch_step(self, trainer, pl_module) -> None:
        """Every ``size_every`` steps: this step's median step size over layers, for the peak (§6)."""
        self._measure_step(pl_module)

    def _measure_step(self, pl_module):
        """The step just taken (from ``self._before``): its layers, their factors and its §2 split (median
        drift ratio and step size; the step size feeds the peak), or None when the LoRA layers changed or
        the optimizer skipped the step (AMP overflow, zero learning rate). The factors are gathered whole
        (a collective under FSDP2: every rank gathers the same tensors in the same order)."""
        before, self._before = self._before, None
        views = self._views(pl_module)
        params = [p for v in views for p in (v.A, v.B)]
        if len(params) != len(before):
            return None
        full_before = [gather_full(b) for b in before]
        full_after = [gather_full(p) for p in params]
        if not any(bool((a - b).any()) for a, b in zip(full_after, full_before)):
            return None
        return views, params, self._splits(views, full_before, full_after)

    def _splits(self, views, before, after) -> tuple[float | None, float | None]:
        """The step's median drift ratio and step size over layers (§2); the step size feeds the peak."""
        norms = [self._base_norm(v) for v in views]  # every rank, the same order
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
        drift = statistics.median(drifts) if drifts else None
        size = statistics.median(sizes) if sizes else None
        if size is not None:
            self.step_size_peak = size if self.step_size_peak is None else max(self.step_size_peak, size)
            self._interval_peak = size if self._interval_peak is None else max(self._interval_peak, size)
        return drift, size

    def _probe_step(self, trainer, pl_module) -> None:
        start, self._window_start = self._window_start, None
        measured = self._measure_step(pl_module)  # the step size counts even if the probes cannot run
        if measured is None:
            return
        views, params, split = measured
        step = trainer.global_step - 1
        # The probes move each rank's own shard in place (a DTensor's local tensor shares its storage);
        # the forward passes all-gather the moved factors as FSDP does.
        sharded = any(is_dtensor(p) for p in params)
        params = [_local(p) for p in params]
        record: dict[str, Any] = {"step": step, "drift_ratio": split[0], "step_size": split[1],
                                  "step_size_max": self._interval_peak, "step_size_peak": self.step_size_peak,
                                  "window_steps": self.window_steps}
        self._interval_peak = None
        if start is not None and len(start) == len(params):  # else a resumed run without its window's start
            direction = [(p.detach() - s) / self.window_steps for p, s in zip(params, start)]
            record.update(self._gap_record(trainer, pl_module, params, direction, sharded))
        record.update(self._scale_record(trainer, pl_module, params[1::2], sharded))
        if "step_gap" not in record and "k_star" not in record:
            return
        record.setdefault("step_gap", math.nan)
        self.probes.append(record)
        self._update_verdict(pl_module, views)
        metrics = {}
        if not math.isnan(record["step_gap"]):
            metrics.update({summary_tag(k): record[k] for k in ("step_gap", "step_gap_lo", "step_gap_hi")})
            metrics.update({threshold_tag(k): v for k, v in self.thresholds().items() if k.startswith("step_gap")})
            recent = [p["step_gap"] for p in self.probes[-self.window:] if not math.isnan(p["step_gap"])]
            metrics[summary_tag("step_gap_median")] = statistics.median(recent)
        if "k_star" in record:  # the band k* is drawn against, at k*'s own steps
            metrics.update({threshold_tag(k): v for k, v in self.thresholds().items() if k.startswith("k_star")})
        for k in ("gap_gain", "gap_z", "k_star", "scale_gain_z", "scale_help_z"):
            if record.get(k) is not None and math.isfinite(record[k]):  # a z is inf when every unit agrees exactly
                metrics[summary_tag(k)] = record[k]
        log_metrics(trainer, metrics, step)
        for w in tensorboard_writers(trainer):
            w.add_text(f"{PREFIX}/verdict", self._verdict_text(), global_step=step)
            if "k_star" in record:
                w.add_text(f"{PREFIX}/scale_curve", _curve_text(record), global_step=step)
        if self.verdict.verdict == "alpha-too-small" and self.warns_too_small and not self._warned \
                and trainer.is_global_zero:
            self._warned = True
            warnings.warn(f"alpha looks too small: {self.verdict.evidence}. {self.verdict.suggestion}",
                          AlphaRegimeWarning, stacklevel=3)

    def on_fit_end(self, trainer, pl_module) -> None:
        check_hook_call("AlphaRegimeAdvisor", "on_fit_end", trainer, pl_module)
        if trainer.is_global_zero and self.verdict is not None:
            log.info("%s", self.summary())

    # ----------------------------------------------------------------- work
    @staticmethod
    def _views(pl_module):
        return [v for v in lora_layers(pl_module) if not v.variant and not v.merged]

    def _unit_losses(self, pl_module, batch) -> list[float]:
        """The probe set's unit losses of one batch: one per example (``probe_losses``, or a 1-D tensor from
        ``loss_fn``), else one for the batch."""
        if self.loss_fn is not None:
            out = self.loss_fn(pl_module, batch)
            if isinstance(out, Tensor) and out.dim() == 1:
                return out.detach().double().tolist()
            return [_loss_value(out)]
        if hasattr(pl_module, "probe_losses"):
            return pl_module.probe_losses(batch).detach().double().reshape(-1).tolist()
        if hasattr(pl_module, "probe_loss"):
            return [_loss_value(pl_module.probe_loss(batch))]
        with _silenced_logging(pl_module):
            return [_loss_value(pl_module.training_step(batch, 0))]

    def _base_norm(self, view) -> float:
        """``||W0||_F`` as the engine computes it (:func:`signaldrift.sharded.base_weight_norm`: from the
        shards, or the dequantized weight), once per layer per fit; a collective under sharding."""
        if view.name not in self._base_norms:
            self._base_norms[view.name] = base_weight_norm(view.base_weight)
        return self._base_norms[view.name]

    @contextlib.contextmanager
    def _probing(self, trainer, pl_module, sharded: bool):
        """Eval mode, no gradients, the trainer's forward context; FSDP2 units resharded afterwards."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                yield
        finally:
            if sharded:  # training's next forward gathers the restored factors
                _reshard(pl_module)
            pl_module.train(was_training)

    def _loss_over(self, pl_module, batches, sharded: bool) -> Callable[[], list[float]]:
        batches = [move_to_device(b, pl_module.device) for b in batches]

        def loss() -> list[float]:
            units: list[float] = []
            for batch in batches:
                if sharded:  # the next forward gathers the moved shards (FSDP's root keeps its gathered ones)
                    _reshard(pl_module)
                units += self._unit_losses(pl_module, batch)
            return units

        return loss

    def _gap_record(self, trainer, pl_module, params, direction, sharded) -> dict[str, Any]:
        """The step-gap estimate of §5 along the window's mean step ({} when its loss is not finite)."""
        loss = self._loss_over(pl_module, self.probe_set, sharded)
        try:
            with self._probing(trainer, pl_module, sharded):
                probe = step_gap_estimate(loss, params, direction, self.taus, reduce=rank_mean(trainer, pl_module.device))
        except NonFiniteError:
            return {}
        return {"step_gap": probe.step_gap, "step_gap_lo": probe.step_gap_lo, "step_gap_hi": probe.step_gap_hi,
                "gap_z": probe.gap_z, "gap_gain": probe.gap_gain, "taus": list(probe.taus),
                "losses": list(probe.losses), "units": probe.units}

    def _scale_record(self, trainer, pl_module, b_factors, sharded) -> dict[str, Any]:
        """The scale probe of §7 ({} when B0 was not zero, or its loss at k = 1 is not finite)."""
        if self.from_zero is False:
            if not self._warned_nonzero and trainer.is_global_zero:
                self._warned_nonzero = True
                warnings.warn("the scale probe needs B0 = 0 (it stretches W0 + k*dW by scaling B); this run's "
                              "adapters started with B != 0, so the verdict has no scale probe", SignalDriftWarning,
                              stacklevel=2)
            return {}
        loss = self._loss_over(pl_module, self.scale_set or self.probe_set, sharded)
        try:
            with self._probing(trainer, pl_module, sharded):
                probe = scale_probe(loss, b_factors, self.ks, reduce=rank_mean(trainer, pl_module.device))
        except NonFiniteError:
            return {}
        return {"k_star": probe.k_star, "k_best": probe.k_best, "scale_gain_z": probe.gain_z,
                "scale_help_z": probe.help_z, "scale_ks": list(probe.ks), "scale_losses": list(probe.losses),
                "scale_units": probe.units, "scale_zs": list(probe.zs)}

    def _update_verdict(self, pl_module, views) -> None:
        alpha, rank, scale = medians_of_views(views)
        # the probes at the current alpha (an AlphaController's move restarts the evidence); a resume right
        # after a move, before the next probe, takes the verdict the move was made on
        probes = self.probes[self.evidence_from:] or self.probes
        self.verdict = regime_verdict(
            alpha, rank, scale, [p.get("k_star") for p in probes],
            gain_zs=[p.get("scale_gain_z") for p in probes], help_zs=[p.get("scale_help_z") for p in probes],
            drift_ratios=[p.get("drift_ratio") for p in probes],
            step_sizes=[p.get("step_size_max", p.get("step_size")) for p in probes],
            steps=[p["step"] for p in probes], previous=[p["verdict"] for p in probes[:-1] if "verdict" in p],
            rules=self.rules,
        )
        probes[-1]["verdict"] = self.verdict.verdict

    def _verdict_text(self) -> str:
        v = self.verdict
        return f"**{v.verdict}**  \n{_escaped(v.evidence)}  \n{_escaped(v.suggestion)}"

    def summary(self) -> str:
        """A one-screen summary of the probes and the verdict."""
        if self.verdict is None:
            return "Alpha regime: no probe yet."
        lines = [f"Alpha regime: {self.verdict.verdict}", f"  evidence:   {self.verdict.evidence}",
                 f"  suggestion: {self.verdict.suggestion}",
                 "  probes (step: k* (z, help z), step_gap, drift_ratio, step_size -> verdict):"]

        def fmt(x) -> str:
            return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"

        for p in self.probes[-8:]:
            lines.append(f"    {int(p['step']):>6}: {fmt(p.get('k_star'))} ({fmt(p.get('scale_gain_z'))}, "
                         f"{fmt(p.get('scale_help_z'))}), {fmt(p.get('step_gap'))}, {fmt(p.get('drift_ratio'))}, "
                         f"{fmt(p.get('step_size'))} -> {p.get('verdict', 'n/a')}")
        return "\n".join(lines)

    def _reset(self) -> None:
        """Forget an earlier fit's probes, verdict, peaks and probe sets (a reused callback)."""
        self.probes, self.verdict, self._config_verdict = [], None, None
        self.evidence_from = 0
        self.step_size_peak = self._interval_peak = self.from_zero = None
        self._warned = self._warned_nonzero = False
        if not self._fixed_probe_set:
            self.probe_set = []
        self.scale_set = []

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        cpu = torch.device("cpu")
        return {"probes": [dict(p) for p in self.probes], "evidence_from": self.evidence_from, "warned": self._warned,
                "step_size_peak": self.step_size_peak, "interval_peak": self._interval_peak, "from_zero": self.from_zero,
                "probe_set": [move_to_device(b, cpu) for b in self.probe_set],
                "scale_set": [move_to_device(b, cpu) for b in self.scale_set]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.probes = [dict(p) for p in state_dict.get("probes", [])]
        self.evidence_from = int(state_dict.get("evidence_from", 0))
        self._warned = bool(state_dict.get("warned", False))
        self.step_size_peak = state_dict.get("step_size_peak")
        self._interval_peak = state_dict.get("interval_peak")
        self.from_zero = state_dict.get("from_zero")
        if state_dict.get("probe_set"):
            self.probe_set = list(state_dict["probe_set"])
        elif state_dict.get("probe_batch") is not None:  # a checkpoint of version 1
            self.probe_set = [state_dict["probe_batch"]]
        self.scale_set = list(state_dict.get("scale_set") or [])

