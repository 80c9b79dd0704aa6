"""Sections 1-3 for many layers at once: layers of one shape share each batched product and decomposition.

The per-layer functions (:func:`~signaldrift.update_spectrum`, :func:`~signaldrift.grad_split`,
:func:`~signaldrift.step_split`) cost little arithmetic for one layer but a model has hundreds of
LoRA layers, and each call pays conversions, validation passes and dozens of small kernels. Here
the layers of one shape ``(m, r, n)`` are stacked, and every tall product is one batched matrix
product over the group, in float64. What is left is (2r x 2r) work.

The algebra. For one layer with ``B0 = 0`` (the usual init), write ``X = [B, g_B]`` (m, 2r) and
``Y = [A; g_A]`` (2r, n) and take their Gram matrices ``X^T X`` and ``Y Y^T``, whose blocks are
``B^T B``, ``B^T g_B``, ``g_B^T g_B`` and ``A A^T``, ``A g_A^T``, ``g_A g_A^T``. With
``B^T B = T_B^T T_B`` and ``A A^T = T_A^T T_A`` (from their eigendecompositions), ``B = Q_B T_B`` and
``A^T = Q_A T_A`` for orthonormal ``Q_B`` (m, r) and ``Q_A`` (n, r) that are never formed:

* docs/metrics.md §1: ``dW = s Q_B (T_B T_A^T) Q_A^T``, so dW's singular values are those of the (r, r) core
  ``s T_B T_A^T = U_c S V_c^T``, and ``U = Q_B U_c``, ``V = Q_A V_c``;
* docs/metrics.md §3: ``g = s (g_B A + B g_A)`` splits Frobenius-orthogonally into
  ``Q_B K Q_A^T`` (``K = s (beta T_A^T + T_B alpha^T)``, ``beta = Q_B^T g_B``, ``alpha = Q_A^T g_A^T``),
  ``s (g_B - Q_B beta) A`` and ``s B (g_A - alpha^T Q_A^T)``; the latter two lie outside the task
  subspace, and ``U_k^T g V_k`` is the top-left (k, k) block of ``U_c^T K V_c``;
* docs/metrics.md §2: the per-layer step split already works on Gram matrices; here ``dB^T [dB, B]`` and
  ``dA [dA; A]^T`` are batched and ``B^T B``, ``A A^T`` are reused from the step's first half.

Gram matrices square condition numbers, so a layer takes the exact per-layer route (Householder QR,
the same functions and numbers as :func:`update_spectrum` / :func:`grad_split`) when its factors are
ill-conditioned (``lambda_min < GRAM_CONDITION_LIMIT * lambda_max`` of ``B^T B`` or ``A A^T``), when a
gradient lies almost inside the factor's span (the out-of-span part would come from a difference
of nearly equal numbers), and whenever the fit started from ``B0 != 0`` (dW is a difference of two
products: float64 QR of ``[s B, -s B0]``, docs/metrics.md §3). Elsewhere the results equal
the per-layer functions' to round-off (tested against them and against dense references).

Validation is the cheap kind: shapes are metadata, and a NaN or infinity anywhere in a layer's
factors or gradients makes its Gram matrices non-finite, so no extra pass over the factors is
needed to find it. All work stays on the factors' device; each group's numbers reach the host in
one transfer.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from signaldrift.errors import NonFiniteError, check_base_norm, check_factors, check_same_shape, check_scale
from signaldrift.grad_split import GradSplit, grad_split
from signaldrift.lowrank import LowRankSVD
from signaldrift.spectrum import UpdateSpectrum, update_spectrum
from signaldrift.step_split import StepSplit, step_split

#: A layer whose ``B^T B`` or ``A A^T`` has ``lambda_min < GRAM_CONDITION_LIMIT * lambda_max`` (factor
#: condition number above 1e3) takes the exact per-layer route: through Gram matrices its smallest
#: singular directions would carry relative errors of about ``eps * cond^2``.
GRAM_CONDITION_LIMIT = 1e-6
#: A gradient whose part outside its factor's span has less than this fraction of its squared norm
#: takes the exact route: that part is a difference of nearly equal Gram entries.
OUT_OF_SPAN_LIMIT = 1e-4
#: The same two limits for Gram products in float32 (``gram_dtype=torch.float32``: about 1e-6 relative).
FLOAT32_LIMITS = (1e-3, 1e-2)
#: The relative error allowed in a §2 norm from sums of Gram entries, per Gram dtype; a layer whose step
#: cancels beyond it takes the exact per-layer :func:`step_split`.
STEP_SPLIT_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


@dataclass(frozen=True)
class LayerState:
    """One layer's inputs at optimizer step t.

    Attributes:
        A: (r, n) and B: (m, r) current factors (any float dtype; read, never written).
        scale: the live scale ``s``; base_norm: ``||W0||_F``.
        grad_A, grad_B: their gradients (None: no gradient split for this layer).
        A0, B0: factors at fit start, or None where ``B0`` or ``A0`` is zero (the caller decides that
            once: a zero snapshot leaves ``dW = s B A``).
        grad_scale: the gradients are divided by this (an AMP loss scale still on them).
    """

    A: Tensor
    B: Tensor
    scale: float
    base_norm: float
    grad_A: Tensor | None = None
    grad_B: Tensor | None = None
    A0: Tensor | None = None
    B0: Tensor | None = None
    grad_scale: float = 1.0


@dataclass(frozen=True)
class LayerResult:
    """Sections 1 and 3 of one layer, or why there are none.

    Attributes:
        spectrum: docs/metrics.md §1 (None when an input was non-finite). Its ``svd`` holds ``S``; its ``U``
            and ``V`` are formed only when asked for (``vectors=True``), else they are None.
        grad: docs/metrics.md §3 (None while dW is numerically zero, without gradients, or non-finite).
        nonfinite: a factor, gradient or snapshot held NaN or infinity (the layer is to be skipped).
        exact: the layer took the exact per-layer route (see the module docstring).
    """

    spectrum: UpdateSpectrum | None
    grad: GradSplit | None
    nonfinite: bool
    exact: bool


@dataclass(frozen=True)
class StepResult:
    """Section 2 of one layer: ``split`` is None when the step was not taken or was non-finite."""

    split: StepSplit | None
    updated: bool
    nonfinite: bool


@dataclass
class _Group:
    """Layers of one shape, dtype and device, stacked: what the step's second half needs."""

    index: list[int]  # positions in the caller's list
    A: Tensor  # (b, r, n) copies of the factors at step t, in their own dtype
    B: Tensor  # (b, m, r)
    Gbb: Tensor  # (b, r, r) float64 B^T B
    Haa: Tensor  # (b, r, r) float64 A A^T
    scales: Tensor  # (b,) float64
    base_norms: list[float]
    dtype: torch.dtype  # of the tall products


