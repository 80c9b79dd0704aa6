"""What the verdict reports, field by field and word for word (docs/metrics.md §6, rules v3): the evidence
and the suggestion are what users read (the advisor prints them), the fields are what callers log. Each case
is worked out by hand from the docs; thresholds are read from ``VerdictRules()``, never written out."""
import math

import pytest

from signaldrift import ALPHA_FLOOR_FRACTION, MAX_SUGGESTED_FACTOR, VerdictRules, recommended_alpha
from signaldrift import regime_verdict as shipped_verdict

# The rules' logic is tested under the shipped thresholds with a 5-probe window and 2 to agree, a window that
# can hold a split (the shipped 3 of 3 cannot: 2 + 2 > 3); test_regime_v3.py::test_shipped_counts pins the shipped counts.
RULES = VerdictRules(window=5, agree=2)


def regime_verdict(*args, rules=RULES, **kw):
    return shipped_verdict(*args, rules=rules, **kw)

K, N, SPLIT, SETTLE = RULES.agree, RULES.window, RULES.split, RULES.settle
KTS, KTA, Z = RULES.k_too_small, RULES.k_too_aggressive, RULES.z_min
D, H = RULES.drift_ratio_high, RULES.step_size_high
R, C = 16, 270.0
ALPHA = C * math.sqrt(R)  # 1080: on the law
S = ALPHA / R  # 67.5
NAN = float("nan")
BIG = 2 * KTS
MID = 1.0
LOW = KTA / 4
HELPED = abs(RULES.help_z_max) + 3.0
HEAD = "alpha=1080 at r=16 (scale 67.5); c*sqrt(r) -> alpha ~ 1.08e+03"
COLLAPSED = "where the calibration's runs collapsed"
CUT = "(the learning rate, or alpha); probe again"


def _v(ks=None, drifts=None, sizes=None, zs=None, helps=None, **kw):
    if ks is not None:
        zs = zs if zs is not None else [Z] * len(ks)
        helps = helps if helps is not None else [HELPED] * len(ks)
    return regime_verdict(ALPHA, R, S, ks, gain_zs=zs, help_zs=helps, drift_ratios=drifts, step_sizes=sizes, c=C,
                          **kw)


def _k_words(shown, larger, collapse, in_range, nans):
    return (f"k* over the last {len(shown)} probes ({', '.join(shown)}): {larger} say larger (>= {KTS:g}), "
            f"{collapse} collapse (k* < {KTA:g}, or the update made the probe set worse), {in_range} in range or not "
            f"significant (z < {Z:g})" + (f", {nans} NaN" if nans else ""))


def test_structure_needed_by_these_tests():
    assert 2 * SPLIT + 1 <= N and SPLIT >= 2 and K >= 2 and SETTLE >= 1


def test_uncertain_with_nan_and_none_in_every_series():
    ks = [BIG] * SPLIT + [LOW] * SPLIT + [None]
    drifts = [D / 10, NAN, 2 * D] + [None] * (len(ks) - 3)
    sizes = [2 * H, None, H / 10] + [NAN] * (len(ks) - 3)
    v = _v(ks, drifts, sizes)
    assert v.verdict == "uncertain"
    assert v.evidence == (
        HEAD + "; " + _k_words([f"{BIG:.3g}"] * SPLIT + [f"{LOW:.3g}"] * SPLIT + ["NaN"], SPLIT, SPLIT, 0, 1)
        + f"; drift_ratio median {(D / 10 + 2 * D) / 2:.3g}, 1 >= {D:g}"
        + f"; step_size median {(2 * H + H / 10) / 2:.3g}, window peak {2 * H:.3g} (>= {H:g}, {COLLAPSED})")
    assert v.suggestion == (f"the probes disagree ({SPLIT} of {len(ks)} say larger, {SPLIT} collapse): no change "
                            "is supported; keep alpha=1080 and probe again")
    assert (v.alpha, v.rank, v.scale, v.recommended_alpha) == (1080.0, 16.0, 67.5, 1080.0)
    ordered = sorted([BIG] * SPLIT + [LOW] * SPLIT)
    assert v.k_star == (ordered[SPLIT - 1] + ordered[SPLIT]) / 2
    assert v.drift_ratio == pytest.approx(1.05 * D) and v.step_size == pytest.approx(1.05 * H)
    assert v.step_size_peak == 2 * H
    assert (v.probes, v.agreeing, v.dropped, v.suggested_alpha, v.held_back) == (len(ks), SPLIT, 1, None, None)
    assert v.votes == {"larger": SPLIT, "collapse": SPLIT, "in range": 0, "NaN": 1}


