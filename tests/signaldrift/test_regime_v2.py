"""Rules v2 of the alpha-regime verdict, rule by rule (docs/metrics.md §6, "Alpha regime verdict (rules v2)").

Every threshold and count is read from ``VerdictRules()`` / ``DEFAULT_RULES`` (the constants will be
re-calibrated); the expected verdicts, counts and suggestions are worked out here from the docs' definitions,
not by calling the code's helpers."""
import itertools
import math

import pytest

from signaldrift.regime import (
    ALPHA_FLOOR_FRACTION,
    DEFAULT_RULES,
    DRIFT_RATIO_HIGH,
    GAP_GAIN_MIN,
    GAP_TOO_AGGRESSIVE,
    GAP_TOO_SMALL,
    GAP_Z_MIN,
    MAX_SUGGESTED_FACTOR,
    STEP_SIZE_HIGH,
    VERDICT_AGREE,
    VERDICT_SPLIT,
    VERDICT_WINDOW,
    VERDICTS,
    VerdictRules,
    gap_vote,
    regime_verdict,
)

RULES = VerdictRules()
K = RULES.agree
N = RULES.window
SPLIT = RULES.split
R, C = 16, 270.0
ALPHA = C * math.sqrt(R)  # 1080: on the law, so the square-root prior never decides here
S = ALPHA / R
INF, NAN = math.inf, math.nan

# One probe of each kind under RULES: (step_gap, gap_z, gap_gain).
Z, GAIN = RULES.gap_z_min, RULES.gap_gain_min  # at the significance thresholds: significant
BIG = 2 * RULES.gap_too_small  # votes "larger" when significant
MID = (RULES.gap_too_aggressive + RULES.gap_too_small) / 2  # in range whatever its significance
LOW = 0.0  # votes "overshoot" when significant (tau = 0 on the default grid)


def _below(x):
    return math.nextafter(x, -math.inf)


def _above(x):
    return math.nextafter(x, math.inf)


def _two_sig(x):
    """Two significant figures, from the decimal representation (the docs' round2)."""
    return float(f"{x:.2g}")


def _v(gaps=None, drifts=None, sizes=None, zs=None, gains=None, **kw):
    return regime_verdict(kw.pop("alpha", ALPHA), kw.pop("rank", R), kw.pop("scale", S), gaps, drifts, sizes, c=C,
                          gap_zs=zs, gap_gains=gains, **kw)


def test_structure_needed_by_these_tests():
    # The tests below place k "larger" and `split` "overshoot" votes in one window; if the chosen counts
    # change so that this no longer fits, the tests must be re-planned (not silently pass).
    assert K + SPLIT <= N and SPLIT <= K and K >= 2
    assert RULES == DEFAULT_RULES
    assert (RULES.gap_too_small, RULES.gap_too_aggressive, RULES.gap_z_min, RULES.gap_gain_min,
            RULES.drift_ratio_high, RULES.step_size_high, RULES.window, RULES.agree, RULES.split) == (
        GAP_TOO_SMALL, GAP_TOO_AGGRESSIVE, GAP_Z_MIN, GAP_GAIN_MIN, DRIFT_RATIO_HIGH, STEP_SIZE_HIGH,
        VERDICT_WINDOW, VERDICT_AGREE, VERDICT_SPLIT)
    assert VERDICTS == ("alpha-too-small", "too-aggressive", "in-regime", "uncertain")


# ------------------------------------------------------------------ gap_vote: one probe's vote


def test_gap_vote_band_edges_both_sides():
    r = RULES
    assert gap_vote(r.gap_too_small, Z, GAIN) == "larger"
    assert gap_vote(_below(r.gap_too_small), Z, GAIN) == "in range"
    assert gap_vote(INF, Z, GAIN) == "larger"
    assert gap_vote(r.gap_too_aggressive, Z, GAIN) == "in range"
    assert gap_vote(_below(r.gap_too_aggressive), Z, GAIN) == "overshoot"
    assert gap_vote(0.0, Z, GAIN) == "overshoot"
    assert gap_vote(NAN, Z, GAIN) == "NaN" and gap_vote(None, Z, GAIN) == "NaN"
    assert gap_vote(NAN) == "NaN"


