"""AlphaController (docs/metrics.md §8): the rule from both sides of each bound, a move against a dense
reference of W0 + k*dW, the optimizer's moments, resume, PEFT, and the refusals."""
import math
import warnings

import pytest
import torch

import lora_alpha
from callbacks import AlphaController
from callbacks.control import check_optimizer, rescale_moments
from signaldrift.control import ControlRules, alpha_move
from tests.callbacks.helpers import lightning, make_module, make_trainer, teacher_data
from tests.conftest import TinyMLP

# ----------------------------------------------------------------- the rule (pure)
RULES = ControlRules()  # max_moves 3, max_factor 8, max_total 512, until 0.25, k_up 2, z_min 1, help_z_max -2,
# headroom 0.5 of step_size_high 0.0088


def move(k=4.0, z=3.0, help_z=5.0, verdict="in-regime", step=10, total_steps=100, moves=0, total=1.0, peak=None,
         rules=RULES):
    return alpha_move(k, z, help_z, verdict, step, total_steps, moves, total, peak, rules).factor


def test_up_moves_by_k_star_from_both_sides_of_each_bound():
    assert move() == 4.0
    assert move(k=2.0) == 2.0 and move(k=1.99) is None  # k_up
    assert move(z=1.0) == 4.0 and move(z=0.99) is None and move(z=math.inf) == 4.0  # z_min
    assert move(z=None) is None and move(z=math.nan) is None and move(k=None) is None and move(k=math.nan) is None
    assert move(help_z=-1.99) == 4.0 and move(help_z=-2.0) is None and move(help_z=None) == 4.0  # help_z_max
    assert move(step=25) == 4.0 and move(step=26) is None  # until: 0.25 of 100 steps
    assert move(moves=2) == 4.0 and move(moves=3) is None  # max_moves
    assert move(k=8.0) == 8.0 and move(k=16.0) == 8.0  # max_factor
    assert move(k=8.0, total=128.0) == 4.0 and move(k=8.0, total=64.0) == 8.0  # max_total: 512 / total
    assert move(k=8.0, total=257.0) is None  # what the total leaves is below k_up


def test_up_moves_keep_the_step_size_below_half_the_collapse_level():
    high = 0.0088
    assert move(k=8.0, peak=high / 16) == 8.0  # room for 8: the other bounds decide
    assert move(k=8.0, peak=high / 8) == pytest.approx(4.0)  # room = 0.5 * high / peak
    assert move(k=8.0, peak=high / 4) == pytest.approx(2.0) and move(k=8.0, peak=high / 3.99) is None  # k_up
    assert move(k=8.0, peak=0.0) == 8.0 and move(k=8.0, peak=math.nan) == 8.0  # no usable peak: no cap
    reason = alpha_move(8.0, 3.0, 1.0, "in-regime", 10, 100, 0, 1.0, high / 2).reason
    assert "leaves room for x 1 only" in reason


def test_down_only_with_the_verdicts_collapse_evidence():
    assert move(k=0.25) is None  # k* alone never moves alpha down
    assert move(k=0.25, verdict="too-aggressive") == 0.25
    assert move(k=0.0, verdict="too-aggressive") == 1 / 8  # max_factor
    assert move(k=0.5, verdict="too-aggressive", total=1 / 511.0) is None  # at the total bound
    assert move(k=0.5, verdict="too-aggressive", total=1 / 256.0) == 0.5
    assert move(k=0.5, verdict="too-aggressive", total=1 / 500.0) == pytest.approx(500 / 512)
    assert move(k=1.2, verdict="too-aggressive") is None and move(k=0.5, z=0.9, verdict="too-aggressive") is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_moves=0), "max_moves"), (dict(max_moves=True), "max_moves"), (dict(max_factor=1.0), "max_factor"),
    (dict(max_total=math.inf), "max_total"), (dict(until=0.0), "until"), (dict(until=1.5), "until"),
    (dict(k_up=1.0), "k_up"), (dict(z_min=math.nan), "z_min"), (dict(help_z_max="x"), "help_z_max"),
    (dict(headroom=0.0), "headroom"), (dict(step_size_high=-1.0), "step_size_high"),
])
def test_bad_rules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ControlRules(**kwargs)


