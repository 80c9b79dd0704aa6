"""The verdict's rules at their edges (docs/metrics.md §6, rules v3): every threshold pinned from both sides
through ``regime_verdict``, with the values read from ``VerdictRules()`` (they will be re-calibrated), and bad
input refused with one ValueError that names it."""
import math
import re
from fractions import Fraction

import pytest

from signaldrift import (
    ALPHA_FLOOR_FRACTION,
    MAX_SUGGESTED_FACTOR,
    VerdictRules,
    recommended_alpha,
)
from signaldrift import regime_verdict as shipped_verdict

# The rules' logic is tested under the shipped thresholds with a 5-probe window and 2 to agree, a window that
# can hold a split (the shipped 3 of 3 cannot: 2 + 2 > 3); test_regime_v3.py::test_shipped_counts pins the shipped counts.
RULES = VerdictRules(window=5, agree=2)


def regime_verdict(*args, rules=RULES, **kw):
    return shipped_verdict(*args, rules=rules, **kw)

K, N, SPLIT = RULES.agree, RULES.window, RULES.split
R = 16
C = 270.0
ALPHA = C * math.sqrt(R)  # 1080: on the law, so the configuration alone never says too small
S = ALPHA / R
BIG = 2 * RULES.k_too_small  # a significant k* that votes larger
MID = 1.0  # in range
LOW = RULES.k_too_aggressive / 4  # a significant k* that votes collapse
Z = RULES.z_min
HELPED = abs(RULES.help_z_max) + 3.0


def _round2(x):
    """Two significant figures, halves up, of the number as written."""
    q = Fraction(repr(x))
    e = math.floor(math.log10(x)) - 1
    step = Fraction(10) ** e
    while q / step >= 100:
        step *= 10
    while q / step < 10:
        step /= 10
    return float(math.floor(q / step + Fraction(1, 2)) * step)


def _below(x):
    return math.nextafter(x, -math.inf)


def _v(ks=None, drifts=None, sizes=None, zs=None, helps=None, **kw):
    if ks is not None:
        zs = zs if zs is not None else [Z] * len(ks)
        helps = helps if helps is not None else [HELPED] * len(ks)
    return regime_verdict(kw.pop("alpha", ALPHA), kw.pop("rank", R), kw.pop("scale", S), ks, gain_zs=zs,
                          help_zs=helps, drift_ratios=drifts, step_sizes=sizes, c=C, **kw)


# ----------------------------------------------------------------- thresholds, both sides


def test_k_too_small_threshold_both_sides():
    assert _v([RULES.k_too_small] * K).verdict == "alpha-too-small"
    assert _v([_below(RULES.k_too_small)] * K).verdict == "in-regime"


def test_k_too_aggressive_threshold_both_sides():
    assert _v([_below(RULES.k_too_aggressive)] * K).verdict == "too-aggressive"
    assert _v([RULES.k_too_aggressive] * K).verdict == "in-regime"


@pytest.mark.parametrize("k_star, side", [(BIG, "alpha-too-small"), (LOW, "too-aggressive")])
def test_z_min_both_sides(k_star, side):
    assert _v([k_star] * K, zs=[RULES.z_min] * K).verdict == side
    v = _v([k_star] * K, zs=[_below(RULES.z_min)] * K)
    assert v.verdict == "in-regime" and v.votes["in range"] == K


def test_help_z_max_both_sides():
    h = RULES.help_z_max
    v = _v([MID] * K, helps=[h] * K)
    assert v.verdict == "too-aggressive" and v.votes["collapse"] == K
    v = _v([MID] * K, helps=[math.nextafter(h, math.inf)] * K)
    assert v.verdict == "in-regime" and v.votes["in range"] == K


def test_missing_significance_does_not_hold_the_votes_back():
    assert _v([BIG] * K, zs=[None] * K, helps=[math.nan] * K).verdict == "alpha-too-small"
    assert _v([LOW] * K, zs=[math.nan] * K, helps=[None] * K).verdict == "too-aggressive"


def test_drift_ratio_threshold_both_sides():
    d = RULES.drift_ratio_high
    assert _v([MID] * K, [d] * K).verdict == "too-aggressive"
    assert _v([MID] * K, [_below(d)] * K).verdict == "in-regime"
    # High drift outranks larger votes; low drift lets them speak.
    assert _v([BIG] * K, [d] * K).verdict == "too-aggressive"
    assert _v([BIG] * K, [_below(d)] * K).verdict == "alpha-too-small"


