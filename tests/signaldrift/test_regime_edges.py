"""The verdict's rules at their edges: thresholds pinned from both sides, how evidence is counted
(signal-drift.md section 6, v2), and bad input refused with one ValueError."""
import math

import pytest

from signaldrift import (
    ALPHA_FLOOR_FRACTION,
    DRIFT_RATIO_HIGH,
    GAP_TOO_AGGRESSIVE,
    GAP_TOO_SMALL,
    MAX_SUGGESTED_FACTOR,
    STEP_SIZE_HIGH,
    recommended_alpha,
    regime_verdict,
)

R = 16
C = 270.0
ALPHA = C * math.sqrt(R)  # 1080: on the law, so the configuration alone never says too small
S = ALPHA / R


def _two_sig(x):
    """Suggestions are rounded to two significant figures."""
    return float(f"{x:.2g}")


def _below(x):
    return math.nextafter(x, -math.inf)


def _v(gaps=None, drifts=None, sizes=None, **kw):
    return regime_verdict(kw.pop("alpha", ALPHA), kw.pop("rank", R), kw.pop("scale", S), gaps, drifts, sizes, c=C, **kw)


# ----------------------------------------------------------------- thresholds, both sides


def test_gap_too_small_threshold_both_sides():
    assert _v([GAP_TOO_SMALL] * 3).verdict == "alpha-too-small"
    assert _v([_below(GAP_TOO_SMALL)] * 3).verdict == "in-regime"


def test_gap_too_aggressive_threshold_both_sides():
    assert _v([_below(GAP_TOO_AGGRESSIVE)] * 3).verdict == "too-aggressive"
    assert _v([GAP_TOO_AGGRESSIVE] * 3).verdict == "in-regime"


def test_drift_ratio_threshold_both_sides():
    assert _v([1.5] * 3, [DRIFT_RATIO_HIGH] * 3).verdict == "too-aggressive"
    assert _v([1.5] * 3, [_below(DRIFT_RATIO_HIGH)] * 3).verdict == "in-regime"
    # High drift outranks a large gap (alpha is not the knob); low drift lets the gap speak.
    assert _v([6.0] * 3, [DRIFT_RATIO_HIGH] * 3).verdict == "too-aggressive"
    assert _v([6.0] * 3, [_below(DRIFT_RATIO_HIGH)] * 3).verdict == "alpha-too-small"


def test_alpha_floor_both_sides():
    floor_equiv = ALPHA_FLOOR_FRACTION * C * math.sqrt(R)  # 270: exactly a quarter of c*sqrt(r)
    at = regime_verdict(floor_equiv, R, floor_equiv / R, c=C)
    assert at.verdict == "in-regime" and at.suggested_alpha is None
    below = regime_verdict(floor_equiv, R, _below(floor_equiv / R), c=C)
    assert below.verdict == "alpha-too-small" and below.suggested_alpha == _two_sig(ALPHA) == 1100.0


def test_suggestion_cap_both_sides():
    at = _v([MAX_SUGGESTED_FACTOR] * 3)
    assert at.suggested_alpha == _two_sig(ALPHA * MAX_SUGGESTED_FACTOR) and "capped" not in at.suggestion
    above = _v([math.nextafter(MAX_SUGGESTED_FACTOR, math.inf)] * 3)
    assert above.suggested_alpha == _two_sig(ALPHA * MAX_SUGGESTED_FACTOR) and "capped" in above.suggestion
    assert _v([5.0] * 3).suggested_alpha == _two_sig(ALPHA * 5.0) == 5400.0


def test_step_size_note_both_sides():
    assert f"1 of 1 >= {STEP_SIZE_HIGH:g}" in _v([1.5], sizes=[STEP_SIZE_HIGH]).evidence
    assert f"0 of 1 >= {STEP_SIZE_HIGH:g}" in _v([1.5], sizes=[_below(STEP_SIZE_HIGH)]).evidence
    assert _v([1.5], sizes=[1.0]).verdict == "in-regime"  # evidence only: it does not change the verdict


def test_overshoot_suggestion_uses_the_agreed_gap():
    v = _v([0.2, 0.3, 0.25])
    assert v.verdict == "too-aggressive" and "about 0.25x" in v.suggestion and v.suggested_alpha is None
    assert "about 0.1x" in _v([0.0, 0.01, 0.0]).suggestion  # floored at 0.1x
    assert "about 0.5x" in _v([1.5] * 3, [0.5] * 3).suggestion  # drift alone: halve


# ----------------------------------------------------------------- how evidence counts


def test_infinite_drift_ratios_count_as_high():
    v = _v([6.0, 6.0, 6.0], [math.inf, math.inf])
    assert v.verdict == "too-aggressive" and v.suggested_alpha is None  # was: dropped, then "alpha-too-small"
    assert "2 of 2 >= 0.1" in v.evidence
    assert _v([1.5] * 3, [0.01, math.inf, math.inf]).verdict == "too-aggressive"
    assert _v([1.5] * 3, [0.01, 0.01, math.inf]).verdict == "in-regime"


def test_all_nan_or_empty_evidence_is_not_a_confident_in_regime():
    for gaps in ([], [math.nan, math.nan], None):
        v = _v(gaps, [math.nan] if gaps else None)
        assert v.verdict == "in-regime" and v.suggested_alpha is None
        assert v.suggestion != f"keep alpha={ALPHA:g}"
        assert "no step_gap measured" in v.suggestion and "no change is supported" in v.suggestion
    v = _v([math.nan, math.nan], [math.nan])
    assert v.probes == 2 and v.agreeing == 0 and v.dropped == 3
    assert "2 NaN dropped" in v.evidence and "none usable" in v.evidence


