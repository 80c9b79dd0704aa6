"""Does the AlphaController bring a too-small alpha back during the run? (docs/metrics.md §8)

The tasks, model and recipe of ``verdict_calibration.py`` (MiniLM-L6, LoRA r=8 on query/key/value/dense,
standard rule, head lr 3e-3, batch 16, max 32 tokens, constant lr). Per task, lr in {1e-4, 1e-3} and seed:
the best fixed alpha of that cell is the grid's best at 252 steps (``verdict_calibration.json``, mean over
seeds); runs start 4x, 16x and 64x below it and at the law's alpha (c*sqrt(8) = 764), each without and with
the controller, at 63 and 252 steps. Uncontrolled runs come from the grid where it holds that alpha and seed
(a constant lr makes a 63-step run the first 63 steps of the 252-step one), else are trained here (252 steps,
both budgets). Controlled runs are trained per budget (the controller moves only in the first quarter),
probing every ``max(5, steps // 16)`` steps.

Before any run: the rule's ``k_up``, ``z_min`` and step-size headroom are chosen on the debates' stored
probes of the grid (which first move each candidate would make in the first quarter of each run, and where
it lands against the grid's labels) and scored the same way on Rotten Tomatoes.

    python benchmarks/alpha_control.py                 # the grid (CPU-hours on 2 cores; resumable)
    python benchmarks/alpha_control.py --seeds 1       # one seed
    python benchmarks/alpha_control.py --lrs 1e-4      # one learning rate
    python benchmarks/alpha_control.py --reanalyse     # tables and figure from the stored runs
    python benchmarks/alpha_control.py --quick         # seconds, for the test suite
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from pathlib import Path

from common import RESULTS, md_table, save_figure, stored_runs, write_results
from verdict_calibration import ALPHAS as GRID_ALPHAS
from verdict_calibration import LRS, TASKS, labels_for, train_run

BUDGETS = (63, 252)
LAW_ALPHA = 764.0
BELOW = (4, 16, 64)
TEST_SIZE = {"rotten_tomatoes": 400, "debates": 337}  # the grid's held-out splits (its runs do not store n)
CANDIDATES = {"k_up": (1.5, 2.0, 4.0), "z_min": (0.0, 0.5, 1.0, 1.5, 2.0), "headroom": (math.inf, 1.0, 0.5)}


def gap_every(steps: int) -> int:
    return max(5, steps // 16)


# ----------------------------------------------------------------- the rule on the grid's stored probes
def first_move(run: dict, rules) -> dict | None:
    """The first move ``rules`` would make in ``run``'s first quarter (252 steps), from its stored probes."""
    from signaldrift.control import alpha_move

    sizes: list[float] = []
    for p in run["probes"]:
        if p.get("step_size_max") is not None:
            sizes.append(p["step_size_max"])
        peak = max(sizes[-3:]) if sizes else None
        decision = alpha_move(p.get("k_star"), p.get("scale_gain_z"), p.get("scale_help_z"), p.get("verdict"),
                              p["step"], 252, 0, 1.0, peak, rules)
        if decision.factor is not None and decision.factor > 1:
            return {"step": p["step"], "factor": decision.factor, "to": run["alpha"] * decision.factor}
    return None


def landing(labels: dict, lr: float, alpha: float) -> str:
    """The label of the grid alpha nearest (in log) to ``alpha`` at ``lr``."""
    near = min((a for a, l in labels if l == lr), key=lambda a: abs(math.log(a / alpha)))
    return labels[(near, lr)]["label"]


def replay_score(runs: list[dict], task: str, rules) -> dict:
    """Moves the rule would make on ``task``'s stored runs: right (from a too-small cell to a cell that is not
    too aggressive), harmful (into a too-aggressive cell, from one that was not), and missed too-small runs."""
    right = harmful = missed = moved = small = 0
    for recipe in ("head", "adapters"):
        labels = labels_for(runs, task, 252, 0.02, recipe)
        for r in (r for r in runs if r["task"] == task and r.get("recipe", "head") == recipe):
            here = labels[(r["alpha"], r["lr"])]["label"]
            m = first_move(r, rules)
            small += here == "alpha-too-small"
            if m is None:
                missed += here == "alpha-too-small"
                continue
            moved += 1
            there = landing(labels, r["lr"], m["to"])
            right += here == "alpha-too-small" and there != "too-aggressive"
            harmful += there == "too-aggressive" and here != "too-aggressive"
    return {"too_small_runs": small, "moved": moved, "right": right, "harmful": harmful, "missed": missed}


