"""Reading a run back: the TensorBoard scalars and verdict, a per-layer diagnosis, a PNG summary."""
from __future__ import annotations

import math
import statistics
import struct
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from callbacks.measurements import FINDER_TAGS, PREFIX, TagKey, parse_tag, summary_tag

# The per-layer table's columns (a selection of callbacks.measurements.METRICS).
REPORT_METRICS = ("drift_ratio", "step_size", "grad_alignment", "spectral_suppression", "delta_rel")


class IncompleteRunWarning(UserWarning):
    """An event file of a run could not be read to its end (truncated, garbage or a bad checksum)."""


@dataclass(frozen=True)
class RunRecord:
    """What a run's event files hold.

    Attributes:
        scalars: ``scalars[tag][step] = value``.
        verdicts: the advisor's verdict text by step.
        incomplete: event files that could not be read to their end, ``path -> records read``
            before the damage; empty when every file was whole. What was read is kept, so a
            record that is not :attr:`complete` holds only part of the run.
    """

    scalars: dict[str, dict[int, float]]
    verdicts: dict[int, str]
    incomplete: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.incomplete


_HEADER = 12  # uint64 length + uint32 masked crc32c of the length
_FOOTER = 4  # uint32 masked crc32c of the payload


def _records(path: Path) -> tuple[list[bytes], str | None]:
    """The payloads of a TFRecord file, and why reading stopped early (None at a clean end).

    A record is: uint64 length (little-endian), uint32 masked crc32c of those 8 bytes, the
    payload, uint32 masked crc32c of the payload. Reading stops at the first record that is cut
    short or fails a checksum: nothing after it can be trusted to be framed right. TensorBoard's
    crc32c is pure Python (about 0.35 s per MB here); event files of our runs are small.
    """
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    data = path.read_bytes()
    payloads: list[bytes] = []
    if not data:  # a writer starts every file with its version record: an empty file lost everything
        return payloads, "is empty (0 bytes)"
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER:
            return payloads, f"ends mid-record at byte {pos} (truncated)"
        length_bytes = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + _HEADER])
        if masked_crc32c(length_bytes) != length_crc:
            return payloads, f"has a corrupt record header at byte {pos} (garbage or a damaged file)"
        end = pos + _HEADER + length + _FOOTER
        if end > len(data):
            return payloads, f"ends mid-record at byte {pos} (truncated)"
        payload = data[pos + _HEADER:end - _FOOTER]
        (payload_crc,) = struct.unpack("<I", data[end - _FOOTER:end])
        if masked_crc32c(payload) != payload_crc:
            return payloads, f"has a record with a bad checksum at byte {pos} (a damaged file)"
        payloads.append(payload)
        pos = end
    return payloads, None


