"""find_alpha: independent trials from the exact initial state, scored like an independent re-run."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from lora_alpha import inject, lora_layers
from lora_alpha.train.finder import AlphaFinderError, AlphaFinderWarning, find_alpha
from signaldrift.gap_probe import refine_log_argmin
from tests.conftest import TinyMLP, tiny_bert


def _data(n_batches: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 2, generator=g)
    out = []
    for _ in range(n_batches):
        x = torch.randn(16, 8, generator=g)
        out.append((x, (x @ w).argmax(-1)))
    return out


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def _model():
    m = TinyMLP()
    inject(m, ["fc1", "fc2"], rank=2, alpha=4.0, rule="standard", trainable=["head"])
    return m


def _reference_loss(alpha: float, lr: float, head_lr: float, train, held) -> float:
    """An independent re-run: a fresh model at this alpha, plain AdamW, the same batches."""
    m = TinyMLP()
    inject(m, ["fc1", "fc2"], rank=2, alpha=alpha, rule="standard", trainable=["head"])
    lora = [p for n, p in m.named_parameters() if "lora_" in n]
    head = [p for n, p in m.named_parameters() if p.requires_grad and "lora_" not in n]
    opt = torch.optim.AdamW([{"params": lora, "lr": lr}, {"params": head, "lr": head_lr}], weight_decay=0.0)
    for b in train:
        opt.zero_grad()
        _loss(m, b).backward()
        opt.step()
    with torch.no_grad():
        return sum(float(_loss(m, b)) for b in held) / len(held)


def test_trials_equal_independent_reruns_and_state_is_restored():
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = _data()
    train, held = data[:4], data[4:]
    res = find_alpha(m, (train, held), alphas=[1.0, 4.0, 16.0, 64.0], steps=4, lr=1e-2, head_lr=1e-3,
                     eval_batches=2, loss_fn=_loss, progress_bar=False)
    for a, got in zip(res.alphas, res.losses):
        assert got == pytest.approx(_reference_loss(a, 1e-2, 1e-3, train, held), rel=1e-5, abs=1e-6)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [v.alpha for v in lora_layers(m)] == [4.0, 4.0]
    assert res.train_steps == 16 and res.eval_batches == 8
    assert all(d is not None and 0.0 <= d <= 1.0 for d in res.drift_ratio)
    best = min(range(4), key=res.losses.__getitem__)
    assert res.alphas[best] / 4 <= res.suggestion <= res.alphas[best] * 4
    assert all(p.grad is None for p in m.parameters())


def test_update_alpha_sets_the_suggestion_everywhere():
    m = _model()
    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlphaFinderWarning)
        res = find_alpha(m, (data[:3], data[3:]), alphas=[1.0, 8.0, 64.0], steps=3, lr=1e-2, loss_fn=_loss,
                         update_alpha=True, progress_bar=False)
    assert [v.alpha for v in lora_layers(m)] == [pytest.approx(res.suggestion)] * 2


def test_refine_log_argmin_is_exact_on_a_parabola_and_keeps_edges():
    xs = [4.0 ** k for k in range(1, 7)]
    assert refine_log_argmin(xs, [(math.log(x) - math.log(50.0)) ** 2 for x in xs]) == pytest.approx(50.0)
    assert refine_log_argmin(xs, [float(k) for k in range(6)]) == xs[0]
    assert refine_log_argmin(xs, [1.0, 2.0, math.inf, 0.5, 3.0, 4.0]) == xs[3]  # a diverged neighbour: no parabola


def test_edge_and_divergence_warn():
    m = _model()
    data = _data()

    def exploding(model, batch):
        loss = _loss(model, batch)
        scale = lora_layers(model)[0].scale
        return loss * math.nan if model.training and scale > 10 else loss

    with pytest.warns(AlphaFinderWarning, match="edge of the grid"):
        res = find_alpha(m, (data[:3], data[3:]), alphas=[0.5, 64.0, 128.0], steps=3, lr=1e-2, loss_fn=exploding,
                         progress_bar=False)
    assert res.losses[1:] == [math.inf, math.inf] and res.at_edge and res.suggestion == 0.5
    with pytest.warns(AlphaFinderWarning, match="every trial diverged"):
        res = find_alpha(m, (data[:3], data[3:]), alphas=[32.0, 64.0, 128.0], steps=3, lr=1e-2, loss_fn=exploding,
                         progress_bar=False)
    assert res.suggestion is None and res.train_steps == 3


def test_ctrl_c_stops_restores_and_returns_what_finished():
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = _data()
    calls = {"n": 0}

    def interrupting(model, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # trial 1: 3 steps + 2 held-out batches; the 6th call is trial 2's first step
            raise KeyboardInterrupt
        return _loss(model, batch)

    with pytest.warns(AlphaFinderWarning, match="interrupted"):
        res = find_alpha(m, (data[:3], data[3:5]), alphas=[1.0, 4.0, 16.0], steps=3, lr=1e-2, loss_fn=interrupting,
                         progress_bar=False)
    assert res.interrupted and math.isfinite(res.losses[0]) and math.isnan(res.losses[1])
    assert res.suggestion == 1.0
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps must be a positive int, got 0"),
    (dict(alphas=[1.0, 2.0]), "at least 3 values"),
    (dict(alphas=[1.0, -2.0, 4.0]), "positive finite"),
    (dict(alphas=[1.0, 1.0, 4.0]), "distinct"),
    (dict(lr=float("nan")), "lr must be a positive finite number, got nan"),
    (dict(eval_batches=0), "eval_batches must be a positive int"),
    (dict(steps=50), "fewer than steps=50"),
])
def test_bad_input_is_refused_before_anything_changes(kwargs, match):
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(AlphaFinderError, match=match):
        find_alpha(m, _data(), loss_fn=_loss, progress_bar=False, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_no_lora_and_merged_are_refused():
    with pytest.raises(AlphaFinderError, match="no.*LoRA|LoRA layers"):
        find_alpha(TinyMLP(), _data(), loss_fn=_loss, progress_bar=False)
    m = _model()
    lora_layers(m)[0].module.merge()
    with pytest.raises(AlphaFinderError, match="merged"):
        find_alpha(m, _data(), loss_fn=_loss, progress_bar=False)


def test_peft_model_alpha_and_scaling_restored():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                                                             task_type="SEQ_CLS"))
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 100, (4, 6), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
               for _ in range(4)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlphaFinderWarning)
        res = find_alpha(model, (batches[:2], batches[2:]), alphas=[2.0, 8.0, 32.0], steps=2, lr=1e-3, progress_bar=False)
    assert all(math.isfinite(x) for x in res.losses)
    assert len(set(res.losses)) == 3  # alpha reached the PEFT layers' scale
    assert all(v.scale == 2.0 and v.alpha == 4.0 for v in lora_layers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plot_writes_a_png(tmp_path):
    m = _model()
    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlphaFinderWarning)
        res = find_alpha(m, (data[:2], data[2:]), alphas=[1.0, 4.0, 16.0], steps=2, lr=1e-2, loss_fn=_loss,
                         progress_bar=False)
    res.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_target_steps_scales_the_trials_best_alpha():
    m = _model()
    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlphaFinderWarning)
        short = find_alpha(m, (data[:3], data[3:]), alphas=[1.0, 8.0, 64.0], steps=3, lr=1e-2, loss_fn=_loss,
                           progress_bar=False)
        long = find_alpha(m, (data[:3], data[3:]), alphas=[1.0, 8.0, 64.0], steps=3, lr=1e-2, loss_fn=_loss,
                          progress_bar=False, target_steps=12)
    assert short.losses == long.losses and short.suggestion == short.trial_best == long.trial_best
    assert long.suggestion == pytest.approx(long.trial_best * 3 / 12) and long.target_steps == 12
    with pytest.raises(AlphaFinderError, match="target_steps must be a positive int, got 0"):
        find_alpha(m, data, loss_fn=_loss, progress_bar=False, target_steps=0)


def test_trials_use_the_modules_groups_loraplus_included(monkeypatch):
    """A trial's optimizer is the module's: B at lr * loraplus_ratio, other trainables at head_lr."""
    from lora_alpha.train import finder

    m = TinyMLP()
    inject(m, ["fc1"], rank=2, alpha=4.0, rule="standard", trainable=["fc2"])
    m.loraplus_ratio, m.weight_decay = 16.0, 0.01
    seen = []
    real = torch.optim.AdamW

    def spy(groups, **kw):
        seen.append(([(len(g["params"]), g["lr"]) for g in groups], kw.get("weight_decay")))
        return real(groups, **kw)

    monkeypatch.setattr(finder.torch.optim, "AdamW", spy)
    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlphaFinderWarning)
        find_alpha(m, (data[:3], data[3:]), alphas=[1.0, 4.0, 16.0], steps=2, lr=1e-3, head_lr=5e-3, loss_fn=_loss,
                   progress_bar=False)
    assert seen == [([(1, 1e-3), (1, 1.6e-2), (2, 5e-3)], 0.01)] * 3