def choose_rules(runs: list[dict], fit_task: str):
    """The candidate with the most right moves and no harmful one on ``fit_task`` (ties: the larger z_min, k_up)."""
    from signaldrift.control import ControlRules

    best, best_key = None, None
    for k_up, z_min, headroom in itertools.product(*CANDIDATES.values()):
        rules = ControlRules(k_up=k_up, z_min=z_min, headroom=min(headroom, 1e9))
        s = replay_score(runs, fit_task, rules)
        key = (s["harmful"] == 0, s["right"] - s["harmful"], z_min, k_up, -headroom)
        if best_key is None or key > best_key:
            best, best_key = (rules, s), key
    return best


# ----------------------------------------------------------------- the runs
def best_alphas(grid: list[dict]) -> dict[tuple[str, float], float]:
    out = {}
    for task in TASKS:
        labels = labels_for(grid, task, 252, 0.02)
        for lr in LRS:
            cells = [(a, v["acc"]) for (a, l), v in labels.items() if l == lr]
            if cells:
                out[(task, lr)] = max(cells, key=lambda t: t[1])[0]
    return out


def starts(best_alpha: float) -> list[tuple[str, float]]:
    """The start alphas: 4x, 16x, 64x below the best (the grid's own alpha where one lies within 2%), the law's."""
    def snap(a: float) -> float:
        near = min(GRID_ALPHAS, key=lambda g: abs(math.log(g / a)))
        return near if abs(math.log(near / a)) < 0.02 else a

    return [(f"{n}x below", snap(best_alpha / n)) for n in BELOW] + [("law", LAW_ALPHA)]


def plan(best: dict, seeds: int) -> list[tuple]:
    """(task, lr, seed, start name, alpha, controlled, steps) of every run the table needs."""
    out = []
    for (task, lr), b in sorted(best.items()):
        for seed, (name, alpha) in itertools.product(range(seeds), starts(b)):
            out.append((task, lr, seed, name, alpha, False, 252))
            out += [(task, lr, seed, name, alpha, True, steps) for steps in BUDGETS]
    return out


def key_of(r: dict) -> tuple:
    return (r["task"], r["lr"], r["seed"], round(r["alpha"], 6), bool(r.get("controlled")), r["steps"])


def interval(acc: float, n: int) -> tuple[float, float]:
    half = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / n)
    return max(acc - half, 0.0), min(acc + half, 1.0)


def table(runs: list[dict], grid: list[dict], best: dict, seeds: int) -> tuple[list[list], list[dict]]:
    rows, cells = [], []
    by_key = {key_of(r): r for r in runs}
    for (task, lr), b in sorted(best.items()):
        labels = {budget: labels_for(grid, task, budget, 0.02) for budget in BUDGETS}
        for budget in BUDGETS:
            best_acc = labels[budget][(b, lr)]["acc"]
            for name, alpha in starts(b):
                fixed = [by_key.get((task, lr, s, round(alpha, 6), False, 252)) for s in range(seeds)]
                ctl = [by_key.get((task, lr, s, round(alpha, 6), True, budget)) for s in range(seeds)]
                if not all(fixed) or not all(ctl) or not all(str(budget) in r["held_out"] for r in fixed + ctl):
                    continue
                a_fixed = statistics.fmean(r["held_out"][str(budget)]["acc"] for r in fixed)
                a_ctl = statistics.fmean(r["held_out"][str(budget)]["acc"] for r in ctl)
                n = sum(r["held_out"][str(budget)].get("n", TEST_SIZE[task]) for r in ctl)
                lo, hi = interval(a_ctl, n)
                finals = ", ".join(f"{r['final_alpha']:.3g}" for r in ctl)
                cell = {"task": task, "lr": lr, "budget": budget, "start": name, "alpha": alpha, "best_alpha": b,
                        "best_acc": best_acc, "fixed_acc": a_fixed, "controlled_acc": a_ctl, "controlled_ci": [lo, hi],
                        "final_alphas": [r["final_alpha"] for r in ctl], "moves": [len(r["moves"]) for r in ctl],
                        "within_best": best_acc - a_ctl <= 0.02, "not_below_fixed": a_fixed - a_ctl <= 0.01}
                cells.append(cell)
                rows.append([task, f"{lr:g}", budget, f"{name} ({alpha:.3g})", a_fixed, f"{a_ctl:.4f} [{lo:.3f}, {hi:.3f}]",
                             finals, f"{b:g}: {best_acc:.4f}", "yes" if cell["within_best"] else "no",
                             "yes" if cell["not_below_fixed"] else "no"])
    return rows, cells