def _scalar(value, plugin: str | None) -> float | None:
    """A summary value's number: ``simple_value``, or a one-element numeric tensor of the scalars
    plugin (or of no known plugin); None for anything else."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if not value.HasField("tensor") or plugin not in ("scalars", None):
        return None
    from tensorboard.util.tensor_util import make_ndarray

    try:
        array = make_ndarray(value.tensor)
    except (TypeError, ValueError):
        return None
    if array.size != 1 or array.dtype.kind not in "fiu":
        return None
    return float(array.reshape(()))


class _RunReader:
    """Events of one folder, in file order, with TensorBoard's purge of orphaned steps.

    A ``SessionLog.START`` at step s (file version 2 and later; written by
    :func:`callbacks.tensorboard.mark_restart` on resume) drops every value read so far at step
    s or later: those steps were trained again. Files without a version fall back to
    TensorBoard's older rule: a summary whose step goes backwards drops its tags' later steps.
    """

    def __init__(self) -> None:
        self.scalars: dict[str, dict[int, float]] = {}
        self.verdicts: dict[int, str] = {}
        self.plugins: dict[str, str] = {}  # tag -> plugin, from the first metadata seen (as TensorBoard)
        self.file_version: float | None = None
        self.most_recent_step = -1

    def _purge(self, step: int, tags: list[str] | None = None) -> None:
        for tag, series in self.scalars.items():
            if tags is None or tag in tags:
                for s in [s for s in series if s >= step]:
                    del series[s]
        if tags is None or any(t.startswith(f"{PREFIX}/verdict") for t in tags):
            for s in [s for s in self.verdicts if s >= step]:
                del self.verdicts[s]

    def add(self, event) -> None:
        from tensorboard.compat.proto.event_pb2 import SessionLog

        if event.HasField("file_version"):
            try:
                self.file_version = float(event.file_version.split(":")[-1])
            except ValueError:
                self.file_version = None
        if self.file_version is not None and self.file_version >= 2:
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                self._purge(event.step)
        elif event.step < self.most_recent_step and event.HasField("summary"):
            self._purge(event.step, [v.tag for v in event.summary.value])
        else:
            self.most_recent_step = event.step
        if not event.HasField("summary"):
            return
        for value in event.summary.value:
            tag = value.tag
            if value.HasField("metadata") and tag not in self.plugins:
                self.plugins[tag] = value.metadata.plugin_data.plugin_name
            if tag.startswith(f"{PREFIX}/verdict") and value.HasField("tensor") and value.tensor.string_val:
                self.verdicts[event.step] = value.tensor.string_val[0].decode("utf-8", "replace")
                continue
            number = _scalar(value, self.plugins.get(tag))
            if number is not None:
                self.scalars.setdefault(tag, {})[event.step] = number


def read_run(run_dir: str | Path) -> RunRecord:
    """Read every TensorBoard event file under ``run_dir``.

    The files of each folder are read in name (= creation) order, as TensorBoard reads a run;
    a restart marker drops the steps that a resumed run trained again (see :class:`_RunReader`).
    Scalars come from ``simple_value`` summaries and from scalar tensors; verdicts from the
    advisor's text summaries. A file that is truncated, has garbage appended or fails a
    checksum is read up to its last whole record, named in :attr:`RunRecord.incomplete` and in
    an :class:`IncompleteRunWarning`.

    Raises:
        FileNotFoundError: no event file there.
        OSError: an event file could not be read.
    """
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {run_dir}; is it a run directory?")
    scalars: dict[str, dict[int, float]] = {}
    verdicts: dict[int, str] = {}
    incomplete: dict[str, int] = {}
    for folder in sorted({f.parent for f in files}):
        reader = _RunReader()
        for f in (f for f in files if f.parent == folder):
            payloads, problem = _records(f)
            read = 0
            for payload in payloads:
                try:
                    event = Event.FromString(payload)
                except DecodeError:
                    problem = f"has a record that is not a TensorBoard event (record {read + 1})"
                    break
                reader.add(event)
                read += 1
            if problem is not None:
                incomplete[str(f)] = read
                warnings.warn(f"event file {f} {problem}; read {read} record(s) before it, the rest of the "
                              "file is ignored", IncompleteRunWarning, stacklevel=2)
        for tag, series in reader.scalars.items():
            scalars.setdefault(tag, {}).update(series)
        verdicts.update(reader.verdicts)
    return RunRecord(scalars, verdicts, incomplete)


def _recent(series: dict[int, float], window: int = 10) -> float | None:
    vals = [series[s] for s in sorted(series)[-window:] if math.isfinite(series[s])]
    return statistics.median(vals) if vals else None


def measured(record: RunRecord) -> dict[TagKey, dict[int, float]]:
    """The run's series by what they measure, whichever logger wrote them (Lightning writes
    ``signaldrift/...``, the Hugging Face Trainer ``train/signaldrift/...``)."""
    out: dict[TagKey, dict[int, float]] = {}
    for tag, series in record.scalars.items():
        key = parse_tag(tag)
        if key is not None:
            out.setdefault(key, {}).update(series)
    return out


def layer_table(record: RunRecord, window: int = 10) -> list[dict[str, float | str | None]]:
    """Per layer, the median of each metric over its last ``window`` logged steps."""
    layers: dict[str, dict[str, float | None]] = {}
    for key, series in measured(record).items():
        if key.layer is not None and key.metric in REPORT_METRICS:
            layers.setdefault(key.layer, {})[key.metric] = _recent(series, window)
    return [{"layer": name, **{m: vals.get(m) for m in REPORT_METRICS}} for name, vals in layers.items()]


def alpha_moves(record: RunRecord) -> list[tuple[int, float, float]]:
    """Where the logged alpha (``Summary/alpha``) changed: ``(step, before, after)``; an AlphaController's moves."""
    series = measured(record).get(TagKey("alpha"), {})
    steps = sorted(series)
    return [(b, series[a], series[b]) for a, b in zip(steps, steps[1:])
            if not math.isclose(series[a], series[b], rel_tol=1e-9)]


