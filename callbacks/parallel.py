"""One guard for every framework: which parallel setting a run is in, and which ones the callbacks refuse.

Framework-free: the Lightning callbacks pass their strategy's class names, the Hugging Face callback
the sharding fields of its ``TrainingArguments`` (``fsdp``, ``deepspeed``); both pass whether the
LoRA factors are already sharded (FSDP2 ``DTensor`` parameters, e.g. a plain loop with
``fully_shard``).
"""
from __future__ import annotations

from collections.abc import Iterable

from signaldrift.sharded import is_dtensor

#: Strategies that shard with FSDP2 (``fully_shard``: the factors are ``DTensor``, gathered whole for
#: the measurement by :mod:`signaldrift.sharded`).
FSDP2_STRATEGIES = ("ModelParallelStrategy",)

_DEEPSPEED = ("DeepSpeed ZeRO partitions the LoRA factors across ranks, and DeepSpeed does not run on the CPU "
              "machines these callbacks are tested on (the gather itself is in signaldrift.sharded; "
              "benchmarks/gpu_check_deepspeed.py runs the real ZeRO-2/3 check on GPUs)")
#: Settings refused, and why (Lightning strategy class names; ``TrainingArguments`` fields).
REFUSED = {
    "FSDPStrategy": "FSDP1 flattens the LoRA factors into flat shards; use FSDP2 (ModelParallelStrategy with "
                    "fully_shard in configure_model)",
    "XLAFSDPStrategy": "XLA FSDP shards the LoRA factors and is not tested with these callbacks",
    "DeepSpeedStrategy": _DEEPSPEED,
    "deepspeed": _DEEPSPEED,
    "fsdp": "the Trainer's FSDP (through accelerate) is not tested with this callback; FSDP2 is supported "
            "with Lightning's ModelParallelStrategy",
}


def factors_sharded(views: Iterable) -> bool:
    """Whether any LoRA factor is an FSDP2 ``DTensor`` (``views``: :class:`~signaldrift.views.LoRAView`)."""
    return any(is_dtensor(v.A) or is_dtensor(v.B) for v in views)


def parallel_mode(who: str, settings: Iterable[str], world_size: int, *, sharded: bool = False,
                  allow_fsdp2: bool = True, devices: str = "single device") -> str:
    """``"single"``, ``"ddp"`` or ``"fsdp2"``; raise for what the callbacks do not support.

    Args:
        who: the callback's name, for the message.
        settings: names describing the run's parallelism (a strategy's class names, its MRO included;
            the ``TrainingArguments`` fields that are set). Only names in :data:`REFUSED` and
            :data:`FSDP2_STRATEGIES` count.
        world_size: processes in the run.
        sharded: the LoRA factors are already FSDP2 ``DTensor`` (:func:`factors_sharded`).
        allow_fsdp2: False for a callback that does not support FSDP2 (every callback here does).
        devices: how the message names one device ("single device", "one device").

    Raises:
        RuntimeError: a refused setting, naming it, why, and what is supported.
    """
    names = set(settings)
    supported = f"Supported: {devices} and DDP" + (", and FSDP2 (Lightning's ModelParallelStrategy or fully_shard)"
                                                    if allow_fsdp2 else "")
    hit = sorted(names & set(REFUSED))
    if hit:
        raise RuntimeError(f"{who} does not support {hit[0]}: {REFUSED[hit[0]]}. {supported}; see README, "
                           "'Running at scale'.")
    fsdp2 = sharded or bool(names & set(FSDP2_STRATEGIES))
    if fsdp2 and not allow_fsdp2:
        raise RuntimeError(
            f"{who} does not support FSDP2 (ModelParallelStrategy / fully_shard). {supported}; see README, "
            "'Running at scale'.")
    if fsdp2:
        return "fsdp2"
    return "ddp" if world_size > 1 else "single"
