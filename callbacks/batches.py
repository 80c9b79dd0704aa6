"""Batches of any nesting (dicts, BatchEncoding, lists, named tuples): map, move, detach."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def map_tensors(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``fn`` to every tensor in nested dicts (BatchEncoding too), lists and (named) tuples."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, dict) or (hasattr(batch, "keys") and hasattr(batch, "items")):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        items = [map_tensors(v, fn) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


def move_to_device(batch: Any, device: torch.device) -> Any:
    return map_tensors(batch, lambda t: t.to(device))
