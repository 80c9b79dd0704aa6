"""Reading a run back: exactly what was written, and damaged event files said out loud."""
import warnings

import pytest
import torch

from callbacks.report import IncompleteRunWarning, read_run

VERDICT = "**in-regime**: alpha looks right"


def _write_run(folder, steps=range(6), offset=0.0, verdict_at=(), restart_at=None, name=None):
    """Scalars written with torch's SummaryWriter: ``loss`` as simple values, ``signaldrift/step_gap``
    as a new-style scalar tensor; returns {tag: {step: value}} as written (float32, as stored)."""
    from torch.utils.tensorboard import SummaryWriter

    from callbacks.tensorboard import mark_restart

    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.iterdir())
    writer = SummaryWriter(str(folder))
    if restart_at is not None:
        mark_restart(writer, restart_at)
    written: dict[str, dict[int, float]] = {"loss": {}, "signaldrift/step_gap": {}}
    g = torch.Generator().manual_seed(int(offset * 10) + 7)
    for step in steps:
        loss, gap = (float(torch.rand((), generator=g)) + offset for _ in range(2))
        writer.add_scalar("loss", loss, step)
        writer.add_scalar("signaldrift/step_gap", gap, step, new_style=True)
        written["loss"][step] = float(torch.tensor(loss, dtype=torch.float32))
        written["signaldrift/step_gap"][step] = float(torch.tensor(gap, dtype=torch.float32))
        if step in verdict_at:
            writer.add_text("signaldrift/verdict", f"{VERDICT} at {step}", step)
            writer.add_scalar("signaldrift/verdict_code", 0.0, step)  # a number, though its tag starts alike
            written.setdefault("signaldrift/verdict_code", {})[step] = 0.0
        writer.add_histogram("signaldrift/layer/singular_values", torch.rand(4, generator=g), step)
    writer.close()
    (path,) = set(folder.iterdir()) - before
    if name is not None:  # a fixed name fixes the order in which the files are read
        path = path.rename(folder / f"events.out.tfevents.{name}")
    return path, written


