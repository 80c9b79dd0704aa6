"""docs/metrics.md §0: the factored SVD and Frobenius algebra of low-rank products ``L @ R``.

Every quantity in this package is a product with a small inner dimension k (at most 2r).
These helpers never form the (m, n) product: cost O((m + n) k^2 + k^3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from signaldrift.errors import check_factors, check_finite, check_matrix, check_same_shape, compute_dtype


@dataclass(frozen=True)
class LowRankSVD:
    """Thin SVD of ``L @ R``: ``L @ R == U @ diag(S) @ V.T``.

    Attributes:
        U: (m, k') left singular vectors, k' = min(m, n, k).
        S: (k',) singular values, descending, in the compute dtype.
        V: (n, k') right singular vectors.
    """

    U: Tensor
    S: Tensor
    V: Tensor

    def numerical_rank(self, rtol: float | None = None) -> int:
        """Number of singular values above ``rtol * S[0]`` (default: max(m, n) * eps)."""
        if self.S.numel() == 0 or float(self.S[0]) == 0.0:
            return 0
        if rtol is None:
            rtol = max(self.U.shape[0], self.V.shape[0]) * torch.finfo(self.S.dtype).eps
        return int((self.S > rtol * self.S[0]).sum())


def _check_product(L: Tensor, R: Tensor) -> None:
    check_matrix("L", L)
    check_matrix("R", R)
    if L.shape[1] != R.shape[0]:
        raise ValueError(
            f"L is {tuple(L.shape)} and R is {tuple(R.shape)}: inner dimensions must agree"
        )


def lowrank_svd(L: Tensor, R: Tensor) -> LowRankSVD:
    """SVD of ``M = L @ R`` without forming M.

    ``L = Q_L R_L``, ``R^T = Q_R R_R`` (thin QR), core ``C = R_L R_R^T`` (k x k),
    ``C = U_c S V_c^T``, then ``U = Q_L U_c`` and ``V = Q_R V_c``.

    Args:
        L: (m, k) left factor.
        R: (k, n) right factor.

    Returns:
        LowRankSVD in float32, or float64 when an input is float64.

    Raises:
        ValueError: the inner dimensions differ.
        NonFiniteError: an input holds NaN or inf.
    """
    _check_product(L, R)
    check_finite(L=L, R=R)
    return svd_unchecked(L, R)


def svd_unchecked(L: Tensor, R: Tensor) -> LowRankSVD:
    """:func:`lowrank_svd` for inputs the caller has already checked (the per-step hot path)."""
    dt = compute_dtype(L, R)
    Q_l, R_l = torch.linalg.qr(L.detach().to(dt))  # (m, k1), (k1, k), k1 = min(m, k)
    Q_r, R_r = torch.linalg.qr(R.detach().to(dt).T)  # (n, k2), (k2, k), k2 = min(n, k)
    core = R_l @ R_r.T  # (k1, k2)
    U_c, S, Vh_c = torch.linalg.svd(core, full_matrices=False)
    return LowRankSVD(U=Q_l @ U_c, S=S, V=Q_r @ Vh_c.T)


def frob_inner(L1: Tensor, R1: Tensor, L2: Tensor, R2: Tensor) -> float:
    """``<L1 R1, L2 R2>_F = tr((L1^T L2)(R2 R1^T))`` in float64, without forming either product."""
    _check_product(L1, R1)
    _check_product(L2, R2)
    if L1.shape[0] != L2.shape[0] or R1.shape[1] != R2.shape[1]:
        raise ValueError(
            f"products have different shapes: ({L1.shape[0]}, {R1.shape[1]}) vs "
            f"({L2.shape[0]}, {R2.shape[1]})"
        )
    d = torch.float64
    gl = L1.detach().to(d).T @ L2.detach().to(d)  # (k1, k2)
    gr = R1.detach().to(d) @ R2.detach().to(d).T  # (k1, k2)
    return float((gl * gr).sum())


def frob_norm(L: Tensor, R: Tensor) -> float:
    """``||L R||_F`` without forming the product (float64 Gram matrices, clamped at 0)."""
    return max(frob_inner(L, R, L, R), 0.0) ** 0.5


def update_factors(
    A: Tensor, B: Tensor, scale: float, A0: Tensor | None = None, B0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Factors ``(L, R)`` of the learned update ``dW = s (B A - B0 A0)``.

    With no snapshot, or a zero ``B0`` or ``A0`` (the usual init), this is ``(s B, A)`` with
    inner dimension r, in float32 at least; otherwise ``([s B, -s B0], [A; A0])`` with inner
    dimension 2r, always in float64 (the two products cancel to the update: docs/metrics.md
    §0).

    Args:
        A: (r, n), B: (m, r) current factors; A0, B0: the same at fit start.
    """
    check_factors(A, B)
    dt = compute_dtype(A, B)
    L, R = B.detach().to(dt) * scale, A.detach().to(dt)  # (m, r), (r, n)
    if A0 is None or B0 is None:
        return L, R
    check_same_shape("A0", A0, "A", A)
    check_same_shape("B0", B0, "B", B)
    if not bool(B0.any()) or not bool(A0.any()):
        return L, R
    dt = torch.float64
    L, R = B.detach().to(dt) * scale, A.detach().to(dt)
    L0, R0 = B0.detach().to(dt) * -scale, A0.detach().to(dt)
    return torch.cat([L, L0], dim=1), torch.cat([R, R0], dim=0)  # (m, 2r), (2r, n)
