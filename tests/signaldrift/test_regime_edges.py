"""The verdict's rules at their edges (docs/metrics.md §6, rules v2): every threshold pinned from both sides
through ``regime_verdict``, with the values read from ``VerdictRules()`` (they will be re-calibrated), and bad
input refused with one ValueError that names it."""
import math
import re

import pytest

from signaldrift import (
    ALPHA_FLOOR_FRACTION,
    MAX_SUGGESTED_FACTOR,
    VerdictRules,
    recommended_alpha,
    regime_verdict,
)

RULES = VerdictRules()
K, N, SPLIT = RULES.agree, RULES.window, RULES.split
R = 16
C = 270.0
ALPHA = C * math.sqrt(R)  # 1080: on the law, so the configuration alone never says too small
S = ALPHA / R
BIG = 2 * RULES.gap_too_small
MID = (RULES.gap_too_aggressive + RULES.gap_too_small) / 2


def _two_sig(x):
    """Suggestions are rounded to two significant figures."""
    return float(f"{x:.2g}")


def _below(x):
    return math.nextafter(x, -math.inf)


def _v(gaps=None, drifts=None, sizes=None, **kw):
    return regime_verdict(kw.pop("alpha", ALPHA), kw.pop("rank", R), kw.pop("scale", S), gaps, drifts, sizes, c=C, **kw)


# ----------------------------------------------------------------- thresholds, both sides


def test_gap_too_small_threshold_both_sides():
    assert _v([RULES.gap_too_small] * K).verdict == "alpha-too-small"
    assert _v([_below(RULES.gap_too_small)] * K).verdict == "in-regime"


def test_gap_too_aggressive_threshold_both_sides():
    assert _v([_below(RULES.gap_too_aggressive)] * K).verdict == "too-aggressive"
    assert _v([RULES.gap_too_aggressive] * K).verdict == "in-regime"


@pytest.mark.parametrize("gap, side", [(BIG, "alpha-too-small"), (0.0, "too-aggressive")])
def test_gap_z_min_both_sides(gap, side):
    assert _v([gap] * K, gap_zs=[RULES.gap_z_min] * K).verdict == side
    v = _v([gap] * K, gap_zs=[_below(RULES.gap_z_min)] * K)
    assert v.verdict == "in-regime" and v.votes["in range"] == K


@pytest.mark.parametrize("gap, side", [(BIG, "alpha-too-small"), (0.0, "too-aggressive")])
def test_gap_gain_min_both_sides(gap, side):
    assert _v([gap] * K, gap_gains=[RULES.gap_gain_min] * K).verdict == side
    v = _v([gap] * K, gap_gains=[_below(RULES.gap_gain_min)] * K)
    assert v.verdict == "in-regime" and v.votes["in range"] == K


def test_missing_significance_does_not_hold_the_votes_back():
    assert _v([BIG] * K, gap_zs=[None] * K, gap_gains=[math.nan] * K).verdict == "alpha-too-small"
    assert _v([0.0] * K, gap_zs=[math.nan] * K, gap_gains=[None] * K).verdict == "too-aggressive"


def test_drift_ratio_threshold_both_sides():
    d = RULES.drift_ratio_high
    assert _v([MID] * K, [d] * K).verdict == "too-aggressive"
    assert _v([MID] * K, [_below(d)] * K).verdict == "in-regime"
    # High drift outranks a large gap (alpha is not the knob); low drift lets the gap speak.
    assert _v([BIG] * K, [d] * K).verdict == "too-aggressive"
    assert _v([BIG] * K, [_below(d)] * K).verdict == "alpha-too-small"


