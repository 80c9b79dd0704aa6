"""alpha*(r): the best alpha per LoRA rank, and a fit alpha* = c * r^p with bootstrap intervals.

Synthetic linear teacher-student task: a frozen base W0 (n x n), a target W0 + Delta with
rank(Delta) above the largest r and a decaying spectrum, noisy labels; the student trains LoRA
factors (scale alpha / r) with Adam from B = 0 and is scored by held-out loss. For each rank, the
best alpha on a log grid (refined by a parabola in log alpha) is alpha*(r); replicates are
(teacher, seed) pairs, and the bootstrap resamples them.

The MiniLM half trains LoRA (standard rule, query/value, LoRA-α's learning rate 1e-4) on Rotten
Tomatoes for each rank and alpha and scores held-out loss; replicates are seeds. Cells are saved as
they finish (a rerun skips them), and r=8 cells that ``alpha_vs_lr.py`` already ran with the same
configuration are reused, marked as such. Once both halves exist, each task's fitted law predicts
the other's alpha*(r) (``rank_sweep.md``): the constant and the exponent are checked separately,
because c depends on the task's units (lr, width) while p is what the square-root law is about.

    python benchmarks/rank_sweep.py --task synthetic   # ~12 min
    python benchmarks/rank_sweep.py --task minilm      # ~50 min, resumable
    python benchmarks/rank_sweep.py --reanalyse        # fits and tables from the stored results, no training
    python benchmarks/rank_sweep.py --quick            # seconds, both halves tiny, for the test suite
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np
import torch
from scipy.stats import linregress

from common import RESULTS, bootstrap_ci, md_table, save_figure, stored_runs, train_minilm, write_results

from signaldrift.gap_probe import refine_log_argmin

RANKS = (1, 2, 4, 8, 16, 32, 64)  # the synthetic task's ranks: results/rank_sweep_synthetic.md
MINILM_RANKS = (2, 4, 8, 16, 32)  # MiniLM's ranks: results/rank_sweep_minilm.md
MINILM_ALPHAS = (64.0, 256.0, 1024.0, 4096.0, 16384.0)  # MiniLM's x4 alpha grid: results/rank_sweep_minilm.md
MINILM_LR = 1e-4  # LoRA-α's default lr, so the c fitted here is the one the code uses: results/rank_sweep.md


def make_teacher(n: int, target_rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    W0 = torch.randn(n, n, generator=g) / math.sqrt(n)
    U, _ = torch.linalg.qr(torch.randn(n, target_rank, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, target_rank, generator=g))
    sigma = torch.tensor([1.0 / (i + 1) ** 0.8 for i in range(target_rank)])  # decaying spectrum
    return W0, (U * sigma) @ V.T  # Delta: (n, n), rank target_rank


def trial(W0, Delta, r: int, alpha: float, lr: float, steps: int, seed: int, noise: float = 0.1,
          batch: int = 128) -> float:
    """Held-out MSE after training LoRA (r, alpha) on the teacher; NaN-safe (a diverged run scores inf)."""
    n = W0.shape[0]
    g = torch.Generator().manual_seed(seed)
    A = torch.empty(r, n)
    torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=g)
    A.requires_grad_(True)
    B = torch.zeros(n, r, requires_grad=True)
    opt = torch.optim.Adam([A, B], lr=lr)
    s = alpha / r
    W_true = W0 + Delta
    for _ in range(steps):
        x = torch.randn(batch, n, generator=g)
        y = x @ W_true.T + noise * torch.randn(batch, n, generator=g)
        pred = x @ W0.T + s * (x @ A.T) @ B.T
        loss = ((pred - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        gh = torch.Generator().manual_seed(10_000 + seed)
        x = torch.randn(2048, n, generator=gh)
        y = x @ W_true.T + noise * torch.randn(2048, n, generator=gh)
        held = float(((x @ W0.T + s * (x @ A.T) @ B.T - y) ** 2).mean())
    return held if math.isfinite(held) else math.inf


def at_edge(alphas: list[float], losses: list[float]) -> bool:
    """The best alpha is the grid's first or last point: alpha* is censored there."""
    i = min(range(len(losses)), key=losses.__getitem__)
    return i in (0, len(alphas) - 1)


def fit_power_law(ranks: list[int], alpha_star: list[float]) -> tuple[float, float]:
    """Least squares of log alpha* = log c + p log r; returns (c, p)."""
    fit = linregress([math.log(r) for r in ranks], [math.log(a) for a in alpha_star])
    return math.exp(fit.intercept), float(fit.slope)


def c_at_exponent(ranks: list[int], alpha_star: list[float], p: float) -> float:
    """The least-squares c of log alpha* = log c + p log r with the exponent held at ``p``."""
    return math.exp(statistics.fmean(math.log(a) - p * math.log(r) for r, a in zip(ranks, alpha_star)))


