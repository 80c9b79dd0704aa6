"""AlphaRegimeAdvisor (docs/metrics.md sections 5 and 6, estimator v2) against dense references: the
direction, the probe set, the losses along the line, the descent search and every number of a probe
record recomputed from the factors an independent recorder kept."""
import dataclasses
import math
import statistics
import warnings

import numpy as np
import pytest
import torch

import lora_alpha
from callbacks import AlphaRegimeAdvisor, AlphaRegimeWarning, SignalDriftMonitor
from callbacks.advisor import VERDICT_CODES
from callbacks.measurements import summary_tag
from signaldrift import DEFAULT_TAUS, VerdictRules, regime_verdict
from tests.callbacks.helpers import lightning, make_module, make_recorder, make_trainer, read_scalars, read_tags
from tests.signaldrift.test_gap_estimate import ref_refine, ref_search


def _layers(module):
    return {n: m for n, m in module.named_modules() if isinstance(m, lora_alpha.LoRALinear)}


def _first_batches(module, k):
    it = iter(module.train_dataloader())
    return [next(it) for _ in range(k)]


def _batch_units(module, batch):
    """One unit per batch: the training loss (what the advisor's training_step fallback gives)."""
    x, y = batch
    return [float(torch.nn.functional.mse_loss(module(x), y))]


def _example_units(module, batch):
    x, y = batch
    return ((module(x) - y) ** 2).mean(1).double().tolist()


def _per_example_loss_fn(module, batch):
    x, y = batch
    return ((module(x) - y) ** 2).mean(1)


def _dense_curve(module, rec, t, W, batches, units_of, taus=DEFAULT_TAUS):
    """Unit losses at every tau of the grid: factors theta_{t+1} + (tau - 1) u with
    u = (theta_{t+1} - theta_{t+1-W}) / W from the recorder (theta_{t+1} = after step t, theta_{t+1-W} =
    before step t + 1 - W)."""
    layers = _layers(module)
    start, end = rec.before[t + 1 - W], rec.after[t]
    out = {}
    module.eval()
    with torch.no_grad():
        for tau in taus:
            for n, m in layers.items():
                for f, attr in (("A", "lora_A"), ("B", "lora_B")):
                    u = (end[n][f] - start[n][f]) / W
                    getattr(m, attr).copy_(end[n][f] + (tau - 1.0) * u)
            out[tau] = [v for b in batches for v in units_of(module, b)]
    return out


def _check_probe(probe, curve, taus=DEFAULT_TAUS):
    """The probe record against the dense curve: the search's path, the losses, and every number."""
    means = {t: float(np.mean(v)) for t, v in curve.items()}
    order = ref_search(means.__getitem__, taus)
    done = sorted(order)
    assert probe["taus"] == done
    assert probe["losses"] == pytest.approx([means[t] for t in done], rel=1e-5)
    assert probe["units"] == len(curve[1.0])
    assert probe["step_gap"] == pytest.approx(ref_refine(done, [means[t] for t in done]), rel=1e-4, abs=1e-9)
    best = done[int(np.argmin([means[t] for t in done]))]
    assert probe["gap_gain"] == pytest.approx((means[1.0] - means[best]) / means[1.0], rel=1e-3, abs=1e-7)
    n = len(curve[1.0])
    if n < 2:
        assert probe["gap_z"] is None
    elif best == 1.0:
        assert probe["gap_z"] == 0.0
    else:
        d = np.array(curve[1.0]) - np.array(curve[best])
        assert probe["gap_z"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(n)), rel=1e-3)
    gaps = [ref_refine(done, [curve[t][i] for t in done]) for i in range(n)]
    lo, hi = np.percentile(gaps, [25, 75])
    assert probe["step_gap_lo"] == pytest.approx(lo, rel=1e-4, abs=1e-9)
    assert probe["step_gap_hi"] == pytest.approx(hi, rel=1e-4, abs=1e-9)
    return done


