"""docs/metrics.md §6: the square-root law, its constant c, and the alpha-regime verdict (rules v3)."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from decimal import ROUND_HALF_UP, Decimal

from signaldrift.errors import check_int, check_number

# The constant c of LoRA-α's law alpha* = c * sqrt(r) (under scale = alpha / r), from
# benchmarks/results/rank_sweep.md: MiniLM-L6 + Rotten Tomatoes, LoRA on query/value at LoRA-α's lr 1e-4,
# 63 steps of batch 32, best alpha by held-out loss for r = 2..32, 2 seeds: c at p = 0.5 is 271
# (95% bootstrap interval [226, 324]); the free fit is c = 259 [189, 355], p = 0.52 [0.28, 0.76].
# It holds for that lr and budget: the best alpha falls about as 1/lr (alpha_vs_lr.md) and as 1/steps
# (alpha_finder.md), and a synthetic linear task at the same lr gives c = 22 (the exponent carries over
# between tasks, the constant does not). The verdict uses it only as a prior before any probe.
SQRT_LAW_C: float = 270.0

# The verdict's thresholds (docs/metrics.md §6, rules v3); each cites benchmarks/results/verdict_calibration.md.
K_TOO_SMALL: float = 1.5  # a significant k* at or above this votes "larger"
K_TOO_AGGRESSIVE: float = 0.5  # a significant k* below this votes "collapse"
SCALE_Z_MIN: float = 0.0  # k* counts when its gain over k = 1 (gain_z) is at least this; 0 = any mean gain
HELP_Z_MAX: float = -2.0  # help_z at or below this (the update made the probe set worse) votes "collapse"
STEP_SIZE_HIGH: float = 0.0088  # a step-size peak in the window at or above this is collapse evidence
DRIFT_RATIO_HIGH: float = 0.1  # a guard: no calibration cell came near it (alpha_vs_lr.md)
VERDICT_WINDOW: int = 3  # probes counted
VERDICT_AGREE: int = 3  # probes that must agree on a side
VERDICT_SPLIT: int = 2  # probes on both sides that make the verdict uncertain
VERDICT_SETTLE: int = 2  # neutral verdicts (in-regime, uncertain) needed between the two sides
ALPHA_FLOOR_FRACTION: float = 0.25  # before any probe: alpha below this of c*sqrt(r) is too small (alpha_vs_lr.md)
MAX_SUGGESTED_FACTOR: float = 8.0  # one suggestion moves alpha by at most this factor (a cap, not a fit)
# The step gap (§5) is shown on the dashboard against this band; it no longer votes (verdict_calibration.md).
GAP_TOO_SMALL: float = 2.0
GAP_TOO_AGGRESSIVE: float = 0.5

VERDICTS = ("alpha-too-small", "too-aggressive", "in-regime", "uncertain")
VOTES = ("larger", "collapse", "in range", "NaN")
_SIDES = ("alpha-too-small", "too-aggressive")


@dataclass(frozen=True)
class VerdictRules:
    """The thresholds and counts the verdict applies (defaults: the module's constants).

    The calibration replays runs under other values; a user may pass their own."""

    k_too_small: float = K_TOO_SMALL
    k_too_aggressive: float = K_TOO_AGGRESSIVE
    z_min: float = SCALE_Z_MIN
    help_z_max: float = HELP_Z_MAX
    step_size_high: float = STEP_SIZE_HIGH
    drift_ratio_high: float = DRIFT_RATIO_HIGH
    window: int = VERDICT_WINDOW
    agree: int = VERDICT_AGREE
    split: int = VERDICT_SPLIT
    settle: int = VERDICT_SETTLE

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("window", "agree", "split"):
                check_int(f.name, value)
            elif f.name == "settle":
                check_int(f.name, value, minimum=0)
            elif f.name in ("z_min", "help_z_max"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"{f.name} must be a finite number, got {value!r}")
            else:
                check_number(f.name, value)
        if self.agree > self.window:
            raise ValueError(f"agree ({self.agree}) must not exceed window ({self.window})")
        if not self.k_too_aggressive <= 1 < self.k_too_small:
            raise ValueError(f"k_too_aggressive ({self.k_too_aggressive}) must be at most 1 and k_too_small "
                             f"({self.k_too_small}) above 1: k* = 1 is a run where its update should be")


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
        suggestion: a concrete next step (it says so when it is too early to tell).
        suggested_alpha: an alpha to try under the user's own rule (None when alpha should stay).
        alpha, rank, scale: the configuration judged (medians over layers).
        recommended_alpha: ``c * sqrt(r)`` expressed under the user's rule.
        k_star: the median k* of the probes counted (None without one).
        drift_ratio, step_size: medians of the probes counted (None without one).
        step_size_peak: the largest step size in the window (None when not measured).
        probes: how many probes were counted (the window).
        agreeing: probes that voted for the verdict's side (0 when the step size, the drift guard or the
            prior decided; for ``uncertain`` the larger side).
        dropped: probes counted without a usable k*.
        votes: ``{"larger": n, "collapse": n, "in range": n, "NaN": n}``.
        held_back: the side the evidence pointed to when hysteresis kept the verdict ``uncertain``, else None.
    """

    verdict: str
    evidence: str
    suggestion: str
    suggested_alpha: float | None
    alpha: float
    rank: float
    scale: float
    recommended_alpha: float
    k_star: float | None = None
    drift_ratio: float | None = None
    step_size: float | None = None
    step_size_peak: float | None = None
    probes: int = 0
    agreeing: int = 0
    dropped: int = 0
    votes: dict | None = None
    held_back: str | None = None


@dataclass(frozen=True)
class Evidence:
    """The window's probes counted against the rules (the verdict's first stage)."""

    votes: tuple[str, ...]  # one per probe counted, oldest first
    counts: dict  # VOTES -> n
    k_stars: tuple[float, ...]
    zs: tuple[float, ...]
    steps: tuple[int | None, ...]
    drift_high: int
    drift_median: float | None
    size_median: float | None
    peak: float | None  # the window's step-size peak
    size_high: bool
    measured: bool  # any usable k* in the whole series (the law stops deciding then)


def _floats(name: str, values: Sequence | None, *, signed: bool = False) -> list[float]:
    """Every value as a float (NaN for None / NaN); bad values refused with their index."""
    out: list[float] = []
    allowed = "a number (inf allowed; None or NaN: not measured)" if signed else \
        "a number >= 0 (inf allowed; None or NaN: not measured)"
    if values is not None and (isinstance(values, (str, bytes)) or not hasattr(values, "__iter__")):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}")
    for i, v in enumerate(values if values is not None else ()):
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
    return out


