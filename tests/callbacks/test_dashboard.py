"""The TensorBoard dashboard as written: the layout read back from the event file, the summary tags,
the tag scheme (old runs included). No browser: what TensorBoard would draw is checked on the files."""
import pathlib
import re
import statistics

import pytest

from callbacks import AlphaRegimeAdvisor, SignalDriftMonitor
from callbacks.measurements import SUMMARY, TagKey, layer_tag, parse_tag, summary_tag, threshold_tag
from callbacks.tensorboard import displayed_order, short_layer_names, top_spectra
from signaldrift import regime
from tests.callbacks.helpers import lightning, make_module, make_trainer, read_scalars, read_tags

STEPS = 6


def _layout(log_dir) -> dict[str, dict[str, tuple[str, list]]]:
    """The Custom Scalars layout TensorBoard reads (its last layout event), as {category: {chart: (kind,
    content)}}: ("Multiline", [pattern, ...]) or ("Margin", [(value, lower, upper), ...])."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    (events,) = pathlib.Path(log_dir).rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
    acc.Reload()
    layout = layout_pb2.Layout.FromString(acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto.string_val[0])
    out = {}
    for c in layout.category:
        out[c.title] = {}
        for ch in displayed_order(c.chart):  # as a person sees them
            if ch.WhichOneof("content") == "margin":
                out[c.title][ch.title] = ("Margin", [(s.value, s.lower, s.upper) for s in ch.margin.series])
            else:
                out[c.title][ch.title] = ("Multiline", list(ch.multiline.tag))
    return out


def _drawn(chart, scalars) -> set[str]:
    """The logged tags a chart draws."""
    kind, content = chart
    if kind == "Margin":
        return {t for series in content for t in series} & set(scalars)
    return {t for p in content for t in scalars if re.search(p, t)}


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
    charts = [(title, chart) for category in layout.values() for title, chart in category.items()]
    assert len(charts) >= 8
    for title, (kind, content) in charts:
        if kind == "Multiline":
            for pattern in content:
                assert any(re.search(pattern, t) for t in scalars), f"chart {title!r}: {pattern!r} matches no logged tag"
        else:
            # one series: TensorBoard warns about any run that has some but not all of a chart's tags
            assert len(content) == 1, f"chart {title!r} has {len(content)} series"
            for value, lower, upper in content:
                for tag in (value, lower, upper):
                    assert tag in scalars, f"chart {title!r}: {tag!r} is never logged"
                # TensorBoard's margin chart draws nothing (a 'steps mismatch' error) unless the three match
                assert sorted(scalars[value]) == sorted(scalars[lower]) == sorted(scalars[upper]), title
                if lower == value:  # a median shaded up to its max
                    assert all(scalars[value][s] <= scalars[upper][s] for s in scalars[value]), title
        quantities = {parse_tag(t).metric for t in _drawn((kind, content), scalars) if parse_tag(t)}
        # a series and its spread (step_gap_lo/_hi: quartiles over the probe set; _max) or thresholds chart one quantity
        quantities = {q.split("_too_")[0].removesuffix("_high").removesuffix("_lo").removesuffix("_hi")
                      for q in quantities}
        assert len(quantities) <= 1, f"chart {title!r} mixes {quantities}"
    first = layout["Signal-Drift"]
    # the caller's multiline chart first (TensorBoard draws multiline charts first), then ours in order
    assert [t.split(":")[0].split(" ")[0] for t in first] == [
        "train", "verdict", "alpha", "k*", "drift_ratio", "step_size"]
    k = next(c for t, c in first.items() if t.startswith("k*"))  # against the verdict's in-regime band
    assert k == ("Margin", [(summary_tag("k_star"), threshold_tag("k_star_too_aggressive"), threshold_tag("k_star_too_small"))])
    details = layout["Signal-Drift details"]
    gap = next(c for t, c in details.items() if t.startswith("step_gap of each probe (line)"))  # no longer votes
    assert gap == ("Margin", [(summary_tag("step_gap"), threshold_tag("step_gap_too_aggressive"),
                               threshold_tag("step_gap_too_small"))])
    spread = next(c for t, c in details.items() if t.startswith("step_gap of each probe, shaded"))
    assert spread == ("Margin", [(summary_tag("step_gap"), summary_tag("step_gap_lo"), summary_tag("step_gap_hi"))])
    size = next(t for t in first if t.startswith("step_size"))
    assert threshold_tag("step_size_high") in size  # the advisor's collapse level, named (the same for every run)
    drift = next(c for t, c in first.items() if t.startswith("drift_ratio"))
    assert drift == ("Margin", [("Summary/drift_ratio", "Summary/drift_ratio", "Summary/drift_ratio_max")])
    verdict = next(c for t, c in first.items() if t.startswith("verdict"))
    assert verdict == ("Margin", [("Summary/alpha_verdict",) * 3])  # a margin chart: drawn without smoothing
    assert ("Multiline", ["^train_loss$"]) in first.values()  # the caller's own chart
    assert not any(layer_tag("model.fc1", "drift_ratio") in _drawn(c, scalars) for _, c in charts)


def test_each_margin_series_is_written_in_one_event_per_step(run):
    """A reader (TensorBoard reloading a live run, or a run killed mid-write) sees a step's value, lower
    and upper bound together or not at all: one event holds them."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    tmp, _, layout, _ = run
    (events,) = pathlib.Path(tmp).rglob("events.out.tfevents.*")
    together: dict[str, list[set[str]]] = {}
    for event in LegacyEventFileLoader(str(events)).Load():
        if event.HasField("summary"):
            tags = {v.tag for v in event.summary.value}
            for t in tags:
                together.setdefault(t, []).append(tags)
    series = [s for category in layout.values() for kind, content in category.values() if kind == "Margin"
              for s in content]
    assert any(len(set(s)) == 3 for s in series)
    for s in series:
        for tags in together[s[0]]:
            assert set(s) <= tags, f"{s}: a value written apart from its bounds"


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
    # the step-gap thresholds as often as the probes they are drawn with, the collapse level every step
    probes = sorted(scalars["Summary/step_gap"])
    assert probes == [p["step"] for p in advisor.probes] and len(probes) >= 2
    assert sorted(scalars[threshold_tag("step_gap_too_small")]) == probes
    assert sorted(scalars[threshold_tag("step_gap_too_aggressive")]) == probes
    assert sorted(scalars[threshold_tag("step_size_high")]) == list(range(STEPS))
    # k* and its band (the advisor's rules) at the probes
    assert sorted(scalars["Summary/k_star"]) == probes
    assert scalars["Summary/k_star"][probes[0]] == pytest.approx(advisor.probes[0]["k_star"], rel=1e-6)
    for name, value in (("k_star_too_small", advisor.rules.k_too_small), ("k_star_too_aggressive", advisor.rules.k_too_aggressive)):
        assert sorted(scalars[threshold_tag(name)]) == probes and set(scalars[threshold_tag(name)].values()) == {value}
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


