"""Finding LoRA layers in any ``nn.Module``: one read-only view per active adapter.

Two kinds of layer are recognized, without importing the packages that define them:

* this project's layers, by a small protocol (:class:`LoRAProtocol`);
* PEFT's ``LoraLayer`` (Linear, GPT-2 Conv1D, Embedding), by its documented attributes
  ``r``, ``lora_alpha``, ``scaling``, ``lora_A``/``lora_B`` (``lora_embedding_A``/``_B``),
  ``active_adapters`` and ``use_dora``, read live at every call.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class LoRAProtocol(Protocol):
    """What a layer exposes to be discovered (``lora_alpha.LoRALinear`` does).

    ``lora_A``: (r, n) and ``lora_B``: (m, r) parameters; ``scaling``, ``alpha``, ``rank``;
    ``merged`` and ``lora_enabled`` flags; ``lora_kind`` ("linear" or "conv1d");
    ``base_weight_mn()`` the frozen weight as an (m, n) view (no copy).
    """

    lora_A: nn.Parameter
    lora_B: nn.Parameter
    merged: bool
    lora_enabled: bool
    lora_kind: str

    @property
    def scaling(self) -> float: ...

    @property
    def alpha(self) -> float: ...

    @property
    def rank(self) -> int: ...

    def base_weight_mn(self) -> Tensor: ...


@dataclass(frozen=True)
class LoRAView:
    """One active LoRA adapter of one layer. Tensors are the live parameters: read, never write.

    Attributes:
        name: module name in the model, with ``[adapter]`` appended for PEFT's non-default adapters.
        adapter: PEFT adapter name (``"default"`` for this project's layers).
        kind: "linear", "conv1d" or "embedding".
        A: (r, n) factor; B: (m, r) factor (``dW = scale * B @ A`` has W0's (m, n) orientation).
        scale: the live scale ``s``.
        alpha: the alpha the scale came from; rank: r.
        base_weight: (m, n) view of the frozen base weight.
        module: the layer itself (for hooks).
        merged: whether the adapter is merged into the base weight (metrics must skip it).
        variant: None, or the name of a variant (e.g. "dora") whose update is not ``s B A``.
    """

    name: str
    adapter: str
    kind: str
    A: Tensor
    B: Tensor
    scale: float
    alpha: float
    rank: int
    base_weight: Tensor
    module: nn.Module
    merged: bool
    variant: str | None


_PROTOCOL_ATTRS = ("lora_A", "lora_B", "merged", "lora_enabled", "lora_kind", "scaling", "alpha", "rank",
                   "base_weight_mn")


def _follows_protocol(module: nn.Module) -> bool:
    """``isinstance(module, LoRAProtocol)`` without typing's slow runtime check (it runs every step)."""
    return isinstance(getattr(module, "lora_kind", None), str) and all(hasattr(module, a) for a in _PROTOCOL_ATTRS)


def is_peft_lora(module: nn.Module) -> bool:
    """PEFT's ``LoraLayer``, recognized by its documented attributes (no import of peft)."""
    return (
        isinstance(getattr(module, "r", None), dict)
        and isinstance(getattr(module, "scaling", None), dict)
        and isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and hasattr(module, "active_adapters")
    )


def _peft_views(name: str, module: nn.Module) -> Iterator[LoRAView]:
    if getattr(module, "disable_adapters", False):
        return
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module.base_layer
    active = module.active_adapters
    active = [active] if isinstance(active, str) else list(active)
    merged = set(getattr(module, "merged_adapters", []) or [])
    for adapter in active:
        if adapter in module.lora_A:
            A, B = module.lora_A[adapter].weight, module.lora_B[adapter].weight  # (r, n), (m, r)
            fan_in_fan_out = bool(getattr(module, "fan_in_fan_out", False))
            W = base.weight.T if fan_in_fan_out else base.weight  # (m, n)
            kind = "conv1d" if fan_in_fan_out else "linear"
        elif adapter in getattr(module, "lora_embedding_A", {}):
            A, B = module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]  # (r, V), (d, r)
            W = base.weight.T  # base is (V, d); the update s (B A)^T, so (m, n) = (d, V)
            kind = "embedding"
        else:
            continue
        variant = None
        if getattr(module, "use_dora", {}).get(adapter, False):
            variant = "dora"
        elif adapter in (getattr(module, "lora_variant", None) or {}):
            variant = type(module.lora_variant[adapter]).__name__
        label = name if adapter == "default" else f"{name}[{adapter}]"
        yield LoRAView(
            name=label, adapter=adapter, kind=kind, A=A, B=B, scale=float(module.scaling[adapter]),
            alpha=float(module.lora_alpha[adapter]), rank=int(module.r[adapter]), base_weight=W,
            module=module, merged=adapter in merged, variant=variant,
        )


def lora_layers(model: nn.Module, include_variants: bool = True) -> list[LoRAView]:
    """Every active LoRA adapter in ``model``, in module order.

    Args:
        model: any module tree (a PEFT ``PeftModel`` included).
        include_variants: keep views with ``variant`` set (DoRA, ...); callers that cannot
            measure them skip them by that field.

    Returns:
        One :class:`LoRAView` per active adapter of each LoRA layer; disabled adapters are left out.
    """
    views: list[LoRAView] = []
    for name, module in model.named_modules():
        if _follows_protocol(module):
            if not module.lora_enabled:
                continue
            views.append(LoRAView(
                name=name, adapter="default", kind=module.lora_kind, A=module.lora_A, B=module.lora_B,
                scale=float(module.scaling), alpha=float(module.alpha), rank=int(module.rank),
                base_weight=module.base_weight_mn(), module=module, merged=bool(module.merged), variant=None,
            ))
        elif is_peft_lora(module):
            views.extend(_peft_views(name, module))
    if not include_variants:
        views = [v for v in views if v.variant is None]
    return views
