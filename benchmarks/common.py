"""Shared benchmark plumbing: the machine description, seeded MiniLM runs, result files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
            "commit": _git("rev-parse", "--short", "HEAD")}


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_results(name: str, payload: dict, table_md: str, out_dir: Path | None = None, *,
                  reanalysis: bool = False) -> tuple[Path, Path]:
    """Write ``<name>.json`` (``payload`` with the machine) and ``<name>.md`` (a machine line, then ``table_md``).

    ``reanalysis``: the tables were recomputed from the stored runs, so the files keep the machine, date
    and commit that measured them and add where the tables were recomputed."""
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{name}.json", out_dir / f"{name}.md"
    m = machine()
    if reanalysis and js.is_file():
        here = {"date": m["date"], "commit": m["commit"]}
        m = {k: v for k, v in json.loads(js.read_text())["machine"].items() if k != "reanalysed"} | {"reanalysed": here}
    payload = {"machine": m, **payload}
    js.write_text(json.dumps(payload, indent=2) + "\n")
    m = payload["machine"]
    again = f"; tables recomputed {m['reanalysed']['date']}, commit {m['reanalysed']['commit']}" if "reanalysed" in m else ""
    header = (f"# {name}\n\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}"
              f"{', ' + m['cuda'] if m['cuda'] else ''}; {m['date']}, commit {m['commit']}{again}.\n\n")
    md.write_text(header + table_md.rstrip() + "\n")
    return js, md


def stored_runs(out_dir: Path, name: str, key: Callable[[dict], Hashable], *, fresh: bool = False,
                extra: Iterable[dict] = ()) -> tuple[list[dict], set]:
    """The runs already in ``out_dir/<name>.json`` and the set of their ``key``s, so a rerun skips those cells.

    ``fresh``: ignore the file (quick modes start empty). ``extra``: runs from elsewhere (another result
    file, a grid that ran the same cells) added where their key is not stored yet."""
    path = out_dir / f"{name}.json"
    runs = json.loads(path.read_text())["runs"] if path.is_file() and not fresh else []
    done = {key(r) for r in runs}
    for r in extra:
        if key(r) not in done:
            runs.append(r)
            done.add(key(r))
    return runs, done


def save_figure(fig, path: Path) -> None:
    """Lay out, write as PNG and release a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def md_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def bootstrap_ci(statistic: Callable, *samples, paired: bool = False, n: int = 2000, seed: int = 0):
    """95% percentile bootstrap interval (low, high) of ``statistic(*samples)``, by ``scipy.stats.bootstrap``.

    Each sample is resampled on its own, or with ``paired`` by one index shared by all (replicates
    measured together). ``statistic`` takes one 1-D array per sample and returns a number or a vector;
    the ends have its shape. A sample of one value has nothing to resample: both ends are the value."""
    import numpy as np
    from scipy import stats

    if min(len(s) for s in samples) < 2:
        value = statistic(*(np.asarray(s, dtype=float) for s in samples))
        return value, value
    ci = stats.bootstrap(samples, statistic, n_resamples=n, paired=paired, vectorized=False, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
    return ci.low, ci.high


def train_minilm(*, rank: int = 8, alpha: float | None = 16.0, rule: str = "standard", lr: float = 3e-3,
                 head_lr: float | None = 3e-3, targets=("query", "key", "value", "dense"), max_steps: int = 150,
                 batch_size: int = 32, train_size: int | None = None, eval_size: int | None = None, seed: int = 0,
                 every_n_steps: int = 5, loraplus_ratio: float | None = None, curve_every: int | None = None,
                 curve_size: int = 320, gap_every: int | None = None) -> dict:
    """One seeded MiniLM + Rotten Tomatoes run with the SignalDriftMonitor; held-out (test) accuracy.

    With ``curve_every``, validation accuracy on ``curve_size`` snippets every that many steps
    (the learning curve, ``curve``: [[step, val_acc], ...]). With ``gap_every``, an
    AlphaRegimeAdvisor probes the step gap every that many steps (``probes``: [[step, step_gap], ...],
    and its last ``verdict``)."""
    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything

    from callbacks import AlphaRegimeAdvisor, SignalDriftMonitor
    from lora_alpha.train.data import RottenTomatoesDataModule, demo_model_path
    from lora_alpha.train.module import LoRAAlphaModule

    torch.set_num_threads(min(os.cpu_count() or 1, 16))
    seed_everything(seed, verbose=False)
    dm = RottenTomatoesDataModule(batch_size=batch_size, train_size=train_size,
                                  val_size=curve_size if curve_every else eval_size, test_size=eval_size, seed=seed)
    module = LoRAAlphaModule(demo_model_path(), targets=list(targets), rank=rank, alpha=alpha, rule=rule, lr=lr,
                             head_lr=head_lr, loraplus_ratio=loraplus_ratio)
    monitor = SignalDriftMonitor(every_n_steps=every_n_steps, full_grad_every=None, histogram_every=None)
    advisor = AlphaRegimeAdvisor(gap_every=gap_every) if gap_every else None
    curve: list[list[float]] = []

    class Curve(Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                curve.append([trainer.global_step, float(trainer.callback_metrics["val_acc"])])

    extra = dict(val_check_interval=curve_every, check_val_every_n_epoch=None) if curve_every else {}
    trainer = Trainer(max_steps=max_steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[monitor, Curve(), *([advisor] if advisor else [])], precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
                      **extra)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.time()
        trainer.fit(module, datamodule=dm)
        train_s = time.time() - t0
        test = trainer.test(module, datamodule=dm, verbose=False)[0]
    drift = [v for m in monitor.history.values() if (v := m.summary("drift_ratio")) is not None]
    size = [v for m in monitor.history.values() if (v := m.summary("step_size")) is not None]
    labels = [int(r["labels"]) for r in dm.splits["test"].rows]
    return {"test_acc": float(test["test_acc"]), "test_loss": float(test["test_loss"]),
            "majority_acc": max(sum(labels), len(labels) - sum(labels)) / len(labels),
            "drift_ratio_mean": statistics.fmean(drift) if drift else None,
            "step_size_mean": statistics.fmean(size) if size else None,
            "train_seconds": train_s, "seconds_per_step": train_s / max(trainer.global_step, 1),
            "steps": trainer.global_step, "scale": module.lora_summary.scale, "alpha": module.lora_summary.alpha,
            **({"curve": curve} if curve_every else {}),
            **({"probes": [[p["step"], p["step_gap"]] for p in advisor.probes],
                "verdict": advisor.verdict.verdict if advisor.verdict else None, "advisor_window": advisor.window}
               if advisor else {})}