def test_collapse_words():
    v = _v([LOW] * K + [MID])
    assert (v.verdict, v.agreeing, v.suggested_alpha) == ("too-aggressive", K, None)
    assert v.evidence == HEAD + "; " + _k_words([f"{LOW:.3g}"] * K + ["1"], 0, K, 1, 0)
    assert v.suggestion == (f"{K} of {K + 1} probes find the update no better than none (collapse): cut the step "
                            f"size about 0.5x {CUT}")


def test_step_size_words():
    v = _v([MID] * (K + 1), sizes=[3 * H] + [0.0] * K)
    assert (v.verdict, v.step_size, v.suggested_alpha, v.agreeing) == ("too-aggressive", 0.0, None, 0)
    assert v.evidence == (HEAD + "; " + _k_words(["1"] * (K + 1), 0, 0, K + 1, 0)
                          + f"; step_size median 0, window peak {3 * H:.3g} (>= {H:g}, {COLLAPSED})")
    assert v.suggestion == (f"the step size reached {3 * H:.2g} (>= {H:g}, {COLLAPSED}): cut the step size about "
                            f"0.17x {CUT}")  # 0.5 / 3 to two figures
    v = _v([MID] * K, sizes=[H / 4, 2 * H])
    assert v.suggestion.startswith(f"the step size reached {2 * H:.2g} (>= ") and "about 0.25x" in v.suggestion
    v = _v([MID] * K, sizes=[H / 4] * K)
    assert v.verdict == "in-regime" and v.evidence.endswith(f", window peak {H / 4:.3g} (< {H:g}, {COLLAPSED})")


def test_drift_words():
    v = _v([MID] * (K + 1), [2 * D] * K + [D / 2])
    assert (v.verdict, v.agreeing, v.drift_ratio) == ("too-aggressive", 0, 2 * D)
    assert v.evidence == (HEAD + "; " + _k_words(["1"] * (K + 1), 0, 0, K + 1, 0)
                          + f"; drift_ratio median {2 * D:.3g}, {K} >= {D:g}")
    assert v.suggestion == f"drift_ratio >= {D:g} in {K} probes: cut the step size about 0.5x {CUT}"


def test_too_small_words_uncapped_and_capped():
    k_star = KTS  # at the threshold
    v = _v([k_star] * K, [D / 10] * K, steps=[100 * (i + 1) for i in range(K)])
    capped = k_star > MAX_SUGGESTED_FACTOR
    s = float(f"{ALPHA * min(k_star, MAX_SUGGESTED_FACTOR):.2g}")  # 2160 -> 2200 (no half to round here)
    assert (v.verdict, v.agreeing, v.suggested_alpha) == ("alpha-too-small", K, s)
    assert v.suggestion == (f"{K} of {K} probes find the loss lowest with the update stretched ~{k_star:.2g}x "
                            f"(latest, step {100 * K}: k* = {k_star:.3g}, z = {Z:.3g}); try alpha ~ {s:g}"
                            + (f" (capped at {MAX_SUGGESTED_FACTOR:g}x; probe again)" if capped else ""))
    assert v.evidence.endswith(f"; drift_ratio median {D / 10:.3g}, 0 >= {D:g}")
    v = _v([20 * MAX_SUGGESTED_FACTOR] * K, zs=[None] * K)
    s = float(f"{ALPHA * MAX_SUGGESTED_FACTOR:.2g}")  # 1080 * 8 = 8640 -> 8600
    assert v.suggested_alpha == s
    assert v.suggestion == (f"{K} of {K} probes find the loss lowest with the update stretched "
                            f"~{20 * MAX_SUGGESTED_FACTOR:.2g}x (latest, k* = {20 * MAX_SUGGESTED_FACTOR:.3g}, "
                            f"z = n/a); try alpha ~ {s:g} (capped at {MAX_SUGGESTED_FACTOR:g}x; probe again)")


