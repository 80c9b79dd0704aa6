"""Each benchmark's --quick mode runs and writes its result files (shape checked, not values).

The scripts' ``main`` runs in this process (torch, Lightning and transformers are imported once for
the whole suite); scripts that measure one process per configuration still start their own."""
import contextlib
import importlib
import io
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path) -> dict:
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    module = importlib.import_module(script.removesuffix(".py"))
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module.main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # scripts pick their own thread counts
    name = script.removesuffix(".py") + "_quick"
    md = (out / f"{name}.md").read_text()
    assert md.startswith(f"# {name}") and "Machine:" in md and "|" in md
    data = json.loads((out / f"{name}.json").read_text())
    assert {"cpu", "cores", "torch", "date"} <= set(data["machine"])
    return data


def test_bench_lowrank_svd_quick(tmp_path):
    data = _run("bench_lowrank_svd.py", tmp_path)
    case = data["svd"][0]
    assert {"factored_ms", "dense_ms", "speedup", "max_rel_sv_error"} <= set(case)
    assert data["metric_set"]["metric_set_ms"] > 0


def test_bench_scale_quick(tmp_path):
    data = _run("bench_scale.py", tmp_path)
    assert data["layers"] == 14 and data["exact_route_layers"] == 0
    assert data["per_layer_median_s"] > 0 and data["batched_median_s"] > 0 and data["speedup"] > 0
    assert data["max_rel_diff_batched_vs_per_layer"] < 1e-9  # the same numbers, not just a time
    assert data["held_over_factors"] < 2.0
    assert 0 < data["gpu_projection"]["fraction"] < 1


@pytest.mark.slow
def test_demo_config_quick(tmp_path):
    data = _run("demo_config.py", tmp_path)
    assert len(data["runs"]) == 2
    assert {"test_acc", "drift_ratio_mean", "step_size_mean", "seconds_per_step"} <= set(data["runs"][0])


@pytest.mark.slow
def test_bench_overhead_quick(tmp_path):
    data = _run("bench_overhead.py", tmp_path)
    assert len(data["summary"]) == 3
    assert all({"median_step_ratio", "peak_rss_ratio"} <= set(v) for v in data["summary"].values())


@pytest.mark.slow
def test_alpha_vs_lr_quick(tmp_path):
    data = _run("alpha_vs_lr.py", tmp_path)
    assert len(data["runs"]) == 2 and data["answers"]["complete"] is True
    assert {"q1_acc_vs_alpha_at_smallest_lr", "q2", "q3_slope_drift_vs_alpha"} <= set(data["answers"])
    assert (tmp_path / "alpha_vs_lr_quick.png").stat().st_size > 0


def test_rank_sweep_quick(tmp_path):
    data = _run("rank_sweep.py", tmp_path)
    for res in [*data["synthetic"]["results"].values(), data["minilm_law"]]:
        assert {"c", "c_ci95", "p", "p_ci95", "alpha_star", "edge_hits"} <= set(res)
    for check in data["cross_check"].values():
        assert len(check["predicted_ratio"]) == len(check["shape_ratio"]) == len(check["ranks"])
    for half in ("synthetic", "minilm"):
        assert (tmp_path / f"rank_sweep_{half}_quick.json").is_file()
    assert (tmp_path / "rank_sweep_quick.png").stat().st_size > 0


def test_alpha_finder_quick(tmp_path):
    data = _run("alpha_finder.py", tmp_path)
    assert len(data["runs"]) == 1 and {"within_2x", "fraction_of_grid_seconds_per_lr"} <= set(data["summary"])
    run = data["runs"][0]
    assert len(run["finder"]["losses"]) == len(run["finder"]["alphas"]) == 3
    assert (tmp_path / "alpha_finder_quick.png").stat().st_size > 0


def test_lora_alpha_vs_baselines_quick(tmp_path):
    data = _run("lora_alpha_vs_baselines.py", tmp_path)
    assert len(data["runs"]) == 2 and all(r["curve"] for r in data["runs"])
    assert all({"acc_mean", "acc_std", "steps_to_target"} <= set(v) for v in data["summary"].values())
    assert len(data["comparisons"]) == 1 and set(data["comparisons"]) <= set(data["summary"])
    assert (tmp_path / "lora_alpha_vs_baselines_quick.png").stat().st_size > 0


def test_bench_memory_quick(tmp_path):
    data = _run("bench_memory.py", tmp_path)
    assert set(data["runs"]) == {"plain", "sections 1-3", "probe"}
    assert all({"peak_rss", "engine_bytes"} <= set(v) for v in data["runs"].values())


def test_gap_calibration_quick(tmp_path):
    data = _run("gap_calibration.py", tmp_path)
    assert len(data["runs"]) == 2 and all(r["probes"] for r in data["runs"])
    assert [w["window"] for w in data["windows"]] == [3, 5, "all"]
    assert all({"too_small", "too_aggressive", "verdict_matches_label"} <= set(w) for w in data["windows"])
    assert {"label", "median_gap_window", "verdict"} <= set(data["cells"][0])
    assert (tmp_path / "gap_calibration_quick.png").stat().st_size > 0


def test_gap_calibration_split_and_labels():
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    from gap_calibration import balanced_accuracy, best_split, grid_labels

    points = [(1.0, False), (2.0, False), (8.0, True), (16.0, True), (3.0, True)]
    fit = best_split(points)
    # t between 2 and 3 catches every positive and no negative
    assert fit == {"threshold_lo": pytest.approx(6 ** 0.5), "threshold_hi": pytest.approx(6 ** 0.5),
                   "balanced_accuracy": 1.0}
    # ties: t between 1 and 2 and t between 3 and 4 both reach 3/4
    tied = best_split([(1.0, False), (2.0, True), (3.0, False), (4.0, True)])
    assert tied == {"balanced_accuracy": 0.75, "threshold_lo": pytest.approx(2 ** 0.5), "threshold_hi": pytest.approx(12 ** 0.5)}
    assert balanced_accuracy(points, 4.0) == pytest.approx((2 / 3 + 1) / 2)
    assert best_split([(1.0, True)]) is None
    grid = {"runs": [{"alpha": a, "lr": 1e-3, "test_acc": acc} for a, acc in
                     ((8.0, 0.70), (8.0, 0.72), (64.0, 0.75), (256.0, 0.74), (1024.0, 0.53))]}
    labels = {k[0]: v["label"] for k, v in grid_labels(grid, margin=0.02).items()}
    assert labels == {8.0: "alpha-too-small", 64.0: "in-regime", 256.0: "in-regime", 1024.0: "too-aggressive"}
