"""docs/metrics.md §2: one optimizer step split into task signal ``S`` and bilinear drift ``D``."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from signaldrift.errors import check_base_norm, check_factors, check_finite, check_same_shape, check_scale

import torch


@dataclass(frozen=True)
class StepSplit:
    """``s B' A' - s B A = S + D`` with ``S = s (dB A + B dA)`` and ``D = s dB dA``.

    Attributes:
        signal_norm: ``||S||_F``.
        drift_norm: ``||D||_F``.
        drift_ratio: ``||D||_F / ||S||_F`` (None when ``S`` is zero).
        step_size: ``||S + D||_F / ||W0||_F``, the update-to-weight ratio (None when ``||W0||_F`` is 0).
        update_norm: ``||S + D||_F``.
    """

    signal_norm: float
    drift_norm: float
    drift_ratio: float | None
    step_size: float | None
    update_norm: float


def step_split(
    A_prev: Tensor, B_prev: Tensor, A_next: Tensor, B_next: Tensor, scale: float, base_norm: float
) -> StepSplit:
    """Split the step that the optimizer actually applied, in factored form.

    Args:
        A_prev, B_prev: (r, n) and (m, r) factors before the step.
        A_next, B_next: the same after the step.
        scale: the layer's scale ``s`` (the same before and after).
        base_norm: ``||W0||_F``.

    Raises:
        ValueError: the shapes do not chain or differ between before and after.
        NonFiniteError: a factor or the scale is NaN or inf.
    """
    s = check_scale(scale)
    check_factors(A_prev, B_prev, "prev ")
    check_same_shape("A_next", A_next, "A_prev", A_prev)
    check_same_shape("B_next", B_next, "B_prev", B_prev)
    check_finite(A_prev=A_prev, B_prev=B_prev, A_next=A_next, B_next=B_next)
    d = torch.float64
    A, B = A_prev.detach().to(d), B_prev.detach().to(d)
    An, Bn = A_next.detach().to(d), B_next.detach().to(d)
    dA, dB = An - A, Bn - B  # (r, n), (m, r)
    r = A.shape[0]
    # S = [s dB, s B] [A; dA], S + D = [s dB, s B] [A'; dA] and D = (s dB) dA are products L R of tall
    # factors; ||L R||_F = ||R_L R_R^T||_F with the triangular factors of L = Q_L R_L and R^T = Q_R R_R.
    # Householder QR is backward stable, so each norm is exact to about eps * ||L|| ||R|| (the product's
    # own round-off), never eps * (||L|| ||R||)^2 / ||L R|| as sums of Gram entries are at a cancelling step.
    L = torch.linalg.qr(torch.cat([dB, B], dim=1) * s, mode="r").R  # (2r, 2r)
    RS = torch.linalg.qr(torch.cat([dA, A], dim=0).T, mode="r").R  # columns (dA, A)
    RU = torch.linalg.qr(torch.cat([dA, An], dim=0).T, mode="r").R  # columns (dA, A')
    swap = [*range(r, 2 * r), *range(r)]  # L's columns (dB, B) meet the right factor's rows (A, dA)
    signal = float(torch.linalg.matrix_norm(L @ RS[:, swap].T))
    drift = float(torch.linalg.matrix_norm(L[:r, :r] @ RS[:r, :r].T))
    update = float(torch.linalg.matrix_norm(L @ RU[:, swap].T))
    base_norm = check_base_norm(base_norm)
    return StepSplit(
        signal_norm=signal,
        drift_norm=drift,
        drift_ratio=drift / signal if signal > 0 else None,
        step_size=update / base_norm if base_norm > 0 else None,
        update_norm=update,
    )
