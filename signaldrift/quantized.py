"""Quantized base weights (QLoRA: bitsandbytes ``Linear4bit`` / ``Linear8bitLt``): dequantized once, for a norm.

The metrics need only ``||W0||_F`` of a LoRA layer's base weight, once per fit; nothing in the
per-step path reads the base weight. A quantized weight is recognized by its interface, without
importing bitsandbytes unless such a weight is present:

* 4-bit (``Params4bit``): ``quant_state`` beside packed data; dequantized by
  ``bitsandbytes.functional.dequantize_4bit(weight.data, weight.quant_state)``;
* 8-bit (``Int8Params`` of ``Linear8bitLt``): int8 data with per-row scales ``SCB``:
  ``W = data * SCB[:, None] / 127``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def is_quantized(W: object) -> bool:
    return getattr(W, "quant_state", None) is not None or (
        getattr(W, "SCB", None) is not None and getattr(W, "dtype", None) == torch.int8)


def dequantize(W: Tensor) -> Tensor:
    """The (out_features, in_features) float32 values of a quantized base weight (a full copy: call once).

    Raises:
        TypeError: ``W`` is not a quantized weight this module knows.
    """
    if getattr(W, "quant_state", None) is not None:
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(W.data, W.quant_state).to(torch.float32)
    if getattr(W, "SCB", None) is not None and W.dtype == torch.int8:
        return W.data.to(torch.float32) * (W.SCB.to(torch.float32)[:, None] / 127.0)
    raise TypeError(f"not a quantized weight: {type(W).__name__}")