@pytest.mark.parametrize("gap, side", [(BIG, "larger"), (LOW, "overshoot")])
def test_gap_vote_significance_both_sides(gap, side):
    r = RULES
    assert gap_vote(gap, r.gap_z_min, r.gap_gain_min) == side
    assert gap_vote(gap, _below(r.gap_z_min), r.gap_gain_min) == "in range"
    assert gap_vote(gap, r.gap_z_min, _below(r.gap_gain_min)) == "in range"
    assert gap_vote(gap, _below(r.gap_z_min), _below(r.gap_gain_min)) == "in range"
    assert gap_vote(gap, INF, INF) == side
    assert gap_vote(gap, -INF, INF) == "in range"


@pytest.mark.parametrize("gap, side", [(BIG, "larger"), (LOW, "overshoot")])
def test_gap_vote_none_or_nan_does_not_hold_a_vote_back(gap, side):
    low_z, low_gain = _below(RULES.gap_z_min), _below(RULES.gap_gain_min)
    for missing in (None, NAN):
        assert gap_vote(gap) == side
        assert gap_vote(gap, missing, missing) == side
        assert gap_vote(gap, missing, GAIN) == side
        assert gap_vote(gap, Z, missing) == side
        # ... but a measured value below its threshold still holds it back
        assert gap_vote(gap, low_z, missing) == "in range"
        assert gap_vote(gap, missing, low_gain) == "in range"


def test_gap_vote_in_range_band_ignores_significance():
    for z, gain in ((Z, GAIN), (INF, INF), (_below(Z), _below(GAIN)), (None, None)):
        assert gap_vote(MID, z, gain) == "in range"


def test_gap_vote_honours_passed_rules():
    custom = VerdictRules(gap_too_small=20.0, gap_too_aggressive=0.125, gap_z_min=7.0, gap_gain_min=0.375)
    assert gap_vote(20.0, 7.0, 0.375, custom) == "larger"
    assert gap_vote(_below(20.0), 7.0, 0.375, custom) == "in range"
    assert gap_vote(0.125, 7.0, 0.375, custom) == "in range"
    assert gap_vote(_below(0.125), 7.0, 0.375, custom) == "overshoot"
    assert gap_vote(20.0, _below(7.0), 0.375, custom) == "in range"
    assert gap_vote(20.0, 7.0, _below(0.375), custom) == "in range"


# ------------------------------------------------------------------ counts against an independent reference

# label -> (step_gap, gap_z, gap_gain) and the vote the docs' definition gives it
KINDS = {
    "larger": ((BIG, Z, GAIN), "larger"),
    "larger inf": ((INF, None, None), "larger"),
    "overshoot": ((LOW, Z, GAIN), "overshoot"),
    "in range": ((MID, Z, GAIN), "in range"),
    "quiet large": ((BIG, _below(Z), GAIN), "in range"),
    "quiet low": ((LOW, Z, _below(GAIN)), "in range"),
    "NaN": ((NAN, Z, GAIN), "NaN"),
    "None": ((None, None, None), "NaN"),
}


def _reference(labels):
    """The docs' rules 1, 2 (overshoot only), 3 and 5 on vote counts: (verdict, agreeing, counts)."""
    votes = [KINDS[label][1] for label in labels]
    n = {side: votes.count(side) for side in ("larger", "overshoot", "in range", "NaN")}
    if n["larger"] >= SPLIT and n["overshoot"] >= SPLIT:
        return "uncertain", max(n["larger"], n["overshoot"]), n
    if n["overshoot"] >= K:
        return "too-aggressive", n["overshoot"], n
    if n["larger"] >= K:
        return "alpha-too-small", n["larger"], n
    return "in-regime", n["in range"], n


def test_votes_agreeing_probes_and_dropped_match_an_independent_count():
    seen = set()
    for size in range(N + 1):
        for labels in itertools.combinations_with_replacement(sorted(KINDS), size):
            gaps, zs, gains = (list(col) for col in zip(*(KINDS[lb][0] for lb in labels))) if labels else ([], [], [])
            v = _v(gaps, zs=zs, gains=gains)
            verdict, agreeing, n = _reference(labels)
            seen.add(verdict)
            assert (v.verdict, v.agreeing, v.votes) == (verdict, agreeing, n), labels
            assert v.probes == size and v.dropped == n["NaN"], labels
            if size:
                assert (f"{n['larger']} say larger (>= {RULES.gap_too_small:g}), {n['overshoot']} overshoot "
                        f"(< {RULES.gap_too_aggressive:g}), {n['in range']} in range or not significant") in v.evidence
                assert (f", {n['NaN']} NaN" in v.evidence) == bool(n["NaN"]), labels
            if verdict == "alpha-too-small":
                larger = sorted((KINDS[lb][0][0] for lb in labels if KINDS[lb][1] == "larger"), reverse=True)
                assert v.suggested_alpha == _two_sig(ALPHA * min(larger[K - 1], MAX_SUGGESTED_FACTOR)), labels
            else:
                assert v.suggested_alpha is None, labels
    assert seen == set(VERDICTS)


