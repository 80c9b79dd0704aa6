"""docs/metrics.md §6: the square-root law, its constant c, and the alpha-regime verdict."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from signaldrift.errors import check_int, check_number

# The constant c of LoRA-α's law alpha* = c * sqrt(r) (under scale = alpha / r), from
# benchmarks/results/rank_sweep.md: MiniLM-L6 + Rotten Tomatoes, LoRA on query/value at LoRA-α's lr 1e-4,
# 63 steps of batch 32, best alpha by held-out loss for r = 2..32, 2 seeds: c at p = 0.5 is 271
# (95% bootstrap interval [226, 324]); the free fit is c = 259 [189, 355], p = 0.52 [0.28, 0.76].
# It holds for that lr and budget: the best alpha falls about as 1/lr (alpha_vs_lr.md) and as 1/steps
# (alpha_finder.md), and a synthetic linear task at the same lr gives c = 22 (the exponent carries over
# between tasks, the constant does not).
SQRT_LAW_C: float = 270.0

# Verdict thresholds (docs/metrics.md §6), from benchmarks/results/gap_calibration.md: every cell
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
# cell exceeded 0.0178.
STEP_SIZE_HIGH: float = 0.025

VERDICTS = ("alpha-too-small", "too-aggressive", "in-regime")


def recommended_alpha(rank: int, c: float = SQRT_LAW_C) -> float:
    """LoRA-α's alpha for a rank: ``c * sqrt(rank)`` (used with scale = alpha / rank).

    Raises:
        ValueError: rank is not a positive int (bools refused), c is not a positive finite number
            (bools refused), or ``c * sqrt(rank)`` is not a finite float.
    """
    check_int("rank", rank)
    c = check_number("c", c)
    try:
        value = c * math.sqrt(rank)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ValueError(f"c * sqrt(rank) must be a finite float, got c={c!r} and rank={rank!r}")
    return value


@dataclass(frozen=True)
class RegimeVerdict:
    """Where alpha sits, why, and what to try.

    Attributes:
        verdict: one of ``VERDICTS``.
        evidence: the numbers behind the verdict, in words, with how many probes agree.
        suggestion: a concrete next step.
        suggested_alpha: an alpha to try under the user's own rule (None when alpha should stay).
        alpha, rank, scale: the (median) configuration judged.
        recommended_alpha: ``c * sqrt(r)`` expressed under the user's rule.
        step_gap, drift_ratio, step_size: medians of the values given, for display (NaN dropped,
            inf kept; None when none). The verdict itself counts values, it does not use these.
        probes: how many step gaps were given (NaN included).
        agreeing: how many of them are on the verdict's side (below ``GAP_TOO_AGGRESSIVE`` for
            too-aggressive, at or above ``GAP_TOO_SMALL`` for alpha-too-small, between for
            in-regime); 0 when the configuration alone decided.
        dropped: NaN (or None) values dropped from the three series together.
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
    probes: int = 0
    agreeing: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class _Series:
    """One kind of evidence: the usable values (finite or +inf, in order) and how many were NaN."""

    name: str
    values: tuple[float, ...]
    dropped: int

    @property
    def total(self) -> int:
        return len(self.values) + self.dropped

    def count(self, keep) -> int:
        return sum(1 for v in self.values if keep(v))

    def agree(self, votes: int) -> bool:
        """``votes`` values are more than half of *all* values given (NaN included): agreement, not
        a median of two (docs/metrics.md §6). For an odd count without NaN this is the median's
        side of the threshold, as before."""
        return 2 * votes > self.total

    def agreed_value(self, largest: bool) -> float:
        """The value a majority agrees on: the ``total // 2 + 1``-th largest (or smallest). For an
        odd count without NaN, the median."""
        need = self.total // 2 + 1
        return sorted(self.values, reverse=largest)[need - 1]

    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def _series(name: str, values: Sequence[float] | None) -> _Series:
    kept: list[float] = []
    dropped = 0
    for i, v in enumerate(values or ()):
        if v is None:
            dropped += 1
            continue
        if isinstance(v, (bool, str)):
            raise ValueError(f"{name}[{i}] must be a number >= 0 (inf allowed; NaN is dropped and counted), got {v!r}")
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{name}[{i}] must be a number >= 0 (inf allowed; NaN is dropped and counted), got {v!r}") from None
        if math.isnan(f):
            dropped += 1
        elif f < 0:
            raise ValueError(f"{name}[{i}] must be a number >= 0 (inf allowed; NaN is dropped and counted), got {v!r}")
        else:
            kept.append(f)
    return _Series(name, tuple(kept), dropped)


