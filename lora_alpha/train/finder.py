"""The alpha finder: short trials over a log grid of alpha at a fixed learning rate.

Like Lightning's learning-rate finder, but the trials are independent: before each one the
trainable parameters (LoRA factors and any trainable head) are restored bit-exactly to their
initial values, a fresh AdamW starts, and the same training batches are replayed. Each trial is
scored by the loss on a fixed set of held-out batches after training, and the drift ratio of its
steps is measured with the same engine the callbacks use. The trials' best alpha is the grid's
best, refined by a parabola in log alpha through it and its neighbours.

Short trials favour large alphas: under Adam each step moves a LoRA factor by about ``lr`` per
entry whatever the gradient's size, so early in training the update ``s B A`` travels a distance
that grows like ``alpha * lr * steps``. For a run of ``target_steps`` the suggestion is therefore
the trials' best alpha times ``steps / target_steps`` (``benchmarks/alpha_finder.py`` checks
this against the full alpha x lr grid).
"""
from __future__ import annotations

import logging
import math
import statistics
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from signaldrift.errors import check_int, check_number
from lora_alpha.scaling import LoRAConfigError, resolve_alpha, scale
from callbacks.batches import move_to_device
from signaldrift.gap_probe import refine_log_argmin
from signaldrift.views import LoRAView, lora_layers


#: The default grid: powers of 4 from 4 to 16384 (the alpha x lr study found useful alphas from 64 to
#: 1024 across lr 1e-3 to 1e-4 at rank 8; the grid reaches two steps past both ends).


log = logging.getLogger(__name__)

class AlphaFinderError(ValueError):
    """Bad arguments to :func:`find_alpha`, or a model / data it cannot run trials on."""

DEFAULT_ALPHAS: tuple[float, ...] = tuple(4.0 ** k for k in range(1, 8))
#: A trial stops early once its training loss exceeds this multiple of the first step's loss.
DIVERGE_FACTOR = 4.0


class AlphaFinderWarning(UserWarning):
    """The finder's suggestion is weak evidence (edge of the grid, diverged trials, interrupted)."""


