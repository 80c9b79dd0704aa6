"""The per-step cost of sections 1-3 for a Llama-7B-shaped adapter set: per-layer path vs batched path.

32 blocks x (q, k, v, o: 4096 x 4096; gate, up: 11008 x 4096; down: 4096 x 11008), r = 16: 224 LoRA
layers, factors and gradients only (each base weight's norm is a number). One measured step is what
the monitor does for a step: sections 1 and 3 when the gradients are final, section 2 after the
optimizer step. Both paths run in the same process on the same tensors, alternately.

    python benchmarks/bench_scale.py           # the 7B shapes (a few minutes on 2 cores)
    python benchmarks/bench_scale.py --quick   # 2 small blocks, for the test suite
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

import torch

from common import md_table, write_results

import signaldrift as sd
from signaldrift.batched import BatchedStep, LayerState

LLAMA_7B = dict(blocks=32, hidden=4096, intermediate=11008, rank=16)
QUICK = dict(blocks=2, hidden=256, intermediate=688, rank=8)


def adapter_set(blocks: int, hidden: int, intermediate: int, rank: int, seed: int = 0) -> list[dict]:
    """Factors, gradients and the factors after one step, float32, as training holds them."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(hidden, hidden)] * 4 + [(intermediate, hidden)] * 2 + [(hidden, intermediate)]
    layers = []
    for b in range(blocks):
        for j, (m, n) in enumerate(shapes):
            A = torch.randn(rank, n, generator=g) / n**0.5
            B = torch.randn(m, rank, generator=g) * 1e-3
            gA, gB = torch.randn(rank, n, generator=g) * 1e-4, torch.randn(m, rank, generator=g) * 1e-4
            A1, B1 = A - 1e-4 * torch.randn(rank, n, generator=g), B - 1e-4 * torch.randn(m, rank, generator=g)
            layers.append(dict(name=f"layers.{b}.{j}", A=A, B=B, gA=gA, gB=gB, A1=A1, B1=B1, scale=2.0,
                               base_norm=float((m * n) ** 0.5 * 0.02),
                               A0=torch.zeros_like(A), B0=torch.zeros_like(B)))
    return layers


def per_layer_step(layers: list[dict]) -> list[tuple]:
    """What the monitor computed per layer before batching: float64 copies, three functions per layer."""
    out = []
    for ly in layers:
        A0, B0 = ly["A0"].double(), ly["B0"].double()
        A, B = ly["A"].detach().to(torch.float64, copy=True), ly["B"].detach().to(torch.float64, copy=True)
        spec = sd.update_spectrum(A, B, ly["scale"], ly["base_norm"], A0, B0)
        gA, gB = ly["gA"].double(), ly["gB"].double()
        split = sd.grad_split(A, B, gA, gB, ly["scale"], A0, B0, svd=spec.svd)
        step = sd.step_split(A, B, ly["A1"].double(), ly["B1"].double(), ly["scale"], ly["base_norm"])
        out.append((spec, split, step))
    return out


def batched_step(layers: list[dict], gram_dtype: torch.dtype = torch.float64) -> tuple[BatchedStep, list]:
    """The same numbers through signaldrift.batched (a zero snapshot is passed as None: decided once)."""
    batch = BatchedStep.measure([LayerState(ly["A"], ly["B"], ly["scale"], ly["base_norm"], ly["gA"], ly["gB"])
                                 for ly in layers], gram_dtype=gram_dtype)
    return batch, batch.step_splits([(ly["A1"], ly["B1"]) for ly in layers])


def held_bytes(batch: BatchedStep) -> int:
    """Bytes of the tensors a BatchedStep keeps between the step's two halves."""
    seen, total = set(), 0
    for g in batch._groups:
        for t in (g.A, g.B, g.Gbb, g.Haa, g.scales):
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def max_rel_diff(ref: list[tuple], batch: BatchedStep, steps: list) -> float:
    worst = 0.0
    for (spec, split, step), res, st in zip(ref, batch.results, steps):
        pairs = [(spec.delta_norm, res.spectrum.delta_norm), (spec.effective_rank, res.spectrum.effective_rank),
                 (spec.stable_rank, res.spectrum.stable_rank), (split.grad_alignment, res.grad.grad_alignment),
                 (split.grad_drift_ratio, res.grad.grad_drift_ratio), (step.drift_ratio, st.split.drift_ratio),
                 (step.step_size, st.split.step_size), (step.signal_norm, st.split.signal_norm)]
        for a, b in pairs:
            worst = max(worst, abs(a - b) / max(abs(a), 1e-300))
    return worst


