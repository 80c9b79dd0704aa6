"""alpha*(r): the best alpha per LoRA rank, and a fit alpha* = c * r^p with bootstrap intervals.

Synthetic linear teacher-student task: a frozen base W0 (n x n), a target W0 + Delta with
rank(Delta) above the largest r and a decaying spectrum, noisy labels; the student trains LoRA
factors (scale alpha / r) with Adam from B = 0 and is scored by held-out loss. For each rank, the
best alpha on a log grid (refined by a parabola in log alpha) is alpha*(r); replicates are
(teacher, seed) pairs, and the bootstrap resamples them.

(The MiniLM + Rotten Tomatoes half of this study, and the cross-check of one task's law on the
other, are not implemented yet.)

    python benchmarks/rank_sweep.py            # full synthetic sweep
    python benchmarks/rank_sweep.py --quick    # seconds, for the test suite
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
from pathlib import Path

import torch

from common import RESULTS, md_table, write_results

RANKS = (1, 2, 4, 8, 16, 32, 64)


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


def best_alpha(alphas: list[float], losses: list[float]) -> float:
    """argmin over the log grid, refined by a parabola through the best point and its neighbours."""
    i = min(range(len(losses)), key=losses.__getitem__)
    if 0 < i < len(alphas) - 1 and all(math.isfinite(losses[j]) for j in (i - 1, i, i + 1)):
        x = [math.log(alphas[j]) for j in (i - 1, i, i + 1)]
        y = [losses[j] for j in (i - 1, i, i + 1)]
        d1, d2 = (y[1] - y[0]) / (x[1] - x[0]), (y[2] - y[1]) / (x[2] - x[1])
        a = (d2 - d1) / (x[2] - x[0])
        if a > 0:
            return math.exp(min(max((x[0] + x[1]) / 2 - d1 / (2 * a), x[0]), x[2]))
    return alphas[i]


def fit_power_law(ranks: list[int], alpha_star: list[float]) -> tuple[float, float]:
    """Least squares of log alpha* = log c + p log r; returns (c, p)."""
    xs, ys = [math.log(r) for r in ranks], [math.log(a) for a in alpha_star]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    p = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - p * mx), p


def bootstrap(per_rep: dict[int, list[float]], ranks: list[int], n: int = 2000, seed: int = 0):
    """95% intervals of (c, p), resampling replicates; alpha*(r) is averaged in log space."""
    rng = random.Random(seed)
    reps = len(next(iter(per_rep.values())))
    cs, ps = [], []
    for _ in range(n):
        pick = [rng.randrange(reps) for _ in range(reps)]
        stars = [math.exp(statistics.fmean(math.log(per_rep[r][k]) for k in pick)) for r in ranks]
        c, p = fit_power_law(ranks, stars)
        cs.append(c)
        ps.append(p)
    cs.sort()
    ps.sort()
    return (cs[int(0.025 * n)], cs[int(0.975 * n)]), (ps[int(0.025 * n)], ps[int(0.975 * n)])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--lrs", default="1e-4,3e-4")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--teachers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two (and leaves a core free)
    n, target_rank = (256, 96) if not args.quick else (32, 12)
    ranks = list(RANKS) if not args.quick else [1, 2, 4]
    alphas = [2.0 ** k for k in range(0, 15)] if not args.quick else [1.0, 4.0, 16.0, 64.0]
    steps = args.steps if not args.quick else 20
    teachers, seeds = (args.teachers, args.seeds) if not args.quick else (1, 2)
    lrs = [float(x) for x in args.lrs.split(",")]
    results, rows = {}, []
    for lr in lrs:
        per_rep: dict[int, list[float]] = {r: [] for r in ranks}
        edges = 0
        for t in range(teachers):
            W0, Delta = make_teacher(n, target_rank, t)
            for seed in range(seeds):
                for r in ranks:
                    losses = [trial(W0, Delta, r, a, lr, steps, seed) for a in alphas]
                    per_rep[r].append(best_alpha(alphas, losses))
                    edges += at_edge(alphas, losses)
        stars = [math.exp(statistics.fmean(math.log(a) for a in per_rep[r])) for r in ranks]
        c, pw = fit_power_law(ranks, stars)
        (c_lo, c_hi), (p_lo, p_hi) = bootstrap(per_rep, ranks)
        results[str(lr)] = {"alpha_star": dict(zip(map(str, ranks), stars)), "per_replicate": per_rep,
                            "c": c, "c_ci95": [c_lo, c_hi], "p": pw, "p_ci95": [p_lo, p_hi], "edge_hits": edges}
        rows.append([lr, c, f"[{c_lo:.3g}, {c_hi:.3g}]", pw, f"[{p_lo:.3g}, {p_hi:.3g}]", edges,
                     ", ".join(f"r={r}: {a:.3g}" for r, a in zip(ranks, stars))])
        print(rows[-1], flush=True)
    table = md_table(["lr", "c", "c 95% CI", "p", "p 95% CI", "alpha* at grid edge (of all fits)",
                      "alpha*(r) (geometric mean over replicates)"], rows)
    table += (f"\n\nSynthetic linear teacher-student: n={n}, rank(Delta)={target_rank} (spectrum 1/i^0.8), label noise 0.1, "
              f"Adam, {steps} steps of batch 128 from B = 0, held-out MSE on 2,048 fresh samples; alpha on a x2 grid "
              f"{alphas[0]:g}..{alphas[-1]:g}, refined by a parabola in log alpha; {teachers} teachers x {seeds} seeds; "
              "bootstrap over replicates (2,000 resamples). The square-root law says p = 0.5.\n")
    name = "rank_sweep" + ("_quick" if args.quick else "")
    write_results(name, {"task": "synthetic", "n": n, "target_rank": target_rank, "steps": steps, "alphas": alphas,
                         "ranks": ranks, "results": results}, table, args.out)
    _plot(results, ranks, (args.out or RESULTS) / f"{name}.png")
    print(table)


def _plot(results: dict, ranks: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for lr, res in results.items():
        stars = [res["alpha_star"][str(r)] for r in ranks]
        line = ax.loglog(ranks, stars, "o", label=f"alpha* (lr {float(lr):g})")[0]
        ax.loglog(ranks, [res["c"] * r ** res["p"] for r in ranks], "-", color=line.get_color(),
                  label=f"fit c={res['c']:.3g}, p={res['p']:.2f}")
    ax.set_xlabel("rank r")
    ax.set_ylabel("best alpha")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