def test_held_back_words():
    plain = _v([BIG] * K)
    v = _v([BIG] * K, previous="too-aggressive")
    assert (v.verdict, v.held_back, v.suggested_alpha, v.evidence) == ("uncertain", "alpha-too-small", None,
                                                                       plain.evidence)
    assert v.suggestion == ("the evidence now points to alpha-too-small, but the last side held was the other one: "
                            f"not acted on until {SETTLE} probes in between are neutral ({plain.suggestion})")
    v = _v([LOW] * K, previous=["alpha-too-small"])
    assert v.suggestion.startswith("the evidence now points to too-aggressive, but the last side held was the other "
                                   f"one: not acted on until {SETTLE} probes in between are neutral ({K} of {K} "
                                   "probes find the update no better than none")


def test_fewer_than_k_probes():
    v = _v([MID])
    assert v.verdict == "in-regime"
    assert v.suggestion == f"too early to tell: 1 probe(s) so far, {K} must agree; keep alpha=1080"
    assert (v.probes, v.agreeing, v.dropped, v.suggested_alpha) == (1, 1, 0, None)


def test_only_nan_k_stars_are_no_measurement():
    v = _v([NAN])
    assert v.verdict == "in-regime"
    assert v.evidence == HEAD + "; " + _k_words(["NaN"], 0, 0, 0, 1)
    assert v.suggestion == "too early to tell: no scale probe has measured the run yet; keep alpha=1080"
    assert (v.probes, v.agreeing, v.dropped, v.k_star, v.suggested_alpha) == (1, 0, 1, None, None)


def test_no_side_has_k():
    v = _v([BIG] * (K - 1) + [LOW])
    assert (v.verdict, v.agreeing) == ("in-regime", 0)
    assert v.suggestion == f"no side has {K} of the last {K} probes ({K - 1} larger, 1 collapse): keep alpha=1080"


def test_all_in_range_keeps_alpha():
    v = _v([MID] * K)
    assert (v.verdict, v.suggestion, v.agreeing) == ("in-regime", "keep alpha=1080", K)


def test_no_evidence_at_all():
    v = _v()
    assert v.evidence == HEAD
    assert v.suggestion == "too early to tell: no scale probe has measured the run yet; keep alpha=1080"
    assert (v.probes, v.agreeing, v.dropped, v.votes) == (0, 0, 0, {"larger": 0, "collapse": 0, "in range": 0,
                                                                    "NaN": 0})
    assert (v.k_star, v.step_size_peak, v.held_back) == (None, None, None)


def test_configuration_alone_with_a_scale_times_rank_below_one():
    v = regime_verdict(8, 8, 0.01, c=C)  # scale * rank = 0.08: alpha's rule is not scale = alpha / r
    rec = C * math.sqrt(8) * 8 / 0.08
    assert v.recommended_alpha == pytest.approx(rec, rel=1e-12)
    assert (v.verdict, v.agreeing, v.suggested_alpha) == ("alpha-too-small", 0, 76000.0)
    assert v.evidence == "alpha=8 at r=8 (scale 0.01); c*sqrt(r) -> alpha ~ 7.64e+04"
    assert v.suggestion == (f"alpha is below {ALPHA_FLOOR_FRACTION:g} of c*sqrt(r) and no probe has run yet (the law "
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


@pytest.mark.parametrize("series", ["k_stars", "drift_ratios", "step_sizes"])
def test_series_errors_name_the_series(series):
    kw = {"k_stars": [1.0, 1.0], series: [1.0, -1.0]}
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, kw.pop("k_stars"), c=C, **kw)
    assert str(e.value) == f"{series}[1] must be a number >= 0 (inf allowed; None or NaN: not measured), got -1.0"


def test_alignment_and_previous_errors_word_for_word():
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, [1.0, 2.0], c=C, gain_zs=[1.0])
    assert str(e.value) == "gain_zs has 1 values but k_stars has 2; they must align (None for a probe without one)"
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, [1.0], c=C, help_zs=[1.0, "x"])
    assert str(e.value).startswith("help_zs")  # the bad value or the misalignment, either is named
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, [1.0], c=C, gain_zs=["x"])
    assert str(e.value) == "gain_zs[0] must be a number (inf allowed; None or NaN: not measured), got 'x'"
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, [1.0], c=C, steps=[1, 2])
    assert str(e.value) == "steps has 2 values but k_stars has 1; they must align"
    with pytest.raises(ValueError) as e:
        regime_verdict(ALPHA, R, S, c=C, previous="too_small")
    assert str(e.value) == ("previous verdicts must be among ('alpha-too-small', 'too-aggressive', 'in-regime', "
                            "'uncertain'), got 'too_small'")