# ----------------------------------------------------------------- the probe against a dense reference
@pytest.mark.parametrize("gap_every, window_steps, W, max_steps, lr, per_example", [
    (3, 2, 2, 10, 0.05, False),  # a window shorter than the cadence; one unit per batch (training_step)
    (2, 8, 2, 7, 0.05, True),  # window_steps > gap_every: W = gap_every; one unit per example (loss_fn)
    (4, 1, 1, 9, 0.01, True),  # W = 1: the last step alone (version 1's direction)
    (3, 3, 3, 7, 1e-3, True),  # a small lr: the loss falls far along the mean step
])
def test_probes_match_a_dense_reference(gap_every, window_steps, W, max_steps, lr, per_example):
    loss_fn = _per_example_loss_fn if per_example else None
    advisor = AlphaRegimeAdvisor(gap_every=gap_every, window_steps=window_steps, loss_fn=loss_fn)
    rec = make_recorder()
    module = make_module(lr=lr)
    make_trainer(max_steps=max_steps, callbacks=[advisor, rec]).fit(module)
    expected_steps = [t for t in range(1, max_steps) if t % gap_every == 0]
    assert [p["step"] for p in advisor.probes] == expected_steps
    assert advisor.window_steps == W and all(p["window_steps"] == W for p in advisor.probes)
    batches = _first_batches(module, 2)
    units_of = _example_units if per_example else _batch_units
    paths = []
    for probe in advisor.probes:
        curve = _dense_curve(module, rec, probe["step"], W, batches, units_of)
        paths.append(_check_probe(probe, curve))
        assert probe["units"] == (16 if per_example else 2)
    # the reference is not trivially satisfied: a wrong window length gives other losses off tau = 1
    wrong = _dense_curve(module, rec, advisor.probes[-1]["step"], W + 1 if W < 3 else 1, batches, units_of)
    tau = [t for t in advisor.probes[-1]["taus"] if t != 1.0][0]
    assert float(np.mean(wrong[tau])) != pytest.approx(advisor.probes[-1]["losses"][advisor.probes[-1]["taus"].index(tau)],
                                                       rel=1e-6)


def test_search_paths_cover_both_branches():
    """Across cadences and learning rates the descent search takes each branch: down to 0 (overshoot or in
    range), and up the grid (the loss falls along a small step)."""
    fast, slow = AlphaRegimeAdvisor(gap_every=2), AlphaRegimeAdvisor(gap_every=1, window_steps=1)
    make_trainer(max_steps=7, callbacks=[fast]).fit(make_module(lr=0.05))
    make_trainer(max_steps=3, callbacks=[slow]).fit(make_module(alpha=0.01, lr=1e-3))
    assert any(p["taus"][0] == 0.0 for p in fast.probes)
    assert any(p["taus"] == list(DEFAULT_TAUS[1:]) and p["step_gap"] == 64.0 for p in slow.probes)


def test_probes_only_after_steps_that_are_multiples_of_gap_every_never_step_0():
    for gap_every, max_steps, expected in [(1, 4, [1, 2, 3]), (3, 10, [3, 6, 9]), (5, 5, []), (4, 9, [4, 8])]:
        advisor = AlphaRegimeAdvisor(gap_every=gap_every)
        make_trainer(max_steps=max_steps, callbacks=[advisor]).fit(make_module(lr=0.05))
        assert [p["step"] for p in advisor.probes] == expected, gap_every
        if not expected:
            assert advisor.verdict is None


def test_window_is_the_smaller_of_window_steps_and_gap_every():
    assert AlphaRegimeAdvisor().window_steps == 8  # defaults: gap_every 50, window_steps 8
    assert AlphaRegimeAdvisor(gap_every=3).window_steps == 3
    assert AlphaRegimeAdvisor(gap_every=3, window_steps=2).window_steps == 2
    assert AlphaRegimeAdvisor(gap_every=10, window_steps=10).window_steps == 10
    assert AlphaRegimeAdvisor(gap_every=1, window_steps=5).window_steps == 1


# ----------------------------------------------------------------- the probe set and the loss
@pytest.mark.parametrize("probe_batches", [1, 2, 3])
def test_probe_set_holds_the_first_training_batches(probe_batches):
    advisor = AlphaRegimeAdvisor(gap_every=2, probe_batches=probe_batches)
    module = make_module(lr=0.05)
    make_trainer(max_steps=5, callbacks=[advisor]).fit(module)
    expected = _first_batches(module, probe_batches)
    assert len(advisor.probe_set) == probe_batches
    for got, want in zip(advisor.probe_set, expected):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(advisor.probe_set[0][0], _first_batches(module, probe_batches + 1)[-1][0])
    assert all(p["units"] == probe_batches for p in advisor.probes)  # training_step: one unit per batch


