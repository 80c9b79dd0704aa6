"""The TensorBoard dashboard as written: the layout read back from the event file, the summary tags,
the tag scheme (old runs included). No browser: what TensorBoard would draw is checked on the files."""
import pathlib
import re
import statistics

import pytest

from callbacks import AlphaRegimeAdvisor, SignalDriftMonitor
from callbacks.measurements import SUMMARY, TagKey, layer_tag, parse_tag, summary_tag, threshold_tag
from callbacks.tensorboard import short_layer_names, top_spectra
from signaldrift import regime
from tests.callbacks.helpers import lightning, make_module, make_trainer, read_scalars, read_tags

STEPS = 6


def _layout(log_dir) -> dict[str, dict[str, list[str]]]:
    """The Custom Scalars layout TensorBoard reads (its last layout event), as {category: {chart: patterns}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    (events,) = pathlib.Path(log_dir).rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
    acc.Reload()
    layout = layout_pb2.Layout.FromString(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto.string_val[0])
    return {c.title: {ch.title: list(ch.multiline.tag) for ch in c.chart} for c in layout.category}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    L = lightning("lightning.pytorch")
    module = make_module(lr=0.05)
    monitor = SignalDriftMonitor(full_grad_every=2, histogram_every=3,
                                 dashboard={"train loss": ["^train_loss$"]})
    advisor = AlphaRegimeAdvisor(gap_every=2)
    logger = L.loggers.TensorBoardLogger(str(tmp), name="tb", version=0)
    make_trainer(max_steps=STEPS, logger=logger, log_every_n_steps=1, callbacks=[monitor, advisor]).fit(module)
    return tmp, read_scalars(tmp), _layout(tmp), advisor


def test_every_layout_pattern_matches_a_logged_tag_and_charts_one_quantity(run):
    _, scalars, layout, _ = run
    assert list(layout)[0] == "Signal-Drift"
    charts = [(title, patterns) for category in layout.values() for title, patterns in category.items()]
    assert len(charts) >= 8
    for title, patterns in charts:
        for pattern in patterns:
            hits = [t for t in scalars if re.search(pattern, t)]
            assert hits, f"chart {title!r}: pattern {pattern!r} matches no logged tag"
        quantities = {parse_tag(t).metric for p in patterns for t in scalars if re.search(p, t) and parse_tag(t)}
        # a series and its median, spread (step_gap_lo/_hi: quartiles over the probe set) or thresholds chart one quantity
        quantities = {q.split("_too_")[0].removesuffix("_median").removesuffix("_high").removesuffix("_lo")
                      .removesuffix("_hi") for q in quantities}
        assert len(quantities) <= 1, f"chart {title!r} mixes {quantities}"
    first = layout["Signal-Drift"]
    gap = next(p for t, p in first.items() if t.startswith("step_gap"))
    drawn = {t for p in gap for t in scalars if re.search(p, t)}
    assert drawn == {summary_tag("step_gap"), summary_tag("step_gap_lo"), summary_tag("step_gap_hi"),
                     summary_tag("step_gap_median"), threshold_tag("step_gap_too_small"),
                     threshold_tag("step_gap_too_aggressive")}
    drift = next(p for t, p in first.items() if t.startswith("drift_ratio"))
    assert {t for p in drift for t in scalars if re.search(p, t)} == {"Summary/drift_ratio", "Summary/drift_ratio_max"}
    assert not any(re.search(p, layer_tag("model.fc1", "drift_ratio")) for _, ps in charts for p in ps)


def test_the_summary_is_small_sorts_first_and_holds_alpha_and_the_verdict(run):
    _, scalars, _, advisor = run
    summary = sorted(t for t in scalars if t.startswith(f"{SUMMARY}/"))
    assert len(summary) <= 12
    # TensorBoard's Time Series groups by the first path segment and compares character codes:
    # uppercase sorts before Lightning's lowercase `epoch` and before every other group.
    assert min(t.split("/")[0] for t in scalars) == SUMMARY
    assert summary[:2] == ["Summary/alpha", "Summary/alpha_verdict"]
    assert not any(t.startswith("signaldrift/model.") for t in scalars)  # per-layer tags have their own prefix
    assert layer_tag("model.fc1", "drift_ratio") in scalars
    # alpha and the verdict at every step (smoothing then bends only the step where the verdict changes)
    assert sorted(scalars["Summary/alpha"]) == list(range(STEPS))
    assert set(scalars["Summary/alpha"].values()) == {8.0}
    verdicts = scalars["Summary/alpha_verdict"]
    assert sorted(verdicts) == list(range(STEPS)) and set(verdicts.values()) <= {-1.0, 0.0, 0.5, 1.0}
    assert verdicts[STEPS - 1] == {"alpha-too-small": -1.0, "in-regime": 0.0, "uncertain": 0.5,
                                   "too-aggressive": 1.0}[advisor.verdict.verdict]
    assert set(scalars[threshold_tag("step_gap_too_small")].values()) == {regime.GAP_TOO_SMALL}
    assert set(scalars[threshold_tag("step_gap_too_aggressive")].values()) == {regime.GAP_TOO_AGGRESSIVE}
    median = statistics.median([advisor.probes[0]["step_gap"], advisor.probes[1]["step_gap"]])
    assert scalars["Summary/step_gap_median"][4] == pytest.approx(median, rel=1e-5)


def test_spectra_figure_logged_periodically(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp = run[0]
    (events,) = pathlib.Path(tmp).rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0})
    acc.Reload()
    steps = [e.step for e in acc.Images("signaldrift/update_spectra")]
    assert steps == [3, STEPS]  # every histogram_every steps (dW = 0 at step 0: nothing to draw), and at fit end
    assert "signaldrift_layers/model.fc1/singular_values" in read_tags(tmp)["histograms"]


def test_top_spectra_and_short_names():
    import torch

    spectra = {"m.enc.0.q": torch.tensor([1.0, 0.5]), "m.enc.1.q": torch.tensor([3.0]), "m.enc.1.v": torch.zeros(2)}
    assert [n for n, _ in top_spectra(spectra, k=5)] == ["m.enc.1.q", "m.enc.0.q"]  # zero update left out
    assert short_layer_names(["m.enc.0.q", "m.enc.1.q"]) == {"m.enc.0.q": "0.q", "m.enc.1.q": "1.q"}


@pytest.mark.parametrize("tag, key", [
    ("Summary/alpha", TagKey("alpha")),
    ("Summary/drift_ratio_max", TagKey("drift_ratio", None, "max")),
    ("signaldrift/grad_alignment", TagKey("grad_alignment")),
    ("signaldrift_layers/model.fc1/drift_ratio", TagKey("drift_ratio", "model.fc1")),
    ("train/signaldrift_layers/base.q/step_size", TagKey("step_size", "base.q")),
    ("train/Summary/step_gap", TagKey("step_gap")),
    ("signaldrift/thresholds/step_gap_too_small", TagKey("step_gap_too_small")),
    # the old scheme (runs written before the summary existed)
    ("signaldrift/model.fc1/drift_ratio", TagKey("drift_ratio", "model.fc1")),
    ("signaldrift/drift_ratio", TagKey("drift_ratio")),
    ("signaldrift/step_gap", TagKey("step_gap")),
    ("train/signaldrift/verdict_code", TagKey("alpha_verdict")),
    # not ours
    ("signaldrift/verdict", None), ("signaldrift_layers/x/singular_values", None), ("train_loss", None),
    ("mysignaldrift/drift_ratio", None), ("Summary", None), ("signaldrift/thresholds/nonsense", None),
])
def test_parse_tag_reads_both_schemes(tag, key):
    assert parse_tag(tag) == key


def test_tags_round_trip():
    from callbacks.measurements import measurement

    m = measurement(3, {"a.q": {"drift_ratio": 0.1, "step_size": 0.2}, "a.v": {"drift_ratio": 0.3}})
    for tag in m.tags():
        key = parse_tag(tag)
        assert key is not None
        made = layer_tag(key.layer, key.metric) if key.layer else summary_tag(key.metric, key.kind)
        assert made == tag
