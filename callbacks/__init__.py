"""callbacks: the Lightning edge. When to measure and where to log; the math is in signaldrift."""
from callbacks.advisor import AlphaRegimeAdvisor, AlphaRegimeWarning
from callbacks.engine import NoLoRALayersError, SignalDriftEngine, SignalDriftWarning
from callbacks.monitor import SignalDriftMonitor

__all__ = ["AlphaRegimeAdvisor", "AlphaRegimeWarning", "NoLoRALayersError", "SignalDriftEngine",
           "SignalDriftMonitor", "SignalDriftWarning"]