def test_probe_set_is_a_detached_copy():
    seen = []
    L = lightning()

    class Keep(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch)

    advisor = AlphaRegimeAdvisor(gap_every=2, probe_batches=2)
    make_trainer(max_steps=3, callbacks=[advisor, Keep()]).fit(make_module())
    for got, batch in zip(advisor.probe_set, seen):
        assert torch.equal(got[0], batch[0]) and got[0].data_ptr() != batch[0].data_ptr()


def test_a_given_probe_batch_and_loss_fn():
    calls, modes = [], []

    def loss_fn(module, batch):
        calls.append(batch[0].shape)
        modes.append((module.training, torch.is_grad_enabled()))
        return torch.nn.functional.mse_loss(module(batch[0]), batch[1])

    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(3, 8, generator=g), torch.randn(3, 2, generator=g))
    advisor = AlphaRegimeAdvisor(gap_every=2, probe_batch=batch, probe_batches=4, loss_fn=loss_fn, taus=(0, 1, 2))
    L = lightning()

    class Mode(L.Callback):  # training resumes in train mode after the probe
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes_after.append(pl_module.training)

    modes_after = []
    make_trainer(max_steps=4, callbacks=[advisor, Mode()]).fit(make_module())
    assert modes_after == [True] * 4
    assert len(advisor.probe_set) == 1 and advisor.probe_set[0] is batch  # not extended by training batches
    assert [p["step"] for p in advisor.probes] == [2]
    probe = advisor.probes[0]
    assert probe["units"] == 1 and probe["gap_z"] is None  # a scalar loss: one unit
    # one forward per evaluated tau, then one per k of the scale probe (no validation loader: the same batch)
    assert all(s == (3, 8) for s in calls) and len(calls) == len(probe["taus"]) + len(probe["scale_ks"])
    assert set(modes) == {(False, False)}  # eval mode, no gradients


def test_probe_losses_method_gives_one_unit_per_example():
    module = make_module(lr=0.05)
    module.probe_losses = lambda batch: ((module(batch[0]) - batch[1]) ** 2).mean(1)
    rec = make_recorder()
    advisor = AlphaRegimeAdvisor(gap_every=2, window_steps=2)
    make_trainer(max_steps=5, callbacks=[advisor, rec]).fit(module)
    del module.probe_losses
    batches = _first_batches(module, 2)
    assert [p["units"] for p in advisor.probes] == [16, 16]
    for probe in advisor.probes:
        _check_probe(probe, _dense_curve(module, rec, probe["step"], 2, batches, _example_units))


def test_probe_does_not_change_training():
    plain = make_module(lr=0.05)
    make_trainer(max_steps=4).fit(plain)
    probed = make_module(lr=0.05)
    make_trainer(max_steps=4, callbacks=[AlphaRegimeAdvisor(gap_every=1, window_steps=3),
                                         SignalDriftMonitor(full_grad_every=1)]).fit(probed)
    for (n, a), (_, b) in zip(plain.named_parameters(), probed.named_parameters()):
        assert torch.equal(a, b), n


def test_zero_learning_rate_is_not_probed():
    advisor = AlphaRegimeAdvisor(gap_every=1)
    monitor = SignalDriftMonitor(full_grad_every=None)
    make_trainer(max_steps=3, callbacks=[advisor, monitor]).fit(make_module(lr=0.0))
    assert advisor.probes == [] and advisor.verdict is None
    assert monitor.engine.skipped_steps == 3 * 2  # every layer, every step: nothing moved