def test_step_size_threshold_both_sides():
    h = RULES.step_size_high
    assert _v([MID] * K, sizes=[h] + [0.0] * (K - 1)).verdict == "too-aggressive"
    assert _v([MID] * K, sizes=[_below(h)] * K).verdict == "in-regime"
    assert _v([BIG] * K, sizes=[h] * K).verdict == "too-aggressive"
    assert _v([BIG] * K, sizes=[_below(h)] * K).verdict == "alpha-too-small"
    assert f"peak {h:.3g} (>= {h:g}, " in _v([MID], sizes=[h]).evidence
    assert f"peak {_below(h):.3g} (< {h:g}, " in _v([MID], sizes=[_below(h)]).evidence


def test_agree_count_both_sides():
    for k_star, side in ((BIG, "alpha-too-small"), (LOW, "too-aggressive")):
        assert _v([k_star] * K + [MID] * (N - K)).verdict == side
        assert _v([k_star] * (K - 1) + [MID] * (N - K + 1)).verdict == "in-regime"
    assert _v([MID] * N, [math.inf] * K + [0.0] * (N - K)).verdict == "too-aggressive"
    assert _v([MID] * N, [math.inf] * (K - 1) + [0.0] * (N - K + 1)).verdict == "in-regime"


def test_split_count_both_sides():
    assert _v([BIG] * K + [LOW] * SPLIT).verdict == "uncertain"
    assert _v([BIG] * K + [LOW] * (SPLIT - 1)).verdict == "alpha-too-small"
    assert _v([LOW] * K + [BIG] * SPLIT).verdict == "uncertain"
    assert _v([LOW] * K + [BIG] * (SPLIT - 1)).verdict == "too-aggressive"


def test_alpha_floor_both_sides():
    floor_equiv = ALPHA_FLOOR_FRACTION * C * math.sqrt(R)
    at = regime_verdict(floor_equiv, R, floor_equiv / R, c=C)  # scale * 16 is exact
    assert at.verdict == "in-regime" and at.suggested_alpha is None
    below = regime_verdict(floor_equiv, R, _below(floor_equiv / R), c=C)
    assert below.verdict == "alpha-too-small"
    assert below.suggested_alpha == _round2(C * math.sqrt(R) * floor_equiv / (_below(floor_equiv / R) * R))
    # the same configuration with a k* measured: the law does not decide
    assert regime_verdict(floor_equiv, R, _below(floor_equiv / R), [MID], c=C).verdict == "in-regime"


def test_suggestion_cap_both_sides():
    at = _v([MAX_SUGGESTED_FACTOR] * K)
    assert at.suggested_alpha == _round2(ALPHA * MAX_SUGGESTED_FACTOR) and "capped" not in at.suggestion
    above = _v([math.nextafter(MAX_SUGGESTED_FACTOR, math.inf)] * K)
    assert above.suggested_alpha == _round2(ALPHA * MAX_SUGGESTED_FACTOR) and "capped" in above.suggestion


