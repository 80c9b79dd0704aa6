"""callbacks: when to measure and where to log; the math is in signaldrift.

The engine (:mod:`callbacks.engine`) is framework-free; the Lightning callbacks load Lightning and
the Hugging Face callback (:mod:`callbacks.hf`) loads transformers, each only when imported, so
either works without the other installed.
"""
from callbacks.engine import MergedLoRAError, NoLoRALayersError, SignalDriftEngine, SignalDriftWarning

_LIGHTNING = {"AlphaController": "callbacks.control", "AlphaRegimeAdvisor": "callbacks.advisor",
              "AlphaRegimeWarning": "callbacks.advisor",
              "SignalDriftMonitor": "callbacks.monitor"}

__all__ = ["AlphaController", "AlphaRegimeAdvisor", "AlphaRegimeWarning", "MergedLoRAError", "NoLoRALayersError", "SignalDriftEngine",
           "SignalDriftMonitor", "SignalDriftWarning"]


def __getattr__(name: str):
    if name in _LIGHTNING:
        import importlib

        return getattr(importlib.import_module(_LIGHTNING[name]), name)
    raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
