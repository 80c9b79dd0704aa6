"""Choose the embedded demo's configuration by measurement: candidate (alpha, lr, targets) runs.

Each candidate trains MiniLM-L6 + LoRA on the embedded Rotten Tomatoes data for the demo's step
budget and reports held-out accuracy, mean drift ratio and step size, and time. The demo's
defaults in lora_alpha/train/cli.py cite this file's result.

    python benchmarks/demo_config.py            # full: 150 steps, all candidates
    python benchmarks/demo_config.py --quick    # seconds, for the test suite (checks shapes only)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import md_table, train_minilm, write_results

QKVD = ("query", "key", "value", "dense")  # every linear layer of MiniLM, the demo's targets
# (label, rule, alpha, lr, targets): results/demo_config_150steps.md and demo_config_250steps.md
CANDIDATES = [
    ("standard a=16 lr=3e-3 qkvd", "standard", 16.0, 3e-3, QKVD),
    ("standard a=16 lr=3e-3 qv", "standard", 16.0, 3e-3, ("query", "value")),
    ("standard a=16 lr=1e-3 qkvd", "standard", 16.0, 1e-3, QKVD),
    ("lora-alpha default a, lr=1e-4 qkvd", "lora-alpha", None, 1e-4, QKVD),
    ("lora-alpha default a, lr=3e-4 qkvd", "lora-alpha", None, 3e-4, QKVD),
]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated candidate numbers (1-based) to run")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    steps, train_size, eval_size = (args.steps, None, None) if not args.quick else (2, 32, 16)
    cands = CANDIDATES if not args.quick else CANDIDATES[:2]
    if args.only:
        cands = [CANDIDATES[int(i) - 1] for i in args.only.split(",")]
    rows, runs = [], []
    for label, rule, alpha, lr, targets in cands:
        for seed in range(args.seeds):
            r = train_minilm(rank=8, alpha=alpha, rule=rule, lr=lr, head_lr=3e-3, targets=targets, max_steps=steps,
                             batch_size=32 if not args.quick else 8, train_size=train_size, eval_size=eval_size,
                             seed=seed)
            r.update(label=label, rule=rule, lr=lr, targets=list(targets), seed=seed)
            runs.append(r)
            rows.append([label, seed, r["alpha"], r["test_acc"], r["majority_acc"], r["drift_ratio_mean"],
                         r["step_size_mean"], r["seconds_per_step"]])
            print(rows[-1], flush=True)
    table = md_table(["candidate", "seed", "alpha", "held-out acc", "majority", "drift_ratio", "step_size", "s/step"], rows)
    note = (f"\n\nMiniLM-L6 + LoRA r=8, {steps} steps of batch 32 (head lr 3e-3), held-out = the test split "
            "(movies unseen in training).\n")
    write_results("demo_config" + ("_quick" if args.quick else f"_{steps}steps"), {"steps": steps, "runs": runs}, table + note, args.out)


if __name__ == "__main__":
    main()