def test_log_metrics_leaves_other_writers_and_non_numbers_to_the_logger():
    """One event per call only through torch's SummaryWriter; a tensorboardX writer (Lightning's choice
    without ``tensorboard``) or a dict value goes through the logger's own log_metrics."""
    import torch

    from callbacks._lightning import log_metrics

    class Writer:  # not torch.utils.tensorboard's
        def _get_file_writer(self):
            raise AssertionError("wrote around the logger")

    class TensorBoardLogger:
        def __init__(self, experiment):
            self.experiment, self.calls = experiment, []

        def log_metrics(self, metrics, step):
            self.calls.append((dict(metrics), step))

    class Trainer:
        is_global_zero = True

    other = TensorBoardLogger(Writer())
    Trainer.loggers = [other]
    log_metrics(Trainer, {"a": 1.0}, 3)
    assert other.calls == [({"a": 1.0}, 3)]

    class TorchWriter:
        def __init__(self):
            self.summaries = []

        def _get_file_writer(self):
            return self

        def add_summary(self, summary, step):
            self.summaries.append((summary, step))

    TorchWriter.__module__ = "torch.utils.tensorboard.writer"
    torch_logger = TensorBoardLogger(TorchWriter())
    Trainer.loggers = [torch_logger]
    log_metrics(Trainer, {"a": 1.0, "b": torch.tensor(2.0)}, 4)
    ((summary, step),) = torch_logger.experiment.summaries
    assert step == 4 and {(v.tag, v.simple_value) for v in summary.value} == {("a", 1.0), ("b", 2.0)}
    assert torch_logger.calls == []
    log_metrics(Trainer, {"a": {"x": 1.0}}, 5)  # a dict: the logger's add_scalars
    assert torch_logger.calls == [({"a": {"x": 1.0}}, 5)] and len(torch_logger.experiment.summaries) == 1
