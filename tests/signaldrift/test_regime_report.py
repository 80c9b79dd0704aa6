"""What the verdict reports, field by field and word for word: the evidence and the suggestion
are what users read (the advisor prints them), the fields are what callers log. Each case is
worked out by hand from docs/metrics.md §6."""
import math

import pytest

from signaldrift import recommended_alpha, regime_verdict

R, C = 16, 270.0
ALPHA = C * math.sqrt(R)  # 1080: on the law
S = ALPHA / R  # 67.5
NAN = float("nan")
HEAD = "alpha=1080 at r=16 (scale 67.5); c*sqrt(r) -> alpha ~ 1.08e+03"


def _v(gaps=None, drifts=None, sizes=None):
    return regime_verdict(ALPHA, R, S, gaps, drifts, sizes, c=C)


def test_conflicting_evidence_with_nan_and_none_in_every_series():
    v = _v([5, 6, 0.1], [0.01, NAN, 0.2], [0.03, None, 0.001])
    assert v.verdict == "in-regime"
    assert v.evidence == (
        HEAD + "; median step_gap 5 over 3 probes (5, 6, 0.1); 2 of 3 >= 4, 1 of 3 < 0.5"
        "; median drift_ratio 0.105 over 3 probes (0.01, 0.2); 1 of 3 >= 0.1, 1 NaN dropped"
        "; median step_size 0.0155 over 3 probes (0.03, 0.001); 1 of 3 >= 0.025, where the alpha x lr grid's"
        " runs collapsed, 1 NaN dropped")
    assert v.suggestion == ("the step gap says larger (2 of 3) but drift_ratio is not low in most probes: the "
                            "evidence conflicts; keep alpha=1080 and probe again")
    assert (v.alpha, v.rank, v.scale, v.recommended_alpha) == (1080.0, 16.0, 67.5, 1080.0)
    assert v.step_gap == 5.0 and v.drift_ratio == pytest.approx(0.105) and v.step_size == pytest.approx(0.0155)
    assert (v.probes, v.agreeing, v.dropped, v.suggested_alpha) == (3, 0, 2, None)


def test_none_and_nan_are_dropped_and_counted_and_later_values_kept():
    v = _v([None, 5.0, NAN, 5.0, 5.0], None, [None, NAN, 0.01])
    assert v.dropped == 4 and v.probes == 5 and v.step_gap == 5.0 and v.step_size == 0.01
    assert v.verdict == "alpha-too-small" and v.agreeing == 3  # 3 of 5: a majority with the NaN counted


def test_two_probes_on_both_sides_disagree():
    v = _v([1.0, 5.0])
    assert v.verdict == "in-regime" and v.agreeing == 1 and v.step_gap == 3.0
    assert v.evidence == HEAD + "; median step_gap 3 over 2 probes (1, 5); 1 of 2 >= 4, 0 of 2 < 0.5"
    assert v.suggestion == ("the probes disagree (1 of 2 say larger, 0 overshoot, 0 NaN): no change is supported; "
                            "keep alpha=1080 and probe again")


def test_in_range_majority_keeps_alpha():
    v = _v([1.0, 2.0, 5.0])
    assert (v.verdict, v.suggestion, v.agreeing) == ("in-regime", "keep alpha=1080", 2)


def test_overshoot_factor_is_rounded_to_two_figures():
    v = _v([0.123456] * 3)
    assert v.verdict == "too-aggressive" and v.agreeing == 3
    assert v.evidence == HEAD + "; median step_gap 0.123 over 3 probes (0.123, 0.123, 0.123); 0 of 3 >= 4, 3 of 3 < 0.5"
    assert v.suggestion == ("3 of 3 probes say the step overshoots (step_gap 0.12 or less): lower the learning rate "
                            "(about 0.12x), not alpha")


def test_overshoot_reports_the_largest_gap_a_majority_agrees_on():
    v = _v([0.4, 0.2, 0.3, 0.01])  # 3 of 4 are at or below 0.3
    assert v.suggestion.startswith("4 of 4 probes say the step overshoots (step_gap 0.3 or less)")
    assert "(about 0.3x)" in v.suggestion


