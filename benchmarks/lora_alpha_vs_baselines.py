"""LoRA-α with its defaults against standard LoRA, rsLoRA and LoRA+ on MiniLM + Rotten Tomatoes.

Same step budget for every method (63 steps of batch 32 on 2,000 snippets, LoRA on query/value, head
lr 3e-3), ranks 8 and 32, 3 seeds. LoRA-α uses the code's defaults (alpha = c * sqrt(r) with
``signaldrift.regime.SQRT_LAW_C``, lr ``lora_alpha.train.module.DEFAULT_LR``). The baselines run at their
usual learning rate, 5e-4 (the LoRA paper's RoBERTa-base GLUE setting), and at LoRA-α's:

| method | alpha | scale |
|---|---|---|
| LoRA | 2r | alpha / r = 2 |
| rsLoRA | 16 | alpha / sqrt(r) |
| LoRA+ | 2r, B's lr x16 | alpha / r |

Reported: held-out accuracy mean +- std over seeds, and the steps to reach a target validation
accuracy (the learning curve is measured every 9 steps on 320 validation snippets). Cells are saved
as they finish; a rerun skips them.

    python benchmarks/lora_alpha_vs_baselines.py           # 6 methods x 2 ranks x 3 seeds, ~45 min
    python benchmarks/lora_alpha_vs_baselines.py --quick   # seconds, for the test suite
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import RESULTS, bootstrap_ci, md_table, mean_std, save_figure, stored_runs, train_minilm, write_results

USUAL_LR = 5e-4  # the baselines' usual lr, the LoRA paper's RoBERTa-base GLUE setting: results/lora_alpha_vs_baselines.md
TARGET_ACC = 0.70  # between the majority class (0.53) and the alpha x lr grid's best cells (~0.75, results/alpha_vs_lr.md)


def methods(rank: int, lora_alpha_lr: float) -> list[dict]:
    return [
        dict(method="LoRA-α (defaults)", rule="lora-alpha", alpha=None, lr=lora_alpha_lr),
        dict(method="LoRA (alpha=2r)", rule="standard", alpha=2.0 * rank, lr=USUAL_LR),
        dict(method="LoRA (alpha=2r)", rule="standard", alpha=2.0 * rank, lr=lora_alpha_lr),
        dict(method="rsLoRA (alpha=16)", rule="rslora", alpha=16.0, lr=USUAL_LR),
        dict(method="rsLoRA (alpha=16)", rule="rslora", alpha=16.0, lr=lora_alpha_lr),
        dict(method="LoRA+ (alpha=2r, B lr x16)", rule="standard", alpha=2.0 * rank, lr=USUAL_LR, loraplus_ratio=16.0),
    ]


def _key(m: dict, rank: int) -> str:
    return f"{m['method']} | r={rank} | lr={m['lr']:g}"


def steps_to(curve: list[list[float]], target: float) -> int | None:
    return next((int(step) for step, acc in curve if acc >= target), None)


def _mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def analyse(runs: list[dict], ranks, seeds: int, lora_alpha_lr: float) -> tuple[str, dict, dict]:
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["key"], []).append(r)
    rows, summary = [], {}
    for rank in ranks:
        for m in methods(rank, lora_alpha_lr):
            k = _key(m, rank)
            rs = by.get(k, [])
            if not rs:
                rows.append([m["method"], rank, m["lr"], None, 0, None, None, None, None])
                continue
            acc, sd = mean_std([r["test_acc"] for r in rs])
            reach = [steps_to(r["curve"], TARGET_ACC) for r in rs]
            hit = [s for s in reach if s is not None]
            summary[k] = {"acc_mean": acc, "acc_std": sd, "seeds": len(rs), "steps_to_target": reach,
                          "alpha": rs[0]["alpha"], "scale": rs[0]["scale"],
                          "drift_ratio": _mean_or_none([r["drift_ratio_mean"] for r in rs])}
            rows.append([m["method"], rank, m["lr"], f"{rs[0]['alpha']:g} (s={rs[0]['scale']:.3g})", len(rs),
                         f"{acc:.3f} +- {sd:.3f}",
                         f"{statistics.fmean(hit):.0f} ({len(hit)}/{len(rs)})" if hit else f"not reached (0/{len(rs)})",
                         summary[k]["drift_ratio"], m.get("loraplus_ratio")])
    table = md_table(["method", "rank", "lr", "alpha (scale)", "seeds", "held-out acc mean +- std",
                      f"steps to val acc {TARGET_ACC} (seeds that reached it)", "drift_ratio", "B lr ratio"], rows)
    text, comparisons = compare(by, ranks, lora_alpha_lr)
    return table + text, summary, comparisons


def compare(by: dict[str, list[dict]], ranks, lora_alpha_lr: float) -> tuple[str, dict]:
    """LoRA-α minus each baseline in held-out accuracy, paired by seed (same data split and order)."""
    rows, out = [], {}
    for rank in ranks:
        ours_m, *others = methods(rank, lora_alpha_lr)
        ours = {r["seed"]: r["test_acc"] for r in by.get(_key(ours_m, rank), [])}
        for m in others:
            k = _key(m, rank)
            theirs = {r["seed"]: r["test_acc"] for r in by.get(k, [])}
            diffs = [ours[s] - theirs[s] for s in sorted(ours.keys() & theirs.keys())]
            if not diffs:
                continue
            lo, hi = bootstrap_ci(statistics.fmean, diffs)
            word = "LoRA-α higher" if lo > 0 else "LoRA-α lower" if hi < 0 else "within noise"
            out[k] = {"diff_mean": statistics.fmean(diffs), "diff_ci95": [lo, hi], "seeds": len(diffs), "reading": word}
            rows.append([rank, f"{m['method']}, lr {m['lr']:g}", len(diffs), f"{statistics.fmean(diffs):+.3f}",
                         f"[{lo:+.3f}, {hi:+.3f}]", word])
    if not rows:
        return "", out
    return ("\n\nLoRA-α minus each baseline, held-out accuracy, paired by seed (95% bootstrap interval over seeds; "
            "with 3 seeds it is coarse):\n\n"
            + md_table(["rank", "baseline", "seeds", "difference", "95% CI", "reading"], rows)), out


def curves_png(runs: list[dict], ranks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ranks), figsize=(5.5 * len(ranks), 4), squeeze=False)
    for ax, rank in zip(axes[0], ranks):
        keys = sorted({r["key"] for r in runs if r["rank"] == rank})
        for k in keys:
            rs = [r for r in runs if r["key"] == k]
            steps = [s for s, _ in rs[0]["curve"]]
            mean = [statistics.fmean(r["curve"][i][1] for r in rs if len(r["curve"]) > i) for i in range(len(steps))]
            ax.plot(steps, mean, "o-", ms=3, label=k.split(" | r=")[0] + f", lr {rs[0]['lr']:g}")
        ax.axhline(TARGET_ACC, color="k", ls=":", lw=1)
        ax.set_title(f"rank {rank}")
        ax.set_xlabel("step")
        ax.set_ylabel("validation accuracy (mean over seeds)")
        ax.legend(fontsize=6)
    save_figure(fig, path)


def main(argv=None) -> None:
    from lora_alpha.train.module import DEFAULT_LR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--methods", default=None, help="run only methods whose name contains one of these (comma-separated)")
    p.add_argument("--merge", type=Path, default=None, help="add the runs of another result file (e.g. a parallel run)")
    p.add_argument("--reanalyse", action="store_true", help="no training: tables and figure from the stored runs")
    args = p.parse_args(argv)
    ranks, seeds = ((8, 32), args.seeds) if not args.quick else ((2,), 1)
    steps, train_size, eval_size, curve_every, curve_size, batch = (
        (63, 2000, 1000, 9, 320, 32) if not args.quick else (2, 16, 16, 1, 8, 8))
    out_dir = args.out or RESULTS
    name = "lora_alpha_vs_baselines" + ("_quick" if args.quick else "")
    runs, done = stored_runs(out_dir, name, lambda r: (r["key"], r["seed"]), fresh=args.quick,
                             extra=json.loads(args.merge.read_text())["runs"] if args.merge else ())
    todo = [(seed, rank, m) for seed in range(seeds) for rank in ranks for m in methods(rank, DEFAULT_LR)]
    if args.quick:
        todo = todo[:2]
    if args.methods:
        todo = [t for t in todo if any(x in t[2]["method"] for x in args.methods.split(","))]
    config = {"steps": steps, "train_size": train_size, "eval_size": eval_size, "curve_every": curve_every,
              "curve_size": curve_size, "head_lr": 3e-3, "targets": "query,value", "target_acc": TARGET_ACC,
              "lora_alpha_lr": DEFAULT_LR, "usual_lr": USUAL_LR}
    for seed, rank, m in ([] if args.reanalyse else todo):
        k = _key(m, rank)
        if (k, seed) in done:
            continue
        r = train_minilm(rank=rank, alpha=m["alpha"], rule=m["rule"], lr=m["lr"], head_lr=3e-3, targets=("query", "value"),
                         max_steps=steps, batch_size=batch, train_size=train_size, eval_size=eval_size, seed=seed,
                         loraplus_ratio=m.get("loraplus_ratio"), curve_every=curve_every, curve_size=curve_size)
        r.update(key=k, method=m["method"], rank=rank, lr=m["lr"], seed=seed, rule=m["rule"])
        runs.append(r)
        print(f"{k} seed={seed}: acc {r['test_acc']:.4f}", flush=True)
        table, summary, comparisons = analyse(runs, ranks, seeds, DEFAULT_LR)
        write_results(name, {"config": config, "runs": runs, "summary": summary, "comparisons": comparisons}, table, out_dir)
    table, summary, comparisons = analyse(runs, ranks, seeds, DEFAULT_LR)
    expected = len(ranks) * len(methods(ranks[0], DEFAULT_LR)) * seeds
    if len(runs) < expected:
        table = (f"**Partial: {len(runs)} of {expected} runs** (the seeds column says which cells are short); "
                 "no verdict from this table until it is complete.\n\n" + table)
    table += (f"\n\nSame budget for all: {steps} steps of batch {batch} on {train_size} snippets, LoRA on query/value, head "
              f"lr 3e-3; held-out accuracy on {eval_size} test snippets; learning curve every {curve_every} steps on "
              f"{curve_size} validation snippets. LoRA-α: alpha = c sqrt(r), lr {DEFAULT_LR:g}; usual lr {USUAL_LR:g}.\n")
    write_results(name, {"config": config, "runs": runs, "summary": summary, "comparisons": comparisons}, table, out_dir,
                  reanalysis=args.reanalyse)
    curves_png(runs, ranks, out_dir / f"{name}.png")
    print(table)


if __name__ == "__main__":
    main()
