"""Section 6: the square-root law, its constant c, and the alpha-regime verdict."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# The constant c of LoRA-α's law alpha* = c * sqrt(r) (under scale = alpha / r), from
# benchmarks/results/rank_sweep.md: MiniLM-L6 + Rotten Tomatoes, LoRA on query/value at LoRA-α's lr 1e-4,
# 63 steps of batch 32, best alpha by held-out loss for r = 2..32, 2 seeds: c at p = 0.5 is 271
# (95% bootstrap interval [226, 324]); the free fit is c = 259 [189, 355], p = 0.52 [0.28, 0.76].
# It holds for that lr and budget: the best alpha falls about as 1/lr (alpha_vs_lr.md) and as 1/steps
# (alpha_finder.md), and a synthetic linear task at the same lr gives c = 22 (the exponent carries over
# between tasks, the constant does not).
SQRT_LAW_C: float = 270.0

# Verdict thresholds (signal-drift.md section 6), from benchmarks/results/gap_calibration.md: every cell
# of the alpha x lr grid (MiniLM-L6, r=8 on query/value, 63 steps) rerun with the step-gap probe every 8
# steps, labelled by the grid's mean held-out accuracy against the best alpha at its lr (margin 0.02).
# With the median of the last 5 probes (the advisor's default window), GAP_TOO_SMALL = 4 separates the
# alpha-too-small cells with balanced accuracy 0.96 (the best any threshold reached) and
# GAP_TOO_AGGRESSIVE = 0.5 the too-aggressive ones with 0.88 (also the best); the gap rule alone names the
# grid's label in 17 of 20 cells. One seed, 20 cells: the values are confirmed there, not tuned finely.
# The step gap is the weaker sign of overshoot: converged healthy runs also probe at 0 now and then,
# while the mean step size split the grid cleanly (too-aggressive >= 0.0156, in-regime <= 0.0066 in those
# runs; >= 0.0159 and <= 0.0064 in alpha_vs_lr.md's 3-seed means).
GAP_TOO_SMALL: float = 4.0  # median step_gap at or above this: the step could be much larger
GAP_TOO_AGGRESSIVE: float = 0.5  # median step_gap below this: the step overshoots
# No cell of alpha_vs_lr.md came near 0.1 (healthy cells 0.002-0.032; the collapsed cells 0.005-0.013):
# at this scale the drift ratio did not mark failures, the step size did (STEP_SIZE_HIGH). Kept as a guard.
DRIFT_RATIO_HIGH: float = 0.1  # median drift_ratio at or above this counts as "high"
# The floor (used only before any step gap is measured): at the lr c comes from (1e-4), the grid's cells
# below 0.25 * c * sqrt(8) = 191 (alpha 8, 16, 64) stayed at 0.532-0.548 held-out accuracy against 0.737
# at alpha 1024; alpha 256 (0.34 of c * sqrt(8)) reached 0.711 (benchmarks/results/alpha_vs_lr.md). A deliberately
# low floor: the law's constant falls about as 1/lr, so at larger lrs smaller alphas are right.
ALPHA_FLOOR_FRACTION: float = 0.25  # alpha below this fraction of c * sqrt(r) is too small
# A suggestion never multiplies alpha by more than this at once: the probe measures one batch
# along one step, so a gap of 30 says "much larger", not "exactly 30x". Re-check after changing.
MAX_SUGGESTED_FACTOR: float = 8.0
# Evidence only (does not change the verdict): in benchmarks/results/alpha_vs_lr.md every cell with a
# mean per-step update-to-weight ratio >= 0.0278 stayed at the majority class in all seeds, and no other
# cell exceeded 0.0178 (the pre-study saw the same split at 0.0275 / 0.019).
STEP_SIZE_HIGH: float = 0.025

VERDICTS = ("alpha-too-small", "too-aggressive", "in-regime")


def recommended_alpha(rank: int, c: float = SQRT_LAW_C) -> float:
    """LoRA-α's alpha for a rank: ``c * sqrt(rank)`` (used with scale = alpha / rank).

    Raises:
        ValueError: rank is not a positive int or c is not a positive finite number.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"c must be a positive finite number, got {c!r}")
    return float(c) * math.sqrt(rank)


@dataclass(frozen=True)
class RegimeVerdict:
    """Where alpha sits, why, and what to try.

    Attributes:
        verdict: one of ``VERDICTS``.
        evidence: the numbers behind the verdict, in words.
        suggestion: a concrete next step.
        suggested_alpha: an alpha to try under the user's own rule (None when alpha should stay).
        alpha, rank, scale: the (median) configuration judged.
        recommended_alpha: ``c * sqrt(r)`` expressed under the user's rule.
        step_gap, drift_ratio, step_size: the medians used (None when not measured).
    """

    verdict: str
    evidence: str
    suggestion: str
    suggested_alpha: float | None
    alpha: float
    rank: float
    scale: float
    recommended_alpha: float
    step_gap: float | None
    drift_ratio: float | None
    step_size: float | None