# ----------------------------------------------------------------- logging and the verdict
def test_logged_tags_are_the_probe_records(tmp_path):
    L = lightning()
    rules = VerdictRules(window=2, agree=1, split=1)
    advisor = AlphaRegimeAdvisor(gap_every=1, loss_fn=_per_example_loss_fn, rules=rules)
    logger = L.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)
    make_trainer(max_steps=8, logger=logger, callbacks=[advisor]).fit(make_module(lr=0.01))
    scalars = read_scalars(tmp_path)
    steps = [p["step"] for p in advisor.probes]
    assert steps == list(range(1, 8))
    for tag in ("Summary/step_gap", "Summary/step_gap_lo", "Summary/step_gap_hi", "Summary/step_gap_median"):
        assert set(scalars[tag]) == set(steps), tag
    for k in ("step_gap", "step_gap_lo", "step_gap_hi", "gap_z", "gap_gain"):
        tag = summary_tag(k)
        expected = {p["step"]: p[k] for p in advisor.probes if p[k] is not None and math.isfinite(p[k])}
        assert expected and set(scalars[tag]) == set(expected), tag
        for s, v in expected.items():
            assert scalars[tag][s] == pytest.approx(v, rel=1e-6, abs=1e-7), (tag, s)
    gaps = [p["step_gap"] for p in advisor.probes]
    assert len(set(round(g, 3) for g in gaps)) >= 4  # the median below is not the same over any window
    for i, p in enumerate(advisor.probes):  # the median over the last rules.window (2) probes
        assert scalars["Summary/step_gap_median"][p["step"]] == pytest.approx(statistics.median(gaps[max(0, i - 1):i + 1]),
                                                                              rel=1e-6)
        assert scalars["Summary/alpha_verdict"][p["step"]] == VERDICT_CODES[p["verdict"]]
    assert "signaldrift/verdict/text_summary" in read_tags(tmp_path)["tensors"]


def test_each_probe_records_the_verdict_reached_after_it():
    """Each record's verdict equals regime_verdict (rules v3) over every record up to it: its k*, gain_z,
    help_z, drift ratio, the largest step size since the previous probe and the verdicts before it."""
    rules = VerdictRules(window=1, agree=1, split=1, step_size_high=10.0, drift_ratio_high=10.0)
    advisor = AlphaRegimeAdvisor(gap_every=1, window_steps=1, rules=rules, loss_fn=_per_example_loss_fn, size_every=1)
    module = make_module(lr=0.05)
    make_trainer(max_steps=7, callbacks=[advisor]).fit(module)
    assert advisor.window == 1 and len(advisor.probes) == 6
    m = next(iter(_layers(module).values()))
    alpha, rank, scale = float(m.alpha), m.rank, float(m.scaling)
    assert (alpha, rank, scale) == (8.0, 2, 4.0)
    seen = []
    for i, p in enumerate(advisor.probes):
        done = advisor.probes[:i + 1]
        ref = regime_verdict(alpha, rank, scale, [q["k_star"] for q in done], gain_zs=[q["scale_gain_z"] for q in done],
                             help_zs=[q["scale_help_z"] for q in done], drift_ratios=[q["drift_ratio"] for q in done],
                             step_sizes=[q["step_size_max"] for q in done], steps=[q["step"] for q in done],
                             previous=seen, rules=rules)
        assert p["verdict"] == ref.verdict, i
        assert p["step_size_max"] == p["step_size"]  # watched every step: the probe's own step is the interval
        seen.append(ref.verdict)
    assert advisor.verdict.verdict == advisor.probes[-1]["verdict"]
    assert set(advisor.probes[0]) >= {"step", "step_gap", "step_gap_lo", "step_gap_hi", "gap_z", "gap_gain", "taus",
                                      "losses", "units", "window_steps", "drift_ratio", "step_size", "step_size_max",
                                      "k_star", "k_best", "scale_gain_z", "scale_help_z", "scale_ks", "scale_losses",
                                      "scale_zs", "scale_units", "verdict"}
    assert advisor.probes[0]["scale_units"] == 16  # two training batches of 8, one unit per example