@dataclass(frozen=True)
class AlphaFinderResult:
    """What :func:`find_alpha` measured.

    Attributes:
        alphas: the grid, ascending.
        losses: held-out loss after each trial (``inf`` for a diverged trial; NaN if not run).
        train_losses: each trial's mean training loss over its last quarter of steps.
        drift_ratio: each trial's median drift ratio over its measured steps (None if none).
        trial_best: the best alpha for a run as long as the trials (None when no trial finished).
        suggestion: the suggested alpha for a run of ``target_steps``: ``trial_best * steps /
            target_steps`` (None when no trial finished).
        lr: the learning rate every trial used; steps: optimizer steps per trial.
        target_steps: the run length the suggestion is for.
        at_edge: the best grid alpha is the first or last point (the optimum may lie beyond).
        interrupted: the search was stopped (Ctrl-C) before the grid was done.
        train_steps, eval_batches: the compute spent, in training steps and held-out batches.
    """

    alphas: list[float]
    losses: list[float]
    train_losses: list[float]
    drift_ratio: list[float | None]
    trial_best: float | None
    suggestion: float | None
    lr: float
    steps: int
    target_steps: int
    at_edge: bool
    interrupted: bool
    train_steps: int
    eval_batches: int
    rule: str = "standard"

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def plot(self, path: str | Path | None = None):
        """Held-out loss vs alpha (log axis) with the suggestion, and the drift ratio on a twin axis.

        Returns the matplotlib figure; also saves it when ``path`` is given.
        """
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        done = [(a, l) for a, l in zip(self.alphas, self.losses) if math.isfinite(l)]
        ax.semilogx([a for a, _ in done], [l for _, l in done], "o-", label="held-out loss after the trial")
        if self.trial_best is not None and self.suggestion != self.trial_best:
            ax.axvline(self.trial_best, color="tab:orange", ls=":", label=f"best for {self.steps} steps: {self.trial_best:.3g}")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="r", ls="--",
                       label=f"suggested for {self.target_steps} steps: {self.suggestion:.3g}")
        ax.set_xlabel(f"alpha ({self.rule} rule)")
        ax.set_ylabel("held-out loss")
        ax.set_title(f"alpha finder: {self.steps} steps per trial at lr {self.lr:g}")
        drift = [(a, d) for a, d in zip(self.alphas, self.drift_ratio) if d is not None]
        if drift:
            ax2 = ax.twinx()
            ax2.semilogx([a for a, _ in drift], [d for _, d in drift], "s:", color="tab:gray", label="drift ratio")
            ax2.set_ylabel("median drift ratio")
            ax2.legend(loc="upper right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig


def set_alpha(view: LoRAView, alpha: float) -> None:
    """Set one LoRA layer's alpha (its scale follows its rule): this project's layers and PEFT's."""
    module = view.module
    if hasattr(module, "set_alpha"):
        module.set_alpha(alpha)
        return
    rule = "rslora" if getattr(module, "use_rslora", {}).get(view.adapter, False) else "standard"
    module.lora_alpha[view.adapter] = alpha
    module.scaling[view.adapter] = scale(alpha, view.rank, rule)


def _default_loss(module: nn.Module, batch: Any) -> torch.Tensor:
    if hasattr(module, "probe_loss"):
        return module.probe_loss(batch)
    out = module(**batch) if isinstance(batch, dict) else module(batch)
    return out.loss if hasattr(out, "loss") else out


def _loaders(datamodule: Any) -> tuple[Iterable, Iterable]:
    if hasattr(datamodule, "train_dataloader"):
        if hasattr(datamodule, "setup"):
            datamodule.setup("fit")
        train = datamodule.train_dataloader()
        try:
            val = datamodule.val_dataloader()
        except Exception:  # noqa: BLE001 - a datamodule without validation: score on training batches
            val = None
        return train, val
    if isinstance(datamodule, tuple) and len(datamodule) == 2:
        return datamodule
    return datamodule, None


def _check(alphas, steps, lr, eval_batches) -> list[float]:
    check_int("steps", steps, error=AlphaFinderError)
    check_int("eval_batches", eval_batches, error=AlphaFinderError)
    check_number("lr", lr, error=AlphaFinderError)
    grid = list(DEFAULT_ALPHAS if alphas is None else alphas)
    if len(grid) < 3:
        raise AlphaFinderError(f"alphas needs at least 3 values to bracket an optimum, got {grid!r}")
    try:
        grid = [resolve_alpha(a, 1, "standard") for a in grid]
    except LoRAConfigError as e:
        raise AlphaFinderError(f"alphas must all be positive finite numbers: {e}") from None
    if len(set(grid)) != len(grid):
        raise AlphaFinderError(f"alphas must be distinct, got {grid!r}")
    return sorted(grid)


def find_alpha(module: nn.Module, datamodule: Any, *, alphas: Sequence[float] | None = None, steps: int = 16,
               lr: float | None = None, eval_batches: int = 4, loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
               update_alpha: bool = False, progress_bar: bool = True, head_lr: float | None = None,
               target_steps: int | None = None) -> AlphaFinderResult:
    """Short LoRA trials over a log grid of alpha at one learning rate; suggest the best alpha.

    Args:
        module: the model (a :class:`~lora_alpha.train.module.LoRAAlphaModule`, a PEFT model, or any
            module with LoRA layers); trained in place and restored afterwards.
        datamodule: a LightningDataModule (its train and val loaders), a ``(train, val)`` pair of
            iterables, or a single iterable of batches (scored on its own batches then).
        alphas: the grid (default :data:`DEFAULT_ALPHAS`); at least 3 distinct positive values.
        steps: optimizer steps per trial (the same first ``steps`` training batches each time).
        lr: the factors' learning rate (default: ``module.lr`` where it exists, else 1e-4).
        eval_batches: held-out batches that score each trial.
        loss_fn: ``loss_fn(module, batch) -> loss``; default: ``module.probe_loss``, else ``.loss``
            of the module's output.
        update_alpha: set every layer's alpha to the suggestion at the end (else the original).
        progress_bar: show a tqdm bar when tqdm is installed.
        head_lr: learning rate of trainable non-LoRA parameters (default: ``module.head_lr`` or lr).
        target_steps: the length of the run the alpha is for (default: ``steps``, no scaling).

    Returns:
        :class:`AlphaFinderResult`. Ctrl-C stops the search after restoring the initial state
        and returns what was measured so far (``interrupted=True``).

    Raises:
        AlphaFinderError: bad arguments, no LoRA layers, a merged adapter, or too few batches.
    """
    grid = _check(alphas, steps, lr if lr is not None else 1.0, eval_batches)
    target_steps = steps if target_steps is None else target_steps
    check_int("target_steps", target_steps, error=AlphaFinderError)
    lr = float(lr if lr is not None else getattr(module, "lr", 1e-4))
    head_lr = float(head_lr if head_lr is not None else getattr(module, "head_lr", None) or lr)
    views = [v for v in lora_layers(module) if v.variant is None]
    if not views:
        raise AlphaFinderError("find_alpha needs a model with LoRA layers (none found)")
    if any(v.merged for v in views):
        raise AlphaFinderError("find_alpha cannot train merged adapters; unmerge them first")
    loss_fn = loss_fn or _default_loss
    device = next(iter(views)).A.device
    train_loader, val_loader = _loaders(datamodule)
    train = [move_to_device(b, device) for b in islice(iter(train_loader), steps)]
    if len(train) < steps:
        raise AlphaFinderError(f"the training data gives {len(train)} batches, fewer than steps={steps}")
    held = [move_to_device(b, device) for b in islice(iter(val_loader), eval_batches)] if val_loader is not None else []
    if not held:
        held = train[-eval_batches:]
        warnings.warn("find_alpha: no validation batches; scoring trials on training batches", AlphaFinderWarning, stacklevel=2)

    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    initial = {n: p.detach().clone() for n, p in params}
    original_alpha = {v.name: v.alpha for v in views}
    was_training = module.training
    rule = getattr(views[0].module, "rule", "standard")
    trials: list[_Trial] = []
    interrupted = False
    bar = _progress(len(grid) * steps, progress_bar)
    try:
        for alpha in grid:
            _restore(params, initial)
            for v in views:
                set_alpha(v, alpha)
            trials.append(_run_trial(module, views, params, train, held, loss_fn, _groups(module, views, params, lr, head_lr),
                                     getattr(module, "weight_decay", 0.0) or 0.0, bar))
            log.info("find_alpha: alpha %g -> held-out loss %.4f, drift ratio %s", alpha, trials[-1].loss, trials[-1].drift)
    except KeyboardInterrupt:
        interrupted = True
        warnings.warn("find_alpha interrupted: the suggestion uses the trials that finished", AlphaFinderWarning, stacklevel=2)
    finally:
        if bar is not None:
            bar.close()
        _restore(params, initial)
        for p in module.parameters():
            p.grad = None
        for v in views:
            set_alpha(v, original_alpha[v.name])
        module.train(was_training)
    missing = len(grid) - len(trials)
    losses = [t.loss for t in trials] + [math.nan] * missing
    train_losses = [t.train_loss for t in trials] + [math.nan] * missing
    drift = [t.drift for t in trials] + [None] * missing
    spent_train, spent_eval = sum(t.train_steps for t in trials), sum(t.eval_batches for t in trials)

    finished = [(a, l) for a, l in zip(grid, losses) if not math.isnan(l)]
    trial_best = suggestion = None
    at_edge = False
    if finished and any(math.isfinite(l) for _, l in finished):
        xs, ys = [a for a, _ in finished], [l for _, l in finished]
        trial_best = refine_log_argmin(xs, ys)
        suggestion = trial_best * steps / target_steps
        best = min(range(len(ys)), key=lambda j: ys[j])
        at_edge = best in (0, len(ys) - 1)
        if at_edge:
            warnings.warn(f"find_alpha: the best alpha ({xs[best]:g}) is at the edge of the grid "
                          f"({xs[0]:g}..{xs[-1]:g}); the optimum may lie beyond it", AlphaFinderWarning, stacklevel=2)
    elif not interrupted:
        warnings.warn("find_alpha: every trial diverged; lower the learning rate", AlphaFinderWarning, stacklevel=2)
    if update_alpha and suggestion is not None:
        for v in views:
            set_alpha(v, suggestion)
    return AlphaFinderResult(alphas=grid, losses=losses, train_losses=train_losses, drift_ratio=drift,
                             trial_best=trial_best, suggestion=suggestion, lr=lr, steps=steps,
                             target_steps=target_steps, at_edge=at_edge, interrupted=interrupted,
                             train_steps=spent_train, eval_batches=spent_eval, rule=rule)


@dataclass(frozen=True)
class _Trial:
    """One alpha's short run: held-out loss (inf: diverged), mean late training loss, drift ratio."""

    loss: float
    train_loss: float
    drift: float | None
    train_steps: int
    eval_batches: int


def _groups(module: nn.Module, views: list[LoRAView], params: list[tuple[str, nn.Parameter]], lr: float,
            head_lr: float) -> list[dict]:
    """The trial's optimizer groups: the module's own (A, B with its LoRA+ ratio, the rest at head_lr)."""
    ratio = getattr(module, "loraplus_ratio", None) or 1.0
    a_ids, b_ids = {id(v.A) for v in views}, {id(v.B) for v in views}
    groups = [{"params": [p for _, p in params if id(p) in a_ids], "lr": lr},
              {"params": [p for _, p in params if id(p) in b_ids], "lr": lr * ratio},
              {"params": [p for _, p in params if id(p) not in a_ids | b_ids], "lr": head_lr}]
    return [g for g in groups if g["params"]]


def _run_trial(module: nn.Module, views: list[LoRAView], params, train: list, held: list, loss_fn, groups: list[dict],
               weight_decay: float, bar) -> _Trial:
    """Train ``len(train)`` steps from the current state; score on ``held``."""
    from callbacks.engine import SignalDriftEngine  # lazy: the application floor sits above callbacks

    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    engine = SignalDriftEngine(every_n_steps=1, full_grad_every=None)
    engine.attach(module)
    module.train()
    steps, first, tail, spent = len(train), None, [], 0
    for t, batch in enumerate(train):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(module, batch)
        value = float(loss.detach())
        spent += 1
        if bar is not None:
            bar.update(1)
        first = value if first is None else first
        if not math.isfinite(value) or value > DIVERGE_FACTOR * first:
            if bar is not None:
                bar.update(steps - t - 1)
            return _Trial(math.inf, math.inf, _median_drift(engine), spent, 0)
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the engine's skip warnings are per-trial noise here
            engine.before_step(module, t)
            opt.step()
            engine.after_step(module)
        if t >= steps - max(steps // 4, 1):
            tail.append(value)
    module.eval()
    with torch.no_grad():
        vals = [float(loss_fn(module, b)) for b in held]
    held_loss = statistics.fmean(vals) if all(map(math.isfinite, vals)) else math.inf
    return _Trial(held_loss, statistics.fmean(tail), _median_drift(engine), spent, len(held))


def _median_drift(engine) -> float | None:
    ratios = [r for m in engine.history.values() if (r := m.summary("drift_ratio")) is not None]
    return statistics.median(ratios) if ratios else None


@torch.no_grad()
def _restore(params: list[tuple[str, nn.Parameter]], initial: dict[str, torch.Tensor]) -> None:
    for n, p in params:
        p.copy_(initial[n])


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="find_alpha", unit="step", leave=False)


__all__ = ["DEFAULT_ALPHAS", "AlphaFinderResult", "AlphaFinderWarning", "find_alpha", "set_alpha"]
