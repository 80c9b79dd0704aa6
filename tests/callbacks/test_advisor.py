import warnings

import pytest
import torch

from callbacks import AlphaRegimeAdvisor, AlphaRegimeWarning, SignalDriftMonitor
from signaldrift import DEFAULT_TAUS
from tests.callbacks.helpers import lightning, make_module, make_recorder, make_trainer, read_scalars, read_tags


def _dense_losses(module, rec, step, batch):
    """Independent reference: set the factors to before + tau * (after - before) and evaluate."""
    layers = {n: m for n, m in module.named_modules() if hasattr(m, "lora_A") and hasattr(m, "merge")}
    losses = []
    module.eval()
    with torch.no_grad():
        for tau in DEFAULT_TAUS:
            for n, m in layers.items():
                b, a = rec.before[step][n], rec.after[step][n]
                m.lora_A.copy_(b["A"] + tau * (a["A"] - b["A"]))
                m.lora_B.copy_(b["B"] + tau * (a["B"] - b["B"]))
            x, y = batch
            losses.append(float(torch.nn.functional.mse_loss(module(x), y)))
    return losses


def test_probe_losses_and_gap_match_a_dense_reference(tmp_path):
    L = lightning("lightning.pytorch")
    advisor = AlphaRegimeAdvisor(gap_every=2)
    rec = make_recorder()
    module = make_module(lr=0.05)
    logger = L.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)
    make_trainer(max_steps=5, logger=logger, callbacks=[advisor, rec]).fit(module)
    assert [p["step"] for p in advisor.probes] == [2, 4]  # never at step 0
    first_batch = next(iter(module.train_dataloader()))
    for probe in advisor.probes:
        ref = _dense_losses(module, rec, probe["step"], first_batch)
        assert probe["losses"] == pytest.approx(ref, rel=1e-5)
        best = min(range(len(ref)), key=ref.__getitem__)
        assert probe["gap_gain"] == pytest.approx((ref[1] - ref[best]) / ref[1], rel=1e-4, abs=1e-7)
    scalars = read_scalars(tmp_path)
    assert set(scalars["Summary/step_gap"]) == {2, 4}
    assert scalars["Summary/step_gap"][4] == pytest.approx(advisor.probes[1]["step_gap"], rel=1e-5)
    assert "signaldrift/verdict/text_summary" in read_tags(tmp_path)["tensors"]
    assert advisor.verdict is not None and advisor.verdict.verdict in ("alpha-too-small", "in-regime", "too-aggressive")


def test_probe_does_not_change_training():
    plain = make_module(lr=0.05)
    make_trainer(max_steps=4).fit(plain)
    probed = make_module(lr=0.05)
    make_trainer(max_steps=4, callbacks=[AlphaRegimeAdvisor(gap_every=1), SignalDriftMonitor(full_grad_every=1)]).fit(probed)
    for (n, a), (_, b) in zip(plain.named_parameters(), probed.named_parameters()):
        assert torch.equal(a, b), n


def test_too_small_alpha_warns_once_with_a_suggestion():
    advisor = AlphaRegimeAdvisor(gap_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_steps=4, callbacks=[advisor]).fit(make_module(alpha=0.01, lr=1e-3))
    ours = [w for w in caught if issubclass(w.category, AlphaRegimeWarning)]
    assert len(ours) == 1
    assert advisor.verdict.verdict == "alpha-too-small"
    assert "try alpha ~" in str(ours[0].message) and advisor.verdict.suggested_alpha > 0.01
    assert "Alpha regime: alpha-too-small" in advisor.summary()


def test_zero_learning_rate_is_not_probed():
    advisor = AlphaRegimeAdvisor(gap_every=1)
    monitor = SignalDriftMonitor(full_grad_every=None)
    make_trainer(max_steps=3, callbacks=[advisor, monitor]).fit(make_module(lr=0.0))
    assert advisor.probes == [] and advisor.verdict is None
    assert monitor.engine.skipped_steps == 3 * 2  # every layer, every step: nothing moved


def test_custom_probe_batch_and_loss_fn():
    calls = []

    def loss_fn(module, batch):
        calls.append(batch[0].shape)
        return torch.nn.functional.mse_loss(module(batch[0]), batch[1])

    batch = (torch.randn(3, 8), torch.randn(3, 2))
    advisor = AlphaRegimeAdvisor(gap_every=2, probe_batch=batch, loss_fn=loss_fn, taus=(0, 1, 2))
    make_trainer(max_steps=3, callbacks=[advisor]).fit(make_module())
    assert calls and all(s == (3, 8) for s in calls) and len(calls) == 3  # one probe (step 2), three taus


@pytest.mark.parametrize("kwargs, match", [
    (dict(gap_every=0), "gap_every must be a positive int, got 0"),
    (dict(min_probes=4, window=3), r"min_probes \(4\) must not exceed window \(3\)"),
    (dict(window=-2), "window must be"),
    (dict(taus=(0, 2)), "include 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlphaRegimeAdvisor(**kwargs)


def test_state_round_trip():
    advisor = AlphaRegimeAdvisor(gap_every=1)
    make_trainer(max_steps=2, callbacks=[advisor]).fit(make_module())
    other = AlphaRegimeAdvisor(gap_every=1)
    other.load_state_dict(advisor.state_dict())
    assert other.probes == advisor.probes
    assert torch.equal(other.probe_batch[0], advisor.probe_batch[0])


def test_gap_evidence_needs_min_probes():
    advisor = AlphaRegimeAdvisor(gap_every=1, min_probes=3, window=3)
    make_trainer(max_steps=3, callbacks=[advisor]).fit(make_module(alpha=8.0 * 22, lr=1e-3))
    assert len(advisor.probes) == 2 and advisor.verdict.step_gap is None  # configuration alone so far