def test_the_scale_probe_matches_a_dense_reference():
    """Each record's curve: the loss of every example with each LoRA B stretched by k, recomputed here from
    the recorder's factors after the step (W = W0 + k s B A), and k*, gain_z, help_z from those losses."""
    rec = make_recorder()
    advisor = AlphaRegimeAdvisor(gap_every=2, window_steps=1, loss_fn=_per_example_loss_fn)
    module = make_module(lr=0.02)
    make_trainer(max_steps=5, callbacks=[rec, advisor]).fit(module)
    layers = _layers(module)
    batches = advisor.probe_set
    for p in advisor.probes:
        after = rec.after[p["step"]]
        module.eval()
        curve = {}
        with torch.no_grad():
            for k in p["scale_ks"]:
                for n, m in layers.items():
                    m.lora_A.copy_(after[n]["A"])
                    m.lora_B.copy_(k * after[n]["B"])
                curve[k] = np.array([v for b in batches for v in _example_units(module, b)])
        ks = p["scale_ks"]
        means = [float(curve[k].mean()) for k in ks]
        assert p["scale_losses"] == pytest.approx(means, rel=1e-6)
        one = ks.index(1.0)
        best = int(np.argmin(means)) if min(means) < means[one] else one
        assert p["k_best"] == ks[best]
        d = curve[1.0] - curve[ks[best]]
        z_ref = 0.0 if best == one else d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
        assert p["scale_gain_z"] == pytest.approx(z_ref, rel=1e-4, abs=1e-9)
        h = curve[0.0] - curve[1.0]
        assert p["scale_help_z"] == pytest.approx(h.mean() / (h.std(ddof=1) / math.sqrt(len(h))), rel=1e-4)
        if 0 < best < len(ks) - 1 and best != one:
            a2, b1, _ = np.polyfit(ks[best - 1:best + 2], means[best - 1:best + 2], 2)
            assert p["k_star"] == pytest.approx(float(np.clip(-b1 / (2 * a2), ks[best - 1], ks[best + 1])), rel=1e-5)
        elif best == one:
            assert p["k_star"] == 1.0


def test_the_scale_probe_uses_validation_batches_and_skips_a_nonzero_start():
    L = lightning()
    module = make_module(lr=0.02)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(15, 8, generator=g), torch.randn(15, 2, generator=g)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    type(module).validation_step = lambda self, batch, batch_idx: None  # a run with validation (its own class)
    type(module).val_dataloader = lambda self: val
    advisor = AlphaRegimeAdvisor(gap_every=2, loss_fn=_per_example_loss_fn, scale_batches=2)
    make_trainer(max_steps=3, callbacks=[advisor], limit_val_batches=1).fit(module)
    assert len(advisor.scale_set) == 2 and torch.equal(advisor.scale_set[1][0], x[5:10])
    assert advisor.probes[0]["scale_units"] == 10 and advisor.probes[0]["units"] == 16
    # B0 != 0: W_base + k s B A is not W0 + k dW, so no scale probe (one warning); the step gap still runs
    odd = make_module(lr=0.02)
    with torch.no_grad():
        for m in _layers(odd).values():
            m.lora_B.fill_(0.01)
    other = AlphaRegimeAdvisor(gap_every=2, loss_fn=_per_example_loss_fn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_steps=5, callbacks=[other]).fit(odd)
    assert other.from_zero is False and other.probes and all("k_star" not in p for p in other.probes)
    assert sum("the scale probe needs B0 = 0" in str(w.message) for w in caught) == 1


