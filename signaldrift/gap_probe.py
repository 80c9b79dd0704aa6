"""docs/metrics.md §5: the optimization-gap line probe along the realized LoRA update."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from signaldrift.errors import NonFiniteError, check_same_shape

DEFAULT_TAUS: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@dataclass(frozen=True)
class GapProbe:
    """The loss along ``theta_t + tau * delta``.

    Attributes:
        step_gap: argmin over tau, refined by a parabola in log tau. ~1: the step fits the
            landscape; >> 1: too conservative (the optimization gap); < 1: overshooting.
        gap_gain: ``(loss(1) - loss(step_gap)) / loss(1)``; ``loss(step_gap)`` is the best loss
            measured on the grid (a measured number, never the parabola's extrapolation; no extra
            forward pass). None when ``loss(1)`` is 0.
        taus: the tau grid evaluated.
        losses: the loss at each tau (inf where the loss was not finite).
    """

    step_gap: float
    gap_gain: float | None
    taus: tuple[float, ...]
    losses: tuple[float, ...]


def refine_log_argmin(xs: Sequence[float], ys: Sequence[float]) -> float:
    """argmin of ``ys`` over the ascending grid ``xs``, refined by the vertex of the parabola through
    the best point and its neighbours on log x (kept between them); the grid point itself at an
    edge, next to x = 0, or when the three points are not convex. Non-finite ``ys`` never win."""
    i = min(range(len(ys)), key=lambda j: ys[j] if math.isfinite(ys[j]) else math.inf)
    if i == 0 or i == len(xs) - 1 or xs[i - 1] <= 0:
        return float(xs[i])
    x = [math.log(xs[j]) for j in (i - 1, i, i + 1)]
    y = [ys[j] for j in (i - 1, i, i + 1)]
    if not all(math.isfinite(v) for v in y):
        return float(xs[i])
    # Parabola y = a x^2 + b x + c through three points (divided differences).
    d1 = (y[1] - y[0]) / (x[1] - x[0])
    d2 = (y[2] - y[1]) / (x[2] - x[1])
    a = (d2 - d1) / (x[2] - x[0])
    if a <= 0:
        return float(xs[i])
    b = d1 - a * (x[0] + x[1])
    return math.exp(min(max(-b / (2 * a), x[0]), x[2]))


def step_gap_probe(
    loss_fn: Callable[[], float | Tensor],
    params: Sequence[Tensor],
    delta: Sequence[Tensor],
    taus: Sequence[float] = DEFAULT_TAUS,
    applied: bool = True,
    reduce: Callable[[list[float]], Sequence[float]] | None = None,
) -> GapProbe:
    """Evaluate ``loss_fn`` at ``theta_t + tau * delta`` for each tau and find the best tau.

    Parameters are restored bit-exactly afterwards, also when ``loss_fn`` raises.

    Args:
        loss_fn: forward pass(es) on a fixed probe batch returning a scalar loss; the caller
            puts the model in eval mode and disables gradients.
        params: the LoRA parameters, modified in place during the probe.
        delta: the realized update of each parameter (same shapes).
        taus: step multiples to evaluate; must include 1.
        applied: True when ``params`` already hold ``theta_t + delta`` (the step was taken),
            False when they hold ``theta_t``.
        reduce: maps the measured losses (one per tau, ascending tau, non-finite as inf) to the
            losses the decision uses; data-parallel callers pass a mean over ranks here, so
            every rank decides on the global batch's losses.

    Raises:
        ValueError: params and delta differ in number or shape, or taus lacks 1 or holds a
            negative value.
        NonFiniteError: the loss at tau = 1 is not finite.
    """
    params, delta = list(params), list(delta)
    if len(params) != len(delta):
        raise ValueError(f"got {len(params)} params but {len(delta)} deltas; they must pair up")
    for i, (p, d) in enumerate(zip(params, delta)):
        check_same_shape(f"delta[{i}]", d, f"params[{i}]", p)
    taus = tuple(float(t) for t in taus)
    if 1.0 not in taus or any(t < 0 or not math.isfinite(t) for t in taus):
        raise ValueError(f"taus must be finite, >= 0 and include 1, got {taus}")
    order = sorted(range(len(taus)), key=lambda j: taus[j])
    taus = tuple(taus[j] for j in order)
    saved = [p.detach().clone() for p in params]
    losses: list[float] = []
    try:
        with torch.no_grad():
            for tau in taus:
                offset = tau - 1.0 if applied else tau
                for p, p0, d in zip(params, saved, delta):
                    p.copy_(p0 + offset * d.to(p0.dtype))
                value = float(loss_fn())
                losses.append(value if math.isfinite(value) else math.inf)
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, saved):
                p.copy_(p0)
    if reduce is not None:
        losses = [float(v) if math.isfinite(float(v)) else math.inf for v in reduce(losses)]
    loss1 = losses[taus.index(1.0)]
    if not math.isfinite(loss1):
        raise NonFiniteError(f"the probe loss at tau=1 is not finite ({loss1})")
    best = min(range(len(taus)), key=lambda j: losses[j] if math.isfinite(losses[j]) else math.inf)  # as the refinement
    gain = (loss1 - losses[best]) / loss1 if loss1 != 0 else None
    gap = refine_log_argmin(taus, losses)
    return GapProbe(step_gap=gap, gap_gain=gain, taus=taus, losses=tuple(losses))
