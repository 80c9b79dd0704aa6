"""Sharded LoRA factors (FSDP2 DTensors, ZeRO-style flat partitions): gathered whole for the measurement.

A LoRA layer's factors and their gradients are small ((m + n) r numbers), so under parameter
sharding every rank gathers them whole for the step's measurement (a collective: every rank must
call these functions for the same tensors in the same order) and then computes docs/metrics.md §1-§3 on
the full factors, never forming an (m, n) matrix. The frozen base weight is never gathered: its
norm is a sum of squares over the local shards, all-reduced once (at attach time).

Recognized without importing the packages that define them:

* FSDP2 (``torch.distributed.fsdp.fully_shard``; Lightning's ``ModelParallelStrategy``, recent
  accelerate): parameters and gradients are ``DTensor``; :func:`gather_full` calls
  ``full_tensor()``.
* DeepSpeed ZeRO-3: a parameter carries ``ds_tensor`` (its flat partition); :func:`gather_full`
  calls DeepSpeed's own ``deepspeed.utils.safe_get_full_fp32_param`` / ``safe_get_full_grad``
  (ZeRO-2 keeps parameters whole and partitions gradients: the same ``safe_get_full_grad``).
  :func:`gather_flat_partitions` is that layout's gather written with plain ``torch.distributed``
  (equal, zero-padded flat partitions in rank order), for tests and for frameworks without such an API.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed support
        return None
    return DTensor


def is_dtensor(t: object) -> bool:
    DTensor = _dtensor_type()
    return DTensor is not None and isinstance(t, DTensor)


def is_zero3(t: object) -> bool:
    """A DeepSpeed ZeRO-3 parameter (partitioned: ``ds_tensor`` holds this rank's flat part)."""
    return hasattr(t, "ds_tensor") and hasattr(t, "ds_status")


def is_sharded(t: object) -> bool:
    return is_dtensor(t) or is_zero3(t)


def gather_full(t: Tensor | None, grad_of: Tensor | None = None) -> Tensor | None:
    """The whole tensor on every rank (a collective for sharded inputs; a detached no-op otherwise).

    Args:
        t: a parameter, or a gradient, possibly sharded.
        grad_of: for DeepSpeed, the parameter whose gradient to gather (its ``.grad`` is not where
            DeepSpeed keeps it); ``t`` is then ignored.
    """
    if grad_of is not None and (is_zero3(grad_of) or getattr(grad_of, "ds_id", None) is not None):
        from deepspeed.utils import safe_get_full_grad

        return safe_get_full_grad(grad_of)
    if t is None:
        return None
    if is_dtensor(t):
        return t.detach().full_tensor()
    if is_zero3(t):
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(t)
    return t.detach()


def gather_flat_partitions(part: Tensor, shape: Sequence[int], group=None) -> Tensor:
    """Reassemble a tensor of ``shape`` from equal flat partitions, one per rank in rank order.

    The ZeRO-3 layout: the flattened tensor, zero-padded to ``world * part.numel()``, split evenly.
    Every rank of ``group`` must call this with its partition (an all-gather).
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    parts = [torch.empty_like(part) for _ in range(world)]
    dist.all_gather(parts, part.detach().contiguous(), group=group)
    numel = math.prod(shape)
    return torch.cat(parts)[:numel].reshape(tuple(shape))


def flat_partition(t: Tensor, rank: int, world: int) -> Tensor:
    """This rank's part of ``t`` in the ZeRO-3 layout (the inverse of :func:`gather_flat_partitions`)."""
    size = -(-t.numel() // world)
    flat = torch.zeros(size * world, dtype=t.dtype, device=t.device)
    flat[: t.numel()] = t.detach().reshape(-1)
    return flat[rank * size:(rank + 1) * size].clone()


def sharded_sq_norm(W: Tensor, group=None) -> float:
    """``||W||_F^2`` in float64 from the local shards, all-reduced; a plain tensor is summed locally.

    For a DTensor, the sum runs over mesh dimensions that shard it (a replicated dimension holds the
    same numbers on each of its ranks and is not summed again). For a ZeRO-3 parameter, over the
    ranks of ``group`` (default: the world), from ``ds_tensor`` (its padding is zero).
    """
    import torch.distributed as dist

    if is_dtensor(W):
        local = W.to_local().detach().to(torch.float64)
        sq = (local * local).sum()
        for dim, placement in enumerate(W.placements):
            if placement.is_shard() or placement.is_partial():
                dist.all_reduce(sq, group=W.device_mesh.get_group(dim))
        return float(sq)
    if is_zero3(W):
        local = W.ds_tensor.detach().to(torch.float64)
        sq = (local * local).sum()
        dist.all_reduce(sq, group=group)
        return float(sq)
    w = W.detach().to(torch.float64)
    return float((w * w).sum())


def base_weight_norm(W: Tensor) -> float:
    """``||W0||_F`` of a base weight, sharded (from the shards, all-reduced: no (m, n) gather),
    quantized (dequantized once: :mod:`signaldrift.quantized`) or plain. Call it once per fit."""
    from signaldrift.quantized import dequantize, is_quantized

    if is_quantized(W):
        w = dequantize(W).to(torch.float64)
        return float((w * w).sum()) ** 0.5
    return sharded_sq_norm(W) ** 0.5


def gathered_states(views: Sequence, base_norms: dict[str, float], grad_scale: float = 1.0,
                    snapshot: dict[str, tuple[Tensor, Tensor]] | None = None) -> list:
    """One :class:`~signaldrift.batched.LayerState` per view, from whole (gathered) factors and gradients.

    A collective under sharding: every rank calls it with the same views in the same order. Gradients
    are read where the framework keeps them (``.grad``, a DTensor under FSDP2; DeepSpeed's buffers).

    Args:
        views: :class:`~signaldrift.views.LoRAView` objects (``lora_layers(model)``).
        base_norms: ``||W0||_F`` per view name (:func:`base_weight_norm`, once per fit).
        grad_scale: an AMP loss scale still on the gradients.
        snapshot: ``(A0, B0)`` per name where the fit started from ``B0 != 0``; absent names mean
            ``B0 = 0`` (``dW = s B A``).
    """
    from signaldrift.batched import LayerState

    states = []
    for v in views:
        A, B = gather_full(v.A), gather_full(v.B)
        gA = gather_full(v.A.grad, grad_of=v.A if is_zero3(v.A) else None)
        gB = gather_full(v.B.grad, grad_of=v.B if is_zero3(v.B) else None)
        if gA is None or gB is None:
            gA = gB = None
        A0, B0 = (snapshot or {}).get(v.name, (None, None))
        states.append(LayerState(A, B, v.scale, base_norms[v.name], gA, gB, A0, B0, grad_scale))
    return states


def gathered_factors(views: Sequence) -> list[tuple[Tensor, Tensor]]:
    """``(A, B)`` per view, whole on every rank (a collective under sharding), e.g. after the optimizer step."""
    return [(gather_full(v.A), gather_full(v.B)) for v in views]
