"""docs/metrics.md §5: the optimization-gap line probe along the realized LoRA update."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from signaldrift.errors import NonFiniteError, check_same_shape
from signaldrift.scale_probe import refine_argmin

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


@dataclass(frozen=True)
class GapEstimate:
    """The step-gap estimate of docs/metrics.md §5 (v2): the loss along the recent net update, averaged
    over the probe set's units, with its spread.

    Attributes:
        step_gap: the descent search's minimum of the mean loss over tau, refined by a parabola in log tau.
        gap_gain: ``(L(1) - L(best)) / L(1)`` with ``L`` the mean loss and ``best`` the best tau evaluated;
            None when ``L(1)`` is 0.
        gap_z: how clearly the units agree that ``best`` beats tau = 1: the mean of the per-unit
            differences ``l_i(1) - l_i(best)`` over their standard error (0 when ``best`` is 1; inf when
            every unit improves by the same amount; None with fewer than 2 units).
        step_gap_lo, step_gap_hi: the lower and upper quartile of the per-unit step gaps (each unit's
            own refined minimum over the taus evaluated): the spread across the probe set.
        taus: the taus evaluated (ascending; the descent search stops early).
        losses: the mean loss at each evaluated tau (inf where not finite).
        units: how many loss values each evaluation gave (examples, or batches).
    """

    step_gap: float
    gap_gain: float | None
    gap_z: float | None
    step_gap_lo: float
    step_gap_hi: float
    taus: tuple[float, ...]
    losses: tuple[float, ...]
    units: int


def _as_floats(values) -> list[float]:
    if isinstance(values, Tensor):
        values = values.detach().double().reshape(-1).tolist()
    elif isinstance(values, (int, float)):
        values = [values]
    out = [float(v) for v in values]
    return [v if math.isfinite(v) else math.inf for v in out]


def _gap(taus: list[float], losses: list[float]) -> float:
    """``refine_argmin`` (a parabola in tau, exact on a quadratic), except 1 when no tau's loss is below the loss at tau = 1 (a flat direction
    is a step that fits, not an overshoot)."""
    one = losses[taus.index(1.0)]
    if not any(v < one for v in losses):
        return 1.0
    return refine_argmin(taus, losses)


def _quartiles(values: list[float]) -> tuple[float, float]:
    s = sorted(values)
    if len(s) == 1:
        return s[0], s[0]

    def at(q: float) -> float:  # linear interpolation between order statistics ("inclusive")
        pos = q * (len(s) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(s) - 1)
        if s[lo] == s[hi]:  # also keeps inf - inf out
            return s[lo]
        return s[lo] + (pos - lo) * (s[hi] - s[lo])

    return at(0.25), at(0.75)


def check_estimate_taus(taus: Sequence[float]) -> list[float]:
    """The step-gap estimate's tau grid, ascending: finite, >= 0, with 1 and a value above 1 (ValueError otherwise)."""
    grid = sorted({float(t) for t in taus})
    if 1.0 not in grid or grid[-1] <= 1.0 or any(t < 0 or not math.isfinite(t) for t in grid):
        raise ValueError(f"taus must be finite, >= 0, include 1 and a value above 1, got {tuple(taus)}")
    return grid


