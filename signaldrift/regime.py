"""docs/metrics.md §6: the square-root law, its constant c, and the alpha-regime verdict (rules v2)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields

from signaldrift.errors import check_int, check_number

# The constant c of LoRA-α's law alpha* = c * sqrt(r) (under scale = alpha / r), from
# benchmarks/results/rank_sweep.md: MiniLM-L6 + Rotten Tomatoes, LoRA on query/value at LoRA-α's lr 1e-4,
# 63 steps of batch 32, best alpha by held-out loss for r = 2..32, 2 seeds: c at p = 0.5 is 271
# (95% bootstrap interval [226, 324]); the free fit is c = 259 [189, 355], p = 0.52 [0.28, 0.76].
# It holds for that lr and budget: the best alpha falls about as 1/lr (alpha_vs_lr.md) and as 1/steps
# (alpha_finder.md), and a synthetic linear task at the same lr gives c = 22 (the exponent carries over
# between tasks, the constant does not). The verdict uses it only as a prior before any probe.
SQRT_LAW_C: float = 270.0

# The verdict's thresholds (docs/metrics.md §6, rules v2), from benchmarks/results/verdict_calibration.md
# (MiniLM-L6, r=8 on q/k/v/dense, alpha 12..3056 x lr 1e-4, 1e-3 x 2 seeds, labels from held-out accuracy at 63
# and 252 steps, margin 0.02): STEP_SIZE_HIGH is the Rotten Tomatoes collapse level, GAP_TOO_SMALL, GAP_Z_MIN,
# GAP_GAIN_MIN and VERDICT_AGREE the Rotten Tomatoes fit with it fixed (every combination of the candidates
# replayed through this function). Scored out of sample on the presidential-debates task: too-aggressive
# balanced accuracy 0.88, alpha-too-small 0.50 (the step gap did not find the too-small runs there), 3 near-best
# (run, budget) pairs called too-aggressive; see that file.
GAP_TOO_SMALL: float = 2.0  # a probe's step_gap at or above this (and significant) says "the step could be larger"
GAP_TOO_AGGRESSIVE: float = 0.5  # below this (the loss is lowest a step back, tau = 0) and significant: "overshoots"
# A probe's step gap counts only when the probe set's units agree that its best tau beats tau = 1:
# gap_z (mean per-unit improvement over its standard error) at or above this. Converged healthy runs
# probe at 0 now and then by noise; this is what keeps such probes out of the count.
GAP_Z_MIN: float = 2.0  # fitted from {0, 1, 2}
# ... and the mean loss improves by at least this fraction of L(1) (gap_gain): one step back along a
# noise-dominated direction often lowers the loss a little, many steps forward along a real one a lot.
GAP_GAIN_MIN: float = 0.1  # fitted from {0, 0.01, 0.03, 0.05, 0.1}
# In benchmarks/results/alpha_vs_lr.md no cell came near 0.1 (healthy 0.002-0.032): at this scale the
# drift ratio did not mark failures, the step size did (STEP_SIZE_HIGH). Kept as a guard (inf counts high).
DRIFT_RATIO_HIGH: float = 0.1
# The update-to-weight ratio at or above which runs collapsed (too-aggressive evidence), compared with the largest
# step size the run has had (its peak), because after a collapse Adam's steps shrink probe after probe (the
# gradients vanish; verdict_calibration.json) and recent step sizes look small. On Rotten Tomatoes every run that learned peaked at
# <= 0.0058 and every collapsed run at >= 0.0074: the geometric midpoint 0.00656, rounded. (Fitting it with the
# other thresholds instead gave 0.004, which also caught runs that learned but trailed the best, and called the
# demo, 0.78 held-out, and 6 near-best debates pairs too-aggressive.)
STEP_SIZE_HIGH: float = 0.0066
# Agreement: a side needs VERDICT_AGREE of the last VERDICT_WINDOW probes (AGREE fitted from {2, 3}; the window
# chosen); when both sides have at least VERDICT_SPLIT probes the verdict is `uncertain` (chosen).
VERDICT_WINDOW: int = 5
VERDICT_AGREE: int = 2
VERDICT_SPLIT: int = 2
# The floor (used only before any step gap is measured): at the lr c comes from (1e-4), the grid's cells
# below 0.25 * c * sqrt(8) = 191 (alpha 8, 16, 64) stayed at 0.532-0.548 held-out accuracy against 0.737
# at alpha 1024; alpha 256 (0.34 of c * sqrt(8)) reached 0.711 (benchmarks/results/alpha_vs_lr.md). A deliberately
# low floor: the law's constant falls about as 1/lr, so at larger lrs smaller alphas are right.
ALPHA_FLOOR_FRACTION: float = 0.25  # alpha below this fraction of c * sqrt(r) is too small
# A suggestion never multiplies alpha by more than this at once: a gap of 30 says "much larger", not
# "exactly 30x". Re-check after changing.
MAX_SUGGESTED_FACTOR: float = 8.0

VERDICTS = ("alpha-too-small", "too-aggressive", "in-regime", "uncertain")


@dataclass(frozen=True)
class VerdictRules:
    """The thresholds and counts the verdict applies (defaults: the module's constants).

    The calibration replays runs under other values; a user may pass their own."""

    gap_too_small: float = GAP_TOO_SMALL
    gap_too_aggressive: float = GAP_TOO_AGGRESSIVE
    gap_z_min: float = GAP_Z_MIN
    gap_gain_min: float = GAP_GAIN_MIN
    drift_ratio_high: float = DRIFT_RATIO_HIGH
    step_size_high: float = STEP_SIZE_HIGH
    window: int = VERDICT_WINDOW
    agree: int = VERDICT_AGREE
    split: int = VERDICT_SPLIT

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("window", "agree", "split"):
                check_int(f.name, value)
            elif f.name in ("gap_z_min", "gap_gain_min"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    raise ValueError(f"{f.name} must be a finite number >= 0, got {value!r}")
            else:
                check_number(f.name, value)
        if self.agree > self.window:
            raise ValueError(f"agree ({self.agree}) must not exceed window ({self.window})")
        if not self.gap_too_aggressive <= 1 < self.gap_too_small:
            raise ValueError(f"gap_too_aggressive ({self.gap_too_aggressive}) must be at most 1 and gap_too_small "
                             f"({self.gap_too_small}) above 1: a step gap of 1 is a step that fits")


DEFAULT_RULES = VerdictRules()


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
        step_gap, drift_ratio, step_size: medians of the values counted, for display (NaN dropped,
            inf kept; None when none). The verdict counts votes, it does not use these.
        probes: how many step gaps were counted (the last ``window``, NaN included).
        agreeing: how many of them vote for the verdict's side (for ``uncertain``: the larger side);
            0 when the configuration alone decided.
        dropped: NaN (or None) values among the values counted.
        votes: the step-gap votes counted: ``{"larger": n, "overshoot": n, "in range": n, "NaN": n}``.
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
    votes: dict | None = None


def _floats(name: str, values: Sequence[float] | None, window: int, *, signed: bool = False) -> list[float]:
    """The last ``window`` values as floats (NaN for None / NaN); bad values (anywhere) refused with their index."""
    out: list[float] = []
    allowed = "a number (inf allowed; NaN is counted as unusable)" if signed else \
        "a number >= 0 (inf allowed; NaN is counted as unusable)"
    for i, v in enumerate(values if values is not None else ()):  # every value is checked; the last window kept
        if v is None:
            out.append(math.nan)
            continue
        if isinstance(v, (bool, str)):
            raise ValueError(f"{name}[{i}] must be {allowed}, got {v!r}")
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{name}[{i}] must be {allowed}, got {v!r}") from None
        if not signed and f < 0:
            raise ValueError(f"{name}[{i}] must be {allowed}, got {v!r}")
        out.append(f)
    return out[max(len(out) - window, 0):]


def _aligned(name: str, values, step_gaps, window: int) -> list[float]:
    """A per-probe series aligned with ``step_gaps`` (all NaN when not given)."""
    total = len(list(step_gaps or ()))
    if values is None:
        return [math.nan] * min(total, window)
    if len(list(values)) != total:
        raise ValueError(f"{name} has {len(list(values))} values but step_gaps has {total}; "
                         "they must align (None for a gap without one)")
    return _floats(name[:-1], values, window, signed=True)


def _nonnegative(name: str, value, allowed: str) -> float:
    """``value`` as a float >= 0 (inf and NaN pass); anything else (bools, text, negatives) is refused."""
    try:
        if isinstance(value, (bool, str)):
            raise TypeError
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        f = -1.0
    if f < 0:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return f


def _median(values: list[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else None


def _round2(x: float) -> float:
    """Two significant figures: a suggestion, not a fake-precise number."""
    if x <= 0:
        return x
    digits = 1 - int(math.floor(math.log10(x)))
    return round(x, digits)


def gap_vote(step_gap: float, gap_z: float | None = None, gap_gain: float | None = None,
             rules: VerdictRules = DEFAULT_RULES) -> str:
    """One probe's vote (docs/metrics.md §6): ``"larger"``, ``"overshoot"``, ``"in range"`` or ``"NaN"``.

    A step gap off the in-range band counts only when it is significant: its ``gap_gain`` is at least
    ``rules.gap_gain_min`` and its ``gap_z`` at least ``rules.gap_z_min`` (a value not measured, None or
    NaN, does not hold the vote back: e.g. ``gap_z`` of a probe set of one unit)."""
    if step_gap is None:
        return "NaN"
    step_gap = _nonnegative("step_gap", step_gap, "a number >= 0 (inf allowed, NaN: unusable)")
    if math.isnan(step_gap):
        return "NaN"
    significant = ((gap_z is None or math.isnan(gap_z) or gap_z >= rules.gap_z_min)
                   and (gap_gain is None or math.isnan(gap_gain) or gap_gain >= rules.gap_gain_min))
    if significant and step_gap >= rules.gap_too_small:
        return "larger"
    if significant and step_gap < rules.gap_too_aggressive:
        return "overshoot"
    return "in range"


def regime_verdict(
    alpha: float,
    rank: float,
    scale: float,
    step_gaps: Sequence[float] | None = None,
    drift_ratios: Sequence[float] | None = None,
    step_sizes: Sequence[float] | None = None,
    c: float = SQRT_LAW_C,
    *,
    gap_zs: Sequence[float | None] | None = None,
    gap_gains: Sequence[float | None] | None = None,
    step_size_peak: float | None = None,
    previous: str | None = None,
    rules: VerdictRules = DEFAULT_RULES,
) -> RegimeVerdict:
    """Judge the alpha regime from the configuration and the recent probes (docs/metrics.md §6, rules v2).

    Alpha is compared through the scale, so any rule works: the standard-equivalent alpha is
    ``scale * rank``, and suggestions are returned under the user's own rule.

    The last ``rules.window`` values of each series count. Each step gap votes (:func:`gap_vote`):
    larger, overshoot, in range, or NaN. Then, with ``k = rules.agree``:

    * ``uncertain`` when both "larger" and "overshoot" have at least ``rules.split`` votes;
    * ``too-aggressive`` when k probes overshoot, or the run's peak step size (``step_size_peak``, or the
      largest of ``step_sizes``) is ``>= step_size_high``, or k drift ratios are ``>= drift_ratio_high``
      (inf counts high);
    * ``alpha-too-small`` when k probes say larger (and fewer than k drift ratios are high);
    * before any usable step gap: ``alpha-too-small`` when alpha is below ``ALPHA_FLOOR_FRACTION`` of
      ``c * sqrt(r)`` (the law as a prior), else ``in-regime``;
    * otherwise ``in-regime``.

    A verdict never goes straight from ``alpha-too-small`` to ``too-aggressive`` or back: given the
    ``previous`` verdict on the other side, the answer is ``uncertain``.

    Args:
        alpha: the alpha the user set (median over layers), under their rule.
        rank: the rank (median over layers).
        scale: the live scale (median over layers).
        step_gaps: the probes' ``step_gap`` in order (docs/metrics.md §5); >= 0, inf allowed, NaN counted.
        drift_ratios, step_sizes: the probes' ``drift_ratio`` and ``step_size``; >= 0, inf allowed.
        c: the square-root law's constant.
        gap_zs, gap_gains: each step gap's ``gap_z`` and ``gap_gain`` (aligned with ``step_gaps``; None: not
            measured, that condition holds no vote back).
        step_size_peak: the largest step size of the run so far (None: the largest of ``step_sizes``).
        previous: the verdict before this one (one of ``VERDICTS``), or None.
        rules: the thresholds and counts.

    Raises:
        ValueError: alpha, rank, scale or c is not a positive finite number (bools refused); a
            value in a series is negative or not a number; ``gap_zs`` does not align with
            ``step_gaps``; ``previous`` is not a verdict; or the configuration's derived numbers leave
            the float range.
    """
    alpha, rank, scale, c = (check_number(n, v) for n, v in (("alpha", alpha), ("rank", rank), ("scale", scale), ("c", c)))
    if not isinstance(rules, VerdictRules):
        raise ValueError(f"rules must be a VerdictRules, got {type(rules).__name__}")
    if previous is not None and previous not in VERDICTS:
        raise ValueError(f"previous must be one of {VERDICTS} or None, got {previous!r}")
    n = rules.window
    step_gaps, drift_ratios, step_sizes = (None if v is None else list(v) for v in (step_gaps, drift_ratios, step_sizes))
    gap_zs, gap_gains = (None if v is None else list(v) for v in (gap_zs, gap_gains))
    all_gaps = _floats("step_gap", step_gaps, len(step_gaps or ()))
    gaps = all_gaps[max(len(all_gaps) - n, 0):]
    # the law is a prior only until a probe has measured the step: any usable gap of the whole series counts
    measured = any(not math.isnan(g) for g in all_gaps)
    drifts = _floats("drift_ratio", drift_ratios, n)
    sizes = _floats("step_size", step_sizes, n)
    zs, gains = (_aligned(name, values, step_gaps, n) for name, values in (("gap_zs", gap_zs), ("gap_gains", gap_gains)))
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

    # Every threshold is compared once, here; the decisions and the words use these counts.
    votes_list = [gap_vote(g, z, gain, rules) for g, z, gain in zip(gaps, zs, gains)]
    votes = {k: votes_list.count(k) for k in ("larger", "overshoot", "in range", "NaN")}
    peak = math.nan if step_size_peak is None else _nonnegative(  # NaN stays NaN: not measured
        "step_size_peak", step_size_peak, "a number >= 0 (inf allowed; None or NaN: not measured)")
    peak = max([v for v in sizes + [peak] if not math.isnan(v)], default=math.nan)
    size_high = not math.isnan(peak) and peak >= rules.step_size_high
    drift_high = sum(1 for v in drifts if v >= rules.drift_ratio_high)
    k = rules.agree
    split = votes["larger"] >= rules.split and votes["overshoot"] >= rules.split
    over = votes["overshoot"] >= k or size_high or drift_high >= k
    small = votes["larger"] >= k and drift_high < k
    gap, drift, step = _median(gaps), _median(drifts), _median(sizes)

    facts = [f"alpha={alpha:g} at r={rank:g} (scale {scale:.4g}); c*sqrt(r) -> alpha ~ {rec_user:.3g}"]
    if gaps:
        shown = ", ".join("NaN" if math.isnan(g) else f"{g:.3g}" for g in gaps)
        facts.append(f"step_gap over the last {len(gaps)} probes ({shown}): {votes['larger']} say larger (>= "
                     f"{rules.gap_too_small:g}), {votes['overshoot']} overshoot (< {rules.gap_too_aggressive:g}), "
                     f"{votes['in range']} in range or not significant (gap_gain < {rules.gap_gain_min:g} or "
                     f"gap_z < {rules.gap_z_min:g})"
                     + (f", {votes['NaN']} NaN" if votes["NaN"] else ""))
    if drifts:
        facts.append(f"drift_ratio median {_fmt(drift)}, {drift_high} of {len(drifts)} >= {rules.drift_ratio_high:g}")
    if not math.isnan(peak):
        facts.append(f"step_size median {_fmt(step)}, peak {peak:.3g} ({'>=' if size_high else '<'} "
                     f"{rules.step_size_high:g}, where the calibration's runs collapsed)")
    evidence = "; ".join(facts)

    suggested: float | None = None
    agreeing = 0
    opposite = {"alpha-too-small": "too-aggressive", "too-aggressive": "alpha-too-small"}
    if split:
        verdict = "uncertain"
        agreeing = max(votes["larger"], votes["overshoot"])
        suggestion = (f"the probes disagree ({votes['larger']} of {len(gaps)} say the step could be larger, "
                      f"{votes['overshoot']} that it overshoots): no change is supported; keep alpha={alpha:g} and "
                      "probe again")
    elif over:
        verdict = "too-aggressive"
        if votes["overshoot"] >= k:
            agreeing = votes["overshoot"]
            why, factor = f"{votes['overshoot']} of {len(gaps)} probes say the step overshoots", 0.5
        elif size_high:
            factor = min(max(0.5 * rules.step_size_high / peak, 0.1), 0.5)
            why = (f"the step size reached {peak:.2g} (>= {rules.step_size_high:g}, where the calibration's runs "
                   "collapsed)")
        else:
            agreeing = drift_high
            why, factor = f"drift_ratio >= {rules.drift_ratio_high:g} in {drift_high} of {len(drifts)} probes", 0.5
        suggestion = f"{why}: lower the learning rate (about {_round2(factor):g}x), not alpha; probe again"
    elif small:
        verdict = "alpha-too-small"
        agreeing = votes["larger"]
        agreed = sorted((g for g, v in zip(gaps, votes_list) if v == "larger"), reverse=True)[k - 1]
        suggested = _round2(alpha * min(agreed, MAX_SUGGESTED_FACTOR))
        capped = " (a capped first move; probe again)" if agreed > MAX_SUGGESTED_FACTOR else ""
        suggestion = (f"{votes['larger']} of {len(gaps)} probes say the step could be ~{agreed:.2g}x larger with "
                      f"drift_ratio {'unmeasured' if drift is None else f'{drift:.2g}'}; try alpha ~ {suggested:g}{capped}")
    elif not measured and equiv < ALPHA_FLOOR_FRACTION * rec_equiv:
        # The law alone, only until a probe has measured the step: c is calibrated at LoRA-α's lr
        # (1e-4), and the best alpha falls about as 1/lr (benchmarks/results/alpha_vs_lr.md).
        verdict = "alpha-too-small"
        suggested = _round2(rec_user)
        suggestion = (f"alpha is below {ALPHA_FLOOR_FRACTION:g} of c*sqrt(r) (no step_gap measured yet; the law is "
                      f"a prior); try alpha ~ {suggested:g}")
    else:
        verdict = "in-regime"
        agreeing = votes["in range"]
        if votes["NaN"] == len(gaps):
            nan = f" ({len(gaps)} probe(s) gave NaN)" if gaps else ""
            suggestion = (f"no step_gap measured yet{nan}: no evidence either way, so no change is supported; "
                          f"keep alpha={alpha:g} until probes measure the step")
        elif len(gaps) < k:
            suggestion = f"{len(gaps)} probe(s) so far, {k} must agree before a change is supported; keep alpha={alpha:g}"
        elif votes["larger"] or votes["overshoot"]:
            suggestion = (f"no side has {k} of the last {len(gaps)} probes ({votes['larger']} larger, "
                          f"{votes['overshoot']} overshoot): keep alpha={alpha:g}")
        else:
            suggestion = f"keep alpha={alpha:g}"
    if previous is not None and opposite.get(verdict) == previous:
        suggestion = (f"the evidence now points to {verdict} right after {previous}: "
                      f"not acted on until it holds; {suggestion}")
        verdict, suggested = "uncertain", None
    return RegimeVerdict(
        verdict=verdict, evidence=evidence, suggestion=suggestion, suggested_alpha=suggested,
        alpha=alpha, rank=rank, scale=scale, recommended_alpha=rec_user,
        step_gap=gap, drift_ratio=drift, step_size=step,
        probes=len(gaps), agreeing=agreeing,
        dropped=sum(1 for v in gaps + drifts + sizes if math.isnan(v)), votes=votes,
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"
