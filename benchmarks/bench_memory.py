"""Memory of the Signal-Drift measurement on one large LoRA layer (LLaMA-7B's MLP shape by default).

One process per configuration, each training the same LoRA layer for a few steps: without the
engine, with sections 1-3 every step, and with the full-gradient probe (section 4) every step
too. Reported: the rise of the process's peak RSS over the plain run, and the bytes the engine
still holds after the steps, against one set of factors ((m + n) r float64) and one dense (m, n)
matrix.

    python benchmarks/bench_memory.py            # 11008 x 4096, r = 64, 8 tokens, 3 steps
    python benchmarks/bench_memory.py --quick    # 1024 x 512, r = 16, all rows in one process (shape only)
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from common import ROOT, RESULTS, md_table, write_results


def child(mode: str, m: int, n: int, r: int, steps: int) -> dict:
    import gc

    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT))
    from callbacks.engine import SignalDriftEngine
    from lora_alpha import LoRALinear
    from tests.callbacks.test_memory import tensor_bytes

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(n, m, bias=False).requires_grad_(False), rank=r, alpha=2.0 * r, rule="standard")
    model = nn.Sequential(layer)
    opt = torch.optim.AdamW([layer.lora_A, layer.lora_B], lr=1e-3)
    x = torch.randn(8, n)
    engine = None
    if mode != "plain":
        engine = SignalDriftEngine(every_n_steps=1, full_grad_every=1 if mode == "probe" else None)
        engine.attach(model)

    def step(t: int) -> None:
        if engine is not None and engine.captures_full_grad(t):
            engine.start_capture(model)
        loss = model(x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if engine is not None:
            engine.before_step(model, t)
        opt.step()
        if engine is not None:
            engine.after_step(model)

    # Warm-up without the engine's work: the optimizer state and allocator pools exist before the mark.
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    del loss
    gc.collect()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for t in range(steps):
        step(t)
    opt.zero_grad(set_to_none=True)
    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": mode, "peak_rss": peak, "peak_rise_over_start": peak - start,
            "engine_bytes": tensor_bytes(engine) if engine is not None else 0}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", nargs=5, metavar=("MODE", "M", "N", "R", "STEPS"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.child:
        mode, m, n, r, steps = args.child
        print(json.dumps(child(mode, int(m), int(n), int(r), int(steps))))
        return
    m, n, r, steps = (11008, 4096, 64, 3) if not args.quick else (1024, 512, 16, 2)
    runs = {}
    for mode in ("plain", "sections 1-3", "probe"):
        key = {"plain": "plain", "sections 1-3": "metrics", "probe": "probe"}[mode]
        if args.quick:  # one process for all rows: the shape of the output, not a measurement
            runs[mode] = child(key, m, n, r, steps)
            continue
        out = subprocess.run([sys.executable, __file__, "--child", key, str(m), str(n), str(r), str(steps)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    factors, dense = (m + n) * r * 8, m * n * 4
    plain = runs["plain"]["peak_rss"]
    rows = [[mode, round((v["peak_rss"] - plain) / 2**20, 1), round(v["engine_bytes"] / 2**20, 2),
             round((v["peak_rss"] - plain) / factors, 2), round(v["engine_bytes"] / factors, 2)] for mode, v in runs.items()]
    table = md_table(["engine", "peak RSS over plain (MiB)", "held after the steps (MiB)",
                      "peak rise / (m+n)r float64", "held / (m+n)r float64"], rows)
    table += (f"\n\nOne LoRA layer W0 ({m} x {n}, float32: {dense / 2**20:.0f} MiB), r = {r}, 8 tokens, {steps} steps of AdamW, "
              f"one process per row. (m + n) r float64 = {factors / 2**20:.2f} MiB. Peak RSS is the process's high-water "
              "mark (allocator pools included), so small differences are noise.\n")
    write_results("bench_memory" + ("_quick" if args.quick else ""),
                  {"shape": [m, n], "rank": r, "steps": steps, "factor_bytes_f64": factors, "dense_bytes_f32": dense,
                   "runs": runs}, table, args.out)
    print(table)


if __name__ == "__main__":
    main()
