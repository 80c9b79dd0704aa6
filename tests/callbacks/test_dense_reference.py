"""What the monitor logs, against references built from the definitions (signal-drift.md sections 1-4).

The recorder copies the factors, their gradients and the base weight's own autograd gradient (G)
independently of the monitor; every reference below forms dW, the step, the equivalent gradient,
the projections and G as dense matrices. No signaldrift function is used to build a reference.
"""
import math

import pytest
import torch

from callbacks import SignalDriftMonitor
from tests.callbacks.helpers import make_module, make_recorder, make_trainer

RANK = 2  # make_module injects rank 2 into fc1 (16 x 8) and fc2 (4 x 16)


def _svdvals(M):
    return torch.linalg.svdvals(M.double())


def _dense(before, after, snapshot, name):
    b, a = before[name], after[name]
    A0, B0 = (t.double() for t in snapshot[name])
    A, B, gA, gB = (b[k].double() for k in ("A", "B", "gA", "gB"))
    An, Bn = a["A"].double(), a["B"].double()
    s, W0 = float(b["scale"]), b["W0"].double()
    w0 = float(torch.linalg.matrix_norm(W0))
    out = {}
    dW = s * (B @ A - B0 @ A0)  # section 1
    S = _svdvals(dW)
    out["delta_norm"] = float(torch.linalg.matrix_norm(dW))
    out["delta_rel"] = out["delta_norm"] / w0
    zero = float(S[0]) <= 1e-12 * float(torch.linalg.matrix_norm(s * B @ A) + torch.linalg.matrix_norm(s * B0 @ A0))
    if not zero:
        out["stable_rank"] = float((S**2).sum() / S[0] ** 2)
        p = S / S.sum()
        p = p[p > 0]
        out["effective_rank"] = math.exp(float(-(p * p.log()).sum()))
        U, _, Vh = torch.linalg.svd(dW)  # section 3, top-r subspaces of dW
        k = min(RANK, int((S > S[0] * 1e-10).sum()))
        Pu, Pv = U[:, :k] @ U[:, :k].T, Vh[:k].T @ Vh[:k]
        g = s * (gB @ A + B @ gA)
        g_sig = Pu @ g @ Pv
        out["grad_alignment"] = float((g_sig**2).sum() / (g**2).sum())
        out["grad_drift_ratio"] = float(torch.linalg.matrix_norm(g - g_sig) / torch.linalg.matrix_norm(g_sig))
    dA, dB = An - A, Bn - B  # section 2
    S_ = s * (dB @ A + B @ dA)
    D_ = s * dB @ dA
    out["signal_norm"] = float(torch.linalg.matrix_norm(S_))
    out["drift_norm"] = float(torch.linalg.matrix_norm(D_))
    out["drift_ratio"] = out["drift_norm"] / out["signal_norm"]
    out["step_size"] = float(torch.linalg.matrix_norm(s * (Bn @ An - B @ A))) / w0
    if b["G"] is not None:  # section 4: G from autograd on the base weight itself
        G = b["G"].double()
        gain = float((gA**2).sum() + (gB**2).sum()) / float((G**2).sum())
        out["spectral_gain"], out["spectral_suppression"] = gain, 1 / gain
    return out


def _run(nonzero_init: bool, steps: int = 4):
    module = make_module(lr=1e-2)
    if nonzero_init:  # PiSSA/OLoRA-style: B0 != 0 (the base weight would compensate; irrelevant here)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for layer in (module.model.fc1, module.model.fc2):
                layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=g))
    monitor = SignalDriftMonitor(every_n_steps=1, full_grad_every=2, histogram_every=None)
    rec = make_recorder(capture_full_grad_at=(0, 2))
    make_trainer(max_steps=steps, callbacks=[monitor, rec]).fit(module)
    return monitor, rec


@pytest.mark.parametrize("nonzero_init", [False, True], ids=["B0=0", "B0!=0"])
def test_every_logged_number_equals_its_dense_definition(nonzero_init):
    monitor, rec = _run(nonzero_init)
    for step in range(4):
        for name in ("model.fc1", "model.fc2"):
            ref = _dense(rec.before[step], rec.after[step], rec.snapshot, name)
            logged = {k.split("/")[-1]: v for k, v in monitor.history[step].tags().items() if k.startswith(f"signaldrift_layers/{name}/")}
            assert set(logged) == set(ref), (step, name, set(logged) ^ set(ref))
            for metric, value in ref.items():
                assert logged[metric] == pytest.approx(value, rel=1e-5, abs=1e-10), (step, name, metric)


def test_nonzero_init_reports_no_gradient_split_at_step_zero():
    """dW is zero before the first step: no grad_alignment, rather than a projection on noise."""
    monitor, _ = _run(nonzero_init=True, steps=2)
    h0 = monitor.history[0].tags()
    for name in ("model.fc1", "model.fc2"):
        assert h0[f"signaldrift_layers/{name}/delta_norm"] == 0.0
        assert f"signaldrift_layers/{name}/grad_alignment" not in h0
        assert f"signaldrift_layers/{name}/grad_drift_ratio" not in h0
        assert f"signaldrift_layers/{name}/grad_alignment" in monitor.history[1].tags()
    assert "signaldrift/grad_alignment" not in h0
