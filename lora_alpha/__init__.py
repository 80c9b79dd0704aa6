"""lora_alpha: LoRA layers with the scaling rule in one place, injection, and PEFT-format adapters.

The primitives here need only torch and safetensors. The training application (LightningModule,
data modules, the alpha finder and the ``signaldrift`` command) is :mod:`lora_alpha.train`, which
needs the ``train`` extra; ``find_alpha`` and ``AlphaFinderResult`` are loaded from it on first use.
"""
from lora_alpha.adapters import AdapterFileError, AdapterMismatchError, load_adapter, save_adapter
from lora_alpha.inject import (
    InjectSummary,
    adapters_disabled,
    inject,
    lora_layers,
    merge_adapters,
    unmerge_adapters,
)
from lora_alpha.layers import LoRALinear
from lora_alpha.scaling import RULES, SQRT_LAW_C, LoRAConfigError, default_alpha, recommended_alpha, scale

__all__ = [
    "RULES", "SQRT_LAW_C", "AdapterFileError", "AdapterMismatchError", "AlphaFinderResult", "InjectSummary", "LoRAConfigError", "LoRALinear",
    "adapters_disabled", "default_alpha", "find_alpha", "inject", "load_adapter", "lora_layers", "merge_adapters",
    "recommended_alpha", "save_adapter", "scale", "unmerge_adapters",
]


def __getattr__(name: str):
    if name in ("find_alpha", "AlphaFinderResult"):  # the application floor, imported only when asked for
        from lora_alpha.train import finder

        return getattr(finder, name)
    raise AttributeError(f"module 'lora_alpha' has no attribute {name!r}")
