"""docs/metrics.md §4: spectral suppression, how much of the full-weight gradient LoRA's factors pass on."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from signaldrift.errors import check_finite, check_matrix, check_real, compute_dtype


@dataclass(frozen=True)
class SpectralSuppression:
    """``spectral_gain = (||grad_A||^2 + ||grad_B||^2) / ||G||^2``; suppression is its inverse.

    Attributes:
        spectral_gain: None when ``||G||`` is 0.
        spectral_suppression: ``1 / spectral_gain`` (None when the gain is 0 or undefined).
    """

    spectral_gain: float | None
    spectral_suppression: float | None


def spectral_suppression(grad_A: Tensor, grad_B: Tensor, full_grad_sq_norm: float) -> SpectralSuppression:
    """docs/metrics.md §4 from the factor gradients and ``||G||_F^2`` of the full-weight gradient.

    Args:
        grad_A: (r, n) gradient of A (``s B^T G``).
        grad_B: (m, r) gradient of B (``s G A^T``).
        full_grad_sq_norm: ``||G||_F^2``, e.g. from :func:`full_grad_sq_norm`.

    Raises:
        ValueError: a gradient is not 2-D, or the squared norm is negative.
        NonFiniteError: an input is NaN or inf.
    """
    check_matrix("grad_A", grad_A)
    check_matrix("grad_B", grad_B)
    g2 = check_real("full_grad_sq_norm", full_grad_sq_norm)
    check_finite(grad_A=grad_A, grad_B=grad_B, full_grad_sq_norm=torch.tensor(g2))
    if g2 < 0:
        raise ValueError(f"full_grad_sq_norm must be >= 0, got {g2}")
    factor_sq = float(grad_A.detach().double().square().sum() + grad_B.detach().double().square().sum())
    if g2 == 0.0:
        return SpectralSuppression(None, None)
    gain = factor_sq / g2
    return SpectralSuppression(gain, 1.0 / gain if gain > 0 else None)


def _token_matrices(inputs: Tensor, grad_outputs: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Inputs (T, n) and output gradients (T, m), all tokens flattened, after checking they pair up."""
    for name, t in (("inputs", inputs), ("grad_outputs", grad_outputs)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 1 or t.shape[-1] == 0:
            raise ValueError(f"{name} needs a non-empty feature (last) dimension, got shape {tuple(t.shape)}")
    if inputs.shape[:-1] != grad_outputs.shape[:-1]:
        raise ValueError(
            f"inputs {tuple(inputs.shape)} and grad_outputs {tuple(grad_outputs.shape)} must share "
            "their leading (token) dimensions"
        )
    X = inputs.detach().reshape(-1, inputs.shape[-1]).to(dtype)  # (T, n)
    Go = grad_outputs.detach().reshape(-1, grad_outputs.shape[-1]).to(dtype)  # (T, m)
    return X, Go


def full_weight_grad(inputs: Tensor, grad_outputs: Tensor) -> Tensor:
    """``G = g_out^T X``: (m, n) in float32 (float64 for float64 inputs), summed over all tokens.

    For callers that must sum G over several backward passes (gradient accumulation) before
    taking its norm. Like :func:`full_grad_sq_norm`, an allowed (m, n) product on probe steps only.

    Args:
        inputs: (..., n) layer inputs; grad_outputs: (..., m), same leading shape.
    """
    X, Go = _token_matrices(inputs, grad_outputs, compute_dtype(inputs, grad_outputs))
    return Go.T @ X  # (m, n)


def full_grad_sq_norm(inputs: Tensor, grad_outputs: Tensor) -> float:
    """``||G||_F^2`` for ``G = sum over tokens of g_out x^T`` (m, n), the gradient full fine-tuning sees.

    The one place in this package where an (m, n)-sized product may be formed. Whichever of the
    two exact forms is cheaper is used: ``G = g_out^T X`` (cost T m n) or the token Gram form
    ``tr((X X^T)(g_out g_out^T))`` (cost T^2 (m + n)).

    Args:
        inputs: (..., n) layer inputs of one step (all tokens, all micro-batches concatenated).
        grad_outputs: (..., m) gradients of the layer outputs, same leading shape.

    Raises:
        ValueError: the leading shapes differ.
        NonFiniteError: an input is NaN or inf.
    """
    X, Go = _token_matrices(inputs, grad_outputs, torch.float64)
    check_finite(inputs=X, grad_outputs=Go)
    T, n = X.shape
    m = Go.shape[1]
    if T * m * n <= T * T * (m + n):
        return float((Go.T @ X).square().sum())  # (m, n)
    return float(((X @ X.T) * (Go @ Go.T)).sum())  # (T, T)


class FullGradAccumulator:
    """``||G||_F^2`` for ``G`` summed over several backward passes (gradient accumulation), in at most
    ``min(T (m + n), m n)`` numbers for T tokens.

    The token matrices are kept while they are smaller than one (m, n) matrix, and the norm then
    comes from their (T, T) Gram form; once they would be larger they are folded into G itself.
    """

    def __init__(self) -> None:
        self._X: list[Tensor] = []
        self._Go: list[Tensor] = []
        self._G: Tensor | None = None
        self.tokens = 0

    def add(self, inputs: Tensor, grad_outputs: Tensor) -> None:
        """One backward pass: (..., n) layer inputs and (..., m) output gradients."""
        X, Go = _token_matrices(inputs, grad_outputs, compute_dtype(inputs, grad_outputs))
        self.tokens += X.shape[0]
        if self._G is not None:
            self._G += Go.T @ X
            return
        self._X.append(X)
        self._Go.append(Go)
        m, n = Go.shape[1], X.shape[1]
        if self.tokens * (m + n) > m * n:
            self._G = sum(go.T @ x for go, x in zip(self._Go, self._X))  # (m, n): now the smaller form
            self._X, self._Go = [], []

    def sq_norm(self) -> float:
        """``||G||_F^2`` (float64 arithmetic). Raises NonFiniteError on NaN or inf; ValueError if empty."""
        if self._G is not None:
            check_finite(full_weight_grad=self._G)
            return float(self._G.double().square().sum())
        if not self._X:
            raise ValueError("FullGradAccumulator is empty: add() was never called")
        return full_grad_sq_norm(torch.cat(self._X), torch.cat(self._Go))