def test_dropped_counts_nan_in_every_series():
    v = _v([BIG, None, NAN, MID], [NAN, 0.0, None], [None, 0.0])
    assert v.dropped == 2 + 2 + 1 and v.probes == 4 and v.votes["NaN"] == 2
    assert v.step_gap == (BIG + MID) / 2 and v.drift_ratio == 0.0 and v.step_size == 0.0


# ------------------------------------------------------------------ rule 1: uncertain


def test_rule1_uncertain_when_both_sides_reach_split():
    gaps = [BIG] * K + [LOW] * SPLIT
    v = _v(gaps)
    assert (v.verdict, v.suggested_alpha, v.agreeing) == ("uncertain", None, K)
    assert v.suggestion == (f"the probes disagree ({K} of {len(gaps)} say the step could be larger, {SPLIT} that it "
                            f"overshoots): no change is supported; keep alpha={ALPHA:g} and probe again")
    # one overshoot fewer: the larger side decides
    assert _v([BIG] * K + [LOW] * (SPLIT - 1)).verdict == "alpha-too-small"
    # the same from the other side
    assert _v([LOW] * K + [BIG] * SPLIT).verdict == "uncertain"
    assert _v([LOW] * K + [BIG] * (SPLIT - 1)).verdict == "too-aggressive"
    # exactly `split` on each side, neither with k: still uncertain, not in-regime
    assert _v([BIG] * SPLIT + [LOW] * SPLIT).verdict == "uncertain"
    # split larger votes alone: alpha-too-small when they reach k, else in-regime
    assert _v([BIG] * SPLIT + [LOW] * (SPLIT - 1)).verdict == ("alpha-too-small" if SPLIT >= K else "in-regime")


def test_rule1_comes_before_step_size_and_drift():
    gaps = [BIG] * SPLIT + [LOW] * SPLIT
    v = _v(gaps, [INF] * K, [INF] * K)
    assert v.verdict == "uncertain"


def test_non_significant_overshoots_do_not_make_a_split():
    gaps = [BIG] * K + [LOW] * SPLIT
    zs = [Z] * K + [_below(Z)] * SPLIT
    assert _v(gaps, zs=zs).verdict == "alpha-too-small"


# ------------------------------------------------------------------ rule 2: too-aggressive


def test_rule2_overshoot_k_of_the_window():
    v = _v([LOW] * K + [MID])
    assert (v.verdict, v.agreeing, v.suggested_alpha) == ("too-aggressive", K, None)
    assert v.suggestion == (f"{K} of {K + 1} probes say the step overshoots: lower the learning rate (about 0.5x), "
                            "not alpha; probe again")
    assert _v([LOW] * (K - 1) + [MID]).verdict == "in-regime"


def test_rule2_step_size_peak_both_sides():
    """size_high = (peak >= step_size_high), peak = max(step_size_peak, the step sizes counted): one is enough."""
    h = RULES.step_size_high
    v = _v([MID] * K, sizes=[0.0] * (N - 1) + [h])
    assert (v.verdict, v.suggested_alpha) == ("too-aggressive", None)
    assert _v([MID] * K, sizes=[_below(h)] * N).verdict == "in-regime"
    # the run's peak, passed in, counts though the recent step sizes are small (a collapsed run's steps shrink)
    assert _v([MID] * K, sizes=[0.0] * N, step_size_peak=h).verdict == "too-aggressive"
    assert _v([MID] * K, sizes=[0.0] * N, step_size_peak=_below(h)).verdict == "in-regime"
    assert _v([MID] * K, step_size_peak=h).verdict == "too-aggressive"  # no series needed
    assert _v(None, step_size_peak=h).verdict == "too-aggressive"  # nor a step gap
    # inf counts high, NaN never does
    assert _v([MID] * K, sizes=[INF]).verdict == "too-aggressive"
    assert _v([MID] * K, step_size_peak=INF).verdict == "too-aggressive"
    assert _v([MID] * K, sizes=[NAN] * N, step_size_peak=NAN).verdict == "in-regime"
    assert _v([MID] * K, sizes=[NAN, h], step_size_peak=NAN).verdict == "too-aggressive"


