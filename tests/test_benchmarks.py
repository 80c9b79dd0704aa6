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


def test_verdict_calibration_quick(tmp_path):
    data = _run("verdict_calibration.py", tmp_path)
    assert {r["task"] for r in data["runs"]} == {"rotten_tomatoes", "debates"} and len(data["runs"]) == 4
    assert all(set(r["held_out"]) == {"1", "4"} and r["probes"] for r in data["runs"])
    assert {(d["fit_on"], d["scored_on"]) for d in data["directions"]} == {("rotten_tomatoes", "debates"),
                                                                         ("debates", "rotten_tomatoes")}


def test_alpha_auto_quick(tmp_path):
    data = _run("alpha_auto.py", tmp_path)
    assert [r["task"] for r in data["runs"]] == ["rotten_tomatoes", "debates"]
    assert all(r["alpha"] == r["finder"]["suggestion"] and r["alpha"] > 0 for r in data["runs"])


def test_verdict_calibration_labels_replay_and_flips():
    """The labelling rule, the replay through regime_verdict (rules v3), when a verdict became right and the
    flip count, on hand-made runs."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import verdict_calibration as vc
    from signaldrift.regime import VerdictRules

    def run(alpha, lr, acc63, acc252, probes, seed=0):
        return {"task": "t", "alpha": alpha, "lr": lr, "seed": seed, "steps": 252, "majority_acc": 0.5,
                "held_out": {"63": {"acc": acc63}, "252": {"acc": acc252}}, "probes": probes}

    def probe(step, k=1.0, size=0.001, z=5.0, help_z=3.0):
        return {"step": step, "k_star": k, "scale_gain_z": 0.0 if k == 1.0 else z, "scale_help_z": help_z,
                "drift_ratio": 0.01, "step_size": size, "step_size_max": size}

    runs = [run(10.0, 1e-4, 0.60, 0.70, [probe(s, k=8.0) for s in (12, 24, 36, 48)]),
            run(100.0, 1e-4, 0.75, 0.80, [probe(s) for s in (12, 24, 36, 48)]),
            run(1000.0, 1e-4, 0.50, 0.50, [probe(12, size=0.05)] + [probe(s, k=0.0, size=1e-5) for s in (24, 36, 48)]),
            run(100.0, 1e-3, 0.79, 0.81, [probe(s, k=(8.0 if (s // 12) % 2 else 0.0)) for s in range(132, 252, 12)])]
    labels = vc.labels_for(runs, "t", 63, margin=0.02)
    assert {k: v["label"] for k, v in labels.items()} == {
        (10.0, 1e-4): "alpha-too-small", (100.0, 1e-4): "in-regime", (1000.0, 1e-4): "too-aggressive",
        (100.0, 1e-3): "in-regime"}  # alone at its lr: its own best
    rules = VerdictRules(agree=2, split=2, window=5, settle=2)
    seq = vc.replay(runs[0], rules)
    assert seq == ["in-regime", "alpha-too-small", "alpha-too-small", "alpha-too-small"]
    assert vc.first_right(runs[0], seq, "alpha-too-small", 63) == 24
    # the early spike decides at once; the k* = 0 probes (a significant collapse) keep it
    assert vc.replay(runs[2], rules) == ["too-aggressive"] * 4
    # before any probe of a budget the run shows in-regime; after, the last verdict
    assert vc.verdict_at(runs[0], seq, 12) == "in-regime"
    assert vc.verdict_at(runs[0], seq, 63) == "alpha-too-small"
    s = vc.score(runs, "t", rules, margin=0.02)
    assert s["alpha-too-small"]["tpr"] == 1.0 and s["too-aggressive"]["tpr"] == 1.0
    flips = {(f["alpha"], f["lr"]): f["changes"] for f in s["flips"]["per_run"]}
    # alternating 8 / 0: one larger after one probe is too few; then 2 larger and 2 collapse: uncertain for good
    assert vc.replay(runs[3], rules) == ["in-regime", "in-regime", "alpha-too-small"] + ["uncertain"] * 7
    assert flips[(100.0, 1e-3)] == 2
    assert flips[(100.0, 1e-4)] == 0 and s["near_best_called_too_aggressive"] == 0


def test_alpha_control_quick(tmp_path):
    data = _run("alpha_control.py", tmp_path)
    mine = [r for r in data["runs"] if "start" in r]  # trained here (the rest are the grid's stored runs)
    assert [r["controlled"] for r in mine] == [True]  # one controlled run: the suite's time
    assert mine[0]["final_alpha"] > 0 and isinstance(mine[0]["moves"], list) and mine[0]["train_loss"]
    assert {"chosen", "fit", "scored_on_rotten_tomatoes", "shipped"} <= set(data["replay"])


def test_alpha_control_replay_of_the_rule_on_stored_probes():
    """The controller's rule replayed on a stored run's probes: the first move, and where it lands."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    from alpha_control import first_move, landing

    from signaldrift.control import ControlRules

    def run(size):
        probes = [{"step": 12, "k_star": 1.0, "scale_gain_z": 0.0, "scale_help_z": 1.0, "step_size_max": size},
                  {"step": 24, "k_star": 16.0, "scale_gain_z": 1.5, "scale_help_z": 1.0, "step_size_max": size},
                  {"step": 72, "k_star": 16.0, "scale_gain_z": 3.0, "scale_help_z": 1.0, "step_size_max": size}]
        return {"alpha": 12.0, "probes": probes}

    rules = ControlRules()  # k_up 2, z_min 1, headroom 0.5 of 0.0088
    assert first_move(run(1e-4), rules) == {"step": 24, "factor": 8.0, "to": 96.0}
    assert first_move(run(0.0088 / 6), rules)["factor"] == pytest.approx(3.0)  # the step size's headroom
    assert first_move(run(0.0088 / 3), rules) is None  # room for 1.5 < k_up; step 72 is past the first quarter
    labels = {(12.0, 1e-4): {"label": "alpha-too-small"}, (191.0, 1e-4): {"label": "in-regime"},
              (764.0, 1e-4): {"label": "too-aggressive"}}
    assert landing(labels, 1e-4, 20.0) == "alpha-too-small" and landing(labels, 1e-4, 500.0) == "too-aggressive"
    assert landing(labels, 1e-4, 96.0) == landing(labels, 1e-4, 300.0) == "in-regime"  # nearest in log: 191