def test_step_size_threshold_both_sides():
    h = RULES.step_size_high
    assert _v([MID] * K, sizes=[h]).verdict == "too-aggressive"
    assert _v([MID] * K, sizes=[_below(h)] * N).verdict == "in-regime"
    assert _v([BIG] * K, sizes=[h]).verdict == "too-aggressive"
    assert _v([BIG] * K, sizes=[_below(h)] * N).verdict == "alpha-too-small"
    assert _v([MID] * K, step_size_peak=h).verdict == "too-aggressive"
    assert _v([MID] * K, step_size_peak=_below(h)).verdict == "in-regime"
    assert f"peak {h:.3g} (>= {h:g}, " in _v([MID], sizes=[h]).evidence
    assert f"peak {_below(h):.3g} (< {h:g}, " in _v([MID], sizes=[_below(h)]).evidence


def test_agree_count_both_sides():
    for gap, side in ((BIG, "alpha-too-small"), (0.0, "too-aggressive")):
        assert _v([gap] * K + [MID] * (N - K)).verdict == side
        assert _v([gap] * (K - 1) + [MID] * (N - K + 1)).verdict == "in-regime"
    assert _v([MID] * N, [math.inf] * K).verdict == "too-aggressive"
    assert _v([MID] * N, [math.inf] * (K - 1)).verdict == "in-regime"


def test_split_count_both_sides():
    assert _v([BIG] * K + [0.0] * SPLIT).verdict == "uncertain"
    assert _v([BIG] * K + [0.0] * (SPLIT - 1)).verdict == "alpha-too-small"
    assert _v([0.0] * K + [BIG] * SPLIT).verdict == "uncertain"
    assert _v([0.0] * K + [BIG] * (SPLIT - 1)).verdict == "too-aggressive"


def test_alpha_floor_both_sides():
    floor_equiv = ALPHA_FLOOR_FRACTION * C * math.sqrt(R)
    at = regime_verdict(floor_equiv, R, floor_equiv / R, c=C)  # scale * 16 is exact
    assert at.verdict == "in-regime" and at.suggested_alpha is None
    below = regime_verdict(floor_equiv, R, _below(floor_equiv / R), c=C)
    assert below.verdict == "alpha-too-small"
    assert below.suggested_alpha == _two_sig(C * math.sqrt(R) * floor_equiv / (_below(floor_equiv / R) * R))
    # the same configuration with a step gap given: the law does not decide
    assert regime_verdict(floor_equiv, R, _below(floor_equiv / R), [MID], c=C).verdict == "in-regime"


def test_suggestion_cap_both_sides():
    at = _v([MAX_SUGGESTED_FACTOR] * K)
    assert at.suggested_alpha == _two_sig(ALPHA * MAX_SUGGESTED_FACTOR) and "capped" not in at.suggestion
    above = _v([math.nextafter(MAX_SUGGESTED_FACTOR, math.inf)] * K)
    assert above.suggested_alpha == _two_sig(ALPHA * MAX_SUGGESTED_FACTOR) and "capped" in above.suggestion


def test_suggestion_from_the_kth_largest_larger_gap():
    # the larger gaps, largest first; the k-th of them is what k probes agree on (not their median or mean)
    larger = [RULES.gap_too_small * f for f in (1.9, 1.7, 1.5, 1.3, 1.1)][:N]
    v = _v(list(reversed(larger)))
    g_k = larger[K - 1]
    assert v.verdict == "alpha-too-small" and v.agreeing == len(larger)
    assert v.suggested_alpha == _two_sig(ALPHA * min(g_k, MAX_SUGGESTED_FACTOR))


# ----------------------------------------------------------------- how evidence counts


def test_infinite_drift_ratios_count_as_high():
    v = _v([BIG] * K, [math.inf] * K)
    assert v.verdict == "too-aggressive" and v.suggested_alpha is None
    assert f"{K} of {K} >= {RULES.drift_ratio_high:g}" in v.evidence
    assert _v([MID] * K, [0.0] + [math.inf] * (K - 1)).verdict == "in-regime"


