"""Reading a run back: the TensorBoard scalars and verdict, a per-layer diagnosis, a PNG summary."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from callbacks.engine import PREFIX

REPORT_METRICS = ("drift_ratio", "step_size", "grad_alignment", "spectral_suppression", "delta_rel")


@dataclass(frozen=True)
class RunRecord:
    """What a run's event files hold: ``scalars[tag][step] = value`` and the verdict texts by step."""

    scalars: dict[str, dict[int, float]]
    verdicts: dict[int, str]


def read_run(run_dir: str | Path) -> RunRecord:
    """Read every TensorBoard event file under ``run_dir``.

    Raises:
        FileNotFoundError: no event file there.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {run_dir}; is it a run directory?")
    scalars: dict[str, dict[int, float]] = {}
    verdicts: dict[int, str] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                scalars.setdefault(tag, {})[ev.step] = ev.value
        for tag in acc.Tags().get("tensors", []):
            if tag.startswith(f"{PREFIX}/verdict"):
                for ev in acc.Tensors(tag):
                    vals = ev.tensor_proto.string_val
                    if vals:
                        verdicts[ev.step] = vals[0].decode("utf-8", "replace")
    return RunRecord(scalars, verdicts)


def _recent(series: dict[int, float], window: int = 10) -> float | None:
    vals = [series[s] for s in sorted(series)[-window:] if math.isfinite(series[s])]
    return statistics.median(vals) if vals else None


def layer_table(record: RunRecord, window: int = 10) -> list[dict[str, float | str | None]]:
    """Per layer, the median of each metric over its last ``window`` logged steps."""
    layers: dict[str, dict[str, float | None]] = {}
    for tag, series in record.scalars.items():
        parts = tag.split("/")
        if len(parts) == 3 and parts[0] == PREFIX and parts[2] in REPORT_METRICS:
            layers.setdefault(parts[1], {})[parts[2]] = _recent(series, window)
    return [{"layer": name, **{m: vals.get(m) for m in REPORT_METRICS}} for name, vals in layers.items()]


def latest_verdict(record: RunRecord) -> str | None:
    return record.verdicts[max(record.verdicts)] if record.verdicts else None


def format_report(record: RunRecord, window: int = 10) -> str:
    """The per-layer diagnosis table and the verdict, as plain text."""
    rows = layer_table(record, window)
    width = max([len("layer")] + [len(r["layer"]) for r in rows])
    head = f"{'layer':<{width}}  " + "  ".join(f"{m:>20}" for m in REPORT_METRICS)
    lines = [f"Per-layer diagnosis (median of the last {window} measurements)", head, "-" * len(head)]
    for r in rows:
        cells = ["n/a" if r[m] is None else f"{r[m]:.4g}" for m in REPORT_METRICS]
        lines.append(f"{r['layer']:<{width}}  " + "  ".join(f"{c:>20}" for c in cells))
    model_rows = []
    for m in REPORT_METRICS + ("step_gap", "gap_gain"):
        v = _recent(record.scalars.get(f"{PREFIX}/{m}", {}), window)
        if v is not None:
            model_rows.append(f"  {m:<22}{v:.4g}")
    if model_rows:
        lines += ["", "Model (median over layers, recent steps)"] + model_rows
    verdict = latest_verdict(record)
    lines += ["", "Verdict: " + (verdict.replace("**", "").replace("  \n", "\n  ") if verdict else
                                 "none (no optimization-gap probe ran; train longer than gap_every steps)")]
    return "\n".join(lines)


def write_report_png(record: RunRecord, path: str | Path) -> Path:
    """A one-page PNG: drift ratio, step size and step gap over steps, and drift ratio per layer."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, metric in zip(axes.flat[:3], ("drift_ratio", "step_size", "step_gap")):
        series = record.scalars.get(f"{PREFIX}/{metric}", {})
        if series:
            steps = sorted(series)
            ax.plot(steps, [series[s] for s in steps], label="median over layers")
            mx = record.scalars.get(f"{PREFIX}/{metric}_max", {})
            if mx:
                ax.plot(sorted(mx), [mx[s] for s in sorted(mx)], alpha=0.5, label="max over layers")
            ax.legend(fontsize=8)
        ax.set_title(metric)
        ax.set_xlabel("optimizer step")
        if metric != "step_gap":
            ax.set_yscale("log")
    rows = [r for r in layer_table(record) if r["drift_ratio"] is not None]
    ax = axes.flat[3]
    if rows:
        ax.barh(range(len(rows)), [r["drift_ratio"] for r in rows])
        ax.set_yticks(range(len(rows)), [r["layer"].split("model.")[-1][-40:] for r in rows], fontsize=6)
    ax.set_title("drift_ratio per layer (recent median)")
    verdict = latest_verdict(record)
    fig.suptitle("Signal-Drift report: " + (verdict.split("**")[1] if verdict and "**" in verdict else "no verdict"))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
