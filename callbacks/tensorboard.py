"""TensorBoard extras: singular-value histograms, the Signal-Drift dashboard, the spectra figure."""
from __future__ import annotations

from torch import Tensor

from callbacks.measurements import PREFIX, layer_tag, summary_tag

DASHBOARD = {
    "task signal": ["signal_norm", "grad_alignment"],
    "drift ratio": ["drift_ratio", "grad_drift_ratio"],
    "step size": ["step_size", "delta_rel"],
    "spectral suppression": ["spectral_suppression"],
    "optimization gap": ["step_gap", "gap_gain"],
}


def add_custom_layout(writer) -> None:
    """One "Signal-Drift" dashboard: model-level medians and maxima side by side."""
    section = {}
    for title, metrics in DASHBOARD.items():
        tags = [summary_tag(m) for m in metrics] + [summary_tag(m, "max") for m in metrics]
        section[title] = ["Multiline", tags]
    section["per layer drift ratio"] = ["Multiline", [layer_tag(".*", "drift_ratio")]]
    writer.add_custom_scalars({"Signal-Drift": section})


def add_spectrum_histograms(writer, spectra: dict[str, Tensor], step: int) -> None:
    for name, S in spectra.items():
        if S.numel() and float(S.sum()) > 0:
            writer.add_histogram(f"{PREFIX}/{name}/singular_values", S.float(), global_step=step)


def spectra_figure(spectra: dict[str, Tensor]):
    """A matplotlib figure: each layer's singular values of dW (log scale)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, S in spectra.items():
        s = S.float().numpy()
        if s.size and s.max() > 0:
            ax.semilogy(range(1, s.size + 1), s, marker=".", alpha=0.6, label=name.split(".")[-1])
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i of dW")
    ax.set_title("Update spectra per LoRA layer")
    fig.tight_layout()
    return fig


def add_spectra_figure(writer, spectra: dict[str, Tensor], step: int) -> None:
    if spectra:
        writer.add_figure(f"{PREFIX}/update_spectra", spectra_figure(spectra), global_step=step)


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
