"""Running at scale: DDP equals one process on the global batch; sharding strategies are refused."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from callbacks import AlphaRegimeAdvisor, SignalDriftMonitor
from tests.callbacks.helpers import make_module, make_trainer, scalar_steps

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, world: int, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "callbacks" / "ddp_run.py"), str(out), str(world), *extra],
                          capture_output=True, text=True, timeout=240, env=env, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _close(a: dict, b: dict, rel: float = 1e-4, abs_: float = 1e-7) -> None:
    assert set(a) == set(b)
    for k in a:
        if k.endswith("skipped_steps"):
            assert a[k] == b[k], k
        else:
            assert math.isclose(a[k], b[k], rel_tol=rel, abs_tol=abs_), (k, a[k], b[k])


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir()
    ddp.mkdir()
    _run(single, 1)
    _run(ddp, 2)
    one = json.loads((single / "rank0.json").read_text())
    r0, r1 = (json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1))
    assert sorted(map(int, one["history"])) == list(range(6))
    for step, tags in one["history"].items():
        _close(r0["history"][step], tags)
        _close(r1["history"][step], tags)  # every rank computed the same numbers, without collectives
    assert len(one["probes"]) == len(r0["probes"]) == len(r1["probes"]) == 2  # steps 2 and 4 on every rank
    for p1, p0, q in zip(one["probes"], r0["probes"], r1["probes"]):
        assert p0["step"] == q["step"] == p1["step"]
        for a, b, c in zip(p1["losses"], p0["losses"], q["losses"]):
            assert math.isclose(a, b, rel_tol=1e-5) and math.isclose(a, c, rel_tol=1e-5)
        assert math.isclose(p0["step_gap"], p1["step_gap"], rel_tol=1e-4)
    assert r0["verdict"] == r1["verdict"] == one["verdict"]
    # Logged once, from rank zero: each tag has each step exactly once.
    steps = scalar_steps(ddp / "tb")
    assert steps["Summary/drift_ratio"] == list(range(6))
    assert steps["Summary/step_gap"] == [2, 4]
    assert all(len(v) == len(set(v)) for v in steps.values())


@pytest.mark.slow
def test_alpha_control_moves_every_ddp_rank_together(tmp_path):
    _run(tmp_path, 2, "control")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["moves"] and r0["moves"] == r1["moves"]  # rank zero decided; both moved at the same steps by the same factor
    assert r0["alphas"] == r1["alphas"] and r0["alphas"][0] > 8.0
    for p, q in zip(r0["params"], r1["params"]):  # the replicas stayed one model
        assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) for a, b in zip(p, q))


class FSDPStrategy:  # stands in for Lightning's class of that name (matched by name: no import of torch.distributed.fsdp)
    pass


class DeepSpeedStrategy:
    pass


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy])
@pytest.mark.parametrize("callback", [SignalDriftMonitor, AlphaRegimeAdvisor])
def test_sharded_strategies_are_refused_at_setup(strategy, callback):
    class FakeTrainer:
        loggers = []
        world_size = 2

    FakeTrainer.strategy = strategy()
    with pytest.raises(RuntimeError, match=f"does not support {strategy.__name__}.*Supported: single device and DDP"):
        callback().setup(FakeTrainer(), make_module(), "fit")


def test_lightning_fsdp_is_refused_before_training():
    pytest.importorskip("torch.distributed.fsdp")
    from lightning.pytorch.strategies import FSDPStrategy as Real

    module = make_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}

    class T:
        loggers = []
        world_size = 1
        strategy = Real.__new__(Real)

    with pytest.raises(RuntimeError, match="does not support FSDPStrategy"):
        SignalDriftMonitor().setup(T(), module, "fit")
    assert all((before[k] == v).all() for k, v in module.state_dict().items())


@pytest.mark.parametrize("field, value", [("fsdp", ["full_shard"]), ("deepspeed", "ds_config.json")])
def test_hf_callback_refuses_fsdp_and_deepspeed(field, value):
    from types import SimpleNamespace

    from callbacks.hf import SignalDriftTrainerCallback

    args = SimpleNamespace(fsdp=[], deepspeed=None, fp16=False, world_size=1)
    setattr(args, field, value)
    module = make_module()
    with pytest.raises(RuntimeError, match=f"does not support {field}.*Supported: one device and DDP"):
        SignalDriftTrainerCallback().on_train_begin(args, None, None, model=module)
