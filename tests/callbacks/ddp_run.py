"""One training run for the DDP test: ``python ddp_run.py OUT WORLD [control]`` (WORLD 1: one process with the
global batch of 8; WORLD 2: Lightning DDP on CPU/gloo, 4 per rank; ``control``: an AlphaController that moves at
any k* > 1.01 in place of the advisor). Each rank writes its monitor history, advisor probes, the controller's
moves and its layers' alphas to OUT/rank<r>.json; rank zero alone has a TensorBoard logger directory."""
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from signaldrift import VerdictRules
from callbacks import AlphaController, AlphaRegimeAdvisor, SignalDriftMonitor  # noqa: E402
from signaldrift import lora_layers  # noqa: E402
from signaldrift.control import ControlRules  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from tests.callbacks.helpers import make_module, make_trainer, teacher_data  # noqa: E402

out, world = Path(sys.argv[1]), int(sys.argv[2])
warnings.simplefilter("ignore")
monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=None, histogram_every=None, layer_log_every=1)
rules = VerdictRules(window=1, agree=1, split=1)
if sys.argv[3:] == ["control"]:  # every rank's own z differs; rank zero's decision must move them all
    advisor = AlphaController(gap_every=2, rules=rules, control=ControlRules(k_up=1.01, z_min=-1e9, until=1.0))
else:
    advisor = AlphaRegimeAdvisor(gap_every=2, rules=rules)
# Lightning's own distributed sampler always shuffles training data; an unshuffled one makes the
# two ranks' batches together exactly the single process's batch.
kw = dict(strategy="ddp", devices=2, use_distributed_sampler=False) if world == 2 else dict(devices=1)
trainer = make_trainer(max_steps=6, callbacks=[monitor, advisor], log_every_n_steps=1,
                       logger=TensorBoardLogger(str(out), name="tb", version=0), **kw)
# SGD: Adam's first steps turn round-off-sized gradient entries into full +-lr moves, so two exact
# runs that sum in a different order part ways; SGD keeps them equal to float tolerance.
module = make_module(batch_size=8, optimizer="sgd", lr=0.05)
if world == 2:
    data = teacher_data()
    module.train_dataloader = lambda: DataLoader(data, batch_size=4, sampler=DistributedSampler(
        data, num_replicas=2, rank=trainer.global_rank, shuffle=False))
trainer.fit(module)
(out / f"rank{trainer.global_rank}.json").write_text(json.dumps(
    {"history": {str(k): m.tags() for k, m in monitor.history.items()}, "probes": advisor.probes,
     "verdict": advisor.verdict.verdict if advisor.verdict else None, "moves": getattr(advisor, "moves", None),
     "alphas": [v.alpha for v in lora_layers(module)], "params": [p.detach().flatten().tolist() for p in module.parameters()]}))
