"""TensorBoard extras: the Custom Scalars dashboard, singular-value histograms, the spectra figure."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from callbacks.measurements import PREFIX, layer_tag, summary_tag, threshold_tag

DASHBOARD_TITLE = "Signal-Drift"  # the Custom Scalars category a person reads first
DETAILS_TITLE = "Signal-Drift details"
# Per-layer metrics charted (median and max over layers) in the details category, docs/metrics.md order.
DETAIL_METRICS = ("signal_norm", "grad_alignment", "grad_drift_ratio", "delta_rel", "stable_rank")
PROBE_METRICS = ("spectral_suppression", "spectral_gain")  # on full-gradient steps only
SPECTRA_LAYERS = 8  # layers drawn in the spectra figure: the largest updates


def _line(tag: str) -> list[str]:
    """A margin-chart series drawn as a plain line: the value is its own lower and upper bound."""
    return [tag, tag, tag]


def _median_max(metric: str) -> list[str]:
    """A margin-chart series: the median over layers, shaded up to the max."""
    return [summary_tag(metric), summary_tag(metric), summary_tag(metric, "max")]


def _margin(series: list[str]) -> list:
    """A margin chart of one series: TensorBoard warns about a run that has some but not all of a margin
    chart's tags, so a chart with two series would warn about every run without them (a finder run, a
    run without an advisor)."""
    return ["Margin", [series]]


def dashboard_layout(*, advisor: bool = True, full_grad: bool = True,
                     extra: Mapping[str, Sequence] | None = None) -> dict:
    """The Custom Scalars layout: one quantity per chart, only tags that are logged.

    Custom Scalars colours a chart's lines by run (so that runs compare), never by tag: each chart is
    a margin chart of one series (raw values, no smoothing), the value as a line and a band: the
    median over layers shaded up to the max, k* against the verdict's in-regime band (its two
    thresholds), and in the details step_gap against its band and between its quartiles.

    Args:
        advisor: an AlphaRegimeAdvisor logs alpha, the verdict, k*, step_gap and the thresholds.
        full_grad: spectral suppression and gain are measured (full-gradient steps).
        extra: more charts for the first category, ``title -> [tag pattern, ...]`` (a multiline
            chart; TensorBoard draws these before the margin charts) or ``title -> ["Margin", [[value,
            lower, upper]]]`` (exact tags), e.g. validation.

    Returns:
        ``{category: {chart title: ["Multiline", [pattern, ...]] or ["Margin", [[value, lower, upper]]]}}``
        as :func:`add_custom_layout` writes it; Multiline patterns are regular expressions, margin
        series exact tags.
    """
    first: dict[str, list] = {}
    if advisor:
        first["verdict: -1 alpha too small, 0 in regime, 0.5 uncertain, 1 too aggressive"] = _margin(
            _line(summary_tag("alpha_verdict")))
        first["alpha (median over layers)"] = _margin(_line(summary_tag("alpha")))
        first["k* of each probe (line) against the in-regime band (shaded): the loss is lowest with the run's update "
              "stretched k* times; a significant k* at or above the band says alpha looks too small, below it collapse"] = _margin(
            [summary_tag("k_star"), threshold_tag("k_star_too_aggressive"), threshold_tag("k_star_too_small")])
    first["drift_ratio: median over layers, shaded up to the max"] = _margin(_median_max("drift_ratio"))
    # Titles are the same for every run: TensorBoard merges the layouts of a logdir's runs chart by chart.
    first["step_size: median over layers, shaded up to the max (the advisor calls a run too aggressive once the "
          "median, sampled every few steps after step 0, peaked at signaldrift/thresholds/step_size_high)"] = _margin(
        _median_max("step_size"))
    for chart, spec in (extra or {}).items():
        first[chart] = list(spec) if spec and spec[0] in ("Margin", "Multiline") else ["Multiline", list(spec)]
    details: dict[str, list] = {}
    if advisor:
        details["step_gap of each probe (line) against its band (shaded); it does not vote in rules v3"] = _margin(
            [summary_tag("step_gap"), threshold_tag("step_gap_too_aggressive"), threshold_tag("step_gap_too_small")])
        details["scale_gain_z (each probe): how clearly the examples agree that k* beats k = 1"] = _margin(
            _line(summary_tag("scale_gain_z")))
        details["scale_help_z (each probe): how clearly the update beats no update (negative: it made things worse)"] = _margin(
            _line(summary_tag("scale_help_z")))
        details["step_gap of each probe, shaded between its quartiles over the probe set's examples (the "
                "whole-model gap, from their mean loss, need not lie between them)"] = _margin(
            [summary_tag("step_gap"), summary_tag("step_gap_lo"), summary_tag("step_gap_hi")])
        details["step_gap_median: the median of the probes the verdict reads"] = _margin(
            _line(summary_tag("step_gap_median")))
        details["gap_gain (each probe)"] = _margin(_line(summary_tag("gap_gain")))
        details["gap_z (each probe): how clearly the probe set's units agree"] = _margin(_line(summary_tag("gap_z")))
    details.update({f"{m}: median over layers, shaded up to the max": _margin(_median_max(m)) for m in DETAIL_METRICS})
    if full_grad:
        details.update({f"{m}: median over layers, shaded up to the max (full-gradient steps)": _margin(_median_max(m))
                        for m in PROBE_METRICS})
    return {DASHBOARD_TITLE: first, DETAILS_TITLE: details}


def layout_summary(layout: Mapping[str, Mapping[str, Sequence]]):
    """The Custom Scalars plugin's summary for ``layout`` (:func:`dashboard_layout`'s form), with the charts
    in the order TensorBoard needs to show them in ``layout``'s (``SummaryWriter.add_custom_scalars``
    writes them as given).

    TensorBoard draws a category's multiline charts first, in their order, then its margin charts in
    the reverse of theirs (its list view inserts each chart's two ``dom-if`` anchors by element index,
    unchanged since 2020). The margin charts are written reversed, so a person sees ``layout``'s order
    (multiline charts first); :func:`displayed_order` is what TensorBoard shows of a written layout.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    categories = []
    for title, charts in layout.items():
        out = []
        multiline = [(n, c) for n, c in charts.items() if c[0] != "Margin"]
        margin = [(n, c) for n, c in charts.items() if c[0] == "Margin"]
        for name, (kind, content) in multiline + margin[::-1]:
            if kind == "Margin":
                series = [layout_pb2.MarginChartContent.Series(value=v, lower=lo, upper=hi) for v, lo, hi in content]
                out.append(layout_pb2.Chart(title=name, margin=layout_pb2.MarginChartContent(series=series)))
            elif kind == "Multiline":
                out.append(layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=list(content))))
            else:
                raise ValueError(f"chart {name!r}: kind must be 'Multiline' or 'Margin', got {kind!r}")
        categories.append(layout_pb2.Category(title=title, chart=out))
    tensor = TensorProto(dtype="DT_STRING", tensor_shape=TensorShapeProto(),
                         string_val=[layout_pb2.Layout(category=categories).SerializeToString()])
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME))
    return Summary(value=[Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=meta)])