def test_nan_counts_as_a_probe_but_never_as_a_vote():
    v = _v([BIG] * (K - 1) + [math.nan] * (N - K + 1))
    assert v.verdict == "in-regime" and v.probes == N and v.dropped == N - K + 1
    assert v.votes == {"larger": K - 1, "overshoot": 0, "in range": 0, "NaN": N - K + 1}
    v = _v([BIG] * K + [math.nan] * (N - K))
    assert (v.verdict, v.agreeing, v.dropped) == ("alpha-too-small", K, N - K)


def test_nan_drift_and_size_never_count_high():
    assert _v([MID] * K, [math.nan] * N, [math.nan] * N).verdict == "in-regime"
    v = _v([BIG] * K, [math.nan] * N, [None] * N)
    assert v.verdict == "alpha-too-small" and v.dropped == 2 * N and v.drift_ratio is None and v.step_size is None


def test_two_probes_are_fewer_than_k():
    v = _v([0.0, BIG])
    assert v.verdict == "in-regime" and v.suggested_alpha is None and v.votes["larger"] == v.votes["overshoot"] == 1


def test_the_median_does_not_decide():
    # the median of the usable gaps says "larger", but only k-1 probes do: in-regime (v1's median rule said too small)
    v = _v([BIG] * (K - 1) + [math.nan] * (N - K + 1))
    assert v.step_gap == BIG and v.verdict == "in-regime"


# ----------------------------------------------------------------- bad input: one ValueError each


@pytest.mark.parametrize("c", [math.nan, -1.0, 0.0, math.inf, True, "270", None])
def test_c_is_validated(c):
    with pytest.raises(ValueError, match=r"c must be a positive finite number.*got "):
        regime_verdict(ALPHA, R, S, c=c)
    with pytest.raises(ValueError, match=r"c must be a positive finite number"):
        recommended_alpha(R, c=c)


def re_escape(x):
    return re.escape(repr(x))[:40]


@pytest.mark.parametrize("name", ["alpha", "rank", "scale"])
@pytest.mark.parametrize("bad", [True, False, 0, -1.0, math.nan, math.inf, "8", pytest.param(10**400, id="10**400")])
def test_configuration_is_validated(name, bad):
    kw = dict(alpha=ALPHA, rank=R, scale=S)
    kw[name] = bad
    with pytest.raises(ValueError, match=rf"{name} must be a positive finite number.*got {re_escape(bad)}"):
        regime_verdict(kw["alpha"], kw["rank"], kw["scale"])


def test_bools_are_not_ranks():
    with pytest.raises(ValueError, match="rank must be a positive int, got True"):
        recommended_alpha(True)
    with pytest.raises(ValueError, match=r"rank must be a positive finite number, got True"):
        regime_verdict(8.0, True, 8.0)


def test_huge_alpha_and_tiny_scale_are_value_errors_not_overflow_or_zero_division():
    with pytest.raises(ValueError, match=r"alpha=1e\+308.*the largest suggested alpha = inf.*allowed"):
        regime_verdict(1e308, R, 1e308 / R, step_gaps=[BIG] * K)
    with pytest.raises(ValueError, match=r"scale=5e-324.*scale \* rank = 0\.0.*allowed"):
        regime_verdict(1.0, 0.1, 5e-324)
    with pytest.raises(ValueError, match=r"alpha / \(scale \* rank\) = inf"):
        regime_verdict(1e300, 1.0, 1e-10)
    with pytest.raises(ValueError, match=r"c \* sqrt\(rank\) must be a finite float"):
        recommended_alpha(4, c=1e308)
    with pytest.raises(ValueError, match=r"c \* sqrt\(rank\) must be a finite float"):
        recommended_alpha(10**400)
    assert regime_verdict(1e300, R, 1e300 / R, c=C).verdict == "in-regime"  # large but representable: answered


NONNEG = r"must be a number >= 0 \(inf allowed; NaN is counted as unusable\), got "


@pytest.mark.parametrize("series, name", [("step_gaps", "step_gap"), ("drift_ratios", "drift_ratio"),
                                          ("step_sizes", "step_size")])
