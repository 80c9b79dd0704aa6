"""Measurements as data (step -> layer -> metric -> value) and the one place tags are made and read.

Every consumer (loggers, the report, the finder, the benchmarks) reads :class:`StepMeasurement`;
TensorBoard tags are a view of it, made by :func:`to_tags` and read back by :func:`parse_tag`.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

# The tag scheme (README, "The TensorBoard dashboard"). TensorBoard's Time Series groups cards by a tag's
# first path segment and sorts tags naturally, uppercase before lowercase, so ``Summary`` opens the page
# (before Lightning's ``epoch``), the other model-level values follow under ``signaldrift``, and the
# hundreds of per-layer values come after them under their own prefix.
SUMMARY = "Summary"  # the few values a person reads first
PREFIX = "signaldrift"  # every other whole-model value (medians and maxima over layers, probes, thresholds)
LAYER_PREFIX = "signaldrift_layers"  # per-layer values: signaldrift_layers/<layer>/<metric>

# The per-layer metrics, in docs/metrics.md order: name -> section of docs/metrics.md.
METRICS: dict[str, int] = {
    "delta_norm": 1, "delta_rel": 1, "stable_rank": 1, "effective_rank": 1,
    "signal_norm": 2, "drift_norm": 2, "drift_ratio": 2, "step_size": 2,
    "grad_alignment": 3, "grad_drift_ratio": 3,
    "spectral_gain": 4, "spectral_suppression": 4,
}
# Whole-model quantities logged by the advisor (docs/metrics.md sections 5 and 6) and the engine:
# alpha (median over layers), the verdict as a code (-1 alpha-too-small, 0 in-regime, 0.5 uncertain,
# 1 too-aggressive), each probe's step_gap with its spread, gap_z and gap_gain, and the median of the
# probes the verdict counts; each scale probe's k* and its two z values (section 7).
MODEL_METRICS: dict[str, int] = {"alpha": 6, "alpha_verdict": 6, "step_gap": 5, "step_gap_lo": 5, "step_gap_hi": 5,
                                 "step_gap_median": 6, "gap_z": 5, "gap_gain": 5, "skipped_steps": 0,
                                 "k_star": 7, "scale_gain_z": 7, "scale_help_z": 7}
# The levels the verdict and the collapse evidence compare against (signaldrift.regime), logged as constant
# series so that charts can draw them next to the values: signaldrift/thresholds/<name>.
THRESHOLDS = ("k_star_too_small", "k_star_too_aggressive", "step_gap_too_small", "step_gap_too_aggressive", "step_size_high")
# The alpha finder's trials when a run chose its alpha with them (``signaldrift train --alpha auto``): a
# TensorBoard run of their own in the run's folder FINDER_RUN (their steps are the grid's indices, not
# training steps), read back by the report. Held-out loss and alpha by grid index; at step 0 the best alpha
# for a run as long as the trials and the suggestion (that best scaled to the run's length).
FINDER_RUN = "find_alpha"
FINDER_TAGS = {"alpha": "find_alpha/alpha", "loss": "find_alpha/held_out_loss", "best": "find_alpha/trial_best",
               "suggestion": "find_alpha/suggestion"}
# The training application's held-out metrics, repeated in the summary.
VALIDATION = ("val_loss", "val_acc")
KINDS = ("median", "max")  # how a per-layer metric is summarized over layers
# What goes under SUMMARY: (metric, kind) pairs; every other whole-model value goes under PREFIX.
SUMMARY_KEYS = frozenset({("alpha", "median"), ("alpha_verdict", "median"), ("step_gap", "median"),
                          ("step_gap_lo", "median"), ("step_gap_hi", "median"), ("step_gap_median", "median"), ("k_star", "median"), ("drift_ratio", "median"), ("drift_ratio", "max"),
                          ("step_size", "median"), ("step_size", "max")} | {(v, "median") for v in VALIDATION})
# Names the old scheme used (runs written before the summary existed): old name -> metric.
_OLD_NAMES = {"verdict_code": "alpha_verdict"}


@dataclass(frozen=True)
class StepMeasurement:
    """What the engine measured at one optimizer step.

    ``layers[layer][metric]`` holds finite values only: a value that is undefined at this step
    (docs/metrics.md says when) is absent, never a made-up number.
    """

    step: int
    layers: Mapping[str, Mapping[str, float]]
    skipped_steps: int = 0
    _summary: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def values(self, metric: str) -> list[float]:
        """``metric`` over the layers that have it, in layer order."""
        return [m[metric] for m in self.layers.values() if metric in m]

    def summary(self, metric: str, kind: str = "median") -> float | None:
        """The median (or max) of ``metric`` over layers; None where no layer has it."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        key = (metric, kind)
        if key not in self._summary:
            vals = self.values(metric)
            self._summary[key] = None if not vals else (statistics.median(vals) if kind == "median" else max(vals))
        return self._summary[key]

    def tags(self, layers: bool = True) -> dict[str, float]:
        """This measurement as logged (see :func:`to_tags`)."""
        return to_tags(self, layers)

    def as_dict(self) -> dict:
        return {"step": self.step, "layers": {n: dict(m) for n, m in self.layers.items()},
                "skipped_steps": self.skipped_steps}

    @classmethod
    def from_dict(cls, data: Mapping) -> StepMeasurement:
        return cls(int(data["step"]), {n: dict(m) for n, m in data["layers"].items()}, int(data.get("skipped_steps", 0)))