def latest_verdict(record: RunRecord) -> str | None:
    return record.verdicts[max(record.verdicts)] if record.verdicts else None


def format_report(record: RunRecord, window: int = 10, recorded_verdict: str | None = None) -> str:
    """The per-layer diagnosis table and the verdict, as plain text.

    ``recorded_verdict``: the verdict as the run recorded it elsewhere (``run.json``), shown when the
    event files hold none (e.g. they are empty).
    """
    rows = layer_table(record, window)
    width = max([len("layer")] + [len(r["layer"]) for r in rows])
    head = f"{'layer':<{width}}  " + "  ".join(f"{m:>20}" for m in REPORT_METRICS)
    lines = [f"Per-layer diagnosis (median of the last {window} measurements)", head, "-" * len(head)]
    for r in rows:
        cells = ["n/a" if r[m] is None else f"{r[m]:.4g}" for m in REPORT_METRICS]
        lines.append(f"{r['layer']:<{width}}  " + "  ".join(f"{c:>20}" for c in cells))
    model_rows = []
    series = measured(record)
    for m in REPORT_METRICS + ("k_star", "step_gap", "gap_gain"):
        v = _recent(series.get(TagKey(m), {}), window)
        if v is not None:
            model_rows.append(f"  {m:<22}{v:.4g}")
    if model_rows:
        lines += ["", "Model (median over layers, recent steps)"] + model_rows
    moves = alpha_moves(record)
    if moves:
        lines += ["", "Alpha moves (alpha control)"] + [f"  step {t}: {a:.4g} -> {b:.4g} (x {b / a:.3g})" for t, a, b in moves]
    verdict = latest_verdict(record)
    if verdict:
        text = _unmarked(verdict).replace("  \n", "\n  ")
    elif recorded_verdict:
        text = recorded_verdict.replace("\n", "\n  ")
    else:
        text = "none (no optimization-gap probe ran; train longer than gap_every steps)"
    lines += ["", "Verdict: " + text]
    return "\n".join(lines)


# Where the training loss and the validation metrics live: this project's app, plain Lightning, Hugging Face.
LOSS_TAGS = {"train loss": ("train_loss", "train/loss"),
             "validation loss": (summary_tag("val_loss"), "val_loss", "eval/loss"),
             "validation accuracy": (summary_tag("val_acc"), "val_acc", "eval/accuracy")}
VERDICT_LABELS = {-1.0: "alpha-too-small", 0.0: "in-regime", 0.5: "uncertain", 1.0: "too-aggressive"}


def _first(record: RunRecord, tags: tuple[str, ...]) -> dict[int, float]:
    return next((record.scalars[t] for t in tags if record.scalars.get(t)), {})


def _unmarked(text: str) -> str:
    """The advisor's Markdown as plain text: the bold verdict unmarked, escaped asterisks plain."""
    return text.replace("\\*", "\0").replace("**", "").replace("\0", "*")


def _verdict_parts(text: str | None) -> tuple[str, str]:
    """(verdict, suggestion) of the advisor's text ``**verdict**  \nevidence  \nsuggestion``."""
    if not text or "**" not in text:
        return "no verdict", "no optimization-gap probe ran; train longer than the probe cadence"
    lines = [line.strip() for line in _unmarked(text).split("\n")]
    return lines[0], lines[-1] if len(lines) > 2 else ""


def _plot_series(ax, series: dict[int, float], **kw) -> None:
    steps = sorted(series)
    ax.plot(steps, [series[s] for s in steps], **kw)


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in this run", ha="center", va="center", fontsize=9, color="gray",
            transform=ax.transAxes)


