"""What the verdict reports, field by field and word for word (docs/metrics.md §6, rules v2): the evidence
and the suggestion are what users read (the advisor prints them), the fields are what callers log. Each case
is worked out by hand from the docs; thresholds are read from ``VerdictRules()``, never written out."""
import math

import pytest

from signaldrift import ALPHA_FLOOR_FRACTION, MAX_SUGGESTED_FACTOR, VerdictRules, recommended_alpha, regime_verdict

RULES = VerdictRules()
K, N, SPLIT = RULES.agree, RULES.window, RULES.split
G, A = RULES.gap_too_small, RULES.gap_too_aggressive
D, H = RULES.drift_ratio_high, RULES.step_size_high
R, C = 16, 270.0
ALPHA = C * math.sqrt(R)  # 1080: on the law
S = ALPHA / R  # 67.5
NAN = float("nan")
BIG = 2 * G
MID = (A + G) / 2
HEAD = "alpha=1080 at r=16 (scale 67.5); c*sqrt(r) -> alpha ~ 1.08e+03"
COLLAPSED = "where the calibration's runs collapsed"


def _v(gaps=None, drifts=None, sizes=None, **kw):
    return regime_verdict(ALPHA, R, S, gaps, drifts, sizes, c=C, **kw)


def _gap_words(shown, larger, overshoot, in_range, nans):
    return (f"step_gap over the last {len(shown)} probes ({', '.join(shown)}): {larger} say larger (>= {G:g}), "
            f"{overshoot} overshoot (< {A:g}), {in_range} in range or not significant (gap_gain < "
            f"{RULES.gap_gain_min:g} or gap_z < {RULES.gap_z_min:g})" + (f", {nans} NaN" if nans else ""))


def test_uncertain_with_nan_and_none_in_every_series():
    assert 2 * SPLIT + 1 <= N
    gaps = [BIG] * SPLIT + [0.0] * SPLIT + [None]
    v = _v(gaps, [D / 10, NAN, 2 * D], [2 * H, None, H / 10])
    assert v.verdict == "uncertain"
    assert v.evidence == (
        HEAD + "; " + _gap_words([f"{BIG:.3g}"] * SPLIT + ["0"] * SPLIT + ["NaN"], SPLIT, SPLIT, 0, 1)
        + f"; drift_ratio median {(D / 10 + 2 * D) / 2:.3g}, 1 of 3 >= {D:g}"
        + f"; step_size median {(2 * H + H / 10) / 2:.3g}, peak {2 * H:.3g} (>= {H:g}, {COLLAPSED})")
    assert v.suggestion == (f"the probes disagree ({SPLIT} of {len(gaps)} say the step could be larger, {SPLIT} that "
                            "it overshoots): no change is supported; keep alpha=1080 and probe again")
    assert (v.alpha, v.rank, v.scale, v.recommended_alpha) == (1080.0, 16.0, 67.5, 1080.0)
    assert v.step_gap == BIG / 2
    assert v.drift_ratio == pytest.approx(1.05 * D) and v.step_size == pytest.approx(1.05 * H)
    assert (v.probes, v.agreeing, v.dropped, v.suggested_alpha) == (len(gaps), SPLIT, 3, None)
    assert v.votes == {"larger": SPLIT, "overshoot": SPLIT, "in range": 0, "NaN": 1}


def test_overshoot_words():
    v = _v([0.0] * K + [MID])
    assert (v.verdict, v.agreeing, v.suggested_alpha) == ("too-aggressive", K, None)
    assert v.evidence == HEAD + "; " + _gap_words(["0"] * K + [f"{MID:.3g}"], 0, K, 1, 0)
    assert v.suggestion == (f"{K} of {K + 1} probes say the step overshoots: lower the learning rate (about 0.5x), "
                            "not alpha; probe again")


def test_step_size_words():
    v = _v([MID] * K, sizes=[3 * H, 0.0, 0.0])
    assert (v.verdict, v.step_size, v.suggested_alpha) == ("too-aggressive", 0.0, None)
    assert v.evidence == (HEAD + "; " + _gap_words([f"{MID:.3g}"] * K, 0, 0, K, 0)
                          + f"; step_size median 0, peak {3 * H:.3g} (>= {H:g}, {COLLAPSED})")
    assert v.suggestion == (f"the step size reached {3 * H:.2g} (>= {H:g}, {COLLAPSED}): lower the learning rate "
                            "(about 0.17x), not alpha; probe again")  # 0.5 / 3 to two figures
    v = _v([MID] * K, sizes=[H / 4], step_size_peak=2 * H)  # the run's peak, passed in
    assert v.evidence.endswith(f"; step_size median {H / 4:.3g}, peak {2 * H:.3g} (>= {H:g}, {COLLAPSED})")
    assert v.suggestion.startswith(f"the step size reached {2 * H:.2g} (>= ") and "(about 0.25x)" in v.suggestion
    v = _v([MID] * K, sizes=[H / 4])
    assert v.verdict == "in-regime" and v.evidence.endswith(f", peak {H / 4:.3g} (< {H:g}, {COLLAPSED})")


def test_drift_words():
    v = _v([MID] * K, [2 * D] * K + [D / 2])
    assert (v.verdict, v.agreeing, v.drift_ratio) == ("too-aggressive", K, 2 * D)
    assert v.evidence == (HEAD + "; " + _gap_words([f"{MID:.3g}"] * K, 0, 0, K, 0)
                          + f"; drift_ratio median {2 * D:.3g}, {K} of {K + 1} >= {D:g}")
    assert v.suggestion == (f"drift_ratio >= {D:g} in {K} of {K + 1} probes: lower the learning rate (about 0.5x), "
                            "not alpha; probe again")