def test_bad_rule_inputs_are_refused():
    with pytest.raises(ValueError, match="total_steps"):
        alpha_move(4.0, 3.0, 1.0, "in-regime", 1, 0, 0, 1.0)
    with pytest.raises(ValueError, match="total must"):
        alpha_move(4.0, 3.0, 1.0, "in-regime", 1, 10, 0, 0.0)
    with pytest.raises(ValueError, match="ControlRules"):
        AlphaController(control={"max_moves": 1})


# ----------------------------------------------------------------- the optimizer's state
def _stepped(optimizer_cls, **kw):
    torch.manual_seed(0)
    a, b, other = (torch.nn.Parameter(torch.randn(3, 2)) for _ in range(3))
    opt = optimizer_cls([a, b, other], lr=0.1, **kw)
    for _ in range(2):
        opt.zero_grad()
        ((a * b).sum() + (other ** 2).sum()).backward()
        opt.step()
    return opt, a, b, other


@pytest.mark.parametrize("cls, kw, keys", [
    (torch.optim.AdamW, {}, {"exp_avg": 1, "exp_avg_sq": 2}),
    (torch.optim.Adam, {"amsgrad": True}, {"exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2}),
    (torch.optim.SGD, {"momentum": 0.9}, {"momentum_buffer": 1}),
])
def test_moments_scale_by_the_factor_and_its_square(cls, kw, keys):
    opt, a, b, other = _stepped(cls, **kw)
    before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in (a, b, other)}
    assert rescale_moments(opt, [a, b], 3.0) == 2 * len(keys)
    for p in (a, b):
        for key, power in keys.items():
            assert torch.equal(opt.state[p][key], before[id(p)][key] * 3.0 ** power), key
        if "step" in opt.state[p]:
            assert torch.equal(opt.state[p]["step"], before[id(p)]["step"])
    for key, value in opt.state[other].items():  # a parameter that is not a factor is left alone
        assert torch.equal(value, before[id(other)][key])


def test_an_optimizer_it_cannot_rescale_is_refused_whole():
    opt, a, b, _ = _stepped(torch.optim.Adagrad)
    with pytest.raises(ValueError, match="knows Adam, AdamW, SGD; this run uses Adagrad"):
        check_optimizer(opt)
    before = [opt.state[p]["sum"].clone() for p in (a, b)]
    with pytest.raises(ValueError, match="'sum' of Adagrad"):
        rescale_moments(opt, [a, b], 2.0)
    assert all(torch.equal(opt.state[p]["sum"], s) for p, s in zip((a, b), before))  # nothing half changed


# ----------------------------------------------------------------- a move in a fit
def per_example(module, batch):
    x, y = batch
    return ((module(x) - y) ** 2).mean(dim=1)


# the tiny task's per-example units agree with z about 1.4 (tests/callbacks/test_advisor.py): these rules move on it
TEST_RULES = ControlRules(z_min=0.5, until=1.0, k_up=1.5)


class Snapshot(lightning().Callback):
    """Before the controller (it runs first): each step's factors, scales and Adam moments."""

    def __init__(self):
        self.at = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        layers = {n.split(".")[-1]: m for n, m in pl_module.named_modules() if isinstance(m, lora_alpha.LoRALinear)}
        opt = trainer.optimizers[0]
        self.at[trainer.global_step - 1] = {
            n: dict(A=m.lora_A.detach().clone(), B=m.lora_B.detach().clone(), scale=m.scaling,
                    m1={k: v.clone() for k, v in opt.state[m.lora_A].items()},
                    m2={k: v.clone() for k, v in opt.state[m.lora_B].items()}) for n, m in layers.items()}


def _controlled(max_steps, control=TEST_RULES, alpha=0.01, **kw):
    snap = Snapshot()
    controller = AlphaController(gap_every=2, window_steps=1, loss_fn=per_example, control=control, **kw)
    module = make_module(alpha=alpha, lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(max_steps=max_steps, callbacks=[snap, controller]).fit(module)
    return controller, module, snap


def test_a_move_puts_the_model_at_w0_plus_k_dw_and_rescales_the_moments():
    controller, module, snap = _controlled(3)  # the probe after step 2 moves; the fit ends there
    assert len(controller.moves) == 1
    mv = controller.moves[0]
    f = mv["factor"]
    assert mv["step"] == 2 and f == pytest.approx(min(mv["k_star"], 8.0)) and f > 1.5
    assert mv["old_alpha"] == 0.01 and mv["new_alpha"] == pytest.approx(0.01 * f)
    x = teacher_data()[:5][0]
    base = TinyMLP()  # W0: the same seeded weights the LoRA layers wrap
    for name in ("fc1", "fc2"):
        layer = getattr(module.model, name)
        s = snap.at[2][name]
        dW = s["scale"] * (s["B"].double() @ s["A"].double())  # the update at the probe, B0 = 0
        ref_w = getattr(base, name).weight.double() + f * dW
        inp = x if name == "fc1" else torch.relu(module.model.fc1(x))
        want = inp.double() @ ref_w.T + getattr(base, name).bias.double()
        assert torch.allclose(layer(inp).double(), want, rtol=1e-6, atol=1e-7)
        assert layer.alpha == pytest.approx(0.01 * f)
    opt = module.trainer.optimizers[0]  # the moments: first by f, second by f^2; step untouched
    for name in ("fc1", "fc2"):
        layer, s = getattr(module.model, name), snap.at[2][name]
        for p, m in ((layer.lora_A, s["m1"]), (layer.lora_B, s["m2"])):
            assert torch.allclose(opt.state[p]["exp_avg"], m["exp_avg"] * f, rtol=1e-6)
            assert torch.allclose(opt.state[p]["exp_avg_sq"], m["exp_avg_sq"] * f * f, rtol=1e-6)
            assert torch.equal(opt.state[p]["step"], m["step"])
    # the probe set's loss at the moved alpha is below the run as it was (the point the probe measured)
    probe = controller.probes[-1]
    with torch.no_grad():
        after = torch.cat([per_example(module, b) for b in controller.probe_set]).mean().item()
    assert after < probe["scale_losses"][probe["scale_ks"].index(1.0)]
    # the verdict restarts its evidence at the new alpha
    assert controller.evidence_from == len(controller.probes) == 1


def test_moves_stop_at_max_moves_and_after_until():
    controller, _, _ = _controlled(12, control=ControlRules(z_min=0.5, until=1.0, k_up=1.5, max_moves=2))
    assert [m["step"] for m in controller.moves] == [2, 4]
    assert all(p["control"].startswith("no move") for p in controller.probes[2:])
    early, _, _ = _controlled(12, control=ControlRules(z_min=0.5, until=0.25, k_up=1.5))  # steps <= 3 of 12
    assert [m["step"] for m in early.moves] == [2]
    assert "past 0.25" in early.probes[1]["control"]
    capped, _, _ = _controlled(12, control=ControlRules(z_min=0.5, until=1.0, k_up=1.5, max_factor=2.0, max_total=3.0))
    assert [m["factor"] for m in capped.moves] == [2.0, 1.5]  # per move, then what the total leaves
    assert capped.total_factor == pytest.approx(3.0) and capped.alpha == pytest.approx(0.03)


def test_the_loss_does_not_spike_after_a_move():
    # the run's own training loss over the steps after the move stays below its value at the move
    L = lightning()

    class Losses(L.Callback):
        def __init__(self):
            self.loss = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with torch.no_grad():
                self.loss[trainer.global_step - 1] = torch.cat([per_example(pl_module, b) for b in controller.probe_set]).mean().item()

    losses = Losses()
    controller = AlphaController(gap_every=2, window_steps=1, loss_fn=per_example,
                                 control=ControlRules(z_min=0.5, until=0.2, k_up=1.5, max_factor=8.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(max_steps=10, callbacks=[controller, losses]).fit(make_module(alpha=0.01, lr=1e-3))
    assert [m["step"] for m in controller.moves] == [2]
    after = [losses.loss[t] for t in range(3, 10)]
    assert max(after) <= losses.loss[2] * 1.001, (losses.loss[2], after)


def test_resume_after_a_move_continues_at_the_moved_alpha(tmp_path):
    L = lightning()

    def fit(max_steps, ckpt_path=None, every=None):
        # batches of 32: an epoch is 2 steps, so the checkpoint after step 4 ends an epoch (the loader is not stateful)
        controller = AlphaController(gap_every=2, window_steps=1, loss_fn=per_example, control=TEST_RULES)
        callbacks = [controller]
        if every:
            callbacks.append(L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True,
                                                         every_n_train_steps=every))
        module = make_module(alpha=0.01, lr=1e-3, batch_size=32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_trainer(max_steps=max_steps, enable_checkpointing=bool(every), callbacks=callbacks).fit(
                module, ckpt_path=ckpt_path)
        return controller, module

    first, _ = fit(4, every=4)
    assert [m["step"] for m in first.moves] == [2]
    resumed, module = fit(8, str(tmp_path / "ckpt" / "last.ckpt"), every=100)
    straight, straight_module = fit(8)
    assert len(straight.moves) >= 1 and resumed.moves == straight.moves
    assert module.model.fc1.alpha == pytest.approx(straight_module.model.fc1.alpha)
    for p, q in zip(module.parameters(), straight_module.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)


def test_peft_models_move_their_scaling_entries():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(TinyMLP(), peft.LoraConfig(r=2, lora_alpha=0.02, target_modules=["fc1", "fc2"]))
    base_w = {n: getattr(TinyMLP(), n).weight.detach().double() for n in ("fc1", "fc2")}
    controller = AlphaController(gap_every=2, window_steps=1, loss_fn=per_example, control=TEST_RULES)
    snap_ab = {}
    L = lightning()

    class Snap(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                for n in ("fc1", "fc2"):
                    layer = pl_module.model.base_model.model.get_submodule(n)
                    snap_ab[n] = (layer.lora_A["default"].weight.detach().double().clone(),
                                  layer.lora_B["default"].weight.detach().double().clone(), layer.scaling["default"])

    module = make_module(model=model, lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(max_steps=3, callbacks=[Snap(), controller]).fit(module)
    assert len(controller.moves) == 1
    f = controller.moves[0]["factor"]
    for n in ("fc1", "fc2"):
        layer = model.base_model.model.get_submodule(n)
        A, B, s = snap_ab[n]
        assert layer.lora_alpha["default"] == pytest.approx(0.02 * f)
        assert layer.scaling["default"] == pytest.approx(s * f)
        x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(1))
        want = x.double() @ (base_w[n] + f * s * B @ A).T + layer.base_layer.bias.double()
        with torch.no_grad():
            assert torch.allclose(layer(x).double(), want, rtol=1e-6, atol=1e-7)


def test_a_nonzero_start_and_other_optimizers_are_refused():
    module = make_module(alpha=0.01)
    with torch.no_grad():
        module.model.fc1.lora_B.fill_(0.1)
    with pytest.raises(ValueError, match="start with B = 0"):
        make_trainer(max_steps=2, callbacks=[AlphaController(gap_every=1)]).fit(module)
    class Adagrad(type(make_module())):
        def configure_optimizers(self):
            return torch.optim.Adagrad([p for p in self.parameters() if p.requires_grad], lr=1e-2)

    with pytest.raises(ValueError, match="this run uses Adagrad"):
        make_trainer(max_steps=2, callbacks=[AlphaController(gap_every=1)]).fit(Adagrad())