@pytest.mark.parametrize("mult", [1.0, 1.5, 3.0, 4.0, 5.0, 6.0, 50.0, INF])
def test_rule2_step_size_learning_rate_factor(mult):
    """clip(0.5 * step_size_high / peak, 0.1, 0.5), peak the largest of step_size_peak and the step sizes."""
    h = RULES.step_size_high
    peak = h * mult
    factor = min(max(0.5 * h / peak, 0.1), 0.5)
    words = (f"the step size reached {peak:.2g} (>= {h:g}, where the calibration's runs collapsed): lower the "
             f"learning rate (about {_two_sig(factor):g}x), not alpha; probe again")
    for kw in (dict(sizes=[h, peak, 0.0]), dict(sizes=[h, 0.0], step_size_peak=peak),
               dict(sizes=[peak], step_size_peak=h)):
        v = _v([MID] * K, **kw)
        assert (v.verdict, v.suggestion) == ("too-aggressive", words), kw


def test_rule2_step_size_factor_values_by_hand():
    h = RULES.step_size_high
    word = lambda **kw: _v([MID] * K, **kw).suggestion.split("about ")[1].split("x")[0]  # noqa: E731
    assert word(sizes=[h]) == "0.5"  # at the threshold: halve
    assert word(sizes=[2 * h, h]) == "0.25"
    assert word(sizes=[3 * h, 0.0]) == "0.17"  # 1/6 to two figures
    assert word(sizes=[2 * h], step_size_peak=3 * h) == "0.17"  # the larger of the two
    assert word(sizes=[3 * h], step_size_peak=2 * h) == "0.17"
    assert word(sizes=[5 * h]) == "0.1"
    assert word(step_size_peak=20 * h) == "0.1"  # clipped at 0.1


def test_step_size_outside_the_window_counts_only_through_the_peak():
    old = [INF] * N + [0.0] * N  # the high ones are out of the window
    assert _v([MID] * K, sizes=old).verdict == "in-regime"
    assert _v([MID] * K, sizes=old, step_size_peak=INF).verdict == "too-aggressive"
    assert _v([MID] * K, sizes=[INF] + [0.0] * N).verdict == "in-regime"  # just outside
    assert _v([MID] * K, sizes=[INF] + [0.0] * (N - 1)).verdict == "too-aggressive"  # the oldest inside


def test_rule2_drift_k_high_both_sides():
    d = RULES.drift_ratio_high
    v = _v([MID] * K, [d] * K)
    assert (v.verdict, v.agreeing, v.suggested_alpha) == ("too-aggressive", K, None)
    assert v.suggestion == (f"drift_ratio >= {d:g} in {K} of {K} probes: lower the learning rate (about 0.5x), "
                            "not alpha; probe again")
    assert _v([MID] * K, [d] * (K - 1) + [_below(d)]).verdict == "in-regime"
    assert _v([MID] * K, [INF] * K).verdict == "too-aggressive"  # inf counts high
    assert _v([MID] * K, [INF] * (K - 1) + [NAN] * (N - K + 1)).verdict == "in-regime"  # NaN never


# ------------------------------------------------------------------ rule 3: alpha-too-small by k of the window


def test_rule3_k_larger_both_sides():
    v = _v([BIG] * K)
    assert (v.verdict, v.agreeing) == ("alpha-too-small", K)
    assert _v([BIG] * (K - 1) + [MID]).verdict == "in-regime"


def test_rule3_blocked_by_a_high_step_size_peak_or_k_high_drifts_only():
    h, d = RULES.step_size_high, RULES.drift_ratio_high
    assert _v([BIG] * K, sizes=[h]).verdict == "too-aggressive"
    assert _v([BIG] * K, step_size_peak=h).verdict == "too-aggressive"
    assert _v([BIG] * K, sizes=[_below(h)] * N, step_size_peak=_below(h)).verdict == "alpha-too-small"
    assert _v([BIG] * K, [d] * K).verdict == "too-aggressive"
    assert _v([BIG] * K, [d] * (K - 1)).verdict == "alpha-too-small"
    assert _v([BIG] * K, [d] * (K - 1), [_below(h)] * N).verdict == "alpha-too-small"


