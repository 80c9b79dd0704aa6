"""Does ``--alpha auto`` (the alpha finder) beat the fixed square-root law where c does not transfer?

For each task of ``verdict_calibration.py`` (same model, data, batch, length and 252 steps) at LoRA-α's
lr 1e-4 and each seed: the alpha finder's short trials (its defaults: alphas 4..16384, 16 steps each,
4 held-out batches) for a 252-step run, then a full run with its suggestion, scored on the same
held-out split as the grid. Compared with the grid's runs at the law's alpha (c*sqrt(8) = 764) and at
the grid's best alpha for that lr and budget (``results/verdict_calibration.json``, same seeds).

    python benchmarks/alpha_auto.py           # ~10 min on 2 cores
    python benchmarks/alpha_auto.py --quick   # seconds, for the test suite
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from common import RESULTS, md_table, stored_runs, write_results
from verdict_calibration import TASKS, data_module, labels_for, train_run

LR, LAW_ALPHA = 1e-4, 764.0


def finder_alpha(task: str, seed: int, steps: int, quick: bool) -> dict:
    from lightning.pytorch import seed_everything

    from lora_alpha.train.data import demo_model_path
    from lora_alpha.train.finder import find_alpha
    from lora_alpha.train.module import LoRAAlphaModule
    from verdict_calibration import HEAD_LR, RANK, TARGETS

    seed_everything(seed, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        dm = data_module(task, seed, Path(tmp), quick, finder=True)
        dm.setup("fit")
        module = LoRAAlphaModule(demo_model_path(), targets=list(TARGETS), rank=RANK, alpha=LAW_ALPHA, rule="standard",
                                 lr=LR, head_lr=HEAD_LR, num_labels=dm.num_labels)
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = find_alpha(module, dm, lr=LR, head_lr=HEAD_LR, target_steps=steps, progress_bar=False,
                             **({"steps": 2, "alphas": [16.0, 256.0, 4096.0], "eval_batches": 1} if quick else {}))
        return {"suggestion": res.suggestion, "trial_best": res.trial_best, "at_edge": res.at_edge,
                "alphas": res.alphas, "losses": res.losses, "seconds": time.time() - t0}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--margin", type=float, default=0.02)
    p.add_argument("--grid", type=Path, default=RESULTS / "verdict_calibration.json")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    name = "alpha_auto" + ("_quick" if args.quick else "")
    out_dir = args.out or RESULTS
    # the grid's runs are 252 steps long: the quick mode's 4 steps have nothing to compare with
    grid = json.loads(args.grid.read_text())["runs"] if args.grid.is_file() and not args.quick else []
    steps = 4 if args.quick else 252
    runs, done = stored_runs(out_dir, name, lambda r: (r["task"], r["seed"]), fresh=args.quick)
    for seed in range(1 if args.quick else args.seeds):
        for task in TASKS:
            if (task, seed) in done:
                continue
            found = finder_alpha(task, seed, steps, args.quick)
            run = train_run(task, float(found["suggestion"]), LR, seed, steps, 2 if args.quick else 12, args.quick)
            runs.append({"task": task, "seed": seed, "finder": found, "alpha": found["suggestion"],
                         "held_out": run["held_out"], "seconds": run["seconds"]})
            print(f"{task} seed {seed}: finder suggests {found['suggestion']:.4g}; held-out {run['held_out']}", flush=True)
    rows = []
    for task in TASKS:
        mine = [r for r in runs if r["task"] == task]
        if not mine:
            continue
        law = [g["held_out"][str(steps)]["acc"] for g in grid if g["task"] == task and g["lr"] == LR
               and g["alpha"] == LAW_ALPHA and g["seed"] < args.seeds]
        labels = labels_for(grid, task, steps, args.margin) if grid else {}
        best = max(((a, v["acc"]) for (a, lr), v in labels.items() if lr == LR), key=lambda t: t[1], default=(None, None))
        auto = [r["held_out"][str(steps)]["acc"] for r in mine]
        rows.append([task, ", ".join(f"{r['alpha']:.3g}" for r in mine), statistics.fmean(auto),
                     statistics.fmean(law) if law else None, best[0], best[1],
                     statistics.fmean(r["finder"]["seconds"] for r in mine)])
    text = ("Held-out accuracy after 252 steps at lr 1e-4 (mean over seeds): the finder's alpha (`--alpha auto`), the "
            f"law's alpha {LAW_ALPHA:g} and the grid's best alpha (verdict_calibration.json, same seeds).\n\n"
            + md_table(["task", "finder's alpha per seed", "acc (auto)", "acc (law, 764)", "grid's best alpha",
                        "acc (grid's best)", "finder seconds"], rows) + "\n")
    write_results(name, {"config": {"lr": LR, "steps": steps, "law_alpha": LAW_ALPHA, "seeds": args.seeds},
                         "runs": runs, "table": rows}, text, args.out)
    print(text)


if __name__ == "__main__":
    main()