def _describe(series: _Series, votes: list[tuple[int, str]]) -> str | None:
    if not series.total:
        return None
    median = series.median()
    shown = ", ".join(f"{v:.3g}" for v in series.values)
    text = (f"median {series.name} {median:.3g} over {series.total} probes ({shown})" if median is not None
            else f"{series.name}: none usable over {series.total} probes")
    counts = [f"{n} of {series.total} {what}" for n, what in votes]
    if series.dropped:
        counts.append(f"{series.dropped} NaN dropped")
    return text + ("; " + ", ".join(counts) if counts else "")


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

    How evidence counts (docs/metrics.md §6): a side of a threshold needs a majority
    of the values given, NaN included (a NaN is dropped as a value but counted as a probe that did
    not agree): the step could be larger when more than half of the step gaps are
    ``>= GAP_TOO_SMALL`` and the drift ratio is low in more than half of its values (or was not
    measured); the step overshoots when more than half are ``< GAP_TOO_AGGRESSIVE``; the drift is
    high when more than half of the drift ratios are ``>= DRIFT_RATIO_HIGH``, ``inf`` included. For
    an odd number of values without NaN this is today's median rule; with two values it needs
    both. When no side has a majority the verdict is ``in-regime`` and the suggestion says the
    evidence is missing or split instead of "keep alpha" alone.

    Args:
        alpha: the alpha the user set (median over layers), under their rule.
        rank: the rank (median over layers).
        scale: the live scale (median over layers).
        step_gaps: recent ``step_gap`` values (docs/metrics.md §5); >= 0, inf allowed, NaN counted.
        drift_ratios: recent ``drift_ratio`` values (docs/metrics.md §2); >= 0, inf allowed, NaN counted.
        step_sizes: recent ``step_size`` values (evidence only).
        c: the square-root law's constant.

    Raises:
        ValueError: alpha, rank, scale or c is not a positive finite number (bools refused); a
            value in a series is negative or not a number; or the configuration's derived
            numbers (``scale * rank``, ``c * sqrt(r)`` in alpha's units, the largest suggested
            alpha) leave the float range.
    """
    alpha, rank, scale, c = (check_number(n, v) for n, v in (("alpha", alpha), ("rank", rank), ("scale", scale), ("c", c)))
    gaps, drifts, sizes = (_series(n, v) for n, v in (("step_gap", step_gaps), ("drift_ratio", drift_ratios),
                                                      ("step_size", step_sizes)))
    rec_equiv = c * math.sqrt(rank)  # recommended alpha under scale = alpha / r
    equiv = scale * rank  # the user's alpha, expressed under scale = alpha / r
    per_equiv = alpha / equiv if equiv > 0 else math.inf  # converts a standard-equivalent alpha to the user's rule
    rec_user = rec_equiv * per_equiv
    for what, value in (("scale * rank", equiv), ("alpha / (scale * rank)", per_equiv), ("c * sqrt(r) in alpha's units", rec_user),
                        ("the largest suggested alpha", alpha * MAX_SUGGESTED_FACTOR)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"alpha={alpha!r}, rank={rank!r}, scale={scale!r} and c={c!r} give {what} = {value!r}, outside the "
                "positive finite floats; allowed: values whose products and quotients stay finite and non-zero "
                "(e.g. alpha, scale * rank and c * sqrt(r) between 1e-300 and 1e300)")

    # Each threshold is compared once; the decisions below are made from these counts, so the
    # displayed counts and the verdict cannot disagree.
    small_votes = gaps.count(lambda g: g >= GAP_TOO_SMALL)
    over_votes = gaps.count(lambda g: g < GAP_TOO_AGGRESSIVE)
    in_range = gaps.total - gaps.dropped - small_votes - over_votes
    high_votes = drifts.count(lambda d: d >= DRIFT_RATIO_HIGH)
    low_votes = len(drifts.values) - high_votes  # the values kept are never NaN: below, or at or above
    gap_small = gaps.agree(small_votes)
    gap_over = gaps.agree(over_votes)
    drift_high = drifts.agree(high_votes)
    drift_low = drifts.total == 0 or drifts.agree(low_votes)
    gap, drift, step = gaps.median(), drifts.median(), sizes.median()

    facts = [f"alpha={alpha:g} at r={rank:g} (scale {scale:.4g}); c*sqrt(r) -> alpha ~ {rec_user:.3g}"]
    for text in (
        _describe(gaps, [(small_votes, f">= {GAP_TOO_SMALL:g}"), (over_votes, f"< {GAP_TOO_AGGRESSIVE:g}")]),
        _describe(drifts, [(high_votes, f">= {DRIFT_RATIO_HIGH:g}")]),
        _describe(sizes, [(sizes.count(lambda v: v >= STEP_SIZE_HIGH),
                           f">= {STEP_SIZE_HIGH:g}, where the alpha x lr grid's runs collapsed")]),
    ):
        if text is not None:
            facts.append(text)
    evidence = "; ".join(facts)

    suggested: float | None = None
    agreeing = 0
    if gap_over or drift_high:
        verdict = "too-aggressive"
        agreeing = over_votes
        if gap_over:
            agreed = gaps.agreed_value(largest=False)
            why = f"{over_votes} of {gaps.total} probes say the step overshoots (step_gap {agreed:.2g} or less)"
            factor = max(agreed, 0.1)
        else:
            why = f"drift_ratio >= {DRIFT_RATIO_HIGH} in {high_votes} of {drifts.total} probes"
            factor = 0.5
        suggestion = f"{why}: lower the learning rate (about {_round2(factor):g}x), not alpha"
    elif gap_small and drift_low:
        verdict = "alpha-too-small"
        agreeing = small_votes
        agreed = gaps.agreed_value(largest=True)
        suggested = _round2(alpha * min(agreed, MAX_SUGGESTED_FACTOR))
        capped = " (a capped first move; probe again)" if agreed > MAX_SUGGESTED_FACTOR else ""
        suggestion = (f"{small_votes} of {gaps.total} probes say the step could be ~{agreed:.2g}x larger with drift_ratio "
                      f"{'unmeasured' if drift is None else f'{drift:.2g}'}; try alpha ~ {suggested:g}{capped}")
    elif not gaps.values and equiv < ALPHA_FLOOR_FRACTION * rec_equiv:
        # The law alone, only until a probe has measured the step: c is calibrated at LoRA-α's lr
        # (1e-4), and the best alpha falls about as 1/lr (benchmarks/results/alpha_vs_lr.md), so at a
        # larger lr a measured step_gap in range outranks the law.
        verdict = "alpha-too-small"
        suggested = _round2(rec_user)
        suggestion = (f"alpha is below {ALPHA_FLOOR_FRACTION:g} of c*sqrt(r) (no step_gap measured yet; the law is "
                      f"a prior); try alpha ~ {suggested:g}")
    else:
        verdict = "in-regime"
        agreeing = in_range
        if not gaps.values:
            nan = f" ({gaps.dropped} NaN)" if gaps.dropped else ""
            suggestion = (f"no step_gap measured yet{nan}: no evidence either way, so no change is supported; "
                          f"keep alpha={alpha:g} until probes measure the step")
        elif gap_small:  # the gap says larger, the drift ratio is not low in a majority of probes
            suggestion = (f"the step gap says larger ({small_votes} of {gaps.total}) but drift_ratio is not low in most "
                          f"probes: the evidence conflicts; keep alpha={alpha:g} and probe again")
        elif 2 * in_range <= gaps.total:
            suggestion = (f"the probes disagree ({small_votes} of {gaps.total} say larger, {over_votes} overshoot, "
                          f"{gaps.dropped} NaN): no change is supported; keep alpha={alpha:g} and probe again")
        else:
            suggestion = f"keep alpha={alpha:g}"
    return RegimeVerdict(
        verdict=verdict, evidence=evidence, suggestion=suggestion, suggested_alpha=suggested,
        alpha=alpha, rank=rank, scale=scale, recommended_alpha=rec_user,
        step_gap=gap, drift_ratio=drift, step_size=step,
        probes=gaps.total, agreeing=agreeing, dropped=gaps.dropped + drifts.dropped + sizes.dropped,
    )