def figure(runs: list[dict], path: Path) -> None:
    """A controlled run's alpha and training loss beside the uncontrolled run from the same alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(c, u) for c in runs if c.get("controlled") and c["steps"] == 252 and c["moves"]
             for u in runs if not u.get("controlled") and u.get("train_loss") and u["task"] == c["task"]
             and u["lr"] == c["lr"] and u["seed"] == c["seed"] and math.isclose(u["alpha"], c["alpha"])]
    if not pairs:
        return
    c, u = max(pairs, key=lambda p: p[0]["final_alpha"] / p[0]["alpha"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    steps = sorted(int(s) for s in c["train_loss"])
    alpha, moves = [], {m["step"]: m["new_alpha"] for m in c["moves"]}
    now = c["alpha"]
    for s in steps:
        alpha.append(now)
        now = moves.get(s, now)
    a1.step(steps, alpha, where="post", color="tab:green", label="with the controller")
    a1.axhline(c["alpha"], color="tab:gray", ls="--", label="without (fixed)")
    a1.set_yscale("log")
    a1.set_title(f"alpha ({c['task']}, lr {c['lr']:g}, seed {c['seed']})")
    a1.set_xlabel("optimizer step")
    a1.legend()

    def smooth(series: dict) -> tuple[list[int], list[float]]:
        xs = sorted(int(s) for s in series)
        ys = [series[str(x)] if str(x) in series else series[x] for x in xs]
        w = 9
        return xs, [statistics.fmean(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))]

    for r, color, label in ((u, "tab:gray", "without"), (c, "tab:green", "with the controller")):
        xs, ys = smooth(r["train_loss"])
        acc = r["held_out"]["252"]["acc"]
        a2.plot(xs, ys, color=color, label=f"{label} (held-out acc {acc:.3f})")
    for m in c["moves"]:
        a2.axvline(m["step"], color="tab:green", ls=":", lw=1)
    a2.set_title("training loss (mean of the last 9 steps)")
    a2.set_xlabel("optimizer step")
    a2.legend()
    save_figure(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--grid", type=Path, default=RESULTS / "verdict_calibration.json")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reanalyse", action="store_true", help="no training: tables and figure from the stored runs")
    p.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in LRS), help="the learning rates to run (of 1e-4, 1e-3)")
    args = p.parse_args(argv)
    lrs = {float(x) for x in args.lrs.split(",")}
    name = "alpha_control" + ("_quick" if args.quick else "")
    out_dir = args.out or RESULTS
    grid = json.loads(args.grid.read_text())["runs"]
    grid_head = [g for g in grid if g.get("recipe", "head") == "head"]
    chosen, fit = choose_rules(grid, "debates")
    scored = replay_score(grid, "rotten_tomatoes", chosen)
    from signaldrift.control import DEFAULT_CONTROL

    shipped = {k: getattr(DEFAULT_CONTROL, k) for k in CANDIDATES}
    replay = {"fit_task": "debates", "chosen": {k: getattr(chosen, k) for k in CANDIDATES}, "fit": fit,
              "scored_on_rotten_tomatoes": scored, "shipped": shipped,
              "shipped_on_rotten_tomatoes": replay_score(grid, "rotten_tomatoes", DEFAULT_CONTROL),
              "shipped_on_debates": replay_score(grid, "debates", DEFAULT_CONTROL)}
    best = {k: v for k, v in best_alphas(grid_head).items() if k[1] in lrs}
    seeds = 1 if args.quick else args.seeds
    todo = plan(best, seeds)
    if args.quick:
        todo = [t for t in todo if t[0] == "rotten_tomatoes" and t[1] == 1e-4 and t[3] == "64x below" and t[5]][-1:]
    extra = [dict(g, controlled=False) for g in grid_head if g["seed"] < seeds]
    runs, done = stored_runs(out_dir, name, key_of, fresh=args.quick, extra=extra)
    # the figure's uncontrolled twin needs its training loss: the 64x-below start is trained here even when the
    # grid holds it (once per task and lr, seed 0)
    twins = {(t[0], t[1]) for t in todo}
    for task, lr, seed, start, alpha, controlled, steps in ([] if args.reanalyse else todo):
        want = (task, lr, seed, round(alpha, 6), controlled, steps)
        twin = not controlled and seed == 0 and start == "64x below" and (task, lr) in twins
        have = next((r for r in runs if key_of(r) == want), None)
        if have is not None and (not twin or have.get("train_loss")):
            continue
        run_steps = 8 if args.quick else steps
        control = DEFAULT_CONTROL if controlled else None
        r = train_run(task, alpha, lr, seed, run_steps, 2 if args.quick else gap_every(steps), args.quick,
                      control=control)
        if not controlled:
            r.pop("probes", None)
            r["train_loss"] = r.get("train_loss") or {}
        r.update(controlled=controlled, start=start, steps=steps if not args.quick else run_steps)
        runs = [x for x in runs if key_of(x) != want] + [r]
        write_results(name, {"config": {"budgets": BUDGETS, "below": BELOW, "law_alpha": LAW_ALPHA, "seeds": seeds},
                             "replay": replay, "runs": runs}, "(in progress)\n", args.out)
        moved = "" if not controlled else f", alpha {alpha:.3g} -> {r['final_alpha']:.3g} ({len(r['moves'])} moves)"
        print(f"{task} lr {lr:g} seed {seed} {start} {'controlled' if controlled else 'fixed'} {steps} steps: "
              f"held-out {r['held_out']}{moved}", flush=True)
    rows, cells = table(runs, grid_head, best, seeds)
    text = (f"Rule (docs/metrics.md §8) chosen on the debates' stored probes of verdict_calibration.json: "
            f"{replay['chosen']} (first moves in the first quarter of each 252-step run: {fit}); the same on Rotten "
            f"Tomatoes: {scored}. Shipped: {shipped}; on Rotten Tomatoes {replay['shipped_on_rotten_tomatoes']}.\n\n"
            "Held-out accuracy, mean over seeds; controlled runs with a 95% binomial interval over the held-out "
            "examples of all seeds; the alpha each controlled run ended at; the grid's best fixed alpha at that lr "
            "(252 steps) with its accuracy at the budget.\n\n"
            + md_table(["task", "lr", "steps", "start alpha", "acc fixed", "acc controlled", "final alpha",
                        "best fixed alpha: acc", "within 0.02 of best", "not below fixed by > 0.01"], rows) + "\n")
    auto = RESULTS / "alpha_auto.json"
    if auto.is_file() and not args.quick:  # `--alpha auto` (the finder) where it was measured: lr 1e-4, 252 steps
        by_task = {r["task"]: r for r in (dict(zip(["task", "alphas", "acc"], row)) for row in json.loads(auto.read_text())["table"])}
        text += ("\n`--alpha auto` (alpha_auto.json: lr 1e-4, 252 steps, its seeds; not run at lr 1e-3 or 63 steps): "
                 + "; ".join(f"{t}: alpha {r['alphas']}, held-out {r['acc']:.4f}" for t, r in by_task.items()) + "\n")
    write_results(name, {"config": {"budgets": BUDGETS, "below": BELOW, "law_alpha": LAW_ALPHA, "seeds": seeds},
                         "replay": replay, "runs": runs, "cells": cells}, text, args.out, reanalysis=args.reanalyse)
    figure(runs, out_dir / f"{name}.png")
    print(text)


if __name__ == "__main__":
    main()
