"""One training run for the FSDP2 monitor test: ``python fsdp_monitor_run.py OUT WORLD`` (WORLD 1: one
process, plain Lightning, global batch 8; WORLD 2: Lightning's ``ModelParallelStrategy`` on CPU/gloo,
``fully_shard`` on fc1 and on the root, which holds fc2, in ``configure_model``, 4 samples per rank).

The real ``SignalDriftMonitor`` and ``AlphaRegimeAdvisor`` (a probe every step from step 1) in a real
Trainer. Each rank writes its monitor history (the tags), the advisor's probes, whether the factors were
bit-identical before and after each probe, whether its factors were DTensors, and the monitor's
warnings to OUT/rank<r>.json; both ranks have a TensorBoard logger (Lightning writes from rank zero only)."""
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from signaldrift import VerdictRules
from callbacks import AlphaRegimeAdvisor, SignalDriftMonitor  # noqa: E402
from callbacks._lightning import CallbackBase  # noqa: E402
from callbacks.engine import SignalDriftWarning  # noqa: E402
from signaldrift import lora_layers  # noqa: E402
from signaldrift.sharded import gather_full, is_dtensor  # noqa: E402
from tests.callbacks.helpers import make_module, make_trainer, teacher_data  # noqa: E402

out, world = Path(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
warnings.simplefilter("ignore")
# Section 4 asked for every 2 steps: off under sharding, with one warning (the one process measures none
# either here, so the two runs log the same tags).
monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=2 if world == 2 else None, histogram_every=None,
                             layer_log_every=1)
advisor = AlphaRegimeAdvisor(gap_every=1, rules=VerdictRules(window=1, agree=1, split=1))


class Restored(CallbackBase):
    """The whole factors just before the advisor's probe (listed before it) and at the next batch's start
    or the end of training (after the probe): equal bit for bit, per probed step."""

    def __init__(self):
        self.saved, self.equal = None, {}

    def _factors(self, pl_module):  # a collective under FSDP2: every rank, the same order
        return [gather_full(p).clone() for v in lora_layers(pl_module) for p in (v.A, v.B)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.saved = (trainer.global_step - 1, self._factors(pl_module))

    def _check(self, pl_module):
        if self.saved is not None:
            step, saved = self.saved
            self.equal[step] = all(torch.equal(a, b) for a, b in zip(saved, self._factors(pl_module)))
            self.saved = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._check(pl_module)

    def on_train_end(self, trainer, pl_module):
        self._check(pl_module)


restored = Restored()
kw = dict(devices=1)
if world == 2:
    from lightning.pytorch.strategies import ModelParallelStrategy

    kw = dict(strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1), devices=2,
              use_distributed_sampler=False)
trainer = make_trainer(max_steps=4, callbacks=[monitor, restored, advisor], log_every_n_steps=1,
                       logger=TensorBoardLogger(str(out), name="tb", version=0), **kw)
# SGD: see ddp_run.py (Adam turns round-off-sized gradient differences into full +-lr moves).
module = make_module(batch_size=8, optimizer="sgd", lr=0.05)
with torch.no_grad():  # fc2 starts from B0 != 0: the engine's exact per-layer route under sharding too
    module.model.fc2.lora_B.copy_(0.1 * torch.randn(module.model.fc2.lora_B.shape,
                                                    generator=torch.Generator().manual_seed(7)))
if world == 2:
    from torch.distributed.fsdp import fully_shard

    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        # fc1 its own unit (gathered and freed around each forward), fc2 in the root's unit (which keeps its
        # gathered parameters after a forward: the probe must free them to move fc2's factors)
        fully_shard(self.model.fc1, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    type(module).configure_model = configure_model
    data = teacher_data()
    module.train_dataloader = lambda: DataLoader(data, batch_size=4, sampler=DistributedSampler(
        data, num_replicas=2, rank=trainer.global_rank, shuffle=False))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer.fit(module)
(out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
    "history": {str(k): m.tags() for k, m in monitor.history.items()},
    "sharded": [is_dtensor(module.model.fc1.lora_A), is_dtensor(module.model.fc2.lora_B)],
    "base_norms": monitor.engine.base_norms,
    "advisor_base_norms": advisor._base_norms,
    "probes": advisor.probes,
    "restored": restored.equal,
    "warnings": [str(w.message) for w in caught if issubclass(w.category, SignalDriftWarning)]}))
