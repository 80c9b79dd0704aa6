"""The training application: LoRAAlphaModule, data modules, the alpha finder, run folders, the CLI.

Above the primitives (``lora_alpha``) and the callbacks; needs the ``train`` extra (Lightning,
transformers, TensorBoard, matplotlib). The names below are imported on first use, so that the
``signaldrift`` command starts (and handles a stop signal) before Lightning and transformers load.
"""
from __future__ import annotations

import importlib

_WHERE = {"CausalLMDataModule": "data", "RottenTomatoesDataModule": "data", "TextClassificationDataModule": "data",
          "UsageError": "errors", "AlphaFinderResult": "finder", "find_alpha": "finder", "LoRAAlphaModule": "module"}

__all__ = ["AlphaFinderResult", "CausalLMDataModule", "LoRAAlphaModule", "RottenTomatoesDataModule",
           "TextClassificationDataModule", "UsageError", "find_alpha"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"lora_alpha.train.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lora_alpha.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
