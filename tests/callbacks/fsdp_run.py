"""One run for the FSDP2 test: ``python fsdp_run.py OUT WORLD`` (WORLD 1: one process, global batch 8;
WORLD 2: two gloo processes, ``fully_shard`` on every LoRA layer and the root, 4 samples per rank).

Each step: backward, then the factors and gradients gathered whole (DTensor.full_tensor()) and
sections 1 and 3 measured (signaldrift.batched), the SGD step, the new factors gathered, section 2.
The base norms come from the shards once, before training. Each rank writes OUT/rank<r>.json."""
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import lora_alpha  # noqa: E402
from signaldrift import lora_layers  # noqa: E402
from signaldrift.batched import BatchedStep  # noqa: E402
from signaldrift.sharded import base_weight_norm, gathered_factors, gathered_states, is_dtensor  # noqa: E402
from tests.callbacks.helpers import teacher_data  # noqa: E402
from tests.conftest import TinyMLP  # noqa: E402

out, world = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
rank = 0
if world > 1:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[3]}", rank=int(os.environ["RANK"]),
                            world_size=world)
    rank = dist.get_rank()
model = TinyMLP()
lora_alpha.inject(model, ["fc1", "fc2"], rank=2, alpha=8.0)
with torch.no_grad():  # a non-zero B: the first step already has a spectrum and a gradient split
    for v in lora_layers(model):
        v.B.copy_(0.1 * torch.randn(v.B.shape, generator=torch.Generator().manual_seed(7)))
if world > 1:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for name in ("fc1", "fc2"):
        fully_shard(getattr(model, name), mesh=mesh)
    fully_shard(model, mesh=mesh)
views = lora_layers(model)
sharded = [is_dtensor(v.A) for v in views]
base_norms = {v.name: base_weight_norm(v.base_weight) for v in views}
opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
data = teacher_data()
history = []
for step in range(4):
    x, y = data.tensors[0][8 * step:8 * step + 8], data.tensors[1][8 * step:8 * step + 8]
    if world > 1:
        x, y = x[4 * rank:4 * rank + 4], y[4 * rank:4 * rank + 4]
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    states = gathered_states(views, base_norms)
    raw = {v.name: {k: t.clone() for k, t in (("A", s.A), ("B", s.B), ("gA", s.grad_A), ("gB", s.grad_B))}
           for v, s in zip(views, states)}  # the factors at step t (gathered tensors may be live views)
    batch = BatchedStep.measure(states)
    opt.step()
    splits = batch.step_splits(gathered_factors(views))
    rec = {}
    if world == 1:  # the raw tensors, for the test's dense references
        rec["raw"] = {v.name: {k: t.tolist() for k, t in (*raw[v.name].items(), ("A1", v.A.detach()),
                                                         ("B1", v.B.detach()))} | {"s": v.scale} for v in views}
    for v, res, st in zip(views, batch.results, splits):
        rec[v.name] = dict(delta_norm=res.spectrum.delta_norm, delta_rel=res.spectrum.delta_rel,
                           stable_rank=res.spectrum.stable_rank, effective_rank=res.spectrum.effective_rank,
                           grad_alignment=res.grad.grad_alignment, grad_drift_ratio=res.grad.grad_drift_ratio,
                           signal_norm=st.split.signal_norm, drift_norm=st.split.drift_norm,
                           drift_ratio=st.split.drift_ratio, step_size=st.split.step_size)
    history.append(rec)
(out / f"rank{rank}.json").write_text(json.dumps({"history": history, "base_norms": base_norms, "sharded": sharded}))
if world > 1:
    dist.destroy_process_group()
# The result is written; leave without the interpreter's teardown, where gloo's threads have aborted the process
# now and then on a loaded machine ("terminate called without an active exception", exit -6) after the work was
# done and the file written.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