class BatchedStep:
    """Sections 1-3 of many layers for one optimizer step, batched by shape.

    Create it with :meth:`measure` when the gradients are final (factors at step t): ``results``
    holds docs/metrics.md §1 and §3 per layer. After the optimizer step, :meth:`step_splits` with the new
    factors gives docs/metrics.md §2. In between it holds one copy of each measured layer's factors in their
    own dtype (the step's "before"), nothing else of the factors' size.

    Example::

        batch = BatchedStep.measure([LayerState(A, B, s, w0_norm, gA, gB) for ...])
        batch.results[0].spectrum.delta_norm
        optimizer.step()
        batch.step_splits([(A, B) for ...])[0].split.drift_ratio
    """

    def __init__(self, results: list[LayerResult], groups: list[_Group], n: int) -> None:
        self.results = results
        self._groups = groups
        self._n = n

    @property
    def exact_layers(self) -> int:
        """How many layers took the exact per-layer route."""
        return sum(r.exact for r in self.results)

    @classmethod
    def measure(cls, layers: Sequence[LayerState], top_k: int | None = None, vectors: bool = False,
                gram_dtype: torch.dtype = torch.float64) -> BatchedStep:
        """Sections 1 and 3 for every layer; see the module docstring for the algebra.

        Args:
            layers: one :class:`LayerState` per layer.
            top_k: subspace size for docs/metrics.md §3 (default: each layer's rank; never more than dW's
                numerical rank), as in :func:`grad_split`.
            vectors: also form each spectrum's singular vectors ``U`` (m, r) and ``V`` (n, r)
                (an extra product per layer; the gradient split does not need them).
            gram_dtype: dtype of the tall products (the (r, r) work is always float64). float64
                (default) equals the per-layer functions to round-off; float32 is about four times
                faster on a CPU and good to about 1e-6 relative (ill-conditioned layers still take the
                exact route, with wider limits: :data:`FLOAT32_LIMITS`).

        Raises:
            ValueError: shapes do not chain, a gradient or snapshot differs in shape from its factor,
                or top_k is not a positive int.
            NonFiniteError: a scale is NaN or inf (non-finite tensors are reported per layer instead).
        """
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        if gram_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"gram_dtype must be torch.float32 or torch.float64, got {gram_dtype!r}")
        keys: dict[tuple, list[int]] = {}
        for i, ly in enumerate(layers):
            m, r, n = check_factors(ly.A, ly.B)
            check_scale(ly.scale)
            check_base_norm(ly.base_norm)
            if (ly.grad_A is None) != (ly.grad_B is None):
                raise ValueError("grad_A and grad_B must both be given or both be None")
            if ly.grad_A is not None:
                check_same_shape("grad_A", ly.grad_A, "A", ly.A)
                check_same_shape("grad_B", ly.grad_B, "B", ly.B)
            if (ly.A0 is None) != (ly.B0 is None):
                raise ValueError("A0 and B0 must both be given or both be None")
            if ly.A0 is not None:
                check_same_shape("A0", ly.A0, "A", ly.A)
                check_same_shape("B0", ly.B0, "B", ly.B)
            gs = ly.grad_scale
            if isinstance(gs, bool) or not isinstance(gs, (int, float)) or not (math.isfinite(gs) and gs > 0):
                raise ValueError(f"grad_scale must be a positive finite number, got {gs!r}")
            key = (m, r, n, ly.A.dtype, ly.B.dtype, ly.A.device, ly.grad_A is not None)
            keys.setdefault(key, []).append(i)
        results: list[LayerResult | None] = [None] * len(layers)
        groups = []
        for key, index in keys.items():
            groups.append(_measure_group([layers[i] for i in index], index, key[-1], top_k, vectors, results,
                                         gram_dtype))
        return cls(results, groups, len(layers))  # type: ignore[arg-type]

    def step_splits(self, after: Sequence[tuple[Tensor, Tensor]]) -> list[StepResult]:
        """Section 2 for every layer from its factors after the step ``(A_next, B_next)``.

        The split is the per-layer :func:`step_split` of the saved factors and these, computed from
        batched Gram matrices in float64. ``updated`` is False when neither factor moved (a skipped
        step, a zero learning rate, a frozen layer); ``nonfinite`` when a new factor holds NaN or inf.

        Raises:
            ValueError: ``after`` has another length, or a factor changed shape.
        """
        if len(after) != self._n:
            raise ValueError(f"expected {self._n} (A_next, B_next) pairs, got {len(after)}")
        out: list[StepResult | None] = [None] * self._n
        for g in self._groups:
            _step_group(g, [after[i] for i in g.index], out)
        return out  # type: ignore[return-value]