def fit_summary(per_rep: dict[int, list[float]], ranks: list[int]) -> dict:
    """alpha*(r) (geometric mean over replicates), the fit (c, p), c at p = 0.5, and their 95% intervals
    from resampling the replicates (one shared index across ranks)."""

    def law(*log_stars: np.ndarray) -> np.ndarray:  # one array per rank: log alpha* of each replicate
        stars = [math.exp(statistics.fmean(x)) for x in log_stars]
        return np.array([*fit_power_law(ranks, stars), c_at_exponent(ranks, stars, 0.5)])

    log_stars = [[math.log(a) for a in per_rep[r]] for r in ranks]
    (c, pw, half), (lo, hi) = law(*log_stars), bootstrap_ci(law, *log_stars, paired=True)
    stars = [math.exp(statistics.fmean(x)) for x in log_stars]
    return {"alpha_star": dict(zip(map(str, ranks), stars)), "per_replicate": {str(r): v for r, v in per_rep.items()},
            "c": float(c), "c_ci95": [float(lo[0]), float(hi[0])], "p": float(pw), "p_ci95": [float(lo[1]), float(hi[1])],
            "c_at_p_half": float(half), "c_at_p_half_ci95": [float(lo[2]), float(hi[2])]}


def run_synthetic(args, quick: bool) -> dict:
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two (and leaves a core free)
    n, target_rank = (256, 96) if not quick else (32, 12)
    ranks = list(RANKS) if not quick else [1, 2, 4]
    alphas = [4.0 ** k for k in range(0, 8)] if not quick else [1.0, 4.0, 16.0, 64.0]
    steps = args.steps if not quick else 20
    teachers, seeds = (args.teachers, args.seeds) if not quick else (1, 2)
    lrs = [float(x) for x in args.lrs.split(",")]
    results = {}
    for lr in lrs:
        per_rep: dict[int, list[float]] = {r: [] for r in ranks}
        edges = 0
        for t in range(teachers):
            W0, Delta = make_teacher(n, target_rank, t)
            for seed in range(seeds):
                for r in ranks:
                    losses = [trial(W0, Delta, r, a, lr, steps, seed) for a in alphas]
                    per_rep[r].append(refine_log_argmin(alphas, losses))
                    edges += at_edge(alphas, losses)
        results[str(lr)] = {**fit_summary(per_rep, ranks), "edge_hits": edges, "fits": teachers * seeds * len(ranks)}
        print(f"synthetic lr={lr:g}: c={results[str(lr)]['c']:.3g} p={results[str(lr)]['p']:.3g}", flush=True)
    return {"task": "synthetic", "n": n, "target_rank": target_rank, "steps": steps, "alphas": alphas,
            "ranks": ranks, "lrs": lrs, "replicates": teachers * seeds, "results": results,
            "notes": (f"linear teacher-student, n={n}, rank(Delta)={target_rank} (spectrum 1/i^0.8), label noise 0.1, "
                      f"Adam, {steps} steps of batch 128 from B = 0, held-out MSE on 2,048 fresh samples; "
                      f"{teachers} teachers x {seeds} seeds")}


def refit_synthetic(stored: dict) -> dict:
    """The synthetic half's fits again from its stored per-replicate alpha* (no training)."""
    results = {lr: {**res, **fit_summary({int(r): v for r, v in res["per_replicate"].items()},
                                         [int(r) for r in res["per_replicate"]])}
               for lr, res in stored["results"].items()}
    return {k: v for k, v in stored.items() if k != "machine"} | {"results": results}


def _reused_cells(seeds: int) -> list[dict]:
    """r=8 cells of the committed alpha x lr grid that match this sweep's configuration exactly."""
    path = RESULTS / "alpha_vs_lr.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    cfg = data["config"]
    if (cfg["steps"], cfg["train_size"], cfg["eval_size"], cfg["head_lr"], cfg["targets"]) != (63, 2000, 1000, 3e-3, "query,value"):
        return []
    return [{**r, "rank": 8, "source": "alpha_vs_lr"} for r in data["runs"]
            if r["lr"] == MINILM_LR and r["alpha"] in MINILM_ALPHAS and r["seed"] < seeds]


