"""Measurements as data (step -> layer -> metric -> value) and the one place tags are made and read.

Every consumer (loggers, the report, the finder, the benchmarks) reads :class:`StepMeasurement`;
TensorBoard tags are a view of it, made by :func:`to_tags` and read back by :func:`parse_tag`.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

PREFIX = "signaldrift"

# The per-layer metrics, in docs/metrics.md order: name -> section of docs/metrics.md.
METRICS: dict[str, int] = {
    "delta_norm": 1, "delta_rel": 1, "stable_rank": 1, "effective_rank": 1,
    "signal_norm": 2, "drift_norm": 2, "drift_ratio": 2, "step_size": 2,
    "grad_alignment": 3, "grad_drift_ratio": 3,
    "spectral_gain": 4, "spectral_suppression": 4,
}
# Whole-model quantities logged by the advisor (docs/metrics.md sections 5 and 6) and the engine.
MODEL_METRICS: dict[str, int] = {"step_gap": 5, "gap_gain": 5, "verdict_code": 6, "skipped_steps": 0}
KINDS = ("median", "max")  # how a per-layer metric is summarized over layers


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
    return f"{PREFIX}/{layer}/{metric}"


def summary_tag(metric: str, kind: str = "median") -> str:
    return f"{PREFIX}/{metric}" if kind == "median" else f"{PREFIX}/{metric}_{kind}"


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


def parse_tag(tag: str) -> TagKey | None:
    """The inverse of the tag functions, for any logger's prefix (the Hugging Face Trainer writes
    ``train/signaldrift/...``). None for a tag that is not one of ours."""
    head, sep, rest = tag.partition(f"{PREFIX}/")
    if not sep or (head and not head.endswith("/")):
        return None
    if "/" not in rest:
        for kind in KINDS[1:]:
            base = rest[: -len(kind) - 1]
            if rest.endswith(f"_{kind}") and base in METRICS:
                return TagKey(base, None, kind)
        return TagKey(rest) if rest in METRICS or rest in MODEL_METRICS else None
    layer, _, metric = rest.rpartition("/")
    return TagKey(metric, layer) if metric in METRICS else None
