"""Alpha vs learning rate on the real task: MiniLM-L6 + LoRA + Rotten Tomatoes, seeds, drift and step size.

Answers, once the grid is complete: (1) at the smallest learning rate, how accuracy moves with alpha;
(2) the best cell reached by raising alpha at a small learning rate vs the best reached by raising
the learning rate at alpha=16, with a bootstrap confidence interval on the difference; (3) whether
the drift ratio is flat along alpha and rising along the learning rate (log-log slopes).

Cells are saved as they finish; a rerun skips the cells already in the result file, so a long grid
can be run in pieces.

    python benchmarks/alpha_vs_lr.py                 # full grid: 5 alphas x 4 lrs x 3 seeds
    python benchmarks/alpha_vs_lr.py --reanalyse     # tables and figure from the stored runs, no training
    python benchmarks/alpha_vs_lr.py --quick         # seconds, for the test suite
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from scipy.stats import linregress

from common import RESULTS, bootstrap_ci, md_table, mean_std, save_figure, stored_runs, train_minilm, write_results

ALPHAS = (8.0, 16.0, 64.0, 256.0, 1024.0)  # the grid's alphas (standard rule, r=8): results/alpha_vs_lr.md
LRS = (1e-4, 3e-4, 1e-3, 3e-3)  # the grid's factor learning rates: results/alpha_vs_lr.md


def _cells(runs: list[dict]) -> dict[tuple[float, float], list[dict]]:
    cells: dict[tuple[float, float], list[dict]] = {}
    for r in runs:
        cells.setdefault((r["alpha"], r["lr"]), []).append(r)
    return cells


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x over the positive points (None with fewer than two x's)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    return float(linregress(*zip(*pts)).slope)


def analyse(runs: list[dict], alphas, lrs, seeds: int) -> tuple[str, dict]:
    cells = _cells(runs)
    rows = []
    for a in alphas:
        for lr in lrs:
            rs = cells.get((a, lr), [])
            if not rs:
                rows.append([a, lr, 0, None, None, None, None])
                continue
            m, s = mean_std([r["test_acc"] for r in rs])
            rows.append([a, lr, len(rs), m, s, statistics.fmean(r["drift_ratio_mean"] or 0 for r in rs),
                         statistics.fmean(r["step_size_mean"] or 0 for r in rs)])
    table = md_table(["alpha", "lr", "seeds", "held-out acc mean", "std", "drift_ratio", "step_size"], rows)
    complete = all(len(cells.get((a, lr), [])) >= seeds for a in alphas for lr in lrs)
    answers: dict = {"complete": complete}
    if not complete:
        done = sum(len(v) for v in cells.values())
        return table + f"\n\n**Partial grid**: {done} of {len(alphas) * len(lrs) * seeds} runs done; no verdicts yet.\n", answers
    acc = {k: [r["test_acc"] for r in v] for k, v in cells.items()}
    small = min(lrs)
    answers["q1_acc_vs_alpha_at_smallest_lr"] = {a: statistics.fmean(acc[(a, small)]) for a in alphas}
    best_alpha = max(alphas, key=lambda a: statistics.fmean(acc[(a, small)]))
    best_lr = max(lrs, key=lambda lr: statistics.fmean(acc[(16.0, lr)]))
    lo, hi = bootstrap_ci(lambda x, y: statistics.fmean(x) - statistics.fmean(y),
                          acc[(best_alpha, small)], acc[(16.0, best_lr)])
    answers["q2"] = {"best_alpha_at_small_lr": [best_alpha, small, statistics.fmean(acc[(best_alpha, small)])],
                     "best_lr_at_alpha16": [16.0, best_lr, statistics.fmean(acc[(16.0, best_lr)])],
                     "diff_ci95": [lo, hi]}
    drift = {k: statistics.fmean(r["drift_ratio_mean"] or 0 for r in v) for k, v in cells.items()}
    answers["q3_slope_drift_vs_alpha"] = {lr: _slope(list(alphas), [drift[(a, lr)] for a in alphas]) for lr in lrs}
    answers["q3_slope_drift_vs_lr"] = {a: _slope(list(lrs), [drift[(a, lr)] for lr in lrs]) for a in alphas}
    text = (f"\n\n(1) At lr={small:g}: " + ", ".join(f"alpha {a:g}: {v:.3f}" for a, v in answers["q1_acc_vs_alpha_at_smallest_lr"].items())
            + f".\n(2) Best by alpha at lr={small:g}: alpha {best_alpha:g} -> {answers['q2']['best_alpha_at_small_lr'][2]:.3f}; "
            f"best by lr at alpha=16: lr {best_lr:g} -> {answers['q2']['best_lr_at_alpha16'][2]:.3f}; difference 95% CI "
            f"[{lo:+.3f}, {hi:+.3f}] (bootstrap over seeds).\n(3) Slope of log drift_ratio vs log alpha per lr: "
            + ", ".join(f"{lr:g}: {s:.2f}" for lr, s in answers["q3_slope_drift_vs_alpha"].items() if s is not None)
            + "; vs log lr per alpha: " + ", ".join(f"{a:g}: {s:.2f}" for a, s in answers["q3_slope_drift_vs_lr"].items() if s is not None) + ".\n")
    return table + text, answers


def heatmap(runs: list[dict], alphas, lrs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cells = _cells(runs)
    grid = [[statistics.fmean(r["test_acc"] for r in cells[(a, lr)]) if (a, lr) in cells else float("nan")
             for lr in lrs] for a in alphas]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("alpha (standard rule, r=8)")
    ax.set_title("held-out accuracy (mean over seeds)")
    fig.colorbar(im)
    save_figure(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=63)
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--eval-size", type=int, default=1000)
    p.add_argument("--head-lr", type=float, default=3e-3, help="the classifier head's own lr (0: same as the factors)")
    p.add_argument("--targets", default="query,value")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reanalyse", action="store_true", help="no training: tables and figure from the stored runs")
    args = p.parse_args(argv)
    alphas, lrs, seeds = (ALPHAS, LRS, args.seeds) if not args.quick else ((16.0, 64.0), (1e-3,), 1)
    steps, train_size, eval_size = (args.steps, args.train_size, args.eval_size) if not args.quick else (2, 32, 16)
    name = "alpha_vs_lr" + ("_quick" if args.quick else "")
    out_dir = args.out or RESULTS
    runs, done = stored_runs(out_dir, name, lambda r: (r["alpha"], r["lr"], r["seed"]), fresh=args.quick)
    config = {"steps": steps, "train_size": train_size, "eval_size": eval_size, "head_lr": args.head_lr,
              "targets": args.targets, "rank": 8, "rule": "standard"}
    for seed in range(seeds):  # seed-major: a partial grid still covers every cell once
        for a in alphas:
            for lr in lrs:
                if args.reanalyse or (a, lr, seed) in done:
                    continue
                r = train_minilm(rank=8, alpha=a, rule="standard", lr=lr, head_lr=args.head_lr or lr,
                                 targets=tuple(args.targets.split(",")), max_steps=steps, batch_size=32 if not args.quick else 16,
                                 train_size=train_size, eval_size=eval_size, seed=seed)
                r.update(lr=lr, seed=seed)
                runs.append(r)
                print(f"alpha={a:g} lr={lr:g} seed={seed}: acc {r['test_acc']:.4f} drift {r['drift_ratio_mean']}", flush=True)
                text, answers = analyse(runs, alphas, lrs, seeds)
                write_results(name, {"config": config, "runs": runs, "answers": answers}, text, args.out)
    text, answers = analyse(runs, alphas, lrs, seeds)
    write_results(name, {"config": config, "runs": runs, "answers": answers}, text, args.out, reanalysis=args.reanalyse)
    heatmap(runs, alphas, lrs, out_dir / f"{name}.png")
    print(text)


if __name__ == "__main__":
    main()
