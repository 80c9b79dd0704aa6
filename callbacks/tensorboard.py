"""TensorBoard extras: the Custom Scalars dashboard, singular-value histograms, the spectra figure."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor

from callbacks.measurements import PREFIX, layer_tag, summary_tag, threshold_tag

DASHBOARD_TITLE = "Signal-Drift"  # the Custom Scalars category a person reads first
DETAILS_TITLE = "Signal-Drift details"
# Per-layer metrics charted (median and max over layers) in the details category, docs/metrics.md order.
DETAIL_METRICS = ("signal_norm", "grad_alignment", "grad_drift_ratio", "delta_rel", "stable_rank")
PROBE_METRICS = ("spectral_suppression", "spectral_gain")  # on full-gradient steps only
SPECTRA_LAYERS = 8  # layers drawn in the spectra figure: the largest updates


def _exact(*tags: str) -> str:
    """A Custom Scalars pattern (a regular expression) matching exactly these tags."""
    return "^(" + "|".join(re.escape(t) for t in tags) + ")$"


def _median_max(metric: str) -> str:
    return _exact(summary_tag(metric), summary_tag(metric, "max"))


def dashboard_layout(*, advisor: bool = True, full_grad: bool = True,
                     extra: Mapping[str, Sequence[str]] | None = None) -> dict:
    """The Custom Scalars layout: one quantity per chart, only tags that are logged.

    Args:
        advisor: an AlphaRegimeAdvisor logs alpha, the verdict, step_gap and the thresholds.
        full_grad: spectral suppression and gain are measured (full-gradient steps).
        extra: more charts for the first category, ``title -> [tag patterns]`` (e.g. validation).

    Returns:
        ``{category: {chart title: ["Multiline", [pattern, ...]]}}`` as
        ``SummaryWriter.add_custom_scalars`` takes it; patterns are regular expressions.
    """
    first: dict[str, list] = {}
    if advisor:
        first["alpha_verdict: -1 alpha too small, 0 in regime, 0.5 uncertain, 1 too aggressive"] = [
            "Multiline", [_exact(summary_tag("alpha_verdict"))]]
        first["alpha (median over layers)"] = ["Multiline", [_exact(summary_tag("alpha"))]]
        first["step_gap: each probe with its spread (quartiles over the probe set), the median the verdict reads, "
              "the thresholds"] = [
            "Multiline", [_exact(summary_tag("step_gap"), summary_tag("step_gap_lo"), summary_tag("step_gap_hi"),
                                 summary_tag("step_gap_median"),
                                 threshold_tag("step_gap_too_small"), threshold_tag("step_gap_too_aggressive"))]]
    first["drift_ratio: median and max over layers"] = ["Multiline", [_median_max("drift_ratio")]]
    step_size = [summary_tag("step_size"), summary_tag("step_size", "max")]
    title = "step_size: median and max over layers"
    if advisor:
        step_size.append(threshold_tag("step_size_high"))
        title += ", the collapse level"
    first[title] = ["Multiline", [_exact(*step_size)]]
    for chart, patterns in (extra or {}).items():
        first[chart] = ["Multiline", list(patterns)]
    details = {f"{m}: median and max over layers": ["Multiline", [_median_max(m)]] for m in DETAIL_METRICS}
    if full_grad:
        details.update({f"{m}: median and max over layers (full-gradient steps)": ["Multiline", [_median_max(m)]]
                        for m in PROBE_METRICS})
    if advisor:
        details["gap_gain (each probe)"] = ["Multiline", [_exact(summary_tag("gap_gain"))]]
        details["gap_z (each probe): how clearly the probe set's units agree"] = [
            "Multiline", [_exact(summary_tag("gap_z"))]]
    return {DASHBOARD_TITLE: first, DETAILS_TITLE: details}


def add_custom_layout(writer, **kw) -> None:
    """Write :func:`dashboard_layout` (keyword arguments as there) to ``writer``."""
    writer.add_custom_scalars(dashboard_layout(**kw))


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
