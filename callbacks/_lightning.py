"""Lightning compatibility: one callback class that both Lightning namespaces accept."""
from __future__ import annotations


def callback_bases() -> tuple[type, ...]:
    """``Callback`` of ``lightning.pytorch`` and of ``pytorch_lightning``, whichever are installed.

    Inheriting from both makes the same callback instance pass either Trainer's type check.
    """
    bases: list[type] = []
    try:
        from lightning.pytorch import Callback as NewCallback

        bases.append(NewCallback)
    except ImportError:
        pass
    try:
        from pytorch_lightning import Callback as OldCallback

        bases.append(OldCallback)
    except ImportError:
        pass
    if not bases:
        raise ImportError("the callbacks need Lightning: pip install pytorch-lightning (or lightning)")
    return tuple(bases)


CallbackBase = type("CallbackBase", callback_bases(), {"__doc__": "Lightning Callback of every installed namespace."})


def grad_scaler(trainer):
    """The AMP GradScaler the trainer's precision plugin uses, if enabled."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


def unscale_divisor(trainer, optimizer) -> float:
    """The loss scale still on the gradients at ``on_before_optimizer_step``.

    Lightning unscales before that hook, except for optimizers that unscale inside ``step()``
    (``_step_supports_amp_scaling``, e.g. fused optimizers): their gradients are still scaled.
    """
    scaler = grad_scaler(trainer)
    raw = getattr(optimizer, "optimizer", optimizer)
    if scaler is not None and getattr(raw, "_step_supports_amp_scaling", False):
        return float(scaler.get_scale())
    return 1.0


def log_metrics(trainer, metrics: dict[str, float], step: int) -> None:
    """Scalars to every logger of the trainer, from rank zero only.

    A TensorBoard logger (torch's SummaryWriter) gets numbers as one event (one summary holding every
    value) instead of one event per value: a run killed mid-step leaves a step's values whole or absent,
    never a median without its max, which a margin chart would show as a steps-mismatch error. (A live
    run's reader can still load a chart's tags between two reloads; the page's reload clears that.)
    """
    if not metrics or not trainer.is_global_zero:
        return
    numbers = all(isinstance(v, (int, float)) or getattr(v, "numel", lambda: 0)() == 1 for v in metrics.values())
    for logger in trainer.loggers:
        writer = _tensorboard_file_writer(logger) if numbers else None
        if writer is None:
            logger.log_metrics(metrics, step=step)
            continue
        from tensorboard.compat.proto.summary_pb2 import Summary

        prefix = getattr(logger, "_prefix", "") or ""
        join = getattr(logger, "LOGGER_JOIN_CHAR", "-")
        values = [Summary.Value(tag=f"{prefix}{join}{k}" if prefix else k, simple_value=float(v))
                  for k, v in metrics.items()]
        writer.add_summary(Summary(value=values), step)


def _tensorboard_file_writer(logger):
    """The event file writer behind a Lightning TensorBoard logger writing with torch's SummaryWriter
    (None for other loggers, and for tensorboardX, which Lightning uses without ``tensorboard``)."""
    if type(logger).__name__ != "TensorBoardLogger":
        return None
    experiment = logger.experiment
    if not type(experiment).__module__.startswith("torch.utils.tensorboard"):
        return None
    return experiment._get_file_writer()


def tensorboard_writers(trainer) -> list:
    """SummaryWriters behind the trainer's TensorBoard loggers (rank zero only)."""
    if not trainer.is_global_zero:
        return []
    writers = []
    for logger in trainer.loggers:
        if type(logger).__name__ == "TensorBoardLogger":
            exp = logger.experiment
            if hasattr(exp, "add_histogram"):
                writers.append(exp)
    return writers


def world_size(trainer) -> int:
    return int(getattr(trainer, "world_size", 1) or 1)


def refuse_sharded(trainer, who: str, pl_module=None, allow_fsdp2: bool = False) -> str:
    """The run's parallel mode (``"single"``, ``"ddp"``, ``"fsdp2"``: :func:`callbacks.parallel.parallel_mode`);
    a clear error for a setting ``who`` does not support (the metrics would be silently wrong).

    FSDP2 is recognized by the strategy (``ModelParallelStrategy``) or by ``DTensor`` factors in
    ``pl_module`` (default: the trainer's ``lightning_module``), e.g. a plain loop with ``fully_shard``.
    """
    from callbacks.parallel import factors_sharded, parallel_mode
    from signaldrift import lora_layers

    names = [c.__name__ for c in type(getattr(trainer, "strategy", None)).__mro__]
    module = pl_module if pl_module is not None else getattr(trainer, "lightning_module", None)
    sharded = module is not None and factors_sharded(lora_layers(module))
    return parallel_mode(who, names, world_size(trainer), sharded=sharded, allow_fsdp2=allow_fsdp2)


def rank_mean(trainer, device):
    """``losses -> mean over ranks`` for data-parallel trainers (one small all-reduce), else None."""
    if world_size(trainer) <= 1:
        return None
    import torch

    def reduce(values):
        t = torch.tensor(values, dtype=torch.float64, device=device)
        return trainer.strategy.reduce(t, reduce_op="mean").tolist()

    return reduce


def check_hook_call(who: str, hook: str, trainer, pl_module) -> None:
    """A clear TypeError for a hook called by hand without the trainer or the module being fit (Lightning
    passes both), instead of an AttributeError from deep inside."""
    if trainer is None:
        raise TypeError(f"{who}.{hook}: trainer is None; the Lightning Trainer calls this hook with itself "
                        f"(pass the callback in Trainer(callbacks=[...]) and call trainer.fit)")
    import torch

    if not isinstance(pl_module, torch.nn.Module):
        raise TypeError(f"{who}.{hook}: pl_module must be the LightningModule being fit (an nn.Module), got "
                        f"{type(pl_module).__name__}")