def _median(values: Sequence[float] | None) -> float | None:
    vals = [float(v) for v in (values or ()) if v is not None and math.isfinite(float(v))]
    return statistics.median(vals) if vals else None


def _round2(x: float) -> float:
    """Two significant figures: a suggestion, not a fake-precise number."""
    if x <= 0:
        return x
    digits = 1 - int(math.floor(math.log10(x)))
    return round(x, digits)


def regime_verdict(
    alpha: float,
    rank: float,
    scale: float,
    step_gaps: Sequence[float] | None = None,
    drift_ratios: Sequence[float] | None = None,
    step_sizes: Sequence[float] | None = None,
    c: float = SQRT_LAW_C,
) -> RegimeVerdict:
    """Judge the alpha regime from the configuration and the recent measurements.

    Alpha is compared through the scale, so any rule works: the standard-equivalent alpha
    is ``scale * rank``, and suggestions are returned under the user's own rule (scale is
    linear in alpha under every rule).

    Args:
        alpha: the alpha the user set (median over layers), under their rule.
        rank: the rank (median over layers).
        scale: the live scale (median over layers).
        step_gaps: recent ``step_gap`` values (section 5).
        drift_ratios: recent ``drift_ratio`` values (section 2).
        step_sizes: recent ``step_size`` values (evidence only).
        c: the square-root law's constant.

    Raises:
        ValueError: alpha, rank or scale is not positive and finite.
    """
    for name, v in (("alpha", alpha), ("rank", rank), ("scale", scale)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    gap, drift, step = _median(step_gaps), _median(drift_ratios), _median(step_sizes)
    rec_equiv = float(c) * math.sqrt(rank)  # recommended alpha under scale = alpha / r
    equiv = scale * rank  # the user's alpha, expressed under scale = alpha / r
    per_equiv = alpha / equiv  # converts a standard-equivalent alpha back to the user's rule
    rec_user = rec_equiv * per_equiv
    facts = [f"alpha={alpha:g} at r={rank:g} (scale {scale:.4g}); c*sqrt(r) -> alpha ~ {rec_user:.3g}"]
    if gap is not None:
        facts.append(f"median step_gap {gap:.3g}")
    if drift is not None:
        facts.append(f"median drift_ratio {drift:.3g}")
    if step is not None:
        note = f" (above {STEP_SIZE_HIGH}, where the alpha x lr grid's runs collapsed)" if step >= STEP_SIZE_HIGH else ""
        facts.append(f"median step_size {step:.3g}{note}")
    evidence = "; ".join(facts)

    drift_high = drift is not None and drift >= DRIFT_RATIO_HIGH
    suggested: float | None = None
    if (gap is not None and gap < GAP_TOO_AGGRESSIVE) or drift_high:
        verdict = "too-aggressive"
        why = f"the step overshoots (step_gap {gap:.2g})" if gap is not None and gap < GAP_TOO_AGGRESSIVE else (
            f"drift_ratio {drift:.2g} >= {DRIFT_RATIO_HIGH}")
        factor = max(gap, 0.1) if gap is not None and gap < GAP_TOO_AGGRESSIVE else 0.5
        suggestion = f"{why}: lower the learning rate (about {_round2(factor):g}x), not alpha"
    elif gap is not None and gap >= GAP_TOO_SMALL:
        verdict = "alpha-too-small"
        suggested = _round2(alpha * min(gap, MAX_SUGGESTED_FACTOR))
        capped = " (a capped first move; probe again)" if gap > MAX_SUGGESTED_FACTOR else ""
        suggestion = (f"the step could be ~{gap:.2g}x larger with drift_ratio "
                      f"{'unmeasured' if drift is None else f'{drift:.2g}'}; try alpha ~ {suggested:g}{capped}")
    elif gap is None and equiv < ALPHA_FLOOR_FRACTION * rec_equiv:
        # The law alone, only until a probe has measured the step: c is calibrated at LoRA-α's lr
        # (1e-4), and the best alpha falls about as 1/lr (benchmarks/results/alpha_vs_lr.md), so at a
        # larger lr a measured step_gap in range outranks the law.
        verdict = "alpha-too-small"
        suggested = _round2(rec_user)
        suggestion = (f"alpha is below {ALPHA_FLOOR_FRACTION:g} of c*sqrt(r); try alpha ~ {suggested:g}")
    else:
        verdict = "in-regime"
        suggestion = f"keep alpha={alpha:g}"
    return RegimeVerdict(
        verdict=verdict, evidence=evidence, suggestion=suggestion, suggested_alpha=suggested,
        alpha=float(alpha), rank=float(rank), scale=float(scale), recommended_alpha=rec_user,
        step_gap=gap, drift_ratio=drift, step_size=step,
    )