def gpu_projection(layers: list[dict], seconds_batched_cpu: float) -> dict:
    """A projection, not a measurement: the batched path on one GPU next to a 7B LoRA training step."""
    numbers = sum(ly["A"].numel() + ly["B"].numel() for ly in layers)  # factor numbers (m + n) r per layer
    # Traffic of the batched path, in float64 bytes: the factors and gradients stacked once (read as float32,
    # written as float64), read once by the Gram products; after the step the new factors and the kept
    # copies, [dB, B] and [dA; A] written and read once.
    traffic = numbers * (2 * (4 + 8 + 8) + 4 + 2 * (4 + 4 + 16 + 16))
    flops = sum(2 * (ly["B"].shape[0] + ly["A"].shape[1]) * ((2 * ly["A"].shape[0]) ** 2 + 2 * ly["A"].shape[0] ** 2)
                for ly in layers)
    groups = len({(tuple(ly["A"].shape), tuple(ly["B"].shape)) for ly in layers})
    launches = 8 * len(layers) + 120 * groups  # per-layer stacking copies + per-group kernels (both halves)
    bw, fp64, launch_s = 2.0e12, 30e12, 8e-6  # sustained bytes/s, float64 flop/s (H100-class), seconds per launch
    monitor_s = traffic / bw + flops / fp64 + launches * launch_s
    params, tokens, mfu, peak = 6.7e9, 8 * 2048, 0.40, 989e12  # 7B, 8 x 2048 tokens, 40% of bf16 peak
    train_s = 4 * params * tokens / (mfu * peak)  # LoRA: forward 2N + backward (activations only) 2N per token
    return {"assumptions": {"gpu": "H100-class: 2.0 TB/s sustained, 30 TFLOP/s float64, 8 us per kernel launch",
                            "training_step": "Llama-7B LoRA, 8 sequences x 2048 tokens, 4 N flops per token, "
                                             "40% of 989 TFLOP/s bf16",
                            "measured_every_step": True},
            "traffic_gb": traffic / 1e9, "gflop_float64": flops / 1e9, "kernel_launches": launches,
            "monitor_seconds": monitor_s, "training_step_seconds": train_s, "fraction": monitor_s / train_s,
            "cpu_batched_seconds": seconds_batched_cpu}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=None, help="measured steps per path (default 5; quick 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else LLAMA_7B
    repeats = args.repeats or (2 if args.quick else 5)
    layers = adapter_set(**shape)
    factor_bytes = sum(ly["A"].numel() * 4 + ly["B"].numel() * 4 for ly in layers)
    ref = per_layer_step(layers)  # warm-up, and the reference numbers
    batch, steps = batched_step(layers)
    agreement = max_rel_diff(ref, batch, steps)
    held = held_bytes(batch)
    exact = batch.exact_layers
    b32, s32 = batched_step(layers, torch.float32)
    agreement32 = max_rel_diff(ref, b32, s32)
    del batch, steps, ref, b32, s32
    per_layer_t, batched_t, batched32_t = [], [], []
    load_before = os.getloadavg()[0]
    for _ in range(repeats):  # alternate, so that load on the machine hits every path alike
        for fn, times in ((lambda: per_layer_step(layers), per_layer_t), (lambda: batched_step(layers), batched_t),
                          (lambda: batched_step(layers, torch.float32), batched32_t)):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    load = [load_before, os.getloadavg()[0]]
    pl, bt, b32t = statistics.median(per_layer_t), statistics.median(batched_t), statistics.median(batched32_t)
    projection = gpu_projection(layers, bt)
    payload = {
        "shape": shape, "layers": len(layers), "repeats": repeats, "threads": torch.get_num_threads(),
        "load_average_1min": load,
        "per_layer_seconds": per_layer_t, "batched_seconds": batched_t, "batched_float32_seconds": batched32_t,
        "per_layer_median_s": pl, "batched_median_s": bt, "speedup": pl / bt,
        "batched_float32_median_s": b32t, "speedup_float32": pl / b32t,
        "max_rel_diff_float32_vs_per_layer": agreement32,
        "factor_bytes": factor_bytes, "batched_held_bytes": held, "held_over_factors": held / factor_bytes,
        "max_rel_diff_batched_vs_per_layer": agreement, "exact_route_layers": exact,
        "targets": {"batched_s_max": 0.3, "speedup_min": 5.0, "held_over_factors_max": 2.0},
        "gpu_projection": projection,
    }
    table = md_table(["path", "seconds per measured step (median)", "all repeats", "per layer ms"],
                     [["per-layer (before batching)", pl, ", ".join(f"{t:.3f}" for t in per_layer_t), pl / len(layers) * 1e3],
                      ["batched, float64 products (the monitor's default)", bt, ", ".join(f"{t:.3f}" for t in batched_t),
                       bt / len(layers) * 1e3],
                      ["batched, float32 products (gram_dtype=torch.float32)", b32t,
                       ", ".join(f"{t:.3f}" for t in batched32_t), b32t / len(layers) * 1e3]])
    table += (f"\n\n{len(layers)} layers ({shape['blocks']} blocks, hidden {shape['hidden']}, intermediate "
              f"{shape['intermediate']}, r={shape['rank']}), float32 factors, sections 1-3 per measured step, "
              f"torch threads {torch.get_num_threads()}, {repeats} alternating repeats; 1-minute load average "
              f"{load[0]:.1f} before and {load[1]:.1f} after the timed runs (other jobs shared the machine).\n\n"
              f"- speed-up batched over per-layer: **{pl / bt:.1f}x** with float64 products, **{pl / b32t:.1f}x** "
              f"with float32 products\n"
              f"- held between the step's two halves: {held / 2**20:.1f} MiB = {held / factor_bytes:.2f} x the "
              f"factors' own {factor_bytes / 2**20:.1f} MiB (nothing is held after the step)\n"
              f"- largest relative difference batched vs per-layer over all metrics: {agreement:.2e} (float64 "
              f"products), {agreement32:.2e} (float32 products); layers on "
              f"the exact per-layer route: {exact}\n"
              f"- GPU projection (not measured): {projection['monitor_seconds'] * 1e3:.1f} ms per measured step "
              f"next to a {projection['training_step_seconds']:.2f} s training step = "
              f"{100 * projection['fraction']:.2f}% ({projection['assumptions']['gpu']}; "
              f"{projection['assumptions']['training_step']})\n")
    print(table)
    write_results("bench_scale" + ("_quick" if args.quick else ""), payload, table, args.out)


if __name__ == "__main__":
    main()