def step_gap_estimate(
    loss_fn: Callable[[], Sequence[float] | Tensor | float],
    params: Sequence[Tensor],
    direction: Sequence[Tensor],
    taus: Sequence[float] = DEFAULT_TAUS,
    reduce: Callable[[list[float]], Sequence[float]] | None = None,
) -> GapEstimate:
    """The step-gap estimate (docs/metrics.md §5, v2) along ``direction`` from the current parameters.

    ``params`` hold ``theta_t`` (tau = 1); ``loss_fn`` is evaluated at ``theta_t + (tau - 1) * direction``
    and returns one loss per unit (a 1-D tensor or a sequence: examples, or batches), the same units
    every call. The descent search evaluates tau = 1 and the next tau above it; while the mean loss
    falls it goes on up the grid, otherwise it goes down the grid below 1 while the mean loss falls; it
    stops at the first tau whose mean loss is not lower than the best so far. The parameters are
    restored bit-exactly afterwards, also when ``loss_fn`` raises.

    Args:
        loss_fn: forward passes over the fixed probe set; the caller sets eval mode and no_grad.
        params: the parameters to move (in place).
        direction: the unit step per parameter (e.g. the net update over the last W steps divided by W).
        taus: the tau grid (finite, >= 0, including 1 and a value above 1).
        reduce: maps ``[mean loss]`` of this process to the mean the search decides on (data-parallel
            callers average over ranks, so every rank takes the same path); the spread and ``gap_z``
            come from this process's units.

    Raises:
        ValueError: params and direction differ in number or shape; taus lack 1 or a value above 1,
            or hold a negative or non-finite value; ``loss_fn`` returns no units or a different count.
        NonFiniteError: the mean loss at tau = 1 is not finite.
    """
    params, direction = list(params), list(direction)
    if len(params) != len(direction):
        raise ValueError(f"got {len(params)} params but {len(direction)} directions; they must pair up")
    for i, (p, d) in enumerate(zip(params, direction)):
        check_same_shape(f"direction[{i}]", d, f"params[{i}]", p)
    grid = check_estimate_taus(taus)
    saved = [p.detach().clone() for p in params]
    per_tau: dict[float, tuple[float, list[float]]] = {}  # tau -> (decision mean, unit losses)

    def evaluate(tau: float) -> float:
        with torch.no_grad():
            for p, p0, d in zip(params, saved, direction):
                p.copy_(p0 + (tau - 1.0) * d.to(p0.dtype))
        units = _as_floats(loss_fn())
        if not units or (per_tau and len(units) != len(next(iter(per_tau.values()))[1])):
            raise ValueError(f"loss_fn must return the same number (>= 1) of unit losses every call, got {len(units)}")
        mean = math.fsum(units) / len(units) if all(math.isfinite(u) for u in units) else math.inf
        if reduce is not None:
            mean = float(reduce([mean])[0])
        per_tau[tau] = (mean if math.isfinite(mean) else math.inf, units)
        return per_tau[tau][0]

    try:
        one = grid.index(1.0)
        best = evaluate(1.0)
        if not math.isfinite(best):
            raise NonFiniteError(f"the probe loss at tau=1 is not finite ({best})")
        up = grid[one + 1:]
        if evaluate(up[0]) < best:
            best = per_tau[up[0]][0]
            for tau in up[1:]:
                if evaluate(tau) >= best:
                    break
                best = per_tau[tau][0]
        else:
            for tau in reversed(grid[:one]):
                if evaluate(tau) >= best:
                    break
                best = per_tau[tau][0]
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, saved):
                p.copy_(p0)
    done = sorted(per_tau)
    means = [per_tau[t][0] for t in done]
    units = [per_tau[t][1] for t in done]
    loss1 = per_tau[1.0][0]
    i_best = min(range(len(done)), key=lambda j: means[j])
    if means[i_best] >= loss1:  # no tau beats the current point (a flat direction)
        i_best = done.index(1.0)
    gap = _gap(done, means)
    gain = (loss1 - means[i_best]) / loss1 if loss1 != 0 else None
    n = len(units[0])
    z: float | None = None
    if n >= 2:
        if done[i_best] == 1.0:
            z = 0.0
        else:
            diffs = [a - b for a, b in zip(per_tau[1.0][1], units[i_best])]
            if not all(math.isfinite(d) for d in diffs):
                z = None
            else:
                mean = math.fsum(diffs) / n
                var = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)
                se = math.sqrt(var / n)
                z = mean / se if se > 0 else (math.inf if mean > 0 else 0.0)
    unit_gaps = [_gap(done, [units[j][i] for j in range(len(done))]) for i in range(n)]
    lo, hi = _quartiles(unit_gaps)
    return GapEstimate(step_gap=gap, gap_gain=gain, gap_z=z, step_gap_lo=lo, step_gap_hi=hi,
                       taus=tuple(done), losses=tuple(means), units=n)