def test_high_drift_alone_is_too_aggressive():
    v = _v([1, 1, 1], [0.2, 0.3, 0.01])
    assert v.verdict == "too-aggressive" and v.agreeing == 0 and v.drift_ratio == 0.2
    assert v.evidence == (HEAD + "; median step_gap 1 over 3 probes (1, 1, 1); 0 of 3 >= 4, 0 of 3 < 0.5"
                          "; median drift_ratio 0.2 over 3 probes (0.2, 0.3, 0.01); 2 of 3 >= 0.1")
    assert v.suggestion == "drift_ratio >= 0.1 in 2 of 3 probes: lower the learning rate (about 0.5x), not alpha"


def test_nan_only_gaps():
    v = _v([NAN])
    assert v.evidence == HEAD + "; step_gap: none usable over 1 probes; 0 of 1 >= 4, 0 of 1 < 0.5, 1 NaN dropped"
    assert v.suggestion == ("no step_gap measured yet (1 NaN): no evidence either way, so no change is supported; "
                            "keep alpha=1080 until probes measure the step")
    assert (v.probes, v.agreeing, v.dropped, v.step_gap) == (1, 0, 1, None)


def test_no_evidence_at_all():
    v = _v()
    assert v.evidence == HEAD
    assert v.suggestion == ("no step_gap measured yet: no evidence either way, so no change is supported; "
                            "keep alpha=1080 until probes measure the step")


def test_capped_and_uncapped_suggestions():
    v = _v([20, 20, 20])
    assert v.suggested_alpha == 8600.0  # 1080 * 8 = 8640 -> two figures
    assert v.suggestion == ("3 of 3 probes say the step could be ~20x larger with drift_ratio unmeasured; "
                            "try alpha ~ 8600 (a capped first move; probe again)")
    v = _v([5, 5, 5], [0.01])
    assert v.suggested_alpha == 5400.0
    assert v.suggestion == "3 of 3 probes say the step could be ~5x larger with drift_ratio 0.01; try alpha ~ 5400"
    assert v.evidence.endswith("; median drift_ratio 0.01 over 1 probes (0.01); 0 of 1 >= 0.1")


def test_configuration_alone_with_a_scale_times_rank_below_one():
    v = regime_verdict(8, 8, 0.01, c=C)  # scale * rank = 0.08: alpha's rule is not scale = alpha / r
    rec = C * math.sqrt(8) * 8 / 0.08
    assert v.recommended_alpha == pytest.approx(rec, rel=1e-12)
    assert (v.verdict, v.agreeing, v.suggested_alpha) == ("alpha-too-small", 0, 76000.0)
    assert v.evidence == "alpha=8 at r=8 (scale 0.01); c*sqrt(r) -> alpha ~ 7.64e+04"
    assert v.suggestion == ("alpha is below 0.25 of c*sqrt(r) (no step_gap measured yet; the law is a prior); "
                            "try alpha ~ 76000")


def test_recommended_alpha_of_rank_one():
    assert recommended_alpha(1, c=3.0) == 3.0


def test_out_of_range_configuration_message_names_the_quantity():
    with pytest.raises(ValueError) as e:
        regime_verdict(1e300, 1e300, 1e300, c=C)
    assert str(e.value) == (
        "alpha=1e+300, rank=1e+300, scale=1e+300 and c=270.0 give scale * rank = inf, outside the positive finite "
        "floats; allowed: values whose products and quotients stay finite and non-zero (e.g. alpha, scale * rank "
        "and c * sqrt(r) between 1e-300 and 1e300)")
    with pytest.raises(ValueError, match=r"give c \* sqrt\(r\) in alpha's units = inf"):
        regime_verdict(1e307, 1.0, 1.0, c=C)


@pytest.mark.parametrize("series", ["step_gaps", "drift_ratios", "step_sizes"])
def test_series_errors_name_the_series(series):
    name = {"step_gaps": "step_gap", "drift_ratios": "drift_ratio", "step_sizes": "step_size"}[series]
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, c=C, **{series: [1.0, -1.0]})
    assert str(e.value) == f"{name}[1] must be a number >= 0 (inf allowed; NaN is dropped and counted), got -1.0"