def test_rule3_suggestion_uses_the_kth_largest_larger_gap():
    """g_k is the k-th largest among the "larger" votes: a bigger gap that is not significant does not count."""
    custom = VerdictRules(gap_too_small=1.5, gap_too_aggressive=0.5, window=5, agree=3, split=2)
    gaps = [7.5, 3.0, 2.0, 1.75, 1.0]
    zs = [_below(custom.gap_z_min), None, None, None, None]  # 7.5 is not significant
    v = regime_verdict(16.0, 8, 2.0, gaps, gap_zs=zs, rules=custom)
    assert v.verdict == "alpha-too-small" and v.votes == {"larger": 3, "overshoot": 0, "in range": 2, "NaN": 0}
    assert v.suggested_alpha == 28.0  # 16 * 1.75 (the 3rd of 3.0, 2.0, 1.75): 28
    assert "~1.8x larger" in v.suggestion and "capped" not in v.suggestion
    zs[0] = None  # now 7.5 counts: the 3rd largest is 2.0
    assert regime_verdict(16.0, 8, 2.0, gaps, gap_zs=zs, rules=custom).suggested_alpha == 32.0


def test_rule3_suggestion_cap_both_sides():
    g = MAX_SUGGESTED_FACTOR
    at = _v([g] * K)
    assert at.suggested_alpha == _two_sig(ALPHA * g) and "capped" not in at.suggestion
    above = _v([_above(g)] * K)
    assert above.suggested_alpha == _two_sig(ALPHA * g) and "(a capped first move; probe again)" in above.suggestion
    huge = _v([INF] * K)
    assert huge.suggested_alpha == _two_sig(ALPHA * g)


def test_rule3_suggestion_rounds_to_two_figures():
    # alpha 37.3 and g_k = 1.3 * RULES.gap_too_small: a product that needs rounding
    g = RULES.gap_too_small * 1.3
    v = _v([g] * K, alpha=37.3, scale=37.3 / R)  # below the law's floor, but the gaps decide
    expected = _two_sig(37.3 * min(g, MAX_SUGGESTED_FACTOR))
    assert v.suggested_alpha == expected != 37.3 * min(g, MAX_SUGGESTED_FACTOR)
    custom = VerdictRules(gap_too_small=1.5, gap_too_aggressive=0.5)
    assert regime_verdict(37.3, R, 37.3 / R, [2.0] * K, rules=custom).suggested_alpha == 75.0  # 74.6
    assert regime_verdict(0.0123, R, 0.0123 / R, [3.0] * K, rules=custom).suggested_alpha == 0.037  # 0.0369


# ------------------------------------------------------------------ rule 4: the law as a prior, only with no step gap


def test_rule4_floor_both_sides():
    floor = ALPHA_FLOOR_FRACTION * C * math.sqrt(R)
    at = regime_verdict(floor, R, floor / R, c=C)  # scale * R is exact: R is a power of two
    assert (at.verdict, at.suggested_alpha, at.agreeing) == ("in-regime", None, 0)
    below = regime_verdict(floor, R, _below(floor / R), c=C)
    assert (below.verdict, below.agreeing) == ("alpha-too-small", 0)
    assert below.suggested_alpha == _two_sig(below.recommended_alpha)
    assert below.recommended_alpha == pytest.approx(C * math.sqrt(R) * floor / (_below(floor / R) * R), rel=1e-15)


@pytest.mark.parametrize("no_gaps", [None, [], ()])
def test_rule4_applies_with_no_step_gap(no_gaps):
    v = regime_verdict(2.0, R, 2.0 / R, no_gaps, [0.0], [0.0], c=C)  # drift and step size alone do not stop it
    assert v.verdict == "alpha-too-small" and v.suggested_alpha == _two_sig(ALPHA)
    assert v.probes == 0


def test_rule4_not_once_a_step_gap_was_given():
    tiny = dict(alpha=2.0, scale=2.0 / R)
    assert _v([MID], **tiny).verdict == "in-regime"
    assert _v([LOW] * K, **tiny).verdict == "too-aggressive"
    v = _v([BIG] * K, **tiny)  # too small by the gaps: the suggestion is the gaps', not the law's
    assert v.verdict == "alpha-too-small" and v.suggested_alpha == _two_sig(2.0 * min(BIG, MAX_SUGGESTED_FACTOR))


