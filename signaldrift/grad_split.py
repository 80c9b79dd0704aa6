"""docs/metrics.md §3: the factor gradients in weight space, split along the learned task subspace."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from signaldrift.errors import check_factors, check_finite, check_same_shape, check_scale, compute_dtype
from signaldrift.lowrank import LowRankSVD, frob_norm, svd_unchecked, update_factors
from signaldrift.spectrum import is_numerically_zero


@dataclass(frozen=True)
class GradSplit:
    """``g = s (grad_B A + B grad_A)`` split by the top-k singular subspaces ``U_k``, ``V_k`` of dW.

    ``g_signal = U_k U_k^T g V_k V_k^T`` and ``g_drift = g - g_signal`` (Frobenius-orthogonal).

    Attributes:
        grad_alignment: ``||g_signal||^2 / ||g||^2`` in [0, 1] (None when g is zero).
        grad_drift_ratio: ``||g_drift|| / ||g_signal||`` (None when g_signal is zero).
        signal_norm: ``||g_signal||_F``.
        drift_norm: ``||g_drift||_F``.
        grad_norm: ``||g||_F``.
        k: the subspace dimension used.
    """

    grad_alignment: float | None
    grad_drift_ratio: float | None
    signal_norm: float
    drift_norm: float
    grad_norm: float
    k: int


def equivalent_gradient_factors(
    A: Tensor, B: Tensor, grad_A: Tensor, grad_B: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Factors of ``g = s (grad_B A + B grad_A) = [s grad_B, s B] [A; grad_A]``: (m, 2r), (2r, n)."""
    dt = compute_dtype(A, B, grad_A, grad_B)
    L = torch.cat([grad_B.detach().to(dt), B.detach().to(dt)], dim=1) * scale
    R = torch.cat([A.detach().to(dt), grad_A.detach().to(dt)], dim=0)
    return L, R


def grad_split(
    A: Tensor,
    B: Tensor,
    grad_A: Tensor,
    grad_B: Tensor,
    scale: float,
    A0: Tensor | None = None,
    B0: Tensor | None = None,
    top_k: int | None = None,
    svd: LowRankSVD | None = None,
) -> GradSplit | None:
    """docs/metrics.md §3 for one layer; None while dW is numerically zero (nothing learned yet).

    Args:
        A: (r, n), B: (m, r) current factors; grad_A, grad_B: their gradients (same shapes).
        scale: the layer's live scale ``s``.
        A0, B0: factors at fit start (define ``dW``).
        top_k: subspace size; default r, never more than dW's numerical rank.
        svd: dW's factored SVD as docs/metrics.md §1 returns it (``update_spectrum(...).svd``), to avoid a
            second one. It carries §1's decision that dW is numerically zero (``S`` all
            zero), which is honoured here: pass that SVD, not a raw ``lowrank_svd`` of dW.

    Raises:
        ValueError: shapes do not chain or gradients differ in shape from the factors;
            top_k is not a positive int.
        NonFiniteError: a factor, gradient or the scale is NaN or inf.
    """
    s = check_scale(scale)
    check_factors(A, B)
    check_same_shape("grad_A", grad_A, "A", A)
    check_same_shape("grad_B", grad_B, "B", B)
    check_finite(A=A, B=B, grad_A=grad_A, grad_B=grad_B, A0=A0, B0=B0)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if svd is None:
        L_dw, R_dw = update_factors(A, B, s, A0, B0)
        svd = svd_unchecked(L_dw, R_dw)
        if is_numerically_zero(svd, L_dw, R_dw):
            return None
    elif svd.S.numel() == 0 or float(svd.S[0]) == 0.0:
        return None
    k = min(top_k if top_k is not None else A.shape[0], svd.numerical_rank())
    if k == 0:
        return None
    L, R = equivalent_gradient_factors(A, B, grad_A, grad_B, s)  # (m, 2r), (2r, n)
    U, V = svd.U[:, :k].to(L.dtype), svd.V[:, :k].to(L.dtype)  # (m, k), (n, k)
    UtL = U.T @ L  # (k, 2r)
    RV = R @ V  # (2r, k)
    sig = float(torch.linalg.matrix_norm((UtL @ RV).to(torch.float64)))  # ||U^T g V||_F = ||g_signal||_F
    # ||g_drift||^2 = ||(I - U U^T) g||^2 + ||U U^T g (I - V V^T)||^2, both factored: exact even when
    # g_drift is tiny (the shortcut ||g||^2 - ||g_signal||^2 loses it to cancellation).
    out_of_U = frob_norm(L - U @ UtL, R)
    in_U_out_of_V = frob_norm(UtL, R - RV @ V.T)
    drift = (out_of_U**2 + in_U_out_of_V**2) ** 0.5
    total_sq = sig**2 + drift**2  # == ||g||^2 (the parts are Frobenius-orthogonal)
    g_norm = total_sq**0.5
    alignment = min(sig**2 / total_sq, 1.0) if total_sq > 0 else None  # in [0, 1]
    return GradSplit(
        grad_alignment=alignment,
        grad_drift_ratio=drift / sig if sig > 0 else None,
        signal_norm=sig,
        drift_norm=drift,
        grad_norm=g_norm,
        k=k,
    )
