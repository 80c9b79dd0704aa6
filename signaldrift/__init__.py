"""signaldrift: the Signal-Drift math (the project's definitions: docs/metrics.md) as pure torch functions.

Tensors in, small frozen dataclasses out; no Lightning, no logging, no printing.
"""
from signaldrift.batched import BatchedStep, LayerState
from signaldrift.errors import NonFiniteError
from signaldrift.gap_probe import DEFAULT_TAUS, GapEstimate, GapProbe, step_gap_estimate, step_gap_probe
from signaldrift.grad_split import GradSplit, equivalent_gradient_factors, grad_split
from signaldrift.lowrank import LowRankSVD, frob_inner, frob_norm, lowrank_svd, update_factors
from signaldrift.regime import (
    ALPHA_FLOOR_FRACTION,
    DEFAULT_RULES,
    DRIFT_RATIO_HIGH,
    GAP_TOO_AGGRESSIVE,
    GAP_TOO_SMALL,
    HELP_Z_MAX,
    K_TOO_AGGRESSIVE,
    K_TOO_SMALL,
    MAX_SUGGESTED_FACTOR,
    SCALE_Z_MIN,
    SQRT_LAW_C,
    STEP_SIZE_HIGH,
    VERDICTS,
    RegimeVerdict,
    VerdictRules,
    recommended_alpha,
    regime_verdict,
    scale_vote,
)
from signaldrift.scale_probe import DEFAULT_KS, ScaleProbe, scale_probe
from signaldrift.spectrum import UpdateSpectrum, update_spectrum
from signaldrift.step_split import StepSplit, step_split
from signaldrift.suppression import FullGradAccumulator, SpectralSuppression, full_grad_sq_norm, full_weight_grad, spectral_suppression
from signaldrift.views import LoRAProtocol, LoRAView, lora_layers

__all__ = [
    "ALPHA_FLOOR_FRACTION", "DEFAULT_KS", "DEFAULT_RULES", "HELP_Z_MAX", "K_TOO_AGGRESSIVE", "K_TOO_SMALL", "SCALE_Z_MIN",
    "ScaleProbe", "VerdictRules", "scale_probe", "scale_vote", "BatchedStep", "DEFAULT_TAUS", "LayerState", "DRIFT_RATIO_HIGH", "GAP_TOO_AGGRESSIVE", "GAP_TOO_SMALL", "MAX_SUGGESTED_FACTOR",
    "SQRT_LAW_C", "STEP_SIZE_HIGH", "VERDICTS", "GapEstimate", "GapProbe", "GradSplit", "LoRAProtocol", "LoRAView",
    "LowRankSVD", "NonFiniteError", "RegimeVerdict", "SpectralSuppression", "StepSplit", "UpdateSpectrum",
    "FullGradAccumulator", "equivalent_gradient_factors", "frob_inner", "frob_norm", "full_grad_sq_norm", "full_weight_grad", "grad_split",
    "lora_layers", "lowrank_svd", "recommended_alpha", "regime_verdict", "spectral_suppression",
    "step_gap_estimate", "step_gap_probe", "step_split", "update_factors", "update_spectrum",
]
