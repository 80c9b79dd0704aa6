"""docs/metrics.md §8: when and how far a run's alpha moves, read from its own scale probe."""
from __future__ import annotations

import math
from dataclasses import dataclass

from signaldrift.regime import HELP_Z_MAX, STEP_SIZE_HIGH

_NO_MOVE_BAND = 0.01  # a factor down this close to 1 is no move (the total bound is reached)


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _usable(x) -> bool:
    return x is not None and _real(x)


@dataclass(frozen=True)
class ControlRules:
    """The controller's bounds (docs/metrics.md §8)."""

    max_moves: int = 3
    max_factor: float = 8.0
    max_total: float = 512.0
    until: float = 0.25
    k_up: float = 2.0  # benchmarks/results/alpha_control.md: fitted on the debates' stored probes
    z_min: float = 1.0
    help_z_max: float = HELP_Z_MAX
    headroom: float = 0.5  # a move up keeps the step size below headroom * step_size_high
    step_size_high: float = STEP_SIZE_HIGH

    def __post_init__(self) -> None:
        if isinstance(self.max_moves, bool) or not isinstance(self.max_moves, int) or self.max_moves < 1:
            raise ValueError(f"max_moves must be an int >= 1, got {self.max_moves!r}")
        for name, low in (("max_factor", 1.0), ("max_total", 1.0), ("k_up", 1.0), ("headroom", 0.0),
                          ("step_size_high", 0.0)):
            value = getattr(self, name)
            if not _real(value) or not value > low:
                raise ValueError(f"{name} must be a finite number > {low:g}, got {value!r}")
        if not _real(self.until) or not 0 < self.until <= 1:
            raise ValueError(f"until must be a fraction of the run in (0, 1], got {self.until!r}")
        for name in ("z_min", "help_z_max"):
            if not _real(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")


DEFAULT_CONTROL = ControlRules()


@dataclass(frozen=True)
class AlphaMove:
    """``factor``: multiply alpha by it (None: no move); ``reason``: why, in words."""

    factor: float | None
    reason: str


def alpha_move(k_star: float | None, gain_z: float | None, help_z: float | None, verdict: str | None, step: int,
               total_steps: int, moves: int, total: float, step_size_peak: float | None = None,
               rules: ControlRules = DEFAULT_CONTROL) -> AlphaMove:
    """The §8 rule for one probe: how far to move alpha (``factor``), or why not.

    Args:
        k_star, gain_z, help_z: the probe's §7 values (None: not measured).
        verdict: the §6 verdict this probe produced.
        step_size_peak: the largest median step size (§2) of the probes counted at the current alpha (None: no cap).
        step: the probe's optimizer step; total_steps: the run's optimizer steps (> 0).
        moves: moves made so far; total: the product of their factors (> 0).
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if not _real(total) or total <= 0:
        raise ValueError(f"total must be a finite number > 0, got {total!r}")
    if step > rules.until * total_steps:
        return AlphaMove(None, f"step {step} is past {rules.until:g} of the run's {total_steps} steps")
    if moves >= rules.max_moves:
        return AlphaMove(None, f"{moves} moves made (at most {rules.max_moves})")
    if not _usable(k_star):
        return AlphaMove(None, "no k* at this probe")
    if gain_z is None or math.isnan(gain_z):
        return AlphaMove(None, "k*'s gain over the run as it is has no significance (too few units)")
    if gain_z < rules.z_min:
        return AlphaMove(None, f"k* = {k_star:.3g} is not significant (z {gain_z:.2f} < {rules.z_min:g})")
    if k_star >= rules.k_up:
        if help_z is not None and not math.isnan(help_z) and help_z <= rules.help_z_max:
            return AlphaMove(None, f"the update made the probe set worse (help z {help_z:.2f}): no move up")
        room = math.inf
        if step_size_peak is not None and _real(step_size_peak) and step_size_peak > 0:
            room = rules.headroom * rules.step_size_high / step_size_peak  # Adam's W step grows with alpha
        factor = min(k_star, rules.max_factor, rules.max_total / total, room)
        if factor < rules.k_up:
            why = (f"alpha is already {total:.3g}x its start (at most {rules.max_total:g}x)"
                   if rules.max_total / total < rules.k_up else
                   f"the step size ({step_size_peak:.3g}) leaves room for x {room:.3g} only (below "
                   f"{rules.headroom:g} x {rules.step_size_high:g})" if room < rules.k_up else "")
            return AlphaMove(None, f"k* = {k_star:.3g}, but {why}")
        return AlphaMove(factor, f"k* = {k_star:.3g} (z {gain_z:.2f}): alpha x {factor:.3g}")
    if k_star < 1 and verdict == "too-aggressive":
        factor = max(k_star, 1 / rules.max_factor, 1 / (rules.max_total * total))
        if factor >= 1 - _NO_MOVE_BAND:
            return AlphaMove(None, f"alpha is already 1/{1 / total:.3g} of its start (at least 1/{rules.max_total:g})")
        return AlphaMove(factor, f"too-aggressive and k* = {k_star:.3g} (z {gain_z:.2f}): alpha x {factor:.3g}")
    if k_star < 1:
        return AlphaMove(None, f"k* = {k_star:.3g} < 1 without the verdict's collapse evidence: no move down")
    return AlphaMove(None, f"k* = {k_star:.3g} is below {rules.k_up:g}: alpha stays")
