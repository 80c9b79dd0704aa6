"""GPU check, not run on the CPU machines: the gather-and-measure path under real DeepSpeed ZeRO-2 and ZeRO-3.

Needs CUDA GPUs and ``pip install deepspeed``. For each stage, two processes train a tiny LoRA MLP
with DeepSpeed; after backward each rank gathers the LoRA factors and gradients with DeepSpeed's
own API (signaldrift.sharded.gathered_states -> deepspeed.utils.safe_get_full_fp32_param /
safe_get_full_grad), measures sections 1 and 3 (signaldrift.batched), steps, and measures section 2.
The same numbers are computed by one process without DeepSpeed on the same global batch; the script
prints the largest relative difference per stage and exits 1 if it exceeds 1e-4.

    deepspeed --num_gpus 2 benchmarks/gpu_check_deepspeed.py
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import lora_alpha  # noqa: E402
from signaldrift import lora_layers  # noqa: E402
from signaldrift.batched import BatchedStep  # noqa: E402
from signaldrift.sharded import base_weight_norm, gathered_factors, gathered_states  # noqa: E402


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(64, 128), torch.nn.Linear(128, 8)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def model() -> torch.nn.Module:
    m = MLP()
    lora_alpha.inject(m, ["fc1", "fc2"], rank=4, alpha=16.0)
    with torch.no_grad():
        for v in lora_layers(m):
            v.B.copy_(0.05 * torch.randn(v.B.shape, generator=torch.Generator().manual_seed(1)))
    return m


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 64, generator=g), torch.randn(16, 8, generator=g)


def record(views, batch, splits) -> dict:
    return {v.name: [r.spectrum.delta_norm, r.spectrum.effective_rank, r.grad.grad_alignment,
                     s.split.drift_ratio, s.split.step_size] for v, r, s in zip(views, batch.results, splits)}


def reference(device) -> list[dict]:
    m = model().to(device)
    views = lora_layers(m)
    norms = {v.name: base_weight_norm(v.base_weight) for v in views}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    out = []
    for step in range(3):
        x, y = (t.to(device) for t in data(step))
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        batch = BatchedStep.measure(gathered_states(views, norms))
        opt.step()
        out.append(record(views, batch, batch.step_splits(gathered_factors(views))))
    return out


def sharded(stage: int, rank: int, world: int) -> list[dict]:
    import deepspeed

    m = model()
    config = {"train_micro_batch_size_per_gpu": 16 // world, "gradient_accumulation_steps": 1,
              "optimizer": {"type": "SGD", "params": {"lr": 0.05}}, "zero_optimization": {"stage": stage},
              "fp16": {"enabled": False}, "bf16": {"enabled": False}}
    engine, *_ = deepspeed.initialize(model=m, model_parameters=[p for p in m.parameters() if p.requires_grad],
                                      config=config)
    views = lora_layers(engine.module)
    norms = {v.name: base_weight_norm(v.base_weight) for v in views}
    out = []
    for step in range(3):
        x, y = data(step)
        n = 16 // world
        x, y = x[rank * n:(rank + 1) * n].to(engine.device), y[rank * n:(rank + 1) * n].to(engine.device)
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        batch = BatchedStep.measure(gathered_states(views, norms))  # DeepSpeed's gather, between backward and step
        engine.step()
        out.append(record(views, batch, batch.step_splits(gathered_factors(views))))
    return out


def main() -> int:
    import deepspeed

    deepspeed.init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    ref = reference(torch.device("cuda"))
    worst = {}
    for stage in (2, 3):
        got = sharded(stage, rank, world)
        worst[stage] = max(abs(a - b) / max(abs(b), 1e-12) for g, r in zip(got, ref) for n in r
                           for a, b in zip(g[n], r[n]))
    if rank == 0:
        print(json.dumps({"world": world, "max_rel_diff_by_zero_stage": worst}))
    return 0 if all(v < 1e-4 for v in worst.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