def _heatmap(fig, ax, record: RunRecord, window: int) -> None:
    """Layers x metrics: each value against the median over layers of its metric (log10), so one colour
    scale serves metrics of any size; legible for hundreds of layers (labels thinned)."""
    import numpy as np

    from callbacks.tensorboard import short_layer_names

    rows = layer_table(record, window)
    metrics = [m for m in REPORT_METRICS if any(r[m] is not None and r[m] > 0 for r in rows)]
    if not rows or not metrics:
        _empty(ax, "per-layer value")
        ax.set_axis_off()
        return
    grid = np.full((len(metrics), len(rows)), np.nan)
    for j, r in enumerate(rows):
        for i, m in enumerate(metrics):
            if r[m] is not None and r[m] > 0:
                grid[i, j] = r[m]
    medians = np.nanmedian(grid, axis=1, keepdims=True)
    rel = np.clip(np.log10(grid / medians), -1, 1)
    image = ax.imshow(np.ma.masked_invalid(rel), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                      interpolation="nearest")
    ax.set_yticks(range(len(metrics)), [f"{m}\n(median {medians[i, 0]:.2g})" for i, m in enumerate(metrics)],
                  fontsize=8)
    names = short_layer_names([r["layer"] for r in rows])
    every = max(1, math.ceil(len(rows) / 40))
    ticks = list(range(0, len(rows), every))
    ax.set_xticks(ticks, [names[rows[j]["layer"]] if every == 1 else str(j) for j in ticks], rotation=90, fontsize=8)
    ax.set_xlabel("layer" + ("" if every == 1 else f" (index in module order; every {every}th labelled)"), fontsize=9)
    top = sorted((r for r in rows if r["drift_ratio"] is not None), key=lambda r: -r["drift_ratio"])[:3]
    most = ", ".join(f"{names[r['layer']]} ({r['drift_ratio']:.3g})" for r in top)
    ax.set_title(f"Per layer, {len(rows)} layers: value / median over layers (recent {window} measurements)"
                 + (f"\nlargest drift_ratio: {most}" if most else ""), fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
    bar.set_label("log10(value / median)", fontsize=8)
    bar.ax.tick_params(labelsize=8)


def _finder(ax, record: RunRecord, alpha: float | None) -> None:
    """The alpha finder's trials (``--alpha auto``): held-out loss by alpha, the best alpha for the trials'
    length, the suggestion (that best scaled to the run's length) and the run's alpha."""
    def at_zero(key: str) -> float | None:
        series = record.scalars.get(FINDER_TAGS[key], {})
        return series[min(series)] if series else None  # written once, at step 0

    alphas, losses = record.scalars.get(FINDER_TAGS["alpha"], {}), record.scalars.get(FINDER_TAGS["loss"], {})
    trials = sorted((alphas[i], losses[i]) for i in set(alphas) & set(losses))
    ax.semilogx([a for a, _ in trials], [l for _, l in trials], "o-", color="black", markersize=4,
                label="held-out loss after each trial")
    def same(a: float | None, b: float | None) -> bool:
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-3)

    best, suggested = at_zero("best"), at_zero("suggestion")
    if best is not None and not same(best, suggested):
        edge = " at the grid's edge" if trials and not trials[0][0] < best < trials[-1][0] else ""
        ax.axvline(best, color="tab:orange", ls=":", lw=1.5,
                   label=f"best alpha for the trials' length{edge} ({best:.5g})")
    if suggested is not None:
        used = " = this run's alpha" if same(alpha, suggested) else ""
        ax.axvline(suggested, color="tab:red", ls="--", lw=1.5, label=f"suggested for the run's length{used} "
                                                                      f"({suggested:.5g})")
    if alpha is not None and not same(alpha, suggested):
        ax.axvline(alpha, color="tab:blue", ls=":", lw=1.5, label=f"this run's alpha ({alpha:.5g})")
    ax.set_xlabel("alpha (the finder's grid, log scale)", fontsize=9)
    ax.set_ylabel("held-out loss", fontsize=9)
    ax.set_title(f"alpha finder: {len(trials)} short trials (the suggestion scales their best alpha to the "
                 "run's length: best x trial steps / run steps)", fontsize=10)
    ax.legend(fontsize=8, loc="best")