def test_rule4_comes_after_rule2():
    assert regime_verdict(2.0, R, 2.0 / R, None, None, [INF] * K, c=C).verdict == "too-aggressive"


def test_rule4_under_another_scaling_rule():
    # rslora: scale = alpha / sqrt(r); the floor is judged on scale * r, the suggestion is in rslora's alpha
    scale = 2.0 / R
    v = regime_verdict(scale * math.sqrt(R), R, scale, c=C)
    assert v.verdict == "alpha-too-small"
    assert v.suggested_alpha == _two_sig(C * math.sqrt(R) * (scale * math.sqrt(R)) / (scale * R))


# ------------------------------------------------------------------ rule 5: in-regime, the case named


def test_rule5_in_regime_cases_are_named():
    keep = f"keep alpha={ALPHA:g}"
    none = _v()
    assert none.verdict == "in-regime" and "no step_gap measured yet" in none.suggestion
    few = _v([BIG] * (K - 1))
    assert few.verdict == "in-regime" and few.suggestion == (
        f"{K - 1} probe(s) so far, {K} must agree before a change is supported; {keep}")
    mixed = _v([BIG] * (K - 1) + [LOW] + [MID] * (N - K))
    assert mixed.verdict == "in-regime" and mixed.suggestion == (
        f"no side has {K} of the last {N} probes ({K - 1} larger, 1 overshoot): {keep}")
    calm = _v([MID] * N)
    assert (calm.verdict, calm.suggestion, calm.agreeing, calm.suggested_alpha) == ("in-regime", keep, N, None)


# ------------------------------------------------------------------ no direct flip


def _cases():
    h = RULES.step_size_high
    return {
        "alpha-too-small": dict(gaps=[BIG] * K),
        "too-aggressive": dict(gaps=[LOW] * K),
        "too-aggressive by step size": dict(gaps=[MID] * K, sizes=[h]),
        "too-aggressive by the peak step size": dict(gaps=[MID] * K, step_size_peak=h),
        "alpha-too-small by the prior": dict(alpha=2.0, scale=2.0 / R),
        "in-regime": dict(gaps=[MID] * K),
        "uncertain": dict(gaps=[BIG] * SPLIT + [LOW] * SPLIT),
    }


@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("previous", [None, *VERDICTS])
def test_no_direct_flip(case, previous):
    kw = _cases()[case]
    base = _v(**kw)
    got = _v(**kw, previous=previous)
    opposite = {("alpha-too-small", "too-aggressive"), ("too-aggressive", "alpha-too-small")}
    if (base.verdict, previous) in opposite:
        assert got.verdict == "uncertain" and got.suggested_alpha is None
        assert got.suggestion == (f"the evidence now points to {base.verdict} right after {previous}: "
                                  f"not acted on until it holds; {base.suggestion}")
        assert (got.votes, got.probes, got.dropped, got.evidence) == (base.votes, base.probes, base.dropped,
                                                                      base.evidence)
    else:
        assert got == base
    assert base.verdict == case.split(" by ")[0]


def test_previous_must_be_a_verdict():
    for bad in ("too small", "", "In-regime", 1, True):
        with pytest.raises(ValueError, match=r"previous must be one of .*got "):
            _v([MID], previous=bad)


# ------------------------------------------------------------------ the window


def test_old_values_outside_the_window_do_not_count():
    old = 4 * N
    h, d = RULES.step_size_high, RULES.drift_ratio_high
    # The old values alone say too-aggressive on every count; the last window is calm.
    loud = dict(gaps=[LOW] * old, drifts=[INF] * old, sizes=[INF] * old)
    assert _v(**loud).verdict == "too-aggressive"
    v = _v(loud["gaps"] + [MID] * N, loud["drifts"] + [d / 2] * N, loud["sizes"] + [h / 2] * N)
    assert (v.verdict, v.probes, v.agreeing) == ("in-regime", N, N)
    assert v.votes == {"larger": 0, "overshoot": 0, "in range": N, "NaN": 0}
    assert f"0 of {N} >= {d:g}" in v.evidence and f"peak {h / 2:.3g} (< {h:g}," in v.evidence
    # ... and old "larger" votes do not outvote a recent overshoot
    v = _v([BIG] * old + [LOW] * K + [MID] * (N - K))
    assert v.verdict == "too-aggressive" and v.votes["larger"] == 0


