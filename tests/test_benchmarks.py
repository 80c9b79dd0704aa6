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


def test_verdict_calibration_quick(tmp_path):
    data = _run("verdict_calibration.py", tmp_path)
    assert {r["task"] for r in data["runs"]} == {"rotten_tomatoes", "debates"} and len(data["runs"]) == 4
    assert all(set(r["held_out"]) == {"2", "8"} and r["probes"] for r in data["runs"])
    assert {(d["fit_on"], d["scored_on"]) for d in data["directions"]} == {("rotten_tomatoes", "debates"),
                                                                         ("debates", "rotten_tomatoes")}


def test_alpha_auto_quick(tmp_path):
    data = _run("alpha_auto.py", tmp_path)
    assert [r["task"] for r in data["runs"]] == ["rotten_tomatoes", "debates"]
    assert all(r["alpha"] == r["finder"]["suggestion"] and r["alpha"] > 0 for r in data["runs"])


def test_verdict_calibration_labels_replay_and_flips():
    """The labelling rule, the replay through regime_verdict and the flip count, on hand-made runs."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import verdict_calibration as vc
    from signaldrift.regime import VerdictRules

    def run(alpha, lr, acc63, acc252, probes, seed=0):
        return {"task": "t", "alpha": alpha, "lr": lr, "seed": seed, "steps": 252, "majority_acc": 0.5,
                "held_out": {"63": {"acc": acc63}, "252": {"acc": acc252}}, "probes": probes}

    def probe(step, gap=1.0, size=0.001, z=5.0, gain=0.5):
        return {"step": step, "step_gap": gap, "gap_z": z, "gap_gain": gain, "drift_ratio": 0.01, "step_size": size}

    runs = [run(10.0, 1e-4, 0.60, 0.70, [probe(s, gap=64.0) for s in (12, 24, 36, 48)]),
            run(100.0, 1e-4, 0.75, 0.80, [probe(s) for s in (12, 24, 36, 48)]),
            run(1000.0, 1e-4, 0.50, 0.50, [probe(12, size=0.05)] + [probe(s, size=1e-5) for s in (24, 36, 48)]),
            run(100.0, 1e-3, 0.79, 0.81, [probe(s, gap=(64.0 if (s // 12) % 2 else 0.0)) for s in range(132, 252, 12)])]
    labels = vc.labels_for(runs, "t", 63, margin=0.02)
    assert {k: v["label"] for k, v in labels.items()} == {
        (10.0, 1e-4): "alpha-too-small", (100.0, 1e-4): "in-regime", (1000.0, 1e-4): "too-aggressive",
        (100.0, 1e-3): "in-regime"}  # alone at its lr: its own best
    rules = VerdictRules(agree=2, split=2)
    assert vc.replay(runs[0], rules) == ["in-regime", "alpha-too-small", "alpha-too-small", "alpha-too-small"]
    # the early peak step size keeps the collapsed run too-aggressive after its steps shrank
    assert vc.replay(runs[2], rules) == ["too-aggressive"] * 4
    # before any probe of a budget the run shows in-regime; after, the last verdict
    assert vc.verdict_at(runs[0], vc.replay(runs[0], rules), 12) == "in-regime"
    assert vc.verdict_at(runs[0], vc.replay(runs[0], rules), 63) == "alpha-too-small"
    s = vc.score(runs, "t", rules, margin=0.02)
    assert s["alpha-too-small"]["tpr"] == 1.0 and s["too-aggressive"]["tpr"] == 1.0
    flips = {(f["alpha"], f["lr"]): f["changes"] for f in s["flips"]["per_run"]}
    # alternating 64 / 0 with agree 2 and split 2: 2 larger after 3 probes, then 2 + 2 (uncertain) for good
    assert vc.replay(runs[3], rules) == ["in-regime"] * 2 + ["alpha-too-small"] + ["uncertain"] * 7
    assert flips[(100.0, 1e-3)] == 2
    assert flips[(100.0, 1e-4)] == 0 and s["near_best_called_too_aggressive"] == 0