def run_minilm(args, quick: bool, out_dir: Path, name: str) -> dict:
    ranks = list(MINILM_RANKS) if not quick else [2, 4]
    alphas = list(MINILM_ALPHAS) if not quick else [64.0, 1024.0]
    seeds = args.minilm_seeds if not quick else 1
    steps, train_size, eval_size = (63, 2000, 1000) if not quick else (2, 32, 16)
    runs, done = stored_runs(out_dir, name, lambda r: (r["rank"], r["alpha"], r["seed"]), fresh=quick,
                             extra=() if quick else _reused_cells(seeds))
    config = {"steps": steps, "train_size": train_size, "eval_size": eval_size, "head_lr": 3e-3, "lr": MINILM_LR,
              "targets": "query,value", "rule": "standard", "alphas": alphas, "ranks": ranks, "seeds": seeds}
    for seed in range(seeds):
        for r in ranks:
            for a in alphas:
                if args.reanalyse or (r, a, seed) in done:
                    continue
                res = train_minilm(rank=r, alpha=a, rule="standard", lr=MINILM_LR, head_lr=3e-3, targets=("query", "value"),
                                   max_steps=steps, batch_size=32 if not quick else 16, train_size=train_size,
                                   eval_size=eval_size, seed=seed)
                res.update(rank=r, lr=MINILM_LR, seed=seed, source="rank_sweep")
                runs.append(res)
                print(f"minilm r={r} alpha={a:g} seed={seed}: loss {res['test_loss']:.4f} acc {res['test_acc']:.4f}", flush=True)
                write_results(name, {"task": "minilm", "config": config, "runs": runs}, "partial", out_dir)
    by = {(x["rank"], x["alpha"], x["seed"]): x for x in runs}
    missing = [(r, a, s) for s in range(seeds) for r in ranks for a in alphas if (r, a, s) not in by]
    payload = {"task": "minilm", "config": config, "runs": runs, "complete": not missing}
    if missing:
        return payload
    per_rep = {r: [] for r in ranks}
    per_rep_acc = {r: [] for r in ranks}
    edges = 0
    for s in range(seeds):
        for r in ranks:
            losses = [by[(r, a, s)]["test_loss"] for a in alphas]
            per_rep[r].append(refine_log_argmin(alphas, losses))
            edges += at_edge(alphas, losses)
            accs = [by[(r, a, s)]["test_acc"] for a in alphas]
            per_rep_acc[r].append(alphas[max(range(len(alphas)), key=accs.__getitem__)])
    payload["results"] = {str(MINILM_LR): {**fit_summary(per_rep, ranks), "edge_hits": edges, "fits": seeds * len(ranks)}}
    payload["best_alpha_by_accuracy"] = {str(r): v for r, v in per_rep_acc.items()}
    payload["cells"] = [[r, a, statistics.fmean(by[(r, a, s)]["test_loss"] for s in range(seeds)),
                         statistics.fmean(by[(r, a, s)]["test_acc"] for s in range(seeds))] for r in ranks for a in alphas]
    return payload


def _law_table(data: dict) -> list[list]:
    rows = []
    for lr, res in data["results"].items():
        ranks = [int(r) for r in res["alpha_star"]]
        rows.append([data["task"], float(lr), res["c"], f"[{res['c_ci95'][0]:.3g}, {res['c_ci95'][1]:.3g}]", res["p"],
                     f"[{res['p_ci95'][0]:.3g}, {res['p_ci95'][1]:.3g}]",
                     f"{res['c_at_p_half']:.3g} [{res['c_at_p_half_ci95'][0]:.3g}, {res['c_at_p_half_ci95'][1]:.3g}]",
                     f"{res['edge_hits']} of {res['fits']}",
                     ", ".join(f"r={r}: {res['alpha_star'][str(r)]:.3g}" for r in ranks)])
    return rows


def cross_check(law: dict, target: dict) -> dict:
    """How one task's fitted law predicts the other's alpha*(r): as is (c and p), and in shape (p only,
    with c refitted to the target's geometric mean)."""
    ranks = [int(r) for r in target["alpha_star"]]
    meas = [target["alpha_star"][str(r)] for r in ranks]
    raw = [law["c"] * r ** law["p"] for r in ranks]
    c_shape = c_at_exponent(ranks, meas, law["p"])
    shape = [c_shape * r ** law["p"] for r in ranks]
    return {"ranks": ranks, "measured": meas, "predicted": raw, "predicted_ratio": [p / m for p, m in zip(raw, meas)],
            "shape_ratio": [p / m for p, m in zip(shape, meas)],
            "p_law": law["p"], "p_target": target["p"], "p_target_ci95": target["p_ci95"],
            "p_law_inside_target_ci": target["p_ci95"][0] <= law["p"] <= target["p_ci95"][1]}