def test_window_boundary_is_exact():
    base = [MID] * (2 * N)
    base[-(K - 1):] = [BIG] * (K - 1)  # k-1 "larger" at the end
    outside = list(base)
    outside[-N - 1] = BIG  # just outside the window
    inside = list(base)
    inside[-N] = BIG  # the oldest value inside it
    assert _v(outside).verdict == "in-regime"
    assert _v(inside).verdict == "alpha-too-small"


def test_gap_zs_and_gains_are_windowed_aligned_with_the_gaps():
    gaps = [BIG] * (2 * N)
    quiet, loud = [_below(Z)] * N, [Z] * N
    assert _v(gaps, zs=quiet + loud).verdict == "alpha-too-small"
    assert _v(gaps, zs=loud + quiet).verdict == "in-regime"
    quiet, loud = [_below(GAIN)] * N, [GAIN] * N
    assert _v(gaps, gains=quiet + loud).verdict == "alpha-too-small"
    assert _v(gaps, gains=loud + quiet).verdict == "in-regime"


# ------------------------------------------------------------------ custom rules are honoured


CUSTOM = VerdictRules(gap_too_small=10.0, gap_too_aggressive=0.25, gap_z_min=5.0, gap_gain_min=0.3,
                      drift_ratio_high=0.5, step_size_high=0.2, window=4, agree=2, split=1)


def _c(gaps=None, drifts=None, sizes=None, zs=None, gains=None, **kw):
    return regime_verdict(ALPHA, R, S, gaps, drifts, sizes, c=C, gap_zs=zs, gap_gains=gains, rules=CUSTOM, **kw)


def test_custom_thresholds_both_sides():
    assert _c([10.0] * 2).verdict == "alpha-too-small"
    assert _c([_below(10.0)] * 2).verdict == "in-regime"
    assert _c([0.25] * 2).verdict == "in-regime"
    assert _c([_below(0.25)] * 2).verdict == "too-aggressive"
    assert _c([20.0] * 2, zs=[5.0] * 2).verdict == "alpha-too-small"
    assert _c([20.0] * 2, zs=[_below(5.0)] * 2).verdict == "in-regime"
    assert _c([20.0] * 2, gains=[0.3] * 2).verdict == "alpha-too-small"
    assert _c([20.0] * 2, gains=[_below(0.3)] * 2).verdict == "in-regime"
    assert _c([1.0] * 2, [0.5] * 2).verdict == "too-aggressive"
    assert _c([1.0] * 2, [_below(0.5)] * 2).verdict == "in-regime"
    v = _c([1.0] * 2, sizes=[0.4, 0.1])
    assert v.verdict == "too-aggressive" and "reached 0.4 (>= 0.2," in v.suggestion and "about 0.25x" in v.suggestion
    assert _c([1.0] * 2, sizes=[0.2]).verdict == "too-aggressive"
    assert _c([1.0] * 2, sizes=[_below(0.2)] * 2, step_size_peak=_below(0.2)).verdict == "in-regime"


def test_custom_counts_agree_split_window():
    assert _c([20.0, 1.0, 20.0]).verdict == "alpha-too-small"  # agree = 2
    assert _c([20.0, 1.0, 1.0]).verdict == "in-regime"
    assert _c([20.0, 0.0]).verdict == "uncertain"  # split = 1
    assert _c([1.0, 20.0, 1.0, 1.0, 20.0]).verdict == "alpha-too-small"  # window 4: both 20s count ...
    assert _c([20.0, 1.0, 1.0, 1.0, 20.0]).verdict == "in-regime"  # ... here the first 20 is out of it
    assert _c([20.0, 1.0, 1.0, 1.0, 20.0]).probes == 4


def test_custom_thresholds_are_the_ones_in_the_words():
    v = _c([20.0, 20.0], [0.1], [0.1])
    assert "2 say larger (>= 10), 0 overshoot (< 0.25), 0 in range or not significant (gap_gain < 0.3 or gap_z < 5)" \
        in v.evidence
    assert "0 of 1 >= 0.5" in v.evidence and "peak 0.1 (< 0.2," in v.evidence