def measurement(step: int, layers: Mapping[str, Mapping[str, float | None]], skipped_steps: int = 0) -> StepMeasurement:
    """A :class:`StepMeasurement` keeping only finite values."""
    clean = {}
    for name, metrics in layers.items():
        kept = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        if kept:
            clean[name] = kept
    return StepMeasurement(step, clean, skipped_steps)


# ----------------------------------------------------------------------------- tags (the view)
def layer_tag(layer: str, metric: str) -> str:
    """``signaldrift_layers/<layer>/<metric>``."""
    return f"{LAYER_PREFIX}/{layer}/{metric}"


def summary_tag(metric: str, kind: str = "median") -> str:
    """A whole-model value's tag: ``Summary/<name>`` for the summary's few, ``signaldrift/<name>`` for
    the rest, where ``<name>`` is ``metric`` (median over layers, or a whole-model value) or
    ``<metric>_max``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    name = metric if kind == "median" else f"{metric}_{kind}"
    return f"{SUMMARY}/{name}" if (metric, kind) in SUMMARY_KEYS else f"{PREFIX}/{name}"


def threshold_tag(name: str) -> str:
    """``signaldrift/thresholds/<name>`` for a name of :data:`THRESHOLDS`."""
    if name not in THRESHOLDS:
        raise ValueError(f"unknown threshold {name!r}; known: {', '.join(THRESHOLDS)}")
    return f"{PREFIX}/thresholds/{name}"


def to_tags(m: StepMeasurement, layers: bool = True) -> dict[str, float]:
    """The tags and values logged for one measurement (per-layer ones only with ``layers``)."""
    tags: dict[str, float] = {}
    if layers:
        for name, metrics in m.layers.items():
            for metric, value in metrics.items():
                tags[layer_tag(name, metric)] = value
    for metric in METRICS:
        for kind in KINDS:
            value = m.summary(metric, kind)
            if value is not None:
                tags[summary_tag(metric, kind)] = value
    tags[summary_tag("skipped_steps")] = float(m.skipped_steps)
    return tags


@dataclass(frozen=True)
class TagKey:
    """What a logged tag holds: ``layer`` None for a whole-model value."""

    metric: str
    layer: str | None = None
    kind: str = "median"


_ROOTS = (SUMMARY, PREFIX, LAYER_PREFIX)


def _whole_model(name: str) -> TagKey | None:
    for kind in KINDS[1:]:
        base = name[: -len(kind) - 1]
        if name.endswith(f"_{kind}") and base in METRICS:
            return TagKey(base, None, kind)
    name = _OLD_NAMES.get(name, name)
    known = name in METRICS or name in MODEL_METRICS or name in VALIDATION
    return TagKey(name) if known else None


def parse_tag(tag: str) -> TagKey | None:
    """The inverse of the tag functions, for any logger's prefix (the Hugging Face Trainer writes
    ``train/Summary/...``), and for the old scheme too (``signaldrift/<layer>/<metric>``,
    ``signaldrift/verdict_code``). None for a tag that is not one of ours."""
    parts = tag.split("/")
    at = next((i for i, p in enumerate(parts) if p in _ROOTS), None)
    if at is None:
        return None
    root, rest = parts[at], parts[at + 1:]
    if not rest or not all(rest):
        return None
    if root == LAYER_PREFIX or (root == PREFIX and len(rest) >= 2 and rest[0] != "thresholds"):
        if len(rest) < 2 or rest[-1] not in METRICS:
            return None
        return TagKey(rest[-1], "/".join(rest[:-1]))
    if root == PREFIX and rest[0] == "thresholds":
        return TagKey(rest[1]) if len(rest) == 2 and rest[1] in THRESHOLDS else None
    return _whole_model(rest[0]) if len(rest) == 1 else None
