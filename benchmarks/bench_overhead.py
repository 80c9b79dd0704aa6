"""Overhead of the callbacks on real MiniLM-L6 training: step time and peak memory, with and without.

Runs alternate between configurations (none, monitor, monitor + advisor + probe) so that machine
noise hits all of them alike; each run is its own process, so its peak resident memory is its own.

    python benchmarks/bench_overhead.py           # full: 100 steps x 2 rounds x 3 configurations
    python benchmarks/bench_overhead.py --quick   # seconds, for the test suite (in one process: shape only)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, md_table, write_results

# The configurations compared, alternating within each round: results/bench_overhead.md
CONFIGS = {
    "none": {},
    "monitor (every step, all layers)": {"monitor": True},
    "monitor + advisor (gap_every=50) + probe (full_grad_every=50)": {"monitor": True, "advisor": True, "probe": True},
}


def child(cfg: dict, steps: int, train_size: int | None, batch_size: int = 32) -> None:
    """One training run; prints a JSON line with its step times."""
    sys.path.insert(0, str(ROOT))
    import warnings

    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything

    from callbacks import AlphaRegimeAdvisor, SignalDriftMonitor
    from lora_alpha.train.data import RottenTomatoesDataModule, demo_model_path
    from lora_alpha.train.module import LoRAAlphaModule

    warnings.simplefilter("ignore")

    class Timer(Callback):
        def __init__(self):
            self.times, self._t = [], None

        def on_train_batch_start(self, *a):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._t = time.perf_counter()

        def on_train_batch_end(self, *a):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t)

    seed_everything(0, verbose=False)
    dm = RottenTomatoesDataModule(batch_size=batch_size, train_size=train_size, val_size=batch_size, test_size=batch_size)
    module = LoRAAlphaModule(demo_model_path(), rank=8, alpha=16, rule="standard", lr=1e-3, head_lr=3e-3)
    timer = Timer()
    cbs = []
    if cfg.get("monitor"):
        cbs.append(SignalDriftMonitor(every_n_steps=1, full_grad_every=50 if cfg.get("probe") else None))
    if cfg.get("advisor"):
        cbs.append(AlphaRegimeAdvisor(gap_every=50))
    cbs.append(timer)  # last: its end hook runs after the callbacks' own end-of-batch work
    import tempfile

    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tempfile.mkdtemp(prefix="overhead-"), name="run")  # every run logs, as users do
    trainer = Trainer(max_steps=steps, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=cbs, accelerator="auto", devices=1,
                      precision="bf16-mixed" if torch.cuda.is_available() else "32-true")
    trainer.fit(module, datamodule=dm)
    peak_gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    print("RESULT " + json.dumps({"times": timer.times, "peak_gpu_bytes": peak_gpu}), flush=True)


def run_in_process(name: str, steps: int, train_size: int | None) -> dict:
    """--quick: the child's work in this process (the output's shape, not a measurement)."""
    import contextlib
    import io
    import resource

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        child(CONFIGS[name], steps, train_size, batch_size=8)  # shape only: the smallest batch that exercises it
    line = next(l for l in buf.getvalue().splitlines() if l.startswith("RESULT "))
    data = json.loads(line[len("RESULT "):])
    data["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return data


def run_once(name: str, steps: int, train_size: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(steps)]
    if train_size:
        cmd += ["--train-size", str(train_size)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"child run {name!r} failed with status {status}")
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    data = json.loads(line[len("RESULT "):])
    data["peak_rss_bytes"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return data


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--child", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.child:
        child(CONFIGS[args.child], args.steps, args.train_size)
        return
    steps, rounds, train_size = (args.steps, args.rounds, None) if not args.quick else (3, 1, 96)
    runs: dict[str, list[dict]] = {k: [] for k in CONFIGS}
    for _ in range(rounds):
        for name in CONFIGS:  # alternate configurations within each round
            runs[name].append((run_in_process if args.quick else run_once)(name, steps, train_size))
            print(name, statistics.median(runs[name][-1]["times"][1:] or [0]), flush=True)
    base = runs["none"]
    rows, summary = [], {}
    for name, rs in runs.items():
        med_ratio = statistics.median(statistics.median(r["times"][1:]) / statistics.median(b["times"][1:])
                                      for r, b in zip(rs, base))
        mean_ratio = statistics.median(statistics.fmean(r["times"][1:]) / statistics.fmean(b["times"][1:])
                                       for r, b in zip(rs, base))
        mem_ratio = statistics.median(r["peak_rss_bytes"] / b["peak_rss_bytes"] for r, b in zip(rs, base))
        med_step = statistics.median(statistics.median(r["times"][1:]) for r in rs)
        summary[name] = {"median_step_s": med_step, "median_step_ratio": med_ratio, "mean_step_ratio": mean_ratio,
                         "peak_rss_ratio": mem_ratio, "peak_rss_mib": statistics.median(r["peak_rss_bytes"] for r in rs) / 2**20}
        rows.append([name, med_step, med_ratio, mean_ratio, summary[name]["peak_rss_mib"], mem_ratio])
    table = md_table(["configuration", "median step s", "median step ratio", "mean step ratio (probes amortized)",
                      "peak RSS MiB", "peak RSS ratio"], rows)
    table += (f"\n\nMiniLM-L6, LoRA r=8 on query/key/value/dense (37 layers, the pooler's dense included), batch 32, "
              f"TensorBoard logger (Lightning's default cadence: per-layer scalars every 50 steps, aggregates every "
              f"step), {steps} steps per run, "
              f"{rounds} alternating rounds; ratios are against the run without callbacks in the same round "
              "(median over rounds). The first step of each run is excluded.\n")
    print(table)
    write_results("bench_overhead" + ("_quick" if args.quick else ""), {"steps": steps, "rounds": rounds,
                  "summary": summary}, table, args.out)


if __name__ == "__main__":
    main()
