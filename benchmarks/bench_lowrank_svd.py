"""Factored vs dense SVD of a LoRA update, and the cost of the whole per-step metric set for one layer.

    python benchmarks/bench_lowrank_svd.py          # full (dense SVDs take a while on 2 cores)
    python benchmarks/bench_lowrank_svd.py --quick  # small shapes, for the test suite
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import md_table, write_results

import signaldrift as sd


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def svd_case(m: int, n: int, r: int, dense: bool, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    B, A = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g)  # float32, like training
    fact = _time(lambda: sd.lowrank_svd(B, A), repeats)
    S = sd.lowrank_svd(B, A).S.double()
    if dense:
        dense_t = _time(lambda: torch.linalg.svdvals(B @ A), max(1, repeats // 5))
        ref = torch.linalg.svdvals(B.double() @ A.double())[:r]
        ref_kind = "dense float64 SVD"
    else:
        dense_t = None
        ref = sd.lowrank_svd(B.double(), A.double()).S
        ref_kind = "factored float64 (dense too slow here)"
    err = float(((S - ref).abs() / ref).max())
    return {"m": m, "n": n, "r": r, "factored_ms": fact * 1e3, "dense_ms": None if dense_t is None else dense_t * 1e3,
            "speedup": None if dense_t is None else dense_t / fact, "max_rel_sv_error": err, "reference": ref_kind}


def metric_set_case(m: int, n: int, r: int, repeats: int) -> dict:
    """Sections 1-3 for one layer, as the monitor runs them each step (section 4 only on probe steps)."""
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(r, n, generator=g) * 0.02, torch.randn(m, r, generator=g) * 0.02
    A2, B2 = A + 1e-4 * torch.randn(r, n, generator=g), B + 1e-4 * torch.randn(m, r, generator=g)
    gA, gB = torch.randn(r, n, generator=g), torch.randn(m, r, generator=g)

    def step():
        spec = sd.update_spectrum(A, B, 2.0, 50.0)
        sd.grad_split(A, B, gA, gB, 2.0, top_k=r, svd=spec.svd)
        sd.step_split(A, B, A2, B2, 2.0, 50.0)

    return {"m": m, "n": n, "r": r, "metric_set_ms": _time(step, repeats) * 1e3}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        cases, metric_shape, repeats = [(128, 128, 4, True)], (256, 256, 8), 3
    else:
        cases = [(1024, 1024, 8, True), (2048, 2048, 16, True), (4096, 4096, 16, True), (4096, 11008, 64, False)]
        metric_shape, repeats = (4096, 4096, 16), 20
    svd_rows = [svd_case(m, n, r, dense, repeats) for m, n, r, dense in cases]
    metric = metric_set_case(*metric_shape, repeats)
    table = md_table(["shape", "r", "factored ms", "dense ms", "speed-up", "max rel. sv error", "reference"],
                     [[f"{c['m']} x {c['n']}", c["r"], c["factored_ms"], c["dense_ms"], c["speedup"],
                       c["max_rel_sv_error"], c["reference"]] for c in svd_rows])
    table += (f"\n\nWhole per-step metric set (sections 1-3) for one {metric['m']} x {metric['n']}, r={metric['r']} "
              f"layer: {metric['metric_set_ms']:.2f} ms (median of {repeats}).\n")
    print(table)
    write_results("bench_lowrank_svd" + ("_quick" if args.quick else ""), {"svd": svd_rows, "metric_set": metric},
                  table, args.out)


if __name__ == "__main__":
    main()