def write_report_png(record: RunRecord, path: str | Path, window: int = 10) -> Path:
    """:func:`report_figure` saved as a PNG at ``path``."""
    fig = report_figure(record, window)
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _k_star_panel(ax, kstar: dict, too_small: float, too_aggressive: float) -> None:
    """k* of each probe against the verdict's in-regime band (docs/metrics.md §7, §6)."""
    ax.axhspan(too_aggressive, too_small, color="tab:green", alpha=0.12,
               label=f"in-regime band [{too_aggressive:g}, {too_small:g})")
    ax.axhline(too_small, color="tab:blue", ls="--", lw=1, label=f"alpha too small at or above {too_small:g} (significant probes)")
    ax.axhline(too_aggressive, color="tab:red", ls="--", lw=1, label=f"collapse below {too_aggressive:g} (significant probes)")
    _plot_series(ax, kstar, marker="o", ls="", color="black", label="k* of each probe (whole model)")
    top = max([*kstar.values(), too_small * 1.35]) * 1.1
    if top > 8:  # k* of 16 would squash the band flat: log above 1
        ax.set_yscale("symlog", linthresh=1, linscale=1)
        ax.set_ylim(-0.05, top * 1.5)
    else:
        ax.set_ylim(-0.04 * top, top)
    ax.set_ylabel("k* (the run's update stretched)", fontsize=9)
    ax.set_title("k*: where along the run's own update the loss is lowest", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)