def _aligned(name: str, values: Sequence | None, total: int, *, signed: bool = True) -> list[float]:
    """A per-probe series aligned with ``k_stars`` (all NaN when not given)."""
    if values is None:
        return [math.nan] * total
    out = _floats(name, values, signed=signed)
    if len(out) != total:
        raise ValueError(f"{name} has {len(out)} values but k_stars has {total}; they must align "
                         "(None for a probe without one)")
    return out


def _median(values: list[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else None


def round2(x: float) -> float:
    """Two significant figures, halves rounded up (125 -> 130): a suggestion, not a fake-precise number."""
    if not (x > 0 and math.isfinite(x)):
        return x
    exponent = math.floor(math.log10(x)) - 1
    return float(Decimal(repr(x)).scaleb(-exponent).quantize(Decimal(1), rounding=ROUND_HALF_UP).scaleb(exponent))


def scale_vote(k_star: float | None, gain_z: float | None = None, help_z: float | None = None,
               rules: VerdictRules = DEFAULT_RULES) -> str:
    """One probe's vote (docs/metrics.md §6): ``"larger"``, ``"collapse"``, ``"in range"`` or ``"NaN"``.

    ``"collapse"`` when the update made the probe set significantly worse (``help_z <= rules.help_z_max``) or
    a significant k* is below ``rules.k_too_aggressive``; ``"larger"`` when a significant k* is at least
    ``rules.k_too_small``. Significant: ``gain_z >= rules.z_min`` (None or NaN, e.g. one unit, holds nothing
    back)."""
    if k_star is None:
        return "NaN"
    k_star = _floats("k_star", [k_star])[0]
    if math.isnan(k_star):
        return "NaN"
    gain_z, help_z = _floats("z", [gain_z, help_z], signed=True)
    if not math.isnan(help_z) and help_z <= rules.help_z_max:
        return "collapse"
    significant = math.isnan(gain_z) or gain_z >= rules.z_min
    if significant and k_star >= rules.k_too_small:
        return "larger"
    if significant and k_star < rules.k_too_aggressive:
        return "collapse"
    return "in range"


def count_evidence(k_stars, gain_zs=None, help_zs=None, drift_ratios=None, step_sizes=None, steps=None,
                   rules: VerdictRules = DEFAULT_RULES) -> Evidence:
    """Stage 1: the last ``rules.window`` probes' votes, the drift guard and the window's step-size peak."""
    ks_all = _floats("k_stars", k_stars)
    total = len(ks_all)
    zs, helps = (_aligned(n, v, total) for n, v in (("gain_zs", gain_zs), ("help_zs", help_zs)))
    drifts, sizes = (_aligned(n, v, total, signed=False) for n, v in (("drift_ratios", drift_ratios), ("step_sizes", step_sizes)))
    step_list = list(steps) if steps is not None else [None] * total
    if len(step_list) != total:
        raise ValueError(f"steps has {len(step_list)} values but k_stars has {total}; they must align")
    lo = max(total - rules.window, 0)
    votes = tuple(scale_vote(k, z, h, rules) for k, z, h in zip(ks_all[lo:], zs[lo:], helps[lo:]))
    window_sizes = [v for v in sizes[lo:] if not math.isnan(v)]
    peak = max(window_sizes) if window_sizes else None
    return Evidence(
        votes=votes, counts={v: votes.count(v) for v in VOTES}, k_stars=tuple(ks_all[lo:]), zs=tuple(zs[lo:]),
        steps=tuple(step_list[lo:]), drift_high=sum(1 for v in drifts[lo:] if v >= rules.drift_ratio_high),
        drift_median=_median(drifts[lo:]), size_median=_median(sizes[lo:]), peak=peak,
        size_high=peak is not None and peak >= rules.step_size_high,
        measured=any(not math.isnan(k) for k in ks_all))


def decide(ev: Evidence, rules: VerdictRules, below_floor: bool, previous: Sequence[str] = ()) -> tuple[str, str, str | None]:
    """Stage 2: ``(verdict, why, held_back)``. ``why`` names the rule that decided; ``held_back`` is the side
    hysteresis kept back (a side is left only through ``rules.settle`` neutral verdicts)."""
    n, k = ev.counts, rules.agree
    if n["larger"] >= rules.split and n["collapse"] >= rules.split:
        verdict, why = "uncertain", "split"
    elif n["collapse"] >= k:
        verdict, why = "too-aggressive", "collapse"
    elif ev.size_high:
        verdict, why = "too-aggressive", "step size"
    elif ev.drift_high >= k:
        verdict, why = "too-aggressive", "drift"
    elif n["larger"] >= k:
        verdict, why = "alpha-too-small", "larger"
    elif not ev.measured and below_floor:
        verdict, why = "alpha-too-small", "prior"
    else:
        verdict, why = "in-regime", "no side"
    if verdict in _SIDES:
        neutral = 0
        for v in reversed(previous):
            if v in _SIDES:
                if v != verdict and neutral < rules.settle:
                    return "uncertain", why, verdict
                break
            neutral += 1
    return verdict, why, None


def _evidence_text(ev: Evidence, rules: VerdictRules, alpha: float, rank: float, scale: float, rec_user: float) -> str:
    facts = [f"alpha={alpha:g} at r={rank:g} (scale {scale:.4g}); c*sqrt(r) -> alpha ~ {rec_user:.3g}"]
    if ev.votes:
        shown = ", ".join("NaN" if math.isnan(x) else f"{x:.3g}" for x in ev.k_stars)
        n = ev.counts
        facts.append(f"k* over the last {len(ev.votes)} probes ({shown}): {n['larger']} say larger (>= "
                     f"{rules.k_too_small:g}), {n['collapse']} collapse (k* < {rules.k_too_aggressive:g}, or the update "
                     f"made the probe set worse), {n['in range']} in range or not significant (z < {rules.z_min:g})"
                     + (f", {n['NaN']} NaN" if n["NaN"] else ""))
    if ev.drift_median is not None:
        facts.append(f"drift_ratio median {ev.drift_median:.3g}, {ev.drift_high} >= {rules.drift_ratio_high:g}")
    if ev.peak is not None:
        facts.append(f"step_size median {_fmt(ev.size_median)}, window peak {ev.peak:.3g} "
                     f"({'>=' if ev.size_high else '<'} {rules.step_size_high:g}, where the calibration's runs collapsed)")
    return "; ".join(facts)


def _suggest(verdict: str, why: str, ev: Evidence, rules: VerdictRules, alpha: float, rec_user: float) -> tuple[str, float | None]:
    """Stage 3: the suggestion in words and the alpha to try (None: keep alpha)."""
    n, k = ev.counts, rules.agree
    if verdict == "alpha-too-small" and why == "larger":
        agreed = [(x, z, s) for x, z, s, v in zip(ev.k_stars, ev.zs, ev.steps, ev.votes) if v == "larger"]
        factor = statistics.median(x for x, _, _ in agreed)
        suggested = round2(alpha * min(factor, MAX_SUGGESTED_FACTOR))
        x, z, s = agreed[-1]
        at = f"step {s}: " if s is not None else ""
        zs = "n/a" if math.isnan(z) else f"{z:.3g}"
        capped = f" (capped at {MAX_SUGGESTED_FACTOR:g}x; probe again)" if factor > MAX_SUGGESTED_FACTOR else ""
        return (f"{n['larger']} of {len(ev.votes)} probes find the loss lowest with the update stretched ~{factor:.2g}x "
                f"(latest, {at}k* = {x:.3g}, z = {zs}); try alpha ~ {suggested:g}{capped}"), suggested
    if verdict == "alpha-too-small":
        suggested = round2(rec_user)
        return (f"alpha is below {ALPHA_FLOOR_FRACTION:g} of c*sqrt(r) and no probe has run yet (the law is a prior); "
                f"try alpha ~ {suggested:g}"), None if suggested == alpha else suggested
    if verdict == "too-aggressive":
        if why == "step size":
            factor = min(max(0.5 * rules.step_size_high / ev.peak, 0.1), 0.5)
            what = f"the step size reached {ev.peak:.2g} (>= {rules.step_size_high:g}, where the calibration's runs collapsed)"
        elif why == "collapse":
            factor = 0.5
            what = f"{n['collapse']} of {len(ev.votes)} probes find the update no better than none (collapse)"
        else:
            factor = 0.5
            what = f"drift_ratio >= {rules.drift_ratio_high:g} in {ev.drift_high} probes"
        return f"{what}: cut the step size about {round2(factor):g}x (the learning rate, or alpha); probe again", None
    if verdict == "uncertain" and why == "split":
        return (f"the probes disagree ({n['larger']} of {len(ev.votes)} say larger, {n['collapse']} collapse): no change "
                f"is supported; keep alpha={alpha:g} and probe again"), None
    if not ev.measured:
        return f"too early to tell: no scale probe has measured the run yet; keep alpha={alpha:g}", None
    if n["NaN"] == len(ev.votes):
        return f"the last {len(ev.votes)} probe(s) gave no k*: no evidence either way; keep alpha={alpha:g}", None
    if len(ev.votes) < k:
        return f"too early to tell: {len(ev.votes)} probe(s) so far, {k} must agree; keep alpha={alpha:g}", None
    if n["larger"] or n["collapse"]:
        return (f"no side has {k} of the last {len(ev.votes)} probes ({n['larger']} larger, {n['collapse']} collapse): "
                f"keep alpha={alpha:g}"), None
    return f"keep alpha={alpha:g}", None


def regime_verdict(
    alpha: float,
    rank: float,
    scale: float,
    k_stars: Sequence[float | None] | None = None,
    *,
    gain_zs: Sequence[float | None] | None = None,
    help_zs: Sequence[float | None] | None = None,
    drift_ratios: Sequence[float | None] | None = None,
    step_sizes: Sequence[float | None] | None = None,
    steps: Sequence[int] | None = None,
    previous: str | Sequence[str] | None = None,
    c: float = SQRT_LAW_C,
    rules: VerdictRules = DEFAULT_RULES,
) -> RegimeVerdict:
    """Judge the alpha regime from the configuration and the scale probes (docs/metrics.md §6, rules v3).

    Three stages: :func:`count_evidence` (each of the last ``rules.window`` probes votes, :func:`scale_vote`;
    the window's step-size peak), :func:`decide` (uncertain when both sides have ``rules.split`` votes;
    too-aggressive on ``rules.agree`` collapse votes, a window peak step size ``>= step_size_high`` or the
    drift guard; alpha-too-small on ``rules.agree`` larger votes; the square-root law as a prior before any
    probe; else in-regime; a side is left only through ``rules.settle`` neutral verdicts), and the wording.

    Alpha is compared through the scale, so any rule works: suggestions are under the user's own rule
    (the scale is linear in alpha under every rule, so ``k * alpha`` stretches the update by k).

    Args:
        alpha, rank, scale: the configuration (medians over layers); positive finite numbers.
        k_stars: each probe's k* (§7), oldest first; >= 0, None or NaN: not measured.
        gain_zs, help_zs: each probe's paired z values (aligned with ``k_stars``; None: not measured).
        drift_ratios: each probe's step drift ratio (§2); >= 0.
        step_sizes: each probe's largest step size since the previous probe (§2); >= 0.
        steps: each probe's optimizer step (for the wording).
        previous: the verdicts reached before this one, oldest first (or the last one alone).
        c: the square-root law's constant.
        rules: the thresholds and counts.

    Raises:
        ValueError: a bad configuration or c (bools refused), a negative or non-numeric value in a series,
            a series not aligned with ``k_stars``, an unknown previous verdict, or derived numbers that leave
            the float range.
    """
    alpha, rank, scale, c = (check_number(n, v) for n, v in (("alpha", alpha), ("rank", rank), ("scale", scale), ("c", c)))
    if not isinstance(rules, VerdictRules):
        raise ValueError(f"rules must be a VerdictRules, got {type(rules).__name__}")
    if previous is not None and not isinstance(previous, str) and not hasattr(previous, "__iter__"):
        raise ValueError(f"previous must be a verdict or a sequence of verdicts, got {previous!r}")
    history = [previous] if isinstance(previous, str) else list(previous or ())
    for v in history:
        if v not in VERDICTS:
            raise ValueError(f"previous verdicts must be among {VERDICTS}, got {v!r}")
    rec_equiv = c * math.sqrt(rank)  # recommended alpha under scale = alpha / r
    equiv = scale * rank  # the user's alpha, expressed under scale = alpha / r
    per_equiv = alpha / equiv if equiv > 0 else math.inf
    rec_user = rec_equiv * per_equiv
    for what, value in (("scale * rank", equiv), ("alpha / (scale * rank)", per_equiv), ("c * sqrt(r) in alpha's units", rec_user),
                        ("the largest suggested alpha", alpha * MAX_SUGGESTED_FACTOR)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"alpha={alpha!r}, rank={rank!r}, scale={scale!r} and c={c!r} give {what} = {value!r}, outside the "
                "positive finite floats; allowed: values whose products and quotients stay finite and non-zero "
                "(e.g. alpha, scale * rank and c * sqrt(r) between 1e-300 and 1e300)")
    ev = count_evidence(k_stars, gain_zs, help_zs, drift_ratios, step_sizes, steps, rules)
    verdict, why, held_back = decide(ev, rules, equiv < ALPHA_FLOOR_FRACTION * rec_equiv, history)
    suggestion, suggested = _suggest(held_back or verdict, why, ev, rules, alpha, rec_user)
    if held_back is not None:
        suggestion = (f"the evidence now points to {held_back}, but the last side held was the other one: not acted on "
                      f"until {rules.settle} probes in between are neutral ({suggestion})")
        suggested = None
    n = ev.counts
    agreeing = {"larger": n["larger"], "collapse": n["collapse"], "split": max(n["larger"], n["collapse"]),
                "no side": n["in range"]}.get(why, 0)
    return RegimeVerdict(
        verdict=verdict, evidence=_evidence_text(ev, rules, alpha, rank, scale, rec_user), suggestion=suggestion,
        suggested_alpha=suggested, alpha=alpha, rank=rank, scale=scale, recommended_alpha=rec_user,
        k_star=_median(list(ev.k_stars)), drift_ratio=ev.drift_median, step_size=ev.size_median,
        step_size_peak=ev.peak, probes=len(ev.votes), agreeing=agreeing, dropped=n["NaN"], votes=dict(n),
        held_back=held_back,
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"
