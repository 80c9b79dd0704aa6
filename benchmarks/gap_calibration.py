"""Calibrate the advisor's step_gap thresholds against the alpha x lr grid's outcomes.

The verdict (``signaldrift.regime``) calls alpha too small when the recent median ``step_gap`` is
at least ``GAP_TOO_SMALL`` and too aggressive below ``GAP_TOO_AGGRESSIVE``. This script reruns
every cell of ``alpha_vs_lr.py`` (same configuration: MiniLM-L6, r=8 on query/value, standard rule,
63 steps of batch 32 on 2,000 snippets, head lr 3e-3) with the ``AlphaRegimeAdvisor`` probing the
step gap every ``--gap-every`` steps, and labels each cell from the grid's held-out accuracy
(``results/alpha_vs_lr.json``, mean over its seeds), relative to the best alpha at the same lr:

* ``in-regime``: within ``--margin`` of that lr's best mean accuracy;
* ``alpha-too-small``: further below, at an alpha smaller than the best one;
* ``too-aggressive``: further below, at an alpha larger than the best one.

For each threshold it reports how the median step gap over the run's last ``w`` probes (the
advisor's ``window``; w = 3, 5 and all 7) separates the labels: the code's value, and the range of
thresholds with the best balanced accuracy (each placed at the geometric midpoint between the two
cells it splits); and how often the verdict at the code's thresholds names the grid's label.

    python benchmarks/gap_calibration.py          # 20 cells x 1 seed, ~45 min
    python benchmarks/gap_calibration.py --quick  # seconds, for the test suite
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from common import RESULTS, md_table, save_figure, stored_runs, train_minilm, write_results
from signaldrift.regime import regime_verdict

RANK = 8  # the grid's LoRA rank (standard rule: scale = alpha / r): results/alpha_vs_lr.md
WINDOW = 5  # AlphaRegimeAdvisor's default window, the probes its verdict reads: results/gap_calibration.md
STORED_WINDOW = 3  # the advisor's window in runs stored without "advisor_window": results/gap_calibration.json


def grid_labels(alpha_vs_lr: dict, margin: float) -> dict[tuple[float, float], dict]:
    """Per (alpha, lr) of the grid: its mean held-out accuracy and its label (see the module doc)."""
    cells: dict[tuple[float, float], list[float]] = {}
    for r in alpha_vs_lr["runs"]:
        cells.setdefault((r["alpha"], r["lr"]), []).append(r["test_acc"])
    means = {k: statistics.fmean(v) for k, v in cells.items()}
    out = {}
    for (a, lr), m in means.items():
        best_a, best_m = max(((a2, m2) for (a2, lr2), m2 in means.items() if lr2 == lr), key=lambda t: t[1])
        label = "in-regime" if best_m - m <= margin else ("alpha-too-small" if a < best_a else "too-aggressive")
        out[(a, lr)] = {"grid_acc": m, "best_alpha_at_lr": best_a, "label": label}
    return out


def best_split(points: list[tuple[float, bool]]) -> dict | None:
    """The thresholds t on a score (positive when score >= t) with the best balanced accuracy.

    ``points``: (score, is_positive). Each t is placed at the geometric midpoint of the two neighbouring
    scores it separates; returns the best balanced accuracy and the lowest and highest t that reach
    it (ties are common with few cells). None when one class is empty."""
    pos = sum(1 for _, y in points if y)
    if not pos or pos == len(points):
        return None
    scores = sorted({s for s, _ in points})
    cands = [math.copysign(math.sqrt(lo * hi), lo) if lo * hi > 0 else (lo + hi) / 2 for lo, hi in zip(scores, scores[1:])]
    accs = [balanced_accuracy(points, t) for t in cands]
    best = max(accs)
    ties = [t for t, a in zip(cands, accs) if a == best]
    return {"balanced_accuracy": best, "threshold_lo": min(ties), "threshold_hi": max(ties)}


def balanced_accuracy(points: list[tuple[float, bool]], t: float) -> float:
    pos = [s for s, y in points if y]
    neg = [s for s, y in points if not y]
    tpr = sum(s >= t for s in pos) / len(pos)
    tnr = sum(s < t for s in neg) / len(neg)
    return (tpr + tnr) / 2


def separation(cells: list[dict], window: int | None, current: dict) -> dict:
    """How the median step gap over the last ``window`` probes (None: all) separates the labels."""
    pts = []
    for c in cells:
        gaps = c["gaps"][-window:] if window else c["gaps"]
        if gaps and c["label"]:
            # the code's verdict on these probes alone (no drift measured: only the step-gap rule can fire)
            verdict = regime_verdict(c["alpha"], RANK, c["alpha"] / RANK, step_gaps=gaps).verdict
            pts.append((statistics.median(gaps), c["label"], verdict))
    small = [(g, lab == "alpha-too-small") for g, lab, _ in pts]
    # too aggressive when the gap is *below* the threshold: score on the negated gap
    aggr = [(-g, lab == "too-aggressive") for g, lab, _ in pts]
    fit_small, fit_aggr = best_split(small), best_split(aggr)
    if fit_aggr is not None:
        fit_aggr = {"balanced_accuracy": fit_aggr["balanced_accuracy"], "threshold_lo": -fit_aggr["threshold_hi"],
                    "threshold_hi": -fit_aggr["threshold_lo"]}
    return {
        "window": window or "all", "cells": len(pts),
        "too_small": {"fitted": fit_small, "current_balanced_accuracy":
                      balanced_accuracy(small, current["GAP_TOO_SMALL"]) if fit_small else None},
        "too_aggressive": {"fitted": fit_aggr, "current_balanced_accuracy":
                           balanced_accuracy(aggr, -current["GAP_TOO_AGGRESSIVE"]) if fit_aggr else None},
        "verdict_matches_label": sum(verdict == lab for _, lab, verdict in pts),
    }


def analyse(runs: list[dict], labels: dict, current: dict) -> tuple[str, dict]:
    rows, cells = [], []
    for r in sorted(runs, key=lambda r: (r["lr"], r["alpha"])):
        gaps = [g for _, g in r["probes"] if g is not None and math.isfinite(g)]
        lab = labels.get((r["alpha"], r["lr"])) or {"label": None, "grid_acc": None}
        cell = {"alpha": r["alpha"], "lr": r["lr"], "seed": r["seed"], "gaps": gaps,
                "median_gap_window": statistics.median(gaps[-WINDOW:]) if gaps else None,
                "verdict": r.get("verdict"), "test_acc": r["test_acc"], "step_size_mean": r.get("step_size_mean"),
                **lab}
        cells.append(cell)
        verdict = f"{r.get('verdict')} ({r.get('advisor_window', STORED_WINDOW)})"
        rows.append([r["alpha"], r["lr"], cell["label"], cell["grid_acc"], r["test_acc"],
                     ", ".join(f"{g:.3g}" for g in gaps) or "n/a", cell["median_gap_window"], verdict,
                     r.get("step_size_mean")])
    table = md_table(["alpha", "lr", "grid label", "grid acc (mean)", "this run's acc", "step_gap per probe",
                      f"median of last {WINDOW}", "advisor verdict (its window)", "mean step_size"], rows)
    windows = [separation(cells, w, current) for w in (3, 5, None)]
    counts = {k: sum(c["label"] == k for c in cells) for k in ("alpha-too-small", "in-regime", "too-aggressive")}

    def fit(s: dict) -> str:
        f = s["fitted"]
        if f is None:
            return "n/a (one class empty)"
        lo, hi = f["threshold_lo"], f["threshold_hi"]
        span = f"{lo:.3g}" if lo == hi else f"{lo:.3g}-{hi:.3g}"
        return f"{s['current_balanced_accuracy']:.2f} / {f['balanced_accuracy']:.2f} at t = {span}"

    wrows = [[w["window"], w["cells"], fit(w["too_small"]), fit(w["too_aggressive"]),
              f"{w['verdict_matches_label']} of {w['cells']}"] for w in windows]
    text = (table + f"\n\nLabels from the grid's mean held-out accuracy (margin {current['margin']:g}): "
            + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" of {len(cells)} cells.\n\n"
            + f"Balanced accuracy of the step-gap rule, code's threshold / best threshold (code: too small when the "
              f"median step_gap >= {current['GAP_TOO_SMALL']:g}, too aggressive when < "
              f"{current['GAP_TOO_AGGRESSIVE']:g}), by the number of recent probes the median takes:\n\n"
            + md_table(["window (probes)", "cells", "too small: code / best", "too aggressive: code / best",
                        "step-gap verdict = grid label"], wrows) + "\n")
    return text, {"cells": cells, "windows": windows, "labels": counts}


def figure(cells: list[dict], current: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colours = {"alpha-too-small": "tab:blue", "in-regime": "tab:green", "too-aggressive": "tab:red"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for lab, col in colours.items():
        pts = [c for c in cells if c["label"] == lab and c["median_gap_window"] is not None]
        ax.scatter([c["alpha"] * c["lr"] for c in pts], [max(c["median_gap_window"], 1e-2) for c in pts],
                   c=col, label=lab)
    for key, style in (("GAP_TOO_SMALL", "--"), ("GAP_TOO_AGGRESSIVE", ":")):
        ax.axhline(current[key], color="grey", ls=style, label=f"{key} = {current[key]:g}")
    ax.set(xscale="log", yscale="log", xlabel="alpha x lr", ylabel=f"median step_gap (last {WINDOW} probes)",
           title="step gap vs the grid's outcome")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> None:
    from alpha_vs_lr import ALPHAS, LRS

    from signaldrift import regime

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--gap-every", type=int, default=8, help="probe the step gap every this many steps")
    p.add_argument("--margin", type=float, default=0.02, help="accuracy margin to the lr's best that counts as in-regime")
    p.add_argument("--grid", type=Path, default=RESULTS / "alpha_vs_lr.json", help="the alpha x lr grid's result file")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reanalyse", action="store_true", help="no training: tables and figure from the stored runs")
    args = p.parse_args(argv)
    if not args.grid.is_file():
        raise SystemExit(f"--grid {args.grid} is not a file: run benchmarks/alpha_vs_lr.py first")
    labels = grid_labels(json.loads(args.grid.read_text()), args.margin)
    alphas, lrs, seeds = (ALPHAS, LRS, args.seeds) if not args.quick else ((16.0, 1024.0), (1e-3,), 1)
    steps, train_size, eval_size, every = (63, 2000, 1000, args.gap_every) if not args.quick else (3, 16, 8, 1)
    name = "gap_calibration" + ("_quick" if args.quick else "")
    out_dir = args.out or RESULTS
    runs, done = stored_runs(out_dir, name, lambda r: (r["alpha"], r["lr"], r["seed"]), fresh=args.quick)
    current = {"GAP_TOO_SMALL": regime.GAP_TOO_SMALL, "GAP_TOO_AGGRESSIVE": regime.GAP_TOO_AGGRESSIVE,
               "margin": args.margin}
    config = {"steps": steps, "train_size": train_size, "eval_size": eval_size, "head_lr": 3e-3,
              "targets": "query,value", "rank": RANK, "rule": "standard", "gap_every": every, "grid": str(args.grid.name)}

    def save() -> dict:
        text, result = analyse(runs, labels, current)
        write_results(name, {"config": config, "thresholds": current, "runs": runs, **result}, text, args.out,
                      reanalysis=args.reanalyse)
        return result

    for seed in range(seeds):
        for lr in lrs:
            for a in alphas:
                if args.reanalyse or (a, lr, seed) in done:
                    continue
                r = train_minilm(rank=RANK, alpha=a, rule="standard", lr=lr, head_lr=3e-3, targets=("query", "value"),
                                 max_steps=steps, batch_size=32 if not args.quick else 8, train_size=train_size,
                                 eval_size=eval_size, seed=seed, gap_every=every)
                r.update(lr=lr, seed=seed)
                runs.append(r)
                print(f"alpha={a:g} lr={lr:g} seed={seed}: acc {r['test_acc']:.4f} gaps "
                      f"{[round(g, 3) for _, g in r['probes']]} verdict {r['verdict']}", flush=True)
                save()
    result = save()
    figure(result["cells"], current, out_dir / f"{name}.png")
    print((out_dir / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
