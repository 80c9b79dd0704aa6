"""The alpha finder against the alpha x lr grid: does its suggestion land near the grid's best alpha?

For each learning rate of ``alpha_vs_lr.py`` the finder (``lora_alpha.find_alpha``) runs on the same
configuration (MiniLM-L6, r=8 on query/value, standard rule, head lr 3e-3, 2,000 training snippets,
batch 32); its suggestion is compared with the alpha of the grid's best mean held-out accuracy at
that lr (``results/alpha_vs_lr.json``). "Within 2x" means 1/2 <= suggestion / best <= 2. Compute is
compared as training steps (+ held-out batches) and as measured seconds against the grid's.

    python benchmarks/alpha_finder.py            # 4 finder runs, ~10 min
    python benchmarks/alpha_finder.py --quick    # seconds, for the test suite
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

from common import RESULTS, md_table, save_figure, write_results


def grid_best(alpha_vs_lr: dict) -> dict[float, tuple[float, float]]:
    """Per lr: (alpha of the best mean held-out accuracy, that accuracy)."""
    cells: dict[tuple[float, float], list[float]] = {}
    for r in alpha_vs_lr["runs"]:
        cells.setdefault((r["lr"], r["alpha"]), []).append(r["test_acc"])
    out: dict[float, tuple[float, float]] = {}
    for (lr, a), accs in cells.items():
        m = statistics.fmean(accs)
        if lr not in out or m > out[lr][1]:
            out[lr] = (a, m)
    return out


def run_finder(lr: float, steps: int, eval_batches: int, train_size: int, eval_size: int, batch_size: int,
               target_steps: int, alphas=None, seed: int = 0) -> tuple[dict, float]:
    import torch
    from lightning.pytorch import seed_everything

    from lora_alpha.train.data import RottenTomatoesDataModule, demo_model_path
    from lora_alpha.train.finder import find_alpha
    from lora_alpha.train.module import LoRAAlphaModule

    torch.set_num_threads(min(os.cpu_count() or 1, 16))
    seed_everything(seed, verbose=False)
    dm = RottenTomatoesDataModule(batch_size=batch_size, train_size=train_size, val_size=eval_size, test_size=eval_size,
                                  seed=seed)
    module = LoRAAlphaModule(demo_model_path(), targets=["query", "value"], rank=8, alpha=16.0, rule="standard", lr=lr,
                             head_lr=3e-3)
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = find_alpha(module, dm, alphas=alphas, steps=steps, lr=lr, head_lr=3e-3, eval_batches=eval_batches,
                         progress_bar=False, target_steps=target_steps)
    return res.as_dict(), time.time() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reanalyse", action="store_true", help="recompute the tables from the result file's runs (no training)")
    args = p.parse_args(argv)
    out_dir = args.out or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = json.loads((RESULTS / "alpha_vs_lr.json").read_text())
    best = grid_best(grid)
    lrs = sorted(best) if not args.quick else [1e-3]
    steps, eval_batches = (args.steps, args.eval_batches) if not args.quick else (1, 1)
    sizes = dict(train_size=2000, eval_size=1000, batch_size=32) if not args.quick else dict(train_size=32, eval_size=16,
                                                                                         batch_size=8)
    alphas = None if not args.quick else [16.0, 64.0, 256.0]
    grid_steps = sum(r["steps"] for r in grid["runs"])
    grid_seconds = sum(r["train_seconds"] for r in grid["runs"])
    rows, runs = [], []
    name = "alpha_finder" + ("_quick" if args.quick else "")
    previous = {r["lr"]: r for r in json.loads((out_dir / f"{name}.json").read_text())["runs"]} if args.reanalyse else {}
    for lr in lrs:
        if args.reanalyse:
            res, seconds = previous[lr]["finder"], previous[lr]["seconds"]
        else:
            res, seconds = run_finder(lr, steps, eval_batches, target_steps=grid["config"]["steps"] if not args.quick else 2,
                                      alphas=alphas, **sizes)
        b_alpha, b_acc = best[lr]
        ratio = res["suggestion"] / b_alpha if res["suggestion"] else None
        runs.append({"lr": lr, "finder": res, "seconds": seconds, "grid_best_alpha": b_alpha, "grid_best_acc": b_acc,
                     "ratio": ratio, "within_2x": ratio is not None and 0.5 <= ratio <= 2.0})
        rows.append([lr, res["trial_best"], res["suggestion"], b_alpha, b_acc, ratio, "yes" if runs[-1]["within_2x"] else "no",
                     res["train_steps"], round(seconds, 1), "yes" if res["at_edge"] else "no"])
        print(rows[-1], flush=True)
    finder_steps = sum(r["finder"]["train_steps"] for r in runs)
    finder_seconds = sum(r["seconds"] for r in runs)
    lr_slice = {lr: sum(r["train_seconds"] for r in grid["runs"] if r["lr"] == lr) for lr in lrs}
    summary = {
        "within_2x": sum(r["within_2x"] for r in runs), "of": len(runs),
        "fraction_of_grid_train_steps_per_lr": finder_steps / len(runs) / grid_steps,
        "finder_train_steps_per_lr": finder_steps / len(runs), "grid_train_steps": grid_steps,
        "finder_seconds_per_lr": finder_seconds / len(runs), "grid_train_seconds": grid_seconds,
        "fraction_of_grid_seconds_per_lr": finder_seconds / len(runs) / grid_seconds,
        "fraction_of_grid_seconds_all_lrs": finder_seconds / grid_seconds,
        "fraction_of_lr_slice_seconds": {str(lr): r["seconds"] / lr_slice[lr] for lr, r in zip(lrs, runs)},
    }
    table = md_table(["lr", "trials' best alpha", "finder's suggestion", "grid's best alpha", "its mean acc", "ratio", "within 2x",
                      "finder train steps", "finder seconds", "best trial at grid edge"], rows)
    table += (f"\n\nFinder: {steps} steps per trial, suggestion = trials' best x {steps}/{runs[0]['finder']['target_steps']} "
              f"(the grid's run length), held-out loss on {eval_batches} validation batches of {sizes['batch_size']}, alphas "
              f"{', '.join(f'{a:g}' for a in runs[0]['finder']['alphas'])}; grid: `alpha_vs_lr.json`, "
              f"{len(grid['runs'])} runs of 63 steps ({grid_steps} training steps, {grid_seconds:.0f} s of training).\n\n"
              f"Within 2x of the grid's best alpha at the same lr: {summary['within_2x']} of {summary['of']}. One finder "
              f"run costs {summary['finder_train_steps_per_lr']:.0f} training steps (plus {eval_batches} held-out batches "
              f"per trial), {100 * summary['fraction_of_grid_train_steps_per_lr']:.1f}% of the grid's {grid_steps} training "
              f"steps; in seconds {summary['finder_seconds_per_lr']:.0f} s, "
              f"{100 * summary['fraction_of_grid_seconds_per_lr']:.1f}% of the grid's training seconds "
              f"(all {len(runs)} finder runs together: {100 * summary['fraction_of_grid_seconds_all_lrs']:.1f}%); "
              "against only that lr's 15 grid runs: "
              + ", ".join(f"lr {float(lr):g}: {100 * f:.0f}%" for lr, f in summary["fraction_of_lr_slice_seconds"].items())
              + ". (Seconds are wall-clock on this machine, which ran other benchmarks at the same time; steps are not"
              " affected by load.)\n")
    write_results(name, {"config": {"steps": steps, "eval_batches": eval_batches, **sizes}, "runs": runs,
                         "summary": summary}, table, out_dir, reanalysis=args.reanalyse)
    _plot(runs, out_dir / f"{name}.png")
    print(table)


def _plot(runs: list[dict], path: Path) -> None:
    """Held-out loss vs alpha per lr (the finder's curves), its suggestions (x) and the grid's best alphas (*)."""
    import math

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in runs:
        f = r["finder"]
        pts = [(a, l) for a, l in zip(f["alphas"], f["losses"]) if math.isfinite(l)]
        line = ax.semilogx([a for a, _ in pts], [l for _, l in pts], "o-", ms=3, label=f"lr {r['lr']:g}")[0]
        if f["suggestion"]:
            ax.axvline(f["suggestion"], color=line.get_color(), ls="--", lw=1)
        ax.plot([r["grid_best_alpha"]], [min(l for _, l in pts)], "*", ms=12, color=line.get_color())
    ax.set_xlabel("alpha (standard rule, r=8)")
    ax.set_ylabel("held-out loss after the trial")
    ax.set_title("alpha finder: dashed = suggestion, star = grid's best alpha (accuracy)", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