@pytest.mark.parametrize("bad", [-1.0, -1e-300, -math.inf, "x", "1.0", True, False, object(), [1.0], 1j])
def test_series_values_are_validated(series, name, bad):
    with pytest.raises(ValueError, match=rf"^{name}\[1\] {NONNEG}"):
        regime_verdict(ALPHA, R, S, **{series: [1.0, bad]})


@pytest.mark.parametrize("series, name", [("step_gaps", "step_gap"), ("drift_ratios", "drift_ratio"),
                                          ("step_sizes", "step_size")])
def test_series_error_index_is_the_position_in_the_whole_series(series, name):
    values = [1.0] * (N + 2) + [-1.0]
    with pytest.raises(ValueError, match=rf"^{name}\[{N + 2}\] {NONNEG}-1\.0$"):
        regime_verdict(ALPHA, R, S, **{series: values})


@pytest.mark.parametrize("series, name", [("gap_zs", "gap_z"), ("gap_gains", "gap_gain")])
@pytest.mark.parametrize("bad", ["x", True, object(), [1.0]])
def test_significance_values_are_validated(series, name, bad):
    with pytest.raises(ValueError, match=rf"^{name}\[1\] must be a number \(inf allowed"):
        regime_verdict(ALPHA, R, S, [BIG, BIG], **{series: [1.0, bad]})


def test_significance_values_may_be_negative_or_infinite():
    v = regime_verdict(ALPHA, R, S, [BIG] * 3, gap_zs=[-1.0, -math.inf, math.inf],
                       gap_gains=[math.inf, -5.0, math.inf])
    assert v.votes == {"larger": 1, "overshoot": 0, "in range": 2, "NaN": 0}


@pytest.mark.parametrize("series", ["gap_zs", "gap_gains"])
@pytest.mark.parametrize("length", [0, 2, 4])
def test_significance_series_must_align_with_the_gaps(series, length):
    with pytest.raises(ValueError, match=rf"^{series} has {length} values but step_gaps has 3; they must align"):
        regime_verdict(ALPHA, R, S, [BIG] * 3, **{series: [1.0] * length})


@pytest.mark.parametrize("series", ["gap_zs", "gap_gains"])
def test_significance_series_without_gaps(series):
    with pytest.raises(ValueError, match=rf"^{series} has 1 values but step_gaps has 0"):
        regime_verdict(ALPHA, R, S, None, **{series: [1.0]})
    assert regime_verdict(ALPHA, R, S, None, **{series: []}).verdict == "in-regime"


def test_previous_and_rules_are_validated():
    with pytest.raises(ValueError, match=r"^previous must be one of \('alpha-too-small', .*got 'too small'"):
        _v([MID], previous="too small")
    with pytest.raises(ValueError, match=r"^rules must be a VerdictRules, got dict"):
        _v([MID], rules={"window": 5})


@pytest.mark.parametrize("bad", [-1.0, -math.inf, "x", True, object()])
def test_step_size_peak_is_validated(bad):
    with pytest.raises(ValueError, match=r"^step_size_peak\S* must be a number >= 0"):
        _v([MID], step_size_peak=bad)


def test_step_size_peak_none_or_nan_is_not_measured():
    h = RULES.step_size_high
    for peak in (None, math.nan):
        v = _v([MID] * K, sizes=[h / 2], step_size_peak=peak)
        assert v.verdict == "in-regime" and f"peak {h / 2:.3g} (< {h:g}," in v.evidence
    assert "step_size" not in _v([MID] * K, step_size_peak=math.nan).evidence


def test_missing_values_are_counted_like_nan():
    v = regime_verdict(8.0, 8, 1.0, step_gaps=[None, None, MID, MID], drift_ratios=[None, math.nan, 0.01])
    assert v.dropped == 4 and v.votes["NaN"] == 2
    assert ", 2 NaN" in v.evidence