def _stack_into(buf: Tensor, tensors: Sequence[Tensor]) -> None:
    for i, t in enumerate(tensors):
        buf[i].copy_(t.detach())


#: Bytes of one stacked buffer: layers are stacked a few at a time, so the buffers stay in cache and
#: are reused by the allocator instead of being fresh pages at every step.
CHUNK_BYTES = 2**21


def _chunks(b: int, per_layer_bytes: int) -> list[slice]:
    c = max(1, CHUNK_BYTES // max(per_layer_bytes, 1))
    return [slice(i, min(i + c, b)) for i in range(0, b, c)]


def _grams(tall: Sequence[Tensor], grads: Sequence[Tensor] | None, keep: Tensor, wide: bool, dt: torch.dtype) -> Tensor:
    """Gram matrices of ``[F, g]`` per layer, F = B (m, r) (``wide=False``: ``F^T F``) or A (r, n) (``F F^T``).

    Copies each factor into ``keep`` (its own dtype) on the way. Returns (b, w, w) float64 with
    w = r, or 2r with gradients.
    """
    b = len(tall)
    rows, cols = tall[0].shape
    r = cols if not wide else rows
    w = 2 * r if grads is not None else r
    out = torch.empty((b, w, w), dtype=torch.float64, device=tall[0].device)
    per_layer = rows * cols * torch.finfo(dt).bits // 8
    for sl in _chunks(b, per_layer):
        c = sl.stop - sl.start
        F = torch.empty((c, rows, cols), dtype=dt, device=keep.device)
        _stack_into(keep[sl], tall[sl])
        F.copy_(keep[sl])
        Ft = F if wide else F.mT  # (c, r, k): rows are the factor's r directions
        out[sl, :r, :r] = (Ft @ Ft.mT).to(torch.float64)
        if grads is not None:
            Gr = torch.empty_like(F)
            _stack_into(Gr, grads[sl])
            Gt = Gr if wide else Gr.mT
            cross = (Ft @ Gt.mT).to(torch.float64)
            out[sl, :r, r:] = cross
            out[sl, r:, :r] = cross.mT
            out[sl, r:, r:] = (Gt @ Gt.mT).to(torch.float64)
    return out


def _sqrt_factor(G: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``G = T^T T`` for a batch of symmetric PSD (r, r) matrices: ``T = diag(sqrt(lam)) W^T``.

    Returns ``(T, T^{-T} = diag(1/sqrt(lam)) W^T, lam ascending)``; zero or negative eigenvalues give
    zero rows in both (only used where the caller has checked the conditioning).
    """
    lam, W = torch.linalg.eigh(G)  # (b, r), (b, r, r)
    root = lam.clamp(min=0).sqrt()
    inv = torch.where(root > 0, 1.0 / root.clamp(min=torch.finfo(root.dtype).tiny), torch.zeros_like(root))
    Wt = W.mT
    return root.unsqueeze(-1) * Wt, inv.unsqueeze(-1) * Wt, lam


def _measure_group(layers: list[LayerState], index: list[int], with_grad: bool, top_k: int | None, vectors: bool,
                   results: list, dt: torch.dtype = torch.float64) -> _Group:
    b = len(layers)
    A0_, B0_ = layers[0].A, layers[0].B
    r, n = A0_.shape
    m = B0_.shape[0]
    dev, d = A0_.device, torch.float64
    # The step's "before": one copy of the factors in their own dtype (the only copy kept).
    A_keep = torch.empty((b, r, n), dtype=A0_.dtype, device=dev)
    B_keep = torch.empty((b, m, r), dtype=B0_.dtype, device=dev)
    G = _grams([ly.B for ly in layers], [ly.grad_B for ly in layers] if with_grad else None, B_keep, False, dt)
    H = _grams([ly.A for ly in layers], [ly.grad_A for ly in layers] if with_grad else None, A_keep, True, dt)
    gs = torch.tensor([float(ly.grad_scale) for ly in layers], dtype=d, device=dev)
    if with_grad:  # the gradients' blocks, divided by the loss scale still on them
        for M in (G, H):
            M[:, :r, r:] /= gs[:, None, None]
            M[:, r:, :r] /= gs[:, None, None]
            M[:, r:, r:] /= (gs * gs)[:, None, None]
    s = torch.tensor([float(ly.scale) for ly in layers], dtype=d, device=dev)
    finite = torch.isfinite(G).flatten(1).all(1) & torch.isfinite(H).flatten(1).all(1)
    G = torch.where(finite[:, None, None], G, torch.zeros_like(G))  # keep NaN out of the batched eigh/svd
    H = torch.where(finite[:, None, None], H, torch.zeros_like(H))
    Gbb, Haa = G[:, :r, :r], H[:, :r, :r]

    TB, TBinvT, lamB = _sqrt_factor(Gbb)
    TA, TAinvT, lamA = _sqrt_factor(Haa)
    core = s[:, None, None] * (TB @ TA.mT)  # (b, r, r)
    Uc, S, Vch = torch.linalg.svd(core)
    Vc = Vch.mT
    eps = torch.finfo(dt).eps
    cond_limit, span_limit = (GRAM_CONDITION_LIMIT, OUT_OF_SPAN_LIMIT) if dt == d else FLOAT32_LIMITS
    trB, trA = Gbb.diagonal(dim1=1, dim2=2).sum(-1), Haa.diagonal(dim1=1, dim2=2).sum(-1)
    size = s.abs() * (trB.clamp(min=0) * trA.clamp(min=0)).sqrt()  # ||s B||_F ||A||_F
    zero = S[:, 0] <= 16 * r * eps * size
    well = (lamB[:, 0] >= cond_limit * lamB[:, -1]) & (lamA[:, 0] >= cond_limit * lamA[:, -1])
    S = torch.where(zero[:, None], torch.zeros_like(S), S)
    # the rank threshold is that of the float64 SVD (LowRankSVD.numerical_rank): the route keeps only factors
    # conditioned to cond_limit, so the core's smallest directions are real, not the Grams' round-off
    nrank = (S > max(m, n) * torch.finfo(d).eps * S[:, :1]).sum(-1)
    kk = torch.minimum(nrank, torch.full_like(nrank, min(top_k, r) if top_k is not None else r))
    stats = [S.norm(dim=-1), S[:, 0], kk]
    if with_grad:
        beta = TBinvT @ G[:, :r, r:]  # (b, r, r) = Q_B^T g_B
        alpha = TAinvT @ H[:, :r, r:]  # (b, r, r) = Q_A^T g_A^T
        K = s[:, None, None] * (beta @ TA.mT + TB @ alpha.mT)  # g inside span(B) x span(A^T)
        NB = G[:, r:, r:] - beta.mT @ beta  # (g_B - Q_B beta)^T (g_B - Q_B beta)
        NA = H[:, r:, r:] - alpha.mT @ alpha
        trGg, trHg = G[:, r:, r:].diagonal(dim1=1, dim2=2).sum(-1), H[:, r:, r:].diagonal(dim1=1, dim2=2).sum(-1)
        trNB, trNA = NB.diagonal(dim1=1, dim2=2).sum(-1), NA.diagonal(dim1=1, dim2=2).sum(-1)
        well &= (trNB >= span_limit * trGg) & (trNA >= span_limit * trHg)
        out_B = (s * s) * (NB * Haa).sum((-2, -1)).clamp(min=0)  # ||s (g_B - Q_B beta) A||^2
        out_A = (s * s) * (NA * Gbb).sum((-2, -1)).clamp(min=0)  # ||s B (g_A - alpha^T Q_A^T)||^2
        Kc = Uc.mT @ K @ Vc  # K in dW's singular bases
        mask = torch.arange(r, device=dev)[None, :] < kk[:, None]  # (b, r): the top-k directions
        inside = (mask[:, :, None] & mask[:, None, :]).to(d)
        sig_sq = (Kc * Kc * inside).sum((-2, -1))
        core_drift_sq = (Kc * Kc * (1 - inside)).sum((-2, -1))
        stats += [sig_sq, core_drift_sq + out_B + out_A]
    S_host = S.cpu()
    host = torch.stack([t.to(d) for t in stats], 1).tolist()
    flags = torch.stack([finite, zero, well], 1).tolist()
    if vectors:  # U = Q_B U_c = B T_B^{-1} U_c, V = Q_A V_c
        U = B_keep.to(d) @ (TBinvT.mT @ Uc)
        V = A_keep.to(d).mT @ (TAinvT.mT @ Vc)
    for j, (ly, i) in enumerate(zip(layers, index)):
        ok, is_zero, is_well = flags[j]
        if not ok:
            results[i] = LayerResult(None, None, nonfinite=True, exact=False)
            continue
        exact_zero = is_zero and (float(lamB[j, -1]) == 0.0 or float(lamA[j, -1]) == 0.0 or ly.scale == 0)
        if ly.A0 is not None or not (is_well or exact_zero):
            results[i] = _exact(ly, top_k)
            continue
        delta_norm, s1, k = host[j][0], host[j][1], int(host[j][2])
        base = float(ly.base_norm)
        Sj = S_host[j]
        svd = LowRankSVD(U=U[j] if vectors else None, S=S[j], V=V[j] if vectors else None)  # type: ignore[arg-type]
        if is_zero or delta_norm == 0.0:
            spec = UpdateSpectrum(delta_norm, delta_norm / base if base > 0 else None, None, None, Sj, svd)
            results[i] = LayerResult(spec, None, nonfinite=False, exact=False)
            continue
        p = Sj / Sj.sum()
        p = p[p > 0]
        entropy = float(-(p * torch.log(p)).sum())
        spec = UpdateSpectrum(delta_norm, delta_norm / base if base > 0 else None, delta_norm**2 / s1**2,
                              math.exp(entropy), Sj, svd)
        split = None
        if with_grad and k > 0:
            sig_sq, drift_sq = host[j][3], host[j][4]
            sig, drift = sig_sq**0.5, drift_sq**0.5
            total = sig_sq + drift_sq
            split = GradSplit(grad_alignment=min(sig_sq / total, 1.0) if total > 0 else None,
                              grad_drift_ratio=drift / sig if sig > 0 else None, signal_norm=sig,
                              drift_norm=drift, grad_norm=total**0.5, k=k)
        results[i] = LayerResult(spec, split, nonfinite=False, exact=False)
    return _Group(index=index, A=A_keep, B=B_keep, Gbb=Gbb.clone(), Haa=Haa.clone(), scales=s,
                  base_norms=[float(ly.base_norm) for ly in layers], dtype=dt)


def _exact(ly: LayerState, top_k: int | None) -> LayerResult:
    """The per-layer route, on float64 copies (as the monitor has always computed it)."""
    d = torch.float64
    A, B = ly.A.detach().to(d), ly.B.detach().to(d)
    A0 = None if ly.A0 is None else ly.A0.detach().to(d)
    B0 = None if ly.B0 is None else ly.B0.detach().to(d)
    try:
        spec = update_spectrum(A, B, ly.scale, ly.base_norm, A0, B0)
        split = None
        if ly.grad_A is not None:
            gA = ly.grad_A.detach().to(d) / ly.grad_scale
            gB = ly.grad_B.detach().to(d) / ly.grad_scale
            split = grad_split(A, B, gA, gB, ly.scale, A0, B0, top_k=top_k, svd=spec.svd)
    except NonFiniteError:
        return LayerResult(None, None, nonfinite=True, exact=True)
    return LayerResult(spec, split, nonfinite=False, exact=True)


def _step_grams(after: Sequence[Tensor], keep: Tensor, wide: bool, dt: torch.dtype) -> Tensor:
    """Per layer ``[dF^T dF, dF^T F]`` (``F = B``) or ``[dF dF^T, dF F^T]`` (``F = A``): (b, r, 2r) float64."""
    b, rows, cols = keep.shape
    r = rows if wide else cols
    out = torch.empty((b, r, 2 * r), dtype=torch.float64, device=keep.device)
    for sl in _chunks(b, 2 * rows * cols * torch.finfo(torch.float64).bits // 8):
        c = sl.stop - sl.start
        Z = torch.empty((c, 2, rows, cols), dtype=torch.float64, device=keep.device)  # [F', F] -> [dF, F]
        _stack_into(Z[:, 0], after[sl])
        Z[:, 1].copy_(keep[sl])
        Z[:, 0] -= Z[:, 1]
        Z = Z.to(dt)
        D, F = (Z[:, 0], Z[:, 1]) if wide else (Z[:, 0].mT, Z[:, 1].mT)  # (c, r, k)
        out[sl, :, :r] = (D @ D.mT).to(torch.float64)
        out[sl, :, r:] = (D @ F.mT).to(torch.float64)
    return out


def _step_group(g: _Group, after: list[tuple[Tensor, Tensor]], out: list) -> None:
    b, r, n = g.A.shape
    m = g.B.shape[1]
    d = torch.float64
    for A_next, B_next in after:
        check_same_shape("A_next", A_next, "A", g.A[0])
        check_same_shape("B_next", B_next, "B", g.B[0])
    PB = _step_grams([B for _, B in after], g.B, False, g.dtype)  # (b, r, 2r): [dB^T dB, dB^T B]
    PA = _step_grams([A for A, _ in after], g.A, True, g.dtype)  # (b, r, 2r): [dA dA^T, dA A^T]
    finite = torch.isfinite(PB).flatten(1).all(1) & torch.isfinite(PA).flatten(1).all(1)
    dBdB, dBB = PB[..., :r], PB[..., r:]
    dAdA, dAA = PA[..., :r], PA[..., r:]
    moved = (dBdB.diagonal(dim1=1, dim2=2).sum(-1) + dAdA.diagonal(dim1=1, dim2=2).sum(-1)) != 0
    s2 = (g.scales * g.scales)[:, None, None]
    # As in step_split: L = s [dB, B], R_signal = [A; dA], R_update = [A'; dA], A' = A + dA.
    GL = torch.cat([torch.cat([dBdB, dBB], -1), torch.cat([dBB.mT, g.Gbb], -1)], -2) * s2  # (b, 2r, 2r)
    AdA = dAA.mT  # A dA^T
    GS = torch.cat([torch.cat([g.Haa, AdA], -1), torch.cat([AdA.mT, dAdA], -1)], -2)
    AnAn = g.Haa + AdA + AdA.mT + dAdA
    AndA = AdA + dAdA
    GU = torch.cat([torch.cat([AnAn, AndA], -1), torch.cat([AndA.mT, dAdA], -1)], -2)
    signal = (GL * GS).sum((-2, -1)).clamp(min=0)
    drift = (GL[:, :r, :r] * GS[:, r:, r:]).sum((-2, -1)).clamp(min=0)
    update = (GL * GU).sum((-2, -1)).clamp(min=0)
    # A sum of Gram entries errs by about eps * (sum_i ||L_i|| ||R_i||)^2 (column norms of the two factors);
    # where that is not small against the squared norm (a step whose parts cancel), the layer's split is the
    # exact per-layer one instead.
    cL, cS, cU = (M.diagonal(dim1=1, dim2=2).clamp(min=0) for M in (GL, GS, GU))
    loose = torch.finfo(g.dtype).eps / (2 * STEP_SPLIT_TOL[g.dtype])
    cancels = ((signal < loose * (cL * cS).sqrt().sum(-1) ** 2) | (update < loose * (cL * cU).sqrt().sum(-1) ** 2)
               | (drift < loose * (cL[:, :r] * cS[:, r:]).sqrt().sum(-1) ** 2))
    host = torch.stack([signal.sqrt(), drift.sqrt(), update.sqrt(), finite.to(d), moved.to(d), cancels.to(d)],
                       1).tolist()
    for j, i in enumerate(g.index):
        sig, dr, up, ok, mv, exact = host[j]
        if not ok:
            out[i] = StepResult(None, updated=True, nonfinite=True)
        elif not mv:
            out[i] = StepResult(None, updated=False, nonfinite=False)
        elif exact:
            out[i] = StepResult(step_split(g.A[j], g.B[j], *after[j], float(g.scales[j]), g.base_norms[j]),
                                updated=True, nonfinite=False)
        else:
            base = g.base_norms[j]
            out[i] = StepResult(StepSplit(signal_norm=sig, drift_norm=dr, drift_ratio=dr / sig if sig > 0 else None,
                                          step_size=up / base if base > 0 else None, update_norm=up),
                                updated=True, nonfinite=False)
