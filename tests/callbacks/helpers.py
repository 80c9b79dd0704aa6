"""Tiny Lightning modules and a recorder for callback tests (CPU, seconds)."""
from __future__ import annotations

import importlib

import torch
from torch.utils.data import DataLoader, TensorDataset

import lora_alpha
from tests.conftest import TinyMLP


def lightning(ns: str = "lightning.pytorch"):
    return importlib.import_module(ns)


def make_module(ns: str = "lightning.pytorch", lr: float = 1e-2, alpha: float = 8.0, rule: str = "standard",
                nan_at_step: int | None = None, model=None, optimizer: str = "adamw", batch_size: int = 8):
    L = lightning(ns)

    class TinyModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            if model is None:
                self.model = TinyMLP()
                lora_alpha.inject(self.model, ["fc1", "fc2"], rank=2, alpha=alpha, rule=rule)
            else:
                self.model = model

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            if nan_at_step is not None and self.trainer.global_step == nan_at_step:
                loss = loss * float("nan")
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            params = [p for p in self.parameters() if p.requires_grad]
            if optimizer == "sgd":
                return torch.optim.SGD(params, lr=lr)
            return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

        def train_dataloader(self):
            return DataLoader(teacher_data(), batch_size=batch_size)

    torch.manual_seed(0)
    return TinyModule()


def teacher_data(n: int = 64) -> TensorDataset:
    """Targets from the base MLP with a rank-1 change to fc1: a task LoRA on fc1 can learn."""
    g = torch.Generator().manual_seed(0)
    teacher = TinyMLP()
    with torch.no_grad():
        teacher.fc1.weight += 0.5 * torch.randn(16, 1, generator=g) @ torch.randn(1, 8, generator=g)
        x = torch.randn(n, 8, generator=g)
        y = teacher(x)
    return TensorDataset(x, y)


def make_trainer(ns: str = "lightning.pytorch", **kw):
    L = lightning(ns)
    defaults = dict(max_steps=4, accelerator="cpu", devices=1, enable_progress_bar=False,
                    enable_checkpointing=False, enable_model_summary=False, logger=False)
    defaults.update(kw)
    return L.Trainer(**defaults)


def make_recorder(ns: str = "lightning.pytorch", capture_full_grad_at: tuple[int, ...] = ()):
    """Records factors, gradients (and the base weight's gradient, i.e. G) independently of the monitor."""
    L = lightning(ns)

    class Recorder(L.Callback):
        def __init__(self) -> None:
            self.before: dict[int, dict] = {}
            self.after: dict[int, dict] = {}
            self.snapshot: dict = {}

        def _layers(self, pl_module):
            return {n: m for n, m in pl_module.named_modules() if isinstance(m, lora_alpha.LoRALinear)}

        def on_fit_start(self, trainer, pl_module):
            if not self.snapshot:
                self.snapshot = {n: (m.lora_A.detach().clone(), m.lora_B.detach().clone())
                                 for n, m in self._layers(pl_module).items()}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            on = trainer.global_step in capture_full_grad_at
            for m in self._layers(pl_module).values():
                m.base_layer.weight.requires_grad_(on)

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            rec = {}
            for n, m in self._layers(pl_module).items():
                G = m.base_layer.weight.grad
                rec[n] = dict(A=m.lora_A.detach().clone(), B=m.lora_B.detach().clone(),
                              gA=m.lora_A.grad.detach().clone(), gB=m.lora_B.grad.detach().clone(),
                              G=None if G is None else G.detach().clone(), scale=m.scaling,
                              W0=m.base_weight_mn().detach().clone())
                m.base_layer.weight.grad = None
            self.before[trainer.global_step] = rec

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step - 1
            if step in self.before and step not in self.after:
                self.after[step] = {n: dict(A=m.lora_A.detach().clone(), B=m.lora_B.detach().clone())
                                    for n, m in self._layers(pl_module).items()}

    return Recorder()


def read_scalars(log_dir) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files under ``log_dir``: {tag: {step: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    import pathlib

    for events in sorted(pathlib.Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for ev in acc.Scalars(tag):
                out.setdefault(tag, {})[ev.step] = ev.value
    return out


def read_tags(log_dir) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import pathlib

    tags: dict[str, list[str]] = {}
    for events in sorted(pathlib.Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0})
        acc.Reload()
        for kind, names in acc.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, []).extend(names)
    return tags


def scalar_steps(log_dir) -> dict[str, list[int]]:
    """Every scalar event's step per tag, duplicates kept, as TensorBoard reads each run directory
    (all its event files in order, so a restart marker purges what it should)."""
    import pathlib

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[int]] = {}
    for run in sorted({f.parent for f in pathlib.Path(log_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(ev.step for ev in acc.Scalars(tag))
    return out