def summarise(syn: dict, mini: dict, out_dir: Path, name: str, reanalysis: bool = False) -> str:
    rows = _law_table(syn) + _law_table(mini)
    table = md_table(["task", "lr", "c", "c 95% CI", "p", "p 95% CI", "c at p=0.5 [95% CI]", "alpha* at grid edge",
                      "alpha*(r) (geometric mean over replicates)"], rows)
    mini_res = next(iter(mini["results"].values()))
    syn_lr = min(syn["results"], key=lambda lr: abs(math.log(float(lr) / MINILM_LR)))
    syn_res = syn["results"][syn_lr]
    checks = {"synthetic_law_on_minilm": cross_check(syn_res, mini_res), "minilm_law_on_synthetic": cross_check(mini_res, syn_res)}
    text = table + "\n\n" + syn["notes"] + ". MiniLM: " + (
        f"r in {mini['config']['ranks']}, standard rule (scale alpha/r), query/value, lr {MINILM_LR:g}, head lr 3e-3, "
        f"{mini['config']['steps']} steps of batch 32 on {mini['config']['train_size']} snippets, held-out loss on "
        f"{mini['config']['eval_size']}, {mini['config']['seeds']} seeds. alpha on a x4 grid refined by a parabola in log alpha; "
        "bootstrap over replicates (2,000 resamples). The square-root law says p = 0.5.\n")
    for key, chk in checks.items():
        src, dst = key.split("_law_on_")
        text += (f"\n**{src} law on {dst}** (synthetic at lr {float(syn_lr):g}): predicted / measured alpha* per rank, as fitted: "
                 + ", ".join(f"r={r}: {q:.3g}" for r, q in zip(chk["ranks"], chk["predicted_ratio"]))
                 + "; with only the exponent carried over: "
                 + ", ".join(f"r={r}: {q:.3g}" for r, q in zip(chk["ranks"], chk["shape_ratio"]))
                 + f". p {chk['p_law']:.2f} vs {dst}'s {chk['p_target']:.2f} "
                 f"[{chk['p_target_ci95'][0]:.2f}, {chk['p_target_ci95'][1]:.2f}]: "
                 + ("inside" if chk["p_law_inside_target_ci"] else "outside") + " its interval.\n")
    write_results(name, {"synthetic": {k: v for k, v in syn.items() if k != "notes"}, "minilm_law": mini_res,
                         "cross_check": checks}, text, out_dir, reanalysis=reanalysis)
    _plot({f"synthetic lr {float(lr):g}": res for lr, res in syn["results"].items()} | {f"MiniLM lr {MINILM_LR:g}": mini_res},
          out_dir / f"{name}.png")
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--task", choices=("synthetic", "minilm", "both"), default="both")
    p.add_argument("--lrs", default="1e-4,3e-4", help="synthetic task's Adam learning rates")
    p.add_argument("--steps", type=int, default=400, help="synthetic task's training steps")
    p.add_argument("--teachers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=2, help="synthetic seeds per teacher")
    p.add_argument("--minilm-seeds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reanalyse", action="store_true", help="no training: fits, tables and figure from the stored results")
    args = p.parse_args(argv)
    out_dir = args.out or RESULTS
    sfx = "_quick" if args.quick else ""
    syn_name, mini_name, name = f"rank_sweep_synthetic{sfx}", f"rank_sweep_minilm{sfx}", f"rank_sweep{sfx}"
    if args.task in ("synthetic", "both"):
        syn = (refit_synthetic(json.loads((out_dir / f"{syn_name}.json").read_text())) if args.reanalyse
               else run_synthetic(args, args.quick))
        write_results(syn_name, syn, md_table(["task", "lr", "c", "c 95% CI", "p", "p 95% CI", "c at p=0.5 [95% CI]", "alpha* at grid edge",
                                               "alpha*(r)"], _law_table(syn)) + "\n\n" + syn["notes"] + ".\n", out_dir,
                      reanalysis=args.reanalyse)
    if args.task in ("minilm", "both"):
        mini = run_minilm(args, args.quick, out_dir, mini_name)
        body = (md_table(["task", "lr", "c", "c 95% CI", "p", "p 95% CI", "c at p=0.5 [95% CI]", "alpha* at grid edge", "alpha*(r)"], _law_table(mini))
                + "\n\n" + md_table(["rank", "alpha", "held-out loss", "held-out acc"], mini["cells"])
                if mini.get("complete") else f"Partial: {len(mini['runs'])} runs done.")
        write_results(mini_name, mini, body + "\n", out_dir, reanalysis=args.reanalyse)
    syn_path, mini_path = out_dir / f"{syn_name}.json", out_dir / f"{mini_name}.json"
    if syn_path.is_file() and mini_path.is_file():
        syn, mini = json.loads(syn_path.read_text()), json.loads(mini_path.read_text())
        if mini.get("complete"):
            print(summarise(syn, mini, out_dir, name, reanalysis=args.reanalyse))


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, res in results.items():
        ranks = [int(r) for r in res["alpha_star"]]
        stars = [res["alpha_star"][str(r)] for r in ranks]
        line = ax.loglog(ranks, stars, "o", label=f"alpha* ({label})")[0]
        ax.loglog(ranks, [res["c"] * r ** res["p"] for r in ranks], "-", color=line.get_color(),
                  label=f"fit c={res['c']:.3g}, p={res['p']:.2f}")
    ax.set_xlabel("rank r")
    ax.set_ylabel("best alpha (held-out loss)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