def report_figure(record: RunRecord, window: int = 10):
    """A one-page figure answering "is my alpha right?": the verdict, alpha and the suggestion in the title;
    step_gap with the verdict's thresholds; the verdict over time; drift_ratio and step_size with the
    collapse levels; train and validation loss; validation accuracy; the alpha finder's trials when the
    run's alpha came from them; a per-layer heatmap."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from signaldrift import regime

    by_key = measured(record)

    def level(name: str, default: float) -> float:
        """The run's own threshold (its logged constant series, e.g. custom VerdictRules), else the default."""
        series = by_key.get(TagKey(name), {})
        return series[max(series)] if series else default

    too_small, too_aggressive = level("step_gap_too_small", regime.GAP_TOO_SMALL), \
        level("step_gap_too_aggressive", regime.GAP_TOO_AGGRESSIVE)
    size_high = level("step_size_high", regime.STEP_SIZE_HIGH)
    finder = bool(record.scalars.get(FINDER_TAGS["alpha"]) and record.scalars.get(FINDER_TAGS["loss"]))
    ratios = [1, 1, 1] + ([0.8] if finder else []) + [1.25]
    fig = plt.figure(figsize=(12, 14 + 2.8 * finder), dpi=100, layout="constrained")
    grid = fig.add_gridspec(len(ratios), 2, height_ratios=ratios)
    axes = [fig.add_subplot(grid[i // 2, i % 2]) for i in range(6)]
    for ax in axes:
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("optimizer step", fontsize=9)

    ax = axes[0]  # k* (rules v3; runs before it: step_gap) and the verdict's thresholds
    kstar = by_key.get(TagKey("k_star"), {})
    if kstar:
        _k_star_panel(ax, kstar, level("k_star_too_small", regime.K_TOO_SMALL),
                      level("k_star_too_aggressive", regime.K_TOO_AGGRESSIVE))
    gap = {} if kstar else by_key.get(TagKey("step_gap"), {})
    if not kstar:
        ax.axhspan(too_aggressive, too_small, color="tab:green", alpha=0.12,
                   label=f"in-regime band [{too_aggressive:g}, {too_small:g})")
        ax.axhline(too_small, color="tab:blue", ls="--", lw=1, label=f"alpha too small at or above {too_small:g} (significant probes)")
        ax.axhline(too_aggressive, color="tab:red", ls="--", lw=1,
                   label=f"too aggressive below {too_aggressive:g} (significant probes)")
        if gap:
            lo, hi = by_key.get(TagKey("step_gap_lo"), {}), by_key.get(TagKey("step_gap_hi"), {})
            both = sorted(set(lo) & set(hi) & set(gap))
            if both:
                ax.vlines(both, [lo[s] for s in both], [hi[s] for s in both], color="grey", lw=2, alpha=0.6,
                          label="spread over the probe set (quartiles)")
                for q in (lo, hi):  # caps: a spread with equal quartiles is still seen
                    ax.plot(both, [q[s] for s in both], ls="", marker="_", markersize=10, color="grey", alpha=0.8)
            _plot_series(ax, gap, marker="o", ls="", color="black", label="step_gap of each probe (whole model)")
            median = by_key.get(TagKey("step_gap_median"), {})
            if median:
                _plot_series(ax, median, color="black", lw=1.5, label="median of the verdict's window")
            top = max([*gap.values(), *(lo[s] for s in both), *(hi[s] for s in both), too_small * 1.35]) * 1.1
            if top > 8:  # a gap of 16 or 64 would squash the band and its thresholds flat: log above 1
                ax.set_yscale("symlog", linthresh=1, linscale=1)
                ax.set_ylim(-0.05, top * 1.5)
            else:
                ax.set_ylim(-0.04 * top, top)  # a probe at 0 (the loss lowest where the step started) stays visible
        else:
            _empty(ax, "step_gap probe")
        ax.set_ylabel("step_gap (best multiple of the step)", fontsize=9)
        ax.set_title("step_gap: where along the step the loss is lowest", fontsize=10)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)  # below: never over a probe

    ax = axes[1]  # the verdict over time
    codes = by_key.get(TagKey("alpha_verdict"), {})
    if codes:
        steps = sorted(codes)
        ax.step(steps, [codes[s] for s in steps], where="post", color="black")
        ax.set_ylim(-1.5, 1.5)
        for i, (t, a, b) in enumerate(alpha_moves(record)):  # the controller's moves, where the verdict restarts
            ax.axvline(t, color="tab:green", ls=":", lw=1.5, label="alpha moved" if i == 0 else None)
            ax.annotate(f"alpha {a:.3g} -> {b:.3g}", (t, 1.35 - 0.25 * (i % 3)), fontsize=7, color="tab:green",
                        xytext=(3, 0), textcoords="offset points", va="center")
    else:
        _empty(ax, "verdict series")
    ax.set_yticks(list(VERDICT_LABELS), list(VERDICT_LABELS.values()), fontsize=8)
    ax.set_title("verdict over time (the configuration alone until enough probes)", fontsize=10)

    for ax, metric, line, label in ((axes[2], "drift_ratio", regime.DRIFT_RATIO_HIGH, "high drift ratio"),
                                    (axes[3], "step_size", size_high, "collapse level (the median's peak after step 0)")):
        median, top = by_key.get(TagKey(metric), {}), by_key.get(TagKey(metric, None, "max"), {})
        if median:
            _plot_series(ax, median, color="tab:blue", label="median over layers")
            if top:
                _plot_series(ax, top, color="tab:orange", alpha=0.7, label="max over layers")
            ax.axhline(line, color="tab:red", ls="--", lw=1, label=f"{label} ({line:g})")
            ax.set_yscale("log")
            low, high = ax.get_ylim()
            ax.set_ylim(low, high * 10 ** 1.3)  # headroom: the legend above every line, not over one
            ax.legend(fontsize=8, loc="upper right", ncol=1)
        else:
            _empty(ax, metric)
        ax.set_ylabel(metric, fontsize=9)
        ax.set_title(f"{metric} per step", fontsize=10)

    ax = axes[4]  # losses
    drawn = False
    for label, color in (("train loss", "tab:gray"), ("validation loss", "tab:purple")):
        series = _first(record, LOSS_TAGS[label])
        if series:
            _plot_series(ax, series, color=color, marker="o" if len(series) < 30 else None, markersize=3, label=label)
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        _empty(ax, "loss")
    ax.set_ylabel("loss", fontsize=9)
    ax.set_title("train and validation loss", fontsize=10)

    ax = axes[5]
    acc = _first(record, LOSS_TAGS["validation accuracy"])
    if acc:
        _plot_series(ax, acc, color="tab:purple", marker="o", markersize=3)
        last = acc[max(acc)]
        ax.set_title(f"validation accuracy (last {last:.4f})", fontsize=10)
    else:
        _empty(ax, "validation accuracy")
        ax.set_title("validation accuracy", fontsize=10)
    ax.set_ylabel("accuracy", fontsize=9)

    alpha = by_key.get(TagKey("alpha"), {})
    if finder:
        ax = fig.add_subplot(grid[3, :])
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        _finder(ax, record, alpha[max(alpha)] if alpha else None)
    _heatmap(fig, fig.add_subplot(grid[len(ratios) - 1, :]), record, window)

    verdict, suggestion = _verdict_parts(latest_verdict(record))
    head = f"Verdict: {verdict}" + (f"    alpha = {alpha[max(alpha)]:.4g}" if alpha else "")
    fig.suptitle(head + (f"\n{textwrap.fill(suggestion, 110)}" if suggestion else ""), fontsize=13, fontweight="bold")
    return fig
