"""What the training application adds to a run's TensorBoard: validation in the summary, HParams, the finder's plot.

The callbacks log the Signal-Drift values (callbacks.measurements holds the tag scheme); this module
logs what only the application knows: its validation metrics (``Summary/val_loss``,
``Summary/val_acc``), the run's resolved configuration with its final metrics for TensorBoard's
HParams tab (runs under one ``--logdir`` compare by alpha), and the alpha finder's result.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from callbacks.measurements import FINDER_TAGS, VALIDATION, summary_tag

# The HParams tab (TensorBoard shows the first five hyperparameters and the first five metrics; each
# column is 10 em wide). The five an alpha study varies are marked `differs` ("made more prominent" in
# the HParams API: TensorBoard sorts them first and shows them); the rest are a tick away. The metric
# columns are the verdict and the task's held-out score: with the five hyperparameters they fit a
# 1920-pixel-wide window without scrolling.
HPARAM_SHOWN = ("alpha", "c", "lr", "rank", "rule")
VERDICT_COLUMN = (summary_tag("alpha_verdict"), "verdict (-1 alpha too small, 0 in regime, 0.5 uncertain, 1 too aggressive)")


def hparam_metrics(classification: bool = True) -> tuple[tuple[str, str], ...]:
    """The HParams tab's metric columns, ``(tag, column name)``: the last value of each tag in the run."""
    score = "acc" if classification else "loss"
    return (VERDICT_COLUMN, (f"test_{score}", f"test {score}"), (summary_tag(f"val_{score}"), f"validation {score}"))


def validation_charts(classification: bool = True) -> dict[str, list]:
    """Charts for the dashboard's first category (``SignalDriftMonitor(dashboard=...)``): margin charts,
    which draw the few validation points as they are (no smoothing)."""
    names = ("val_loss", "val_acc") if classification else ("val_loss",)
    return {f"{name} (a capped subset during training, the whole split at the end)":
            ["Margin", [[summary_tag(name)] * 3]] for name in names}


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


def write_hparams(logger, hparams: dict[str, Any], metrics=None) -> None:
    """TensorBoard's HParams summaries for this run, and the same values in ``hparams.yaml``.

    Args:
        metrics: the metric columns (each the last value of a tag the run logs), in order: tags, or
            ``(tag, column name)`` pairs; default :func:`hparam_metrics`.
    """
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    pairs = [(m, m) if isinstance(m, str) else tuple(m) for m in (hparam_metrics() if metrics is None else metrics)]
    logger.log_hyperparams(hparams)  # hparams.yaml
    experiment, start, end = hparams_summaries(hparams, {tag: 0.0 for tag, _ in pairs})
    data = plugin_data_pb2.HParamsPluginData.FromString(experiment.value[0].metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in HPARAM_SHOWN
    names = dict(pairs)
    for info in data.experiment.metric_infos:
        info.display_name = names[info.name.tag]
    experiment.value[0].metadata.plugin_data.content = data.SerializeToString()
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    writer.flush()


# ----------------------------------------------------------------------------- the alpha finder
FINDER_IMAGE = "find_alpha/loss_vs_alpha"


def write_finder_events(out: Path, result, figure) -> Path:
    """The finder's result as a TensorBoard run in ``out``: the figure, held-out loss by alpha (step =
    the grid index), the suggestion as a number and as text. ``tensorboard --logdir`` above it shows it
    beside the runs; in a run's folder it goes to its own ``FINDER_RUN`` folder (the report reads it)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out))
    try:
        writer.add_figure(FINDER_IMAGE, figure, global_step=0)
        for i, (alpha, loss) in enumerate(zip(result.alphas, result.losses)):
            if math.isfinite(loss):
                writer.add_scalar(FINDER_TAGS["loss"], loss, i)
                writer.add_scalar(FINDER_TAGS["alpha"], alpha, i)
        if result.suggestion is None:
            text = "no suggestion (every finished trial diverged)"
        else:
            writer.add_scalar(FINDER_TAGS["suggestion"], result.suggestion, 0)
            if result.trial_best is not None:
                writer.add_scalar(FINDER_TAGS["best"], result.trial_best, 0)
            text = (f"**suggested alpha: {result.suggestion:.4g}** (trials of {result.steps} steps at lr {result.lr:g}, "
                    f"for a {result.target_steps}-step run)")
        writer.add_text("find_alpha/suggestion_text", text, global_step=0)
    finally:
        writer.close()
    return out


def step_progress_bar():
    """The training progress bar counted in optimizer steps of the whole run ("Step 12/120"), not in batches of
    an epoch: a run is sized by --max-steps, and Lightning's own bar reads "Epoch 0/-2" there (max_epochs = -1)
    and counts a resumed run's batches past the epoch's remaining total."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    base = RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar

    class StepProgressBar(base):
        @property
        def total_train_batches(self):
            trainer = self.trainer
            if trainer.max_steps is not None and trainer.max_steps > 0:
                return trainer.max_steps
            return trainer.num_training_batches * max(trainer.max_epochs or 1, 1)

        def _get_train_description(self, current_epoch: int) -> str:  # rich's description of the training bar
            return f"{'Step':{len(self.validation_description)}}"

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            super().on_train_epoch_start(trainer, pl_module)
            if base is TQDMProgressBar and self.train_progress_bar is not None:
                self.train_progress_bar.set_description("Step")
            self._show_step(trainer)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)

        def _show_step(self, trainer) -> None:
            if base is RichProgressBar and self.train_progress_bar_id is not None:
                self._update(self.train_progress_bar_id, trainer.global_step)
            elif base is TQDMProgressBar and self.train_progress_bar is not None:
                self.train_progress_bar.n = trainer.global_step
                self.train_progress_bar.refresh()

    return StepProgressBar()
