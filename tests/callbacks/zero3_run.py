"""The ZeRO-3 layout on gloo: ``python zero3_run.py OUT 2 PORT`` (RANK in the environment).

Each rank keeps only its flat, zero-padded partition of every LoRA factor, gradient and base weight
(DeepSpeed's ZeRO-3 layout); the measurement gathers factors and gradients with
signaldrift.sharded.gather_flat_partitions and the base norm from the partitions (sum of squares,
all-reduced). The training itself runs replicated, so the whole tensors are there to compare with."""
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import lora_alpha  # noqa: E402
from signaldrift import lora_layers  # noqa: E402
from signaldrift.batched import BatchedStep, LayerState  # noqa: E402
from signaldrift.sharded import base_weight_norm, flat_partition, gather_flat_partitions, is_zero3  # noqa: E402
from tests.callbacks.helpers import teacher_data  # noqa: E402
from tests.conftest import TinyMLP  # noqa: E402

out, world = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[3]}", rank=int(os.environ["RANK"]),
                        world_size=world)
rank = dist.get_rank()
model = TinyMLP()
lora_alpha.inject(model, ["fc1", "fc2"], rank=2, alpha=8.0)
with torch.no_grad():
    for v in lora_layers(model):
        v.B.copy_(0.1 * torch.randn(v.B.shape, generator=torch.Generator().manual_seed(7)))
views = lora_layers(model)


def part(t):
    return flat_partition(t, rank, world)


def zero3_param(t):  # what a ZeRO-3 parameter looks like from outside: its partition and a status
    return SimpleNamespace(ds_tensor=part(t), ds_status="NOT_AVAILABLE", shape=t.shape)


bases = {v.name: zero3_param(v.base_weight) for v in views}
assert all(is_zero3(b) for b in bases.values())
base_norms = {n: base_weight_norm(b) for n, b in bases.items()}
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
data = teacher_data()
history = []
for step in range(3):
    x, y = data.tensors[0][8 * step:8 * step + 8], data.tensors[1][8 * step:8 * step + 8]
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    # Only partitions from here on: the factors and gradients are reassembled by the all-gather.
    parts = [(part(v.A), part(v.B), part(v.A.grad), part(v.B.grad)) for v in views]
    states = [LayerState(gather_flat_partitions(pa, v.A.shape), gather_flat_partitions(pb, v.B.shape), v.scale,
                         base_norms[v.name], gather_flat_partitions(ga, v.A.shape), gather_flat_partitions(gb, v.B.shape))
              for v, (pa, pb, ga, gb) in zip(views, parts)]
    batch = BatchedStep.measure(states)
    opt.step()
    after = [(gather_flat_partitions(part(v.A), v.A.shape), gather_flat_partitions(part(v.B), v.B.shape)) for v in views]
    splits = batch.step_splits(after)
    history.append({v.name: dict(delta_norm=r.spectrum.delta_norm, effective_rank=r.spectrum.effective_rank,
                                 grad_alignment=r.grad.grad_alignment, drift_ratio=s.split.drift_ratio,
                                 step_size=s.split.step_size) for v, r, s in zip(views, batch.results, splits)})
(out / f"rank{rank}.json").write_text(json.dumps({"history": history, "base_norms": base_norms}))
dist.destroy_process_group()
# The result is written; leave without the interpreter's teardown, where gloo's threads have aborted the process
# now and then on a loaded machine ("terminate called without an active exception", exit -6) after the work was
# done and the file written.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