def test_dropped_nans_count_against_agreement():
    two_of_four = _v([5.0, 5.0, math.nan, math.nan])
    assert two_of_four.verdict == "in-regime" and two_of_four.probes == 4  # was: median 5 -> too small
    assert "no change is supported" in two_of_four.suggestion
    two_of_three = _v([5.0, 5.0, math.nan])
    assert two_of_three.verdict == "alpha-too-small" and two_of_three.agreeing == 2 and two_of_three.dropped == 1


def test_two_probes_need_to_agree_not_average():
    split = _v([0.1, 64.0])
    assert split.verdict == "in-regime" and split.suggested_alpha is None  # was: mean 32 -> "try 8x alpha"
    assert "disagree" in split.suggestion and "1 of 2 >= 4" in split.evidence and "1 of 2 < 0.5" in split.evidence
    both = _v([5.0, 6.0])
    assert both.verdict == "alpha-too-small"
    assert both.suggested_alpha == _two_sig(ALPHA * 5.0) == 5400.0  # the gap both agree on, not their mean (5900)
    assert _v([0.2, 0.3]).verdict == "too-aggressive"


def test_median_not_mean():
    assert _v([0.1, 0.2, 64.0]).verdict == "too-aggressive"  # median 0.2; the mean (21) would say too small
    assert _v([1.0, 1.0, 64.0]).verdict == "in-regime"  # median 1; the mean (22) would say too small
    assert _v([1.0, 1.0, 64.0]).step_gap == 1.0
    assert _v([5.0, 5.0, 0.0]).verdict == "alpha-too-small"  # median 5; the mean (3.3) would say in-regime


def test_drift_not_low_in_most_probes_blocks_too_small():
    v = _v([6.0, 6.0, 6.0], [0.01, math.nan])
    assert v.verdict == "in-regime" and "conflicts" in v.suggestion
    assert _v([6.0, 6.0, 6.0], [0.01, 0.01, math.nan]).verdict == "alpha-too-small"
    assert _v([6.0, 6.0, 6.0]).verdict == "alpha-too-small"  # drift unmeasured: the gap alone


def test_agreement_counts_in_the_fields():
    v = _v([6.0, 7.0, 1.0, 9.0, 0.1])
    assert (v.verdict, v.probes, v.agreeing, v.dropped) == ("alpha-too-small", 5, 3, 0)
    assert v.suggested_alpha == _two_sig(ALPHA * 6.0) == 6500.0  # the third largest: what 3 of 5 agree on
    v = _v([1.0, 1.5, 6.0])
    assert (v.verdict, v.agreeing, v.suggestion) == ("in-regime", 2, f"keep alpha={ALPHA:g}")


# ----------------------------------------------------------------- bad input: one ValueError each


@pytest.mark.parametrize("c", [math.nan, -1.0, 0.0, math.inf, True, "270", None])
def test_c_is_validated(c):
    with pytest.raises(ValueError, match=r"c must be a positive finite number.*got "):
        regime_verdict(ALPHA, R, S, c=c)
    with pytest.raises(ValueError, match=r"c must be a positive finite number"):
        recommended_alpha(R, c=c)


@pytest.mark.parametrize("name", ["alpha", "rank", "scale"])
@pytest.mark.parametrize("bad", [True, False, 0, -1.0, math.nan, math.inf, "8", pytest.param(10**400, id="10**400")])
def test_configuration_is_validated(name, bad):
    kw = dict(alpha=ALPHA, rank=R, scale=S)
    kw[name] = bad
    with pytest.raises(ValueError, match=rf"{name} must be a positive finite number.*got {re_escape(bad)}"):
        regime_verdict(kw["alpha"], kw["rank"], kw["scale"])


def re_escape(x):
    import re

    return re.escape(repr(x))[:40]


def test_bools_are_not_ranks():
    with pytest.raises(ValueError, match="rank must be a positive int, got True"):
        recommended_alpha(True)
    with pytest.raises(ValueError, match=r"rank must be a positive finite number, got True"):
        regime_verdict(8.0, True, 8.0)


def test_huge_alpha_and_tiny_scale_are_value_errors_not_overflow_or_zero_division():
    with pytest.raises(ValueError, match=r"alpha=1e\+308.*the largest suggested alpha = inf.*allowed"):
        regime_verdict(1e308, R, 1e308 / R, step_gaps=[6.0, 6.0, 6.0])
    with pytest.raises(ValueError, match=r"scale=5e-324.*scale \* rank = 0\.0.*allowed"):
        regime_verdict(1.0, 0.1, 5e-324)
    with pytest.raises(ValueError, match=r"alpha / \(scale \* rank\) = inf"):
        regime_verdict(1e300, 1.0, 1e-10)
    with pytest.raises(ValueError, match=r"c \* sqrt\(rank\) must be a finite float"):
        recommended_alpha(4, c=1e308)
    with pytest.raises(ValueError, match=r"c \* sqrt\(rank\) must be a finite float"):
        recommended_alpha(10**400)
    assert regime_verdict(1e300, R, 1e300 / R, c=C).verdict == "in-regime"  # large but representable: answered


@pytest.mark.parametrize("series", ["step_gaps", "drift_ratios", "step_sizes"])
@pytest.mark.parametrize("bad", [-1.0, -math.inf, "x", True, object()])
def test_series_values_are_validated(series, bad):
    with pytest.raises(ValueError, match=r"\[1\] must be a number >= 0 \(inf allowed; NaN is dropped and counted\)"):
        regime_verdict(ALPHA, R, S, **{series: [1.0, bad]})


def test_missing_values_are_dropped_and_counted_like_nan():
    v = regime_verdict(8.0, 8, 1.0, step_gaps=[None, None, 1.5, 1.6], drift_ratios=[None, math.nan, 0.01])
    assert v.dropped == 4
    assert "2 NaN dropped" in v.evidence
