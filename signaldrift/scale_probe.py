"""docs/metrics.md §7: the scale probe, the loss along the run's own accumulated update W0 + k * dW."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from signaldrift.errors import NonFiniteError

# Log-spaced by 2 from 1/4 to 16 (the parabola refines between points); 0 is the model without its update.
DEFAULT_KS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass(frozen=True)
class ScaleProbe:
    """The loss with every LoRA update stretched by k (docs/metrics.md §7).

    Attributes:
        k_star: the argmin of the mean loss over ``ks``, refined by the parabola (in k) through the
            best point and its neighbours; 1 when no k beats k = 1.
        k_best: the grid point with the lowest mean loss (1 when none is below k = 1).
        gain_z: paired significance that ``k_best`` beats k = 1: mean of ``l_i(1) - l_i(k_best)`` over its
            standard error (0 when ``k_best`` is 1; None with fewer than 2 units or a non-finite loss).
        help_z: paired significance that the update helped: the same for ``l_i(0) - l_i(1)`` (negative when
            the update made the probe set worse; None when 0 is not in ``ks``, with fewer than 2 units or a
            non-finite loss).
        ks: the grid (ascending).
        losses: the mean loss at each k (inf where not finite).
        zs: for each k, the paired z of ``l_i(1) - l_i(k)`` (> 0: k beats the run as it is; 0 at k = 1).
        units: how many losses each evaluation gave.
    """

    k_star: float
    k_best: float
    gain_z: float | None
    help_z: float | None
    ks: tuple[float, ...]
    losses: tuple[float, ...]
    units: int
    zs: tuple[float | None, ...] = ()


def check_ks(ks: Sequence[float]) -> tuple[float, ...]:
    """The grid, ascending and without repeats: finite, >= 0, with 1 and a value on each side of it."""
    try:
        values = list(ks)
        if any(isinstance(k, (bool, str)) for k in values):
            raise TypeError
        grid = sorted({float(k) for k in values})
    except (TypeError, ValueError):
        raise ValueError(f"ks must be numbers, got {ks!r}") from None
    if (1.0 not in grid or grid[0] >= 1.0 or grid[-1] <= 1.0
            or any(k < 0 or not math.isfinite(k) for k in grid)):
        raise ValueError(f"ks must be finite, >= 0, include 1 and a value below and above 1, got {tuple(ks)}")
    return tuple(grid)


def refine_argmin(xs: Sequence[float], ys: Sequence[float]) -> float:
    """argmin of ``ys`` over the ascending grid ``xs`` (the smallest x on ties), refined by the vertex of the
    parabola through the best point and its two neighbours (in x itself, so an exact quadratic gives its
    exact minimum), kept between the neighbours; the grid point at an edge, or when the three points are
    not finite or not convex. Non-finite ``ys`` never win."""
    i = min(range(len(ys)), key=lambda j: ys[j] if math.isfinite(ys[j]) else math.inf)
    if i == 0 or i == len(xs) - 1:
        return float(xs[i])
    x = [float(xs[j]) for j in (i - 1, i, i + 1)]
    y = [ys[j] for j in (i - 1, i, i + 1)]
    if not all(math.isfinite(v) for v in y):
        return x[1]
    d1 = (y[1] - y[0]) / (x[1] - x[0])  # divided differences of y = a x^2 + b x + c
    d2 = (y[2] - y[1]) / (x[2] - x[1])
    a = (d2 - d1) / (x[2] - x[0])
    if a <= 0:
        return x[1]
    b = d1 - a * (x[0] + x[1])
    return min(max(-b / (2 * a), x[0]), x[2])


def paired_z(first: Sequence[float], second: Sequence[float]) -> float | None:
    """mean(first - second) over its standard error (sample sd, n - 1): > 0 when ``second`` is lower.
    +-inf when every difference is the same non-zero number, 0 when all are 0; None with fewer than 2
    pairs or a non-finite difference."""
    diffs = [a - b for a, b in zip(first, second)]
    n = len(diffs)
    if n < 2 or not all(math.isfinite(d) for d in diffs):
        return None
    mean = math.fsum(diffs) / n
    se = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
    if se > 0:
        return mean / se
    return 0.0 if mean == 0 else math.copysign(math.inf, mean)


def _units(values) -> list[float]:
    if isinstance(values, Tensor):
        values = values.detach().double().reshape(-1).tolist()
    elif isinstance(values, (int, float)):
        values = [values]
    out = [float(v) for v in values]
    return [v if math.isfinite(v) else math.inf for v in out]


def scale_probe(
    loss_fn: Callable[[], Sequence[float] | Tensor | float],
    factors: Sequence[Tensor],
    ks: Sequence[float] = DEFAULT_KS,
    reduce: Callable[[list[float]], Sequence[float]] | None = None,
) -> ScaleProbe:
    """The scale probe (docs/metrics.md §7): ``loss_fn`` with every factor multiplied by k, for each k.

    Pass one factor per LoRA layer (B): ``W = W_base + k * s * B @ A``, which for ``B0 = 0`` is
    ``W0 + k * dW``, the same factors at alpha ``k * alpha``. The factors are multiplied in place and
    restored bit-exactly afterwards, also when ``loss_fn`` raises.

    Args:
        loss_fn: forward passes over a fixed probe set returning one loss per unit (a 1-D tensor or a
            sequence), the same units every call; the caller sets eval mode and no_grad.
        factors: the tensors to stretch (in place).
        ks: the grid (finite, >= 0, with 1 and values on both sides of it).
        reduce: maps this process's mean loss per k (ascending k) to the means the argmin is taken on
            (data-parallel callers average over ranks, so every rank reads the same k*); the z values
            come from this process's units.

    Raises:
        ValueError: a bad grid, or ``loss_fn`` returns no units or a different count.
        NonFiniteError: the mean loss at k = 1 is not finite.
    """
    grid = check_ks(ks)
    factors = list(factors)
    saved = [f.detach().clone() for f in factors]
    units: list[list[float]] = []
    try:
        for k in grid:
            with torch.no_grad():
                for f, f0 in zip(factors, saved):
                    f.copy_(f0 * k)
            u = _units(loss_fn())
            if not u or (units and len(u) != len(units[0])):
                raise ValueError(f"loss_fn must return the same number (>= 1) of unit losses every call, got {len(u)}")
            units.append(u)
    finally:
        with torch.no_grad():
            for f, f0 in zip(factors, saved):
                f.copy_(f0)
    means = [math.fsum(u) / len(u) if all(math.isfinite(v) for v in u) else math.inf for u in units]
    if reduce is not None:
        means = [float(v) if math.isfinite(float(v)) else math.inf for v in reduce(means)]
    one = grid.index(1.0)
    if not math.isfinite(means[one]):
        raise NonFiniteError(f"the scale probe's loss at k=1 is not finite ({means[one]})")
    if any(m < means[one] for m in means):
        best = min(range(len(grid)), key=lambda j: means[j])
        k_star = refine_argmin(grid, means)
    else:  # no stretch beats the run as it is
        best, k_star = one, 1.0
    gain_z = 0.0 if best == one else paired_z(units[one], units[best])
    if len(units[0]) < 2:
        gain_z = None
    help_z = paired_z(units[0], units[one]) if grid[0] == 0.0 else None
    zs = tuple(None if len(units[0]) < 2 else 0.0 if j == one else paired_z(units[one], units[j]) for j in range(len(grid)))
    return ScaleProbe(k_star=k_star, k_best=grid[best], gain_z=gain_z, help_z=help_z, ks=grid,
                      losses=tuple(means), units=len(units[0]), zs=zs)