def displayed_order(charts: Sequence) -> list:
    """The order in which TensorBoard shows a written category's charts (``layout_pb2.Chart`` messages):
    the multiline ones as written, then the margin ones reversed (see :func:`layout_summary`)."""
    kinds = [c.WhichOneof("content") for c in charts]
    return ([c for c, k in zip(charts, kinds) if k != "margin"]
            + [c for c, k in zip(charts, kinds) if k == "margin"][::-1])


def add_custom_layout(writer, **kw) -> None:
    """Write :func:`dashboard_layout` (keyword arguments as there) to ``writer``."""
    writer._get_file_writer().add_summary(layout_summary(dashboard_layout(**kw)))


def add_spectrum_histograms(writer, spectra: dict[str, Tensor], step: int) -> None:
    for name, S in spectra.items():
        if S.numel() and float(S.sum()) > 0:
            writer.add_histogram(layer_tag(name, "singular_values"), S.float(), global_step=step)


def short_layer_names(names: Sequence[str]) -> dict[str, str]:
    """Layer names without their common leading part (``model.encoder.layer.3.attention...`` ->
    ``3.attention...``), so that labels stay short and still tell layers apart."""
    names = list(names)
    if len(names) < 2:
        return {n: n.split(".")[-1] for n in names}
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return {n: ".".join(p[common:]) for n, p in zip(names, parts)}


def top_spectra(spectra: dict[str, Tensor], k: int = SPECTRA_LAYERS) -> list[tuple[str, Tensor]]:
    """The ``k`` layers with the largest update norm ``||dW||_F = sqrt(sum sigma_i^2)``, largest first."""
    norms = {n: float((S.double() ** 2).sum()) for n, S in spectra.items() if S.numel()}
    order = sorted((n for n in norms if norms[n] > 0), key=lambda n: -norms[n])
    return [(n, spectra[n]) for n in order[:k]]


def spectra_figure(spectra: dict[str, Tensor], step: int | None = None, k: int = SPECTRA_LAYERS):
    """A matplotlib figure: the singular values of dW of the ``k`` layers with the largest updates,
    labelled (log scale), and how many layers are not drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    top = top_spectra(spectra, k)
    short = short_layer_names([n for n, _ in top])
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for i, (name, S) in enumerate(top):
        s = S.double().numpy()
        ax.semilogy(range(1, s.size + 1), s, marker="o", markersize=3, color=plt.cm.tab10(i % 10),
                    label=f"{short[name]}  (|dW| {float((s ** 2).sum()) ** 0.5:.3g})")
    ax.set_xlabel("index i (largest first)", fontsize=10)
    ax.set_ylabel("singular value sigma_i of dW", fontsize=10)
    left = len([n for n, S in spectra.items() if S.numel()]) - len(top)
    when = "" if step is None else f" at step {step}"
    ax.set_title(f"Update spectra of the {len(top)} layers with the largest updates{when}"
                 + (f" ({left} more layers not drawn)" if left > 0 else ""), fontsize=10)
    if top:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.tick_params(labelsize=9)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig


def add_spectra_figure(writer, spectra: dict[str, Tensor], step: int) -> None:
    if any(S.numel() and float(S.sum()) > 0 for S in spectra.values()):
        writer.add_figure(f"{PREFIX}/update_spectra", spectra_figure(spectra, step), global_step=step)


def mark_restart(writer, step: int) -> None:
    """Tell TensorBoard the run restarted at ``step`` (a resume from a checkpoint).

    A ``SessionLog.START`` event makes TensorBoard's readers drop every event of this run at
    ``step`` or later that an earlier process wrote after its last checkpoint, so steps that are
    trained again appear once, with their new values. Written once per writer and step.
    """
    if getattr(writer, "_signaldrift_restart", None) == step:
        return
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    file_writer = writer._get_file_writer() if hasattr(writer, "_get_file_writer") else writer.file_writer
    file_writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
    writer._signaldrift_restart = step
