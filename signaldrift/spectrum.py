"""docs/metrics.md §1: the spectrum of the learned update ``dW = s (B A - B0 A0)`` of one layer."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from signaldrift.errors import check_base_norm, check_finite, check_scale
from signaldrift.lowrank import LowRankSVD, svd_unchecked, update_factors


@dataclass(frozen=True)
class UpdateSpectrum:
    """Spectrum statistics of ``dW``.

    Attributes:
        delta_norm: ``||dW||_F``.
        delta_rel: ``||dW||_F / ||W0||_F`` (None when ``||W0||_F`` is 0).
        stable_rank: ``||dW||_F^2 / sigma_1^2`` (None while dW is zero).
        effective_rank: ``exp(H(p))``, ``p_i = sigma_i / sum_j sigma_j`` (None while dW is zero).
        singular_values: (k,) descending, float32 or float64, on the CPU (all zero while dW is
            numerically zero).
        svd: the factored SVD itself (its ``U``/``V`` feed the gradient split). While dW is
            numerically zero its ``S`` is zero too, so every consumer sees rank 0: the round-off
            singular values of a zero ``s (B A - B0 A0)`` have vectors that are noise.
    """

    delta_norm: float
    delta_rel: float | None
    stable_rank: float | None
    effective_rank: float | None
    singular_values: Tensor
    svd: LowRankSVD

    @property
    def numerically_zero(self) -> bool:
        """dW is (numerically) zero: nothing learned yet; docs/metrics.md §3 is undefined."""
        return self.delta_norm == 0.0


def is_numerically_zero(svd: LowRankSVD, L: Tensor, R: Tensor) -> bool:
    """True when ``sigma_1`` is at round-off level of ``||L||_F ||R||_F`` (or exactly 0)."""
    if svd.S.numel() == 0:
        return True
    s1 = float(svd.S[0])
    size = float(torch.linalg.matrix_norm(L.to(svd.S.dtype))) * float(torch.linalg.matrix_norm(R.to(svd.S.dtype)))
    tol = 16 * max(L.shape[1], 1) * torch.finfo(svd.S.dtype).eps * size
    return s1 <= tol


def spectrum_of(svd: LowRankSVD, base_norm: float, zero: bool) -> UpdateSpectrum:
    """Statistics from an already computed factored SVD of dW.

    ``zero`` is the one decision that dW is numerically zero (:func:`is_numerically_zero`); the
    returned spectrum carries it in its SVD (``S`` zeroed), which is what consumers receive.
    """
    S = svd.S
    if zero:
        S = torch.zeros_like(S)
        svd = LowRankSVD(U=svd.U, S=S, V=svd.V)
    delta_norm = float(torch.linalg.vector_norm(S))
    delta_rel = delta_norm / base_norm if base_norm > 0 else None
    if zero or delta_norm == 0.0:
        return UpdateSpectrum(delta_norm, delta_rel, None, None, S.cpu(), svd)
    s1 = float(S[0])
    p = S / S.sum()
    p = p[p > 0]
    entropy = float(-(p * torch.log(p)).sum())
    return UpdateSpectrum(delta_norm, delta_rel, delta_norm**2 / s1**2, math.exp(entropy), S.cpu(), svd)


def update_spectrum(
    A: Tensor,
    B: Tensor,
    scale: float,
    base_norm: float,
    A0: Tensor | None = None,
    B0: Tensor | None = None,
) -> UpdateSpectrum:
    """docs/metrics.md §1 for one layer, by the factored SVD of ``dW = s (B A - B0 A0)``.

    Args:
        A: (r, n) current down-projection.
        B: (m, r) current up-projection.
        scale: the layer's live scale ``s``.
        base_norm: ``||W0||_F`` of the frozen base weight.
        A0, B0: factors at fit start (None or zero for the usual ``B0 = 0`` init). With a
            non-zero snapshot dW is computed in float64 whatever the factors' dtype: ``B A`` and
            ``B0 A0`` cancel, and float32 would lose an update of 1e-5 relative to them.

    Raises:
        ValueError: shapes do not chain or differ from the snapshot.
        NonFiniteError: a factor or the scale is NaN or inf.
    """
    s = check_scale(scale)
    check_finite(A=A, B=B, A0=A0, B0=B0)
    L, R = update_factors(A, B, s, A0, B0)
    check_finite(scaled_factor=L)  # s B can overflow the factors' dtype even when s and B are finite
    svd = svd_unchecked(L, R)
    return spectrum_of(svd, check_base_norm(base_norm), is_numerically_zero(svd, L, R))