def test_suggestion_from_the_median_larger_k_star():
    larger = [RULES.k_too_small * f for f in (1.9, 1.7, 1.5, 1.3, 1.1)][:N]
    v = _v(list(reversed(larger)))
    ordered = sorted(larger)
    m = len(ordered)
    median = ordered[m // 2] if m % 2 else (ordered[m // 2 - 1] + ordered[m // 2]) / 2
    assert v.verdict == "alpha-too-small" and v.agreeing == len(larger)
    assert v.suggested_alpha == _round2(ALPHA * min(median, MAX_SUGGESTED_FACTOR))


# ----------------------------------------------------------------- how evidence counts


def test_infinite_drift_ratios_count_as_high():
    v = _v([BIG] * K, [math.inf] * K)
    assert v.verdict == "too-aggressive" and v.suggested_alpha is None
    assert f", {K} >= {RULES.drift_ratio_high:g}" in v.evidence
    assert _v([MID] * K, [0.0] + [math.inf] * (K - 1)).verdict == "in-regime"


def test_infinite_k_star_votes_larger():
    v = _v([math.inf] * K)
    assert v.verdict == "alpha-too-small" and v.suggested_alpha == _round2(ALPHA * MAX_SUGGESTED_FACTOR)


def test_nan_counts_as_a_probe_but_never_as_a_vote():
    v = _v([BIG] * (K - 1) + [math.nan] * (N - K + 1))
    assert v.verdict == "in-regime" and v.probes == N and v.dropped == N - K + 1
    assert v.votes == {"larger": K - 1, "collapse": 0, "in range": 0, "NaN": N - K + 1}
    v = _v([BIG] * K + [math.nan] * (N - K))
    assert (v.verdict, v.agreeing, v.dropped) == ("alpha-too-small", K, N - K)


def test_nan_drift_and_size_never_count_high():
    assert _v([MID] * K, [math.nan] * K, [math.nan] * K).verdict == "in-regime"
    v = _v([BIG] * K, [math.nan] * K, [None] * K)
    assert v.verdict == "alpha-too-small" and v.drift_ratio is None and v.step_size is None
    assert v.step_size_peak is None and v.dropped == 0  # only a missing k* is dropped


def test_two_probes_one_each_side_are_fewer_than_k():
    v = _v([LOW, BIG])
    assert v.verdict == "in-regime" and v.suggested_alpha is None and v.votes["larger"] == v.votes["collapse"] == 1


def test_the_median_does_not_decide():
    # the median of the usable k* says "larger", but only k-1 probes do: in-regime
    v = _v([BIG] * (K - 1) + [math.nan] * (N - K + 1))
    assert v.k_star == BIG and v.verdict == "in-regime"


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
        regime_verdict(1e308, R, 1e308 / R, k_stars=[BIG] * K)
    with pytest.raises(ValueError, match=r"scale=5e-324.*scale \* rank = 0\.0.*allowed"):
        regime_verdict(1.0, 0.1, 5e-324)
    with pytest.raises(ValueError, match=r"alpha / \(scale \* rank\) = inf"):
        regime_verdict(1e300, 1.0, 1e-10)
    with pytest.raises(ValueError, match=r"c \* sqrt\(rank\) must be a finite float"):
        recommended_alpha(4, c=1e308)
    with pytest.raises(ValueError, match=r"c \* sqrt\(rank\) must be a finite float"):
        recommended_alpha(10**400)
    assert regime_verdict(1e300, R, 1e300 / R, c=C).verdict == "in-regime"  # large but representable: answered


NONNEG = r"must be a number >= 0 \(inf allowed; None or NaN: not measured\), got "


@pytest.mark.parametrize("series", ["k_stars", "drift_ratios", "step_sizes"])
@pytest.mark.parametrize("bad", [-1.0, -1e-300, -math.inf, "x", "1.0", True, False, object(), [1.0], 1j])
def test_series_values_are_validated(series, bad):
    kw = {"k_stars": [1.0, 1.0], series: [1.0, bad]}
    with pytest.raises(ValueError, match=rf"^{series}\[1\] {NONNEG}"):
        regime_verdict(ALPHA, R, S, kw.pop("k_stars"), **kw)


@pytest.mark.parametrize("series", ["k_stars", "drift_ratios", "step_sizes"])
def test_series_error_index_is_the_position_in_the_whole_series(series):
    values = [1.0] * (N + 2) + [-1.0]
    kw = {"k_stars": [1.0] * (N + 3), series: values}
    with pytest.raises(ValueError, match=rf"^{series}\[{N + 2}\] {NONNEG}-1\.0$"):
        regime_verdict(ALPHA, R, S, kw.pop("k_stars"), **kw)


@pytest.mark.parametrize("series", ["gain_zs", "help_zs"])
@pytest.mark.parametrize("bad", ["x", True, object(), [1.0]])
def test_significance_values_are_validated(series, bad):
    with pytest.raises(ValueError, match=rf"^{series}\[1\] must be a number \(inf allowed"):
        regime_verdict(ALPHA, R, S, [BIG, BIG], **{series: [1.0, bad]})


def test_significance_values_may_be_negative_or_infinite():
    v = regime_verdict(ALPHA, R, S, [BIG] * 3, gain_zs=[-1.0, -math.inf, math.inf],
                       help_zs=[math.inf, 5.0, math.inf])
    assert v.votes == {"larger": 1, "collapse": 0, "in range": 2, "NaN": 0}


@pytest.mark.parametrize("series", ["gain_zs", "help_zs"])
@pytest.mark.parametrize("length", [0, 2, 4])
def test_significance_series_must_align_with_the_k_stars(series, length):
    with pytest.raises(ValueError, match=rf"^{series} has {length} values but k_stars has 3; they must align"):
        regime_verdict(ALPHA, R, S, [BIG] * 3, **{series: [1.0] * length})


@pytest.mark.parametrize("series", ["gain_zs", "help_zs"])
def test_significance_series_without_k_stars(series):
    with pytest.raises(ValueError, match=rf"^{series} has 1 values but k_stars has 0"):
        regime_verdict(ALPHA, R, S, None, **{series: [1.0]})
    assert regime_verdict(ALPHA, R, S, None, **{series: []}).verdict == "in-regime"


def test_previous_and_rules_are_validated():
    with pytest.raises(ValueError, match=r"^previous verdicts must be among \('alpha-too-small', .*got 'too small'"):
        _v([MID], previous="too small")
    with pytest.raises(ValueError, match=r"^rules must be a VerdictRules, got dict"):
        _v([MID], rules={"window": 5})


def test_missing_values_are_counted_like_nan():
    v = regime_verdict(8.0, 8, 1.0, k_stars=[None, None, MID, MID], drift_ratios=[None, math.nan, 0.01, None])
    assert v.dropped == 2 and v.votes["NaN"] == 2
    assert ", 2 NaN" in v.evidence
    assert v.verdict == "in-regime"  # a measured k*: the prior (8 is far below c*sqrt(8)) no longer decides