def test_too_small_words_uncapped_and_capped():
    g = G  # at the threshold
    v = _v([g] * K, [D / 10])
    capped = g > MAX_SUGGESTED_FACTOR
    s = float(f"{ALPHA * min(g, MAX_SUGGESTED_FACTOR):.2g}")
    assert (v.verdict, v.agreeing, v.suggested_alpha) == ("alpha-too-small", K, s)
    assert v.suggestion == (f"{K} of {K} probes say the step could be ~{g:.2g}x larger with drift_ratio {D / 10:.2g}; "
                            f"try alpha ~ {s:g}" + (" (a capped first move; probe again)" if capped else ""))
    assert v.evidence.endswith(f"; drift_ratio median {D / 10:.3g}, 0 of 1 >= {D:g}")
    v = _v([20 * MAX_SUGGESTED_FACTOR] * K)
    s = float(f"{ALPHA * MAX_SUGGESTED_FACTOR:.2g}")  # 1080 * 8 = 8640 -> 8600
    assert v.suggested_alpha == s
    assert v.suggestion == (f"{K} of {K} probes say the step could be ~{20 * MAX_SUGGESTED_FACTOR:.2g}x larger with "
                            f"drift_ratio unmeasured; try alpha ~ {s:g} (a capped first move; probe again)")


def test_flip_words():
    v = _v([BIG] * K, previous="too-aggressive")
    plain = _v([BIG] * K)
    assert (v.verdict, v.suggested_alpha, v.evidence) == ("uncertain", None, plain.evidence)
    assert v.suggestion == ("the evidence now points to alpha-too-small right after too-aggressive: not acted on until "
                            "it holds; " + plain.suggestion)
    v = _v([0.0] * K, previous="alpha-too-small")
    assert v.suggestion.startswith("the evidence now points to too-aggressive right after alpha-too-small: not acted "
                                   f"on until it holds; {K} of {K} probes say the step overshoots")


def test_fewer_than_k_probes():
    v = _v([1.0])
    assert v.verdict == "in-regime"
    assert v.suggestion == f"1 probe(s) so far, {K} must agree before a change is supported; keep alpha=1080"
    assert (v.probes, v.agreeing, v.dropped, v.suggested_alpha) == (1, 1, 0, None)


def test_only_nan_gaps_are_no_measurement():
    v = _v([NAN])
    assert v.verdict == "in-regime"
    assert v.evidence == HEAD + "; " + _gap_words(["NaN"], 0, 0, 0, 1)
    assert v.suggestion == ("no step_gap measured yet (1 probe(s) gave NaN): no evidence either way, so no change is "
                            "supported; keep alpha=1080 until probes measure the step")
    assert (v.probes, v.agreeing, v.dropped, v.step_gap, v.suggested_alpha) == (1, 0, 1, None, None)


def test_no_side_has_k():
    v = _v([BIG] * (K - 1) + [0.0])
    assert (v.verdict, v.agreeing) == ("in-regime", 0)
    assert v.suggestion == f"no side has {K} of the last {K} probes ({K - 1} larger, 1 overshoot): keep alpha=1080"


def test_all_in_range_keeps_alpha():
    v = _v([MID] * K)
    assert (v.verdict, v.suggestion, v.agreeing) == ("in-regime", "keep alpha=1080", K)


def test_no_evidence_at_all():
    v = _v()
    assert v.evidence == HEAD
    assert v.suggestion == ("no step_gap measured yet: no evidence either way, so no change is supported; "
                            "keep alpha=1080 until probes measure the step")
    assert (v.probes, v.agreeing, v.dropped, v.votes) == (0, 0, 0, {"larger": 0, "overshoot": 0, "in range": 0,
                                                                    "NaN": 0})


def test_configuration_alone_with_a_scale_times_rank_below_one():
    v = regime_verdict(8, 8, 0.01, c=C)  # scale * rank = 0.08: alpha's rule is not scale = alpha / r
    rec = C * math.sqrt(8) * 8 / 0.08
    assert v.recommended_alpha == pytest.approx(rec, rel=1e-12)
    assert (v.verdict, v.agreeing, v.suggested_alpha) == ("alpha-too-small", 0, 76000.0)
    assert v.evidence == "alpha=8 at r=8 (scale 0.01); c*sqrt(r) -> alpha ~ 7.64e+04"
    assert v.suggestion == (f"alpha is below {ALPHA_FLOOR_FRACTION:g} of c*sqrt(r) (no step_gap measured yet; the law "
                            "is a prior); try alpha ~ 76000")


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
    assert str(e.value) == f"{name}[1] must be a number >= 0 (inf allowed; NaN is counted as unusable), got -1.0"


def test_alignment_and_previous_errors_word_for_word():
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, [1.0, 2.0], c=C, gap_zs=[1.0])
    assert str(e.value) == ("gap_zs has 1 values but step_gaps has 2; they must align (None for a gap without one)")
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, [1.0], c=C, gap_gains=[1.0, "x"])
    assert str(e.value).startswith("gap_gains has 2 values but step_gaps has 1")
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, [1.0], c=C, gap_zs=["x"])
    assert str(e.value) == "gap_z[0] must be a number (inf allowed; NaN is counted as unusable), got 'x'"
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, c=C, previous="too_small")
    assert str(e.value) == ("previous must be one of ('alpha-too-small', 'too-aggressive', 'in-regime', 'uncertain') "
                            "or None, got 'too_small'")
