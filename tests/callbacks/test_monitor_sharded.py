"""The monitor and the advisor under FSDP2 (Lightning's ModelParallelStrategy, 2 CPU gloo processes) equal
one process; the one guard for sharded runs; quantized bases and float32 products in the engine and the
advisor."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lora_alpha
from signaldrift import VerdictRules
from callbacks import AlphaRegimeAdvisor, SignalDriftMonitor
from callbacks.engine import SignalDriftEngine
from callbacks.parallel import parallel_mode
from tests.callbacks.helpers import make_module, scalar_steps
from tests.conftest import TinyMLP

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, world: int) -> list[dict]:
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "callbacks" / "fsdp_monitor_run.py"), str(out), str(world)],
                          capture_output=True, text=True, timeout=240, env=env, cwd=out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.slow
def test_monitor_and_advisor_under_fsdp2_model_parallel_strategy_equal_one_process(tmp_path):
    """One launch of each: every logged number, the base norms from the shards, the §4 warning, logging
    from rank zero alone; the advisor's probes (moving each rank's shards, the root's unit included) and
    the factors bit-identical after each probe."""
    pytest.importorskip("torch.distributed.fsdp")
    one = _run(tmp_path / "one", 1)[0]
    ranks = _run(tmp_path / "fsdp", 2)
    assert one["sharded"] == [False, False] and all(r["sharded"] == [True, True] for r in ranks)
    assert sorted(map(int, one["history"])) == list(range(4))
    # fc1 from B0 = 0 (the batched route), fc2 from B0 != 0 (the exact per-layer route): both measured
    assert {"signaldrift_layers/model.fc1/grad_alignment", "signaldrift_layers/model.fc2/grad_alignment"} <= set(one["history"]["1"])
    for r in ranks:
        for name, value in one["base_norms"].items():
            assert math.isclose(r["base_norms"][name], value, rel_tol=1e-12)
        assert r["history"].keys() == one["history"].keys()
        for step, tags in one["history"].items():
            got = r["history"][step]
            assert set(got) == set(tags), (step, set(got) ^ set(tags))
            for k, v in tags.items():  # every rank measured what one process measured on the global batch
                assert math.isclose(got[k], v, rel_tol=1e-5, abs_tol=1e-9), (step, k, got[k], v)
        assert not any("spectral" in k for tags in r["history"].values() for k in tags)
        assert [w for w in r["warnings"] if "§4" in w] == [
            "SignalDriftMonitor: spectral_suppression and spectral_gain (docs/metrics.md §4) are not measured under data "
            "parallelism or sharding: they need the full-weight gradient of the global batch, which only an "
            "all-reduce of an (m, n) matrix per layer would give"]
        assert r["advisor_base_norms"] == r["base_norms"]  # the advisor's from the shards too, once
        assert [p["step"] for p in r["probes"]] == [p["step"] for p in one["probes"]] == [1, 2, 3]
        for p, q in zip(r["probes"], one["probes"]):  # losses averaged over ranks = the global batch's
            assert p["taus"] == q["taus"] and len(p["losses"]) == len(p["taus"])  # the same descent search
            for k in ("step_gap", "drift_ratio", "step_size"):
                assert math.isclose(p[k], q[k], rel_tol=1e-5, abs_tol=1e-9), (p["step"], k, p[k], q[k])
            # a difference of two float32 losses over one of them: their round-off (~1e-7 here), not relative
            assert (p["gap_gain"] is None) == (q["gap_gain"] is None)
            if p["gap_gain"] is not None:
                assert math.isclose(p["gap_gain"], q["gap_gain"], abs_tol=1e-6), (p["step"], p["gap_gain"], q["gap_gain"])
            for a, b in zip(p["losses"], q["losses"]):
                assert math.isclose(a, b, rel_tol=1e-5), (p["step"], p["losses"], q["losses"])
        assert {k: r["restored"][k] for k in ("1", "2", "3")} == {"1": True, "2": True, "3": True}
    assert [p["step_gap"] for p in one["probes"]] != [one["probes"][0]["step_gap"]] * 3  # the probes tell steps apart
    steps = scalar_steps(tmp_path / "fsdp" / "tb")  # logged once, from rank zero
    logged = {k: [int(s) for s in one["history"] if k in one["history"][s]] for k in one["history"]["3"]}
    assert {k: steps.get(k) for k in logged} == logged  # each tag at each of its steps exactly once


class ModelParallelStrategy:  # stands in for Lightning's class of that name (matched by name)
    pass


class DeepSpeedStrategy:
    pass


def _trainer(strategy, world=2):
    class T:
        loggers = []
        world_size = world

    T.strategy = strategy()
    return T()


def test_fsdp2_is_accepted_by_the_monitor_and_the_advisor_and_deepspeed_refused_by_both():
    monitor = SignalDriftMonitor(full_grad_every=5)
    with pytest.warns(UserWarning, match="docs/metrics.md §4"):
        monitor.setup(_trainer(ModelParallelStrategy), make_module(), "fit")
    assert monitor._probing is False
    AlphaRegimeAdvisor().setup(_trainer(ModelParallelStrategy), make_module(), "fit")
    with pytest.raises(RuntimeError, match=r"AlphaRegimeAdvisor does not support DeepSpeedStrategy: .*Supported: single "
                                           r"device and DDP, and FSDP2"):
        AlphaRegimeAdvisor().setup(_trainer(DeepSpeedStrategy), make_module(), "fit")


def test_deepspeed_refusal_names_the_strategy_and_the_gpu_check():
    with pytest.raises(RuntimeError, match=r"SignalDriftMonitor does not support DeepSpeedStrategy: .*"
                                           r"benchmarks/gpu_check_deepspeed\.py"):
        SignalDriftMonitor().setup(_trainer(DeepSpeedStrategy), make_module(), "fit")


@pytest.mark.parametrize("settings, world, sharded, allow, expected", [
    ([], 1, False, True, "single"), ([], 2, False, True, "ddp"), (["DDPStrategy"], 2, False, False, "ddp"),
    (["ModelParallelStrategy"], 2, False, True, "fsdp2"), ([], 2, True, True, "fsdp2"), ([], 1, True, True, "fsdp2"),
])
def test_parallel_mode(settings, world, sharded, allow, expected):
    assert parallel_mode("X", settings, world, sharded=sharded, allow_fsdp2=allow) == expected


@pytest.mark.parametrize("settings, sharded", [(["ModelParallelStrategy"], False), ([], True)])
def test_parallel_mode_refuses_fsdp2_where_not_allowed(settings, sharded):
    with pytest.raises(RuntimeError, match="X does not support FSDP2"):
        parallel_mode("X", settings, 2, sharded=sharded, allow_fsdp2=False)


def test_hf_callback_accepts_a_sharded_model_without_fsdp_args(monkeypatch):
    """The guard sees FSDP2 factors (DTensor) in the model: section 4 off, gradients read from .grad."""
    from types import SimpleNamespace

    from callbacks import parallel
    from callbacks.hf import SignalDriftTrainerCallback

    monkeypatch.setattr("callbacks.hf.factors_sharded", lambda views: True)
    cb = SignalDriftTrainerCallback(full_grad_every=5)
    with pytest.warns(UserWarning, match="data parallelism or sharding"):
        cb.on_train_begin(SimpleNamespace(fsdp=[], deepspeed=None, world_size=2), None, None,
                          model=make_module().model)
    assert cb._probing is False and cb._hooked is False and cb._hooks == []
    assert parallel.FSDP2_STRATEGIES == ("ModelParallelStrategy",)


# ----------------------------------------------------------------- engine: quantized bases, gram_dtype
def _model(seed=0):
    torch.manual_seed(seed)
    model = TinyMLP()
    lora_alpha.inject(model, ["fc1", "fc2"], rank=2, alpha=8.0, rule="standard")
    with torch.no_grad():
        for name in ("fc1", "fc2"):
            getattr(model, name).lora_B.normal_(0, 0.3)
    return model


def _steps(engine, model, n=3):
    engine.attach(model)
    g = torch.Generator().manual_seed(1)
    out = []
    for step in range(n):
        x, y = torch.randn(8, 8, generator=g), torch.randn(8, 2, generator=g)
        torch.nn.functional.mse_loss(model(x), y).backward()
        engine.before_step(model, step)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.05 * p.grad
        model.zero_grad()
        out.append(engine.after_step(model))
    return out


def test_gram_dtype_float32_is_within_1e_6_of_float64_and_other_dtypes_are_refused():
    ref = _steps(SignalDriftEngine(full_grad_every=None), _model())
    fast = _steps(SignalDriftEngine(full_grad_every=None, gram_dtype=torch.float32), _model())
    worst = 0.0
    for a, b in zip(ref, fast):
        assert a.layers.keys() == b.layers.keys() == {"fc1", "fc2"}
        for name, metrics in a.layers.items():
            assert metrics.keys() == b.layers[name].keys()
            for k, v in metrics.items():
                worst = max(worst, abs(b.layers[name][k] - v) / max(abs(v), 1e-30))
    assert 0 < worst < 1e-5  # float32 products: not the float64 numbers, but close to them
    with pytest.raises(ValueError, match="gram_dtype must be torch.float32 or torch.float64, got torch.float16"):
        SignalDriftEngine(gram_dtype=torch.float16)
    assert SignalDriftMonitor(gram_dtype=torch.float32).engine.gram_dtype == torch.float32


def test_engine_base_norm_of_an_8bit_base_is_the_dequantized_weights():
    """An int8 base with per-row scales (bitsandbytes' Int8Params interface): the norm of its values,
    not of its int8 codes."""
    from signaldrift import lora_layers

    model = _model()
    view = next(v for v in lora_layers(model) if v.name == "fc1")
    W = view.base_weight.detach()
    scb = W.abs().amax(1).float()
    codes = torch.round(W / scb[:, None] * 127).to(torch.int8)
    q = torch.nn.Parameter(codes, requires_grad=False)
    q.SCB = scb
    with torch.no_grad():
        view.base_weight.copy_(codes.float() * scb[:, None] / 127)  # the dense values the codes stand for
    dense = float(torch.linalg.matrix_norm(view.base_weight.double()))
    owner = next(m for m in view.module.modules() if getattr(m, "weight", None) is view.base_weight)
    owner.weight = q
    engine = SignalDriftEngine(full_grad_every=None)
    engine.attach(model)
    assert math.isclose(engine.base_norms["fc1"], dense, rel_tol=1e-6)


def test_advisor_step_size_uses_the_dequantized_base_norm_once_per_fit(monkeypatch):
    """A 4-bit base (the stand-in of bitsandbytes' Linear4bit interface): the advisor's step_size divides by
    the dequantized weight's norm (not the norm of its packed codes), dequantized once per layer per fit."""
    peft = pytest.importorskip("peft")
    from signaldrift import lora_layers, step_split
    from tests.callbacks.helpers import make_trainer
    from tests.callbacks.test_sharded import StandInLinear4bit, _dequantize_4bit, _install_fake_bnb

    torch.manual_seed(0)
    model = peft.get_peft_model(TinyMLP(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"],
                                                           init_lora_weights=False))
    for name in ("fc1", "fc2"):
        layer = getattr(model.base_model.model, name)
        layer.base_layer = StandInLinear4bit(layer.base_layer)
    calls = _install_fake_bnb(monkeypatch)
    from callbacks._lightning import CallbackBase

    class Factors(CallbackBase):  # the factors before and after each step (listed before the advisor)
        before, after = {}, {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.before[trainer.global_step] = [(v.A.detach().clone(), v.B.detach().clone()) for v in lora_layers(pl_module)]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.after[trainer.global_step - 1] = [(v.A.detach().clone(), v.B.detach().clone()) for v in lora_layers(pl_module)]

    factors, advisor = Factors(), AlphaRegimeAdvisor(gap_every=1, rules=VerdictRules(window=1, agree=1, split=1))
    module = make_module(model=model, optimizer="sgd", lr=0.05)
    make_trainer(max_steps=4, callbacks=[factors, advisor]).fit(module)
    views = lora_layers(module)
    norms = [float(torch.linalg.matrix_norm(_dequantize_4bit(v.base_weight.data, v.base_weight.quant_state).double()))
             for v in views]
    assert len(calls) == 2  # once per layer, not per probe
    assert [p["step"] for p in advisor.probes] == [1, 2, 3]
    for p in advisor.probes:
        sizes = [step_split(*factors.before[p["step"]][i], *factors.after[p["step"]][i], v.scale, norms[i]).step_size
                 for i, v in enumerate(views)]
        assert math.isclose(p["step_size"], sorted(sizes)[0] / 2 + sorted(sizes)[1] / 2, rel_tol=1e-9)
