"""What the training application adds to a run's TensorBoard: validation in the summary, HParams, the finder's plot.

The callbacks log the Signal-Drift values (callbacks.measurements holds the tag scheme); this module
logs what only the application knows: its validation metrics (``Summary/val_loss``,
``Summary/val_acc``), the run's resolved configuration with its final metrics for TensorBoard's
HParams tab (runs under one ``--logdir`` compare by alpha), and the alpha finder's result.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from callbacks.measurements import VALIDATION, summary_tag

# The HParams tab's metric columns: the last value of each tag in the run.
HPARAM_METRICS = (summary_tag("val_loss"), summary_tag("val_acc"), "test_loss", "test_acc", summary_tag("alpha_verdict"))


def validation_charts(classification: bool = True) -> dict[str, list[str]]:
    """Charts for the dashboard's first category (``SignalDriftMonitor(dashboard=...)``)."""
    charts = {"val_loss (a capped subset during training, the whole split at the end)":
              [f"^{re.escape(summary_tag('val_loss'))}$"]}
    if classification:
        charts["val_acc (a capped subset during training, the whole split at the end)"] = [
            f"^{re.escape(summary_tag('val_acc'))}$"]
    return charts


def validation_summary_callback():
    """A Lightning callback: after each validation, ``val_loss``/``val_acc`` again under ``Summary/``."""
    from lightning.pytorch import Callback

    class ValidationSummary(Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or not trainer.is_global_zero:
                return
            metrics = {summary_tag(name): float(trainer.callback_metrics[name]) for name in VALIDATION
                       if name in trainer.callback_metrics}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    return ValidationSummary()


def run_hparams(module, args) -> dict[str, str | int | float]:
    """The run's configuration for HParams and ``hparams.yaml``: the module's resolved values, the law's
    constant this alpha corresponds to (``c = alpha / sqrt(r)``), batch size, steps, seed and data."""
    hp = dict(module.resolved_hparams())
    hp["c"] = hp["alpha"] / math.sqrt(hp["rank"])
    hp.update(batch_size=int(args.batch_size), max_steps=int(args.max_steps), seed=int(args.seed), data=str(args.data))
    return hp


def write_hparams(logger, hparams: dict[str, Any], metrics: tuple[str, ...] = HPARAM_METRICS) -> None:
    """TensorBoard's HParams summaries for this run (the metric columns read the run's own scalars), and
    the same values in ``hparams.yaml``."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    logger.log_hyperparams(hparams)  # hparams.yaml
    experiment, start, end = hparams_summaries(hparams, {m: 0.0 for m in metrics})
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    writer.flush()


# ----------------------------------------------------------------------------- the alpha finder
FINDER_IMAGE = "find_alpha/loss_vs_alpha"


def write_finder_events(out: Path, result, figure) -> Path:
    """The finder's result as a TensorBoard run in ``out``: the figure, held-out loss by alpha (step =
    the grid index), the suggestion as text. ``tensorboard --logdir`` above it shows it beside the runs."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out))
    try:
        writer.add_figure(FINDER_IMAGE, figure, global_step=0)
        for i, (alpha, loss) in enumerate(zip(result.alphas, result.losses)):
            if math.isfinite(loss):
                writer.add_scalar("find_alpha/held_out_loss", loss, i)
                writer.add_scalar("find_alpha/alpha", alpha, i)
        text = ("no suggestion (every finished trial diverged)" if result.suggestion is None else
                f"**suggested alpha: {result.suggestion:.4g}** (trials of {result.steps} steps at lr {result.lr:g}, "
                f"for a {result.target_steps}-step run)")
        writer.add_text("find_alpha/suggestion", text, global_step=0)
    finally:
        writer.close()
    return out