def test_rules_must_be_verdict_rules():
    for bad in (None, {"window": 5}, "default"):
        with pytest.raises(ValueError, match="rules must be a VerdictRules"):
            _v([MID], rules=bad)


# ------------------------------------------------------------------ VerdictRules refuses bad values

POSITIVE = ["gap_too_small", "gap_too_aggressive", "drift_ratio_high", "step_size_high"]
NON_NEGATIVE = ["gap_z_min", "gap_gain_min"]
COUNTS = ["window", "agree", "split"]


@pytest.mark.parametrize("field", POSITIVE + NON_NEGATIVE)
@pytest.mark.parametrize("bad", [-1.0, -1e-300, NAN, INF, -INF, True, False, "1", None])
def test_rules_refuse_bad_thresholds(field, bad):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        VerdictRules(**{field: bad})


@pytest.mark.parametrize("field", POSITIVE)
def test_rules_refuse_zero_positive_thresholds(field):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        VerdictRules(**{field: 0.0})


@pytest.mark.parametrize("field", NON_NEGATIVE)
def test_rules_allow_zero_significance(field):
    rules = VerdictRules(**{field: 0.0})
    assert getattr(rules, field) == 0.0
    # gap_z or gap_gain of exactly 0 is then significant; just below is not
    kw = {"gap_z_min": "gap_z", "gap_gain_min": "gap_gain"}[field]
    assert gap_vote(BIG, **{kw: 0.0}, rules=rules) == "larger"
    assert gap_vote(BIG, **{kw: -1e-300}, rules=rules) == "in range"


@pytest.mark.parametrize("field", COUNTS)
@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None, "3"])
def test_rules_refuse_bad_counts(field, bad):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        VerdictRules(**{field: bad})


def test_rules_agree_must_not_exceed_window():
    with pytest.raises(ValueError, match=r"^agree \(4\) must not exceed window \(3\)"):
        VerdictRules(window=3, agree=4)
    assert VerdictRules(window=3, agree=3).agree == 3


def test_rules_gap_too_aggressive_must_be_below_gap_too_small():
    with pytest.raises(ValueError, match=r"^gap_too_aggressive \(2\.0\) must be at most 1 and gap_too_small \(2\.0\) above 1"):
        VerdictRules(gap_too_small=2.0, gap_too_aggressive=2.0)
    with pytest.raises(ValueError, match=r"gap_too_small \(1\.0\) above 1"):
        VerdictRules(gap_too_small=1.0, gap_too_aggressive=0.5)  # "larger" must mean larger than the step taken
    assert VerdictRules(gap_too_small=_above(1.0), gap_too_aggressive=1.0).gap_too_aggressive == 1.0
    with pytest.raises(ValueError, match=r"^gap_too_aggressive"):
        VerdictRules(gap_too_small=2.0, gap_too_aggressive=3.0)
    ok = VerdictRules(gap_too_small=2.0, gap_too_aggressive=1.0)
    assert gap_vote(_below(2.0), rules=ok) == "in range" and gap_vote(_below(1.0), rules=ok) == "overshoot"


def test_rules_are_frozen():
    with pytest.raises(AttributeError):
        RULES.window = 3  # type: ignore[misc]


# ------------------------------------------------------------------ the docs' example (docs/metrics.md §6 cites this)


def test_docs_example():
    """alpha 16, r 8, `standard` (scale 2), gaps [64, 64, 64, 1, 0], gains [0.2, 0.2, 0.2, 0, 0.01],
    z [3, 3, 3, 0, 1]: 3 larger, 0 overshoot (the 0 is not significant), alpha-too-small,
    suggested_alpha = round2(16 * 8) = 130."""
    v = regime_verdict(16, 8, 2.0, step_gaps=[64, 64, 64, 1, 0], gap_gains=[0.2, 0.2, 0.2, 0, 0.01],
                       gap_zs=[3, 3, 3, 0, 1])
    assert v.verdict == "alpha-too-small"
    assert v.votes == {"larger": 3, "overshoot": 0, "in range": 2, "NaN": 0}
    assert (v.probes, v.agreeing, v.dropped) == (5, 3, 0)
    assert v.suggested_alpha == 130.0
    assert v.suggestion.endswith("try alpha ~ 130 (a capped first move; probe again)")
    assert v.recommended_alpha == pytest.approx(270.0 * math.sqrt(8))