def _record_count(path):
    """How many records the file holds, counted by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    return sum(1 for _ in LegacyEventFileLoader(str(path)).Load())


def _record_ends(path):
    """Byte offset where each record ends (framing: 8 + 4 + payload + 4 bytes), read independently."""
    data, ends, pos = path.read_bytes(), [], 0
    while pos < len(data):
        pos += 12 + int.from_bytes(data[pos:pos + 8], "little") + 4
        ends.append(pos)
    return ends


def test_a_clean_run_reads_exactly_what_was_written(tmp_path):
    _, written = _write_run(tmp_path / "run", verdict_at=(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = read_run(tmp_path / "run")
    assert record.scalars == written  # simple values and scalar tensors; no histogram or text among them
    assert record.verdicts == {2: f"{VERDICT} at 2", 4: f"{VERDICT} at 4"}
    assert record.incomplete == {} and record.complete


def test_truncated_file_with_garbage_appended_warns_with_the_count(tmp_path):
    path, written = _write_run(tmp_path / "run")
    ends = _record_ends(path)
    assert len(ends) == _record_count(path)
    whole = len(ends) - 3  # cut the file in the middle of record number whole + 1
    cut = ends[whole - 1] + (ends[whole] - ends[whole - 1]) // 2
    path.write_bytes(path.read_bytes()[:cut] + b"\x00garbage\xff" * 5)
    with pytest.warns(IncompleteRunWarning) as caught:
        record = read_run(tmp_path / "run")
    (message,) = [str(w.message) for w in caught]
    assert str(path) in message and f"read {whole} record(s)" in message
    assert record.incomplete == {str(path): whole} and not record.complete
    # Records are: the file version, then per step loss, step_gap, histogram; step s's loss is record 3s + 2.
    assert record.scalars["loss"] == {s: v for s, v in written["loss"].items() if 3 * s + 2 <= whole}
    assert max(record.scalars["loss"]) < max(written["loss"])


def test_garbage_after_a_whole_file_keeps_every_record_and_says_so(tmp_path):
    path, written = _write_run(tmp_path / "run")
    count = _record_count(path)
    path.write_bytes(path.read_bytes() + bytes(range(256)))
    with pytest.warns(IncompleteRunWarning, match=rf"{path.name} has a corrupt record header .* read {count} record"):
        record = read_run(tmp_path / "run")
    assert record.scalars == written and record.incomplete == {str(path): count}


def test_a_damaged_record_stops_the_file_at_the_last_good_one(tmp_path):
    path, written = _write_run(tmp_path / "run")
    ends = _record_ends(path)
    data = bytearray(path.read_bytes())
    data[ends[3] + 14] ^= 0xFF  # a byte of record 5's payload: its checksum no longer matches
    path.write_bytes(bytes(data))
    with pytest.warns(IncompleteRunWarning, match=rf"{path.name} has a record with a bad checksum.*read 4 record"):
        record = read_run(tmp_path / "run")
    assert record.incomplete == {str(path): 4}
    assert record.scalars["loss"] == {0: written["loss"][0]}  # records: version, loss 0, gap 0, histogram 0


def test_a_restart_marker_drops_the_steps_trained_again(tmp_path):
    """The first process logged steps 0-5 and died; the resume from step 3 logged 3-4 again."""
    _, first = _write_run(tmp_path / "run", steps=range(6), verdict_at=(2, 4), name="1")
    _, second = _write_run(tmp_path / "run", steps=range(3, 5), offset=10.0, restart_at=3, name="2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = read_run(tmp_path / "run")
    for tag in ("loss", "signaldrift/step_gap"):
        assert record.scalars[tag] == {**{s: first[tag][s] for s in range(3)}, **second[tag]}  # no orphaned 5
    assert record.verdicts == {2: f"{VERDICT} at 2"} and record.scalars["signaldrift/verdict_code"] == {2: 0.0}


def test_the_report_draws_the_alpha_finders_trials_when_the_run_has_them(tmp_path):
    """``--alpha auto`` leaves the finder's trials in the run's find_alpha folder: the report figure draws
    held-out loss against alpha (in alpha order, whatever the grid order), the suggestion and the run's alpha."""
    from torch.utils.tensorboard import SummaryWriter

    from callbacks.measurements import FINDER_RUN, FINDER_TAGS, summary_tag
    from callbacks.report import report_figure

    run = tmp_path / "run"
    writer = SummaryWriter(str(run))
    for step in range(3):
        writer.add_scalar(summary_tag("alpha"), 48.0, step)
    writer.close()
    plain = report_figure(read_run(run))
    assert not [ax for ax in plain.axes if ax.get_title().startswith("alpha finder")]
    trials = [(400.0, 0.9), (12.0, 0.7), (48.0, 0.5), (3000.0, 2.0)]  # grid order is not alpha order
    writer = SummaryWriter(str(run / FINDER_RUN))
    for i, (alpha, loss) in enumerate(trials):
        writer.add_scalar(FINDER_TAGS["alpha"], alpha, i)
        writer.add_scalar(FINDER_TAGS["loss"], loss, i)
    writer.add_scalar(FINDER_TAGS["best"], 80.0, 0)
    writer.add_scalar(FINDER_TAGS["suggestion"], 40.0, 0)
    writer.close()
    fig = report_figure(read_run(run))
    (ax,) = [ax for ax in fig.axes if ax.get_title().startswith("alpha finder")]
    assert ax.get_xscale() == "log"
    curve, *marks = ax.get_lines()
    assert list(curve.get_xdata()) == [12.0, 48.0, 400.0, 3000.0]
    assert list(curve.get_ydata()) == pytest.approx([0.7, 0.5, 0.9, 2.0])
    # the trials' best, the suggestion, the run's alpha
    assert sorted(float(m.get_xdata()[0]) for m in marks) == [40.0, 48.0, 80.0]
    assert len(fig.axes) == len(plain.axes) + 1
    # a run that trained with the suggestion: one line says both
    writer = SummaryWriter(str(run))
    for step in range(3, 5):
        writer.add_scalar(summary_tag("alpha"), 40.0, step)
    writer.close()
    fig = report_figure(read_run(run))
    (ax,) = [ax for ax in fig.axes if ax.get_title().startswith("alpha finder")]
    labels = ax.get_legend_handles_labels()[1]
    assert [float(m.get_xdata()[0]) for m in ax.get_lines()[1:]] == [80.0, 40.0]
    assert any("= this run's alpha (40)" in label for label in labels)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_the_report_reads_each_probes_k_star_and_draws_it_first(tmp_path):
    """The scale probe's k* (Summary/k_star) and z values were written but not read back: the report's table
    left k* out and report.png's first panel fell back to step_gap."""
    from torch.utils.tensorboard import SummaryWriter

    from callbacks.measurements import PREFIX, TagKey, parse_tag, summary_tag
    from callbacks.report import format_report, measured, report_figure

    written = {12: 4.0, 24: 1.5, 36: 1.0}
    writer = SummaryWriter(str(tmp_path))
    for step, k in written.items():
        writer.add_scalar(summary_tag("k_star"), k, step)
        writer.add_scalar(f"{PREFIX}/scale_gain_z", 0.5, step)
        writer.add_scalar(f"{PREFIX}/scale_help_z", -2.5, step)
        writer.add_scalar(summary_tag("step_gap"), 3.0, step)
    writer.close()
    assert parse_tag("Summary/k_star") == TagKey("k_star")
    record = read_run(tmp_path)
    series = measured(record)
    assert series[TagKey("k_star")] == written
    assert series[TagKey("scale_gain_z")] == {s: 0.5 for s in written}
    assert series[TagKey("scale_help_z")] == {s: -2.5 for s in written}
    assert "  k_star                1.5" in format_report(record)  # the median of the three
    assert report_figure(record).axes[0].get_title().startswith("k*:")


def test_escaped_asterisks_of_the_advisors_markdown_read_back_plain(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from callbacks.report import format_report, report_figure

    writer = SummaryWriter(str(tmp_path))
    writer.add_scalar("Summary/alpha", 16.0, 12)
    writer.add_text("signaldrift/verdict", "**alpha-too-small**  \nc\\*sqrt(r) -> alpha ~ 764; k\\* 8  \n"
                    "try alpha ~ 130 (k\\* x alpha)", 12)
    writer.close()
    record = read_run(tmp_path)
    assert "Verdict: alpha-too-small\n  c*sqrt(r) -> alpha ~ 764; k* 8\n  try alpha ~ 130 (k* x alpha)" in format_report(record)
    assert "try alpha ~ 130 (k* x alpha)" in report_figure(record)._suptitle.get_text()
