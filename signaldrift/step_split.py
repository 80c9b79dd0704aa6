"""docs/metrics.md §2: one optimizer step split into task signal ``S`` and bilinear drift ``D``."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from signaldrift.errors import check_base_norm, check_factors, check_finite, check_same_shape, check_scale, compute_dtype

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
    dt = compute_dtype(A_prev, B_prev, A_next, B_next)
    A, B = A_prev.detach().to(dt), B_prev.detach().to(dt)
    An, Bn = A_next.detach().to(dt), B_next.detach().to(dt)
    dA, dB = An - A, Bn - B  # (r, n), (m, r)
    r = A.shape[0]
    # S = [s dB, s B] [A; dA] and S + D = s (dB A' + B dA) = [s dB, s B] [A'; dA] share their left
    # factor, and D = s dB dA is its first block times the right factor's second block, so three
    # small float64 Gram matrices give all three norms (no cancellation between large terms).
    L = torch.cat([dB, B], dim=1).to(torch.float64) * s  # (m, 2r)
    R_signal = torch.cat([A, dA], dim=0).to(torch.float64)  # (2r, n)
    R_update = torch.cat([An, dA], dim=0).to(torch.float64)  # (2r, n)
    G_L = L.T @ L  # (2r, 2r)
    G_S = R_signal @ R_signal.T
    G_U = R_update @ R_update.T
    signal = max(float((G_L * G_S).sum()), 0.0) ** 0.5
    drift = max(float((G_L[:r, :r] * G_S[r:, r:]).sum()), 0.0) ** 0.5
    update = max(float((G_L * G_U).sum()), 0.0) ** 0.5
    base_norm = check_base_norm(base_norm)
    return StepSplit(
        signal_norm=signal,
        drift_norm=drift,
        drift_ratio=drift / signal if signal > 0 else None,
        step_size=update / base_norm if base_norm > 0 else None,
        update_norm=update,
    )