def test_too_small_alpha_warns_once_with_a_suggestion():
    # alpha 0.01: the loss keeps falling to k = 16 at every probe; the training-step units (one per batch)
    # agree with z about 1, so these rules count z >= 0.5
    rules = VerdictRules(window=3, agree=2, split=2, z_min=0.5)
    advisor = AlphaRegimeAdvisor(gap_every=1, window_steps=1, rules=rules)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_steps=4, callbacks=[advisor]).fit(make_module(alpha=0.01, lr=1e-3))
    ours = [w for w in caught if issubclass(w.category, AlphaRegimeWarning)]
    assert [p["k_star"] for p in advisor.probes] == [16.0, 16.0, 16.0]
    assert all(0.5 <= p["scale_gain_z"] < 2.0 for p in advisor.probes)
    assert len(ours) == 1
    assert advisor.verdict.verdict == "alpha-too-small"
    assert advisor.verdict.suggested_alpha == pytest.approx(0.08)  # round2(0.01 * min(16, 8))
    assert "Alpha regime: alpha-too-small" in advisor.summary()
    # rules that need z >= 2: the same run stays in regime and says nothing
    quiet = AlphaRegimeAdvisor(gap_every=1, window_steps=1, rules=dataclasses.replace(rules, z_min=2.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_steps=4, callbacks=[quiet]).fit(make_module(alpha=0.01, lr=1e-3))
    assert not [w for w in caught if issubclass(w.category, AlphaRegimeWarning)]
    assert quiet.verdict.verdict == "in-regime"
    # the shipped rules (any mean gain, 3 of the last 3) name it at the third probe
    shipped = AlphaRegimeAdvisor(gap_every=1, window_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_steps=4, callbacks=[shipped]).fit(make_module(alpha=0.01, lr=1e-3))
    assert len([w for w in caught if issubclass(w.category, AlphaRegimeWarning)]) == 1
    assert [p["verdict"] for p in shipped.probes] == ["in-regime", "in-regime", "alpha-too-small"]
    # TensorBoard's text is Markdown: every asterisk of the evidence is escaped ("c*sqrt(r) ... k*" was italic)
    text = shipped._verdict_text()
    body = text.split("  \n", 1)[1]
    assert text.startswith("**alpha-too-small**  \n") and "c\\*sqrt(r)" in body
    assert body.count("*") == body.count("\\*") > 0  # each asterisk has its backslash


# ----------------------------------------------------------------- state and resume
def test_state_round_trip_and_a_version_1_state():
    advisor = AlphaRegimeAdvisor(gap_every=1, probe_batches=2)
    make_trainer(max_steps=3, callbacks=[advisor]).fit(make_module())
    state = advisor.state_dict()
    other = AlphaRegimeAdvisor(gap_every=1)
    other.load_state_dict(state)
    assert other.probes == advisor.probes and len(other.probes) == 2
    assert other.probes is not advisor.probes
    assert len(other.probe_set) == 2
    for a, b in zip(other.probe_set, advisor.probe_set):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    g = torch.Generator().manual_seed(1)
    v1_batch = (torch.randn(4, 8, generator=g), torch.randn(4, 2, generator=g))
    v1 = AlphaRegimeAdvisor(gap_every=1)
    v1.load_state_dict({"probes": [{"step": 1, "step_gap": 2.0, "gap_gain": 0.1}], "warned": True,
                        "probe_batch": v1_batch})
    assert v1.probe_set == [v1_batch] and v1.probes[0]["step_gap"] == 2.0 and v1.state_dict()["warned"] is True
    assert AlphaRegimeAdvisor(gap_every=1).state_dict()["warned"] is False


def _resume_run(tmp_path, window_steps, first_steps, total_steps):
    L = lightning()

    def fit(max_steps, ckpt_path=None):
        advisor = AlphaRegimeAdvisor(gap_every=4, window_steps=window_steps)
        ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=first_steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_trainer(max_steps=max_steps, enable_checkpointing=True, callbacks=[advisor, ckpt]).fit(
                make_module(lr=0.05), ckpt_path=ckpt_path)
        return advisor

    first = fit(first_steps)
    return first, fit(total_steps, str(tmp_path / "ckpt" / "last.ckpt"))


def test_a_resume_inside_a_window_skips_that_probe(tmp_path):
    # W = 3: the probe at step 4 starts its window before step 2; a resume after 3 steps has lost it, so that
    # probe has no step gap; the scale probe needs no window and still runs
    first, resumed = _resume_run(tmp_path / "a", window_steps=3, first_steps=3, total_steps=9)
    assert first.probes == []
    assert [p["step"] for p in resumed.probes] == [4, 8]
    assert math.isnan(resumed.probes[0]["step_gap"]) and "taus" not in resumed.probes[0]
    assert "taus" in resumed.probes[1] and all("k_star" in p for p in resumed.probes)
    for a, b in zip(resumed.probe_set, first.probe_set):  # the probe set came from the checkpoint
        assert torch.equal(a[0], b[0])
    uninterrupted = AlphaRegimeAdvisor(gap_every=4, window_steps=3)
    make_trainer(max_steps=9, callbacks=[uninterrupted]).fit(make_module(lr=0.05))
    assert [p["step"] for p in uninterrupted.probes] == [4, 8]
    assert all("taus" in p for p in uninterrupted.probes)


def test_a_resume_before_the_window_keeps_the_probe(tmp_path):
    # W = 1: the window of the probe at step 4 starts at step 4 itself, after the resume
    _, resumed = _resume_run(tmp_path / "b", window_steps=1, first_steps=3, total_steps=9)
    assert [p["step"] for p in resumed.probes] == [4, 8]


# ----------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs, match", [
    (dict(gap_every=0), "gap_every must be a positive int, got 0"),
    (dict(probe_batches=0), "probe_batches must be a positive int, got 0"),
    (dict(window_steps=0), "window_steps must be a positive int, got 0"),
    (dict(window_steps=-3), "window_steps must be a positive int"),
    (dict(taus=(0, 2)), "include 1"),
    (dict(taus=(0, 0.5, 1)), "a value above 1"),
    (dict(taus=(1,)), "a value above 1"),
    (dict(taus=(-1, 1, 2)), "taus must be finite, >= 0"),
    (dict(taus=(0, 1, float("inf"))), "taus must be finite"),
    (dict(taus=(0, 1, 2, float("nan"))), "taus must be finite"),
    (dict(rules={"window": 3}), "rules must be a signaldrift.VerdictRules, got dict"),
    (dict(rules=None), "rules must be a signaldrift.VerdictRules, got NoneType"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlphaRegimeAdvisor(**kwargs)


@pytest.mark.parametrize("removed", [dict(window=3), dict(min_probes=2)])
def test_version_1_arguments_are_gone(removed):
    with pytest.raises(TypeError):
        AlphaRegimeAdvisor(**removed)


def test_the_step_size_watch_skips_step_0_and_feeds_the_peak():
    """Every size_every steps but never step 0 (B0 = 0: Adam's first step moves only B), and at every probe;
    the peak is the largest median step size of the steps watched, checked against a recorder's factors."""
    from signaldrift import step_split

    advisor = AlphaRegimeAdvisor(gap_every=100, size_every=2)
    watched = []
    original = advisor._watch_step

    def spy(trainer, pl_module):
        watched.append(trainer.global_step - 1)
        original(trainer, pl_module)

    advisor._watch_step = spy
    rec = make_recorder()
    module = make_module(lr=0.05)
    make_trainer(max_steps=5, callbacks=[advisor, rec]).fit(module)
    assert watched == [2, 4]
    sizes = {}
    for step in (0, *watched):
        per_layer = []
        for name, b in rec.before[step].items():
            a = rec.after[step][name]
            split = step_split(b["A"].double(), b["B"].double(), a["A"].double(), a["B"].double(), b["scale"],
                               float(b["W0"].double().norm()))
            per_layer.append(split.step_size)
        sizes[step] = statistics.median(per_layer)
    assert advisor.step_size_peak == pytest.approx(max(sizes[s] for s in watched), rel=1e-6)
    assert sizes[0] != pytest.approx(advisor.step_size_peak, rel=1e-3)  # step 0 would have been another value


# ----------------------------------------------------------------- misuse
def test_a_model_without_lora_is_refused_at_setup():
    from callbacks.engine import NoLoRALayersError

    module = make_module(model=torch.nn.Sequential(torch.nn.Linear(8, 2)))
    with pytest.raises(NoLoRALayersError, match="AlphaRegimeAdvisor found no LoRA layer"):
        make_trainer(max_steps=2, callbacks=[AlphaRegimeAdvisor(gap_every=1)]).fit(module)


def test_an_advisor_reused_for_a_new_fit_starts_clean():
    advisor = AlphaRegimeAdvisor(gap_every=1, window_steps=1)
    make_trainer(max_steps=4, callbacks=[advisor]).fit(make_module(alpha=0.01, lr=1e-3))
    first_set = advisor.probe_set
    assert [p["step"] for p in advisor.probes] == [1, 2, 3]
    make_trainer(max_steps=3, callbacks=[advisor]).fit(make_module(alpha=8.0, lr=1e-2))
    assert [p["step"] for p in advisor.probes] == [1, 2]  # only this fit's probes
    assert advisor.probe_set is not first_set and advisor.verdict.probes == 2


@pytest.mark.parametrize("hook, args", [("setup", ("fit",)), ("on_train_start", ()), ("on_train_batch_start", (None, 0)),
                                        ("on_before_optimizer_step", (None,)), ("on_train_batch_end", (None, None, 0)),
                                        ("on_fit_end", ())])
def test_hooks_called_without_a_trainer_or_module_say_so(hook, args):
    advisor = AlphaRegimeAdvisor()
    with pytest.raises(TypeError, match=rf"AlphaRegimeAdvisor\.{hook}: trainer is None"):
        getattr(advisor, hook)(None, make_module(), *args)
    with pytest.raises(TypeError, match=rf"AlphaRegimeAdvisor\.{hook}: pl_module must be the LightningModule .*got NoneType"):
        getattr(advisor, hook)(make_trainer(max_steps=1), None, *args)
