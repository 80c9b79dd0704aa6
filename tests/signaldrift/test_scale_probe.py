"""The scale probe (docs/metrics.md §7): the loss with every LoRA update stretched by k.

Every expected number is built here from the docs' definitions (numpy / plain Python): the curve from a dense
recomputation of the model's outputs, k* from the closed-form minimum of an exact quadratic, the z values from
a paired t statistic with the sample sd (n - 1). The code's own helpers are never used to make expectations."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from signaldrift import DEFAULT_KS, NonFiniteError, ScaleProbe, scale_probe
from signaldrift.scale_probe import check_ks, paired_z, refine_argmin


# ----------------------------------------------------------------- independent references


def ref_paired_z(first, second):
    """§7: mean(x - y) / (sd(x - y) / sqrt(n)), sample sd; +-inf when sd = 0 and the mean is not 0, 0 when both
    are 0; None when n < 2 or a difference is not finite."""
    d = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    if d.size < 2 or not np.all(np.isfinite(d)):
        return None
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / (sd / math.sqrt(d.size))


def assert_z(got, want, rel=1e-9):
    if want is None:
        assert got is None
    elif math.isinf(want) or want == 0.0:
        assert got == want
    else:
        assert got == pytest.approx(want, rel=rel)


class LinearModel:
    """A tiny linear model y = W0 x + s B A x with one scalar output per example; unit i's loss is
    (y_i - t_i)^2 + c_i, an exact quadratic in k once B is stretched by k: q_i^2 (k - m_i)^2 + c_i with
    p_i = W0 x_i, q_i = s B A x_i, m_i = (t_i - p_i) / q_i."""

    def __init__(self, m_units, *, n=12, d=5, r=3, s=2.0, seed=0, dtype=torch.float64):
        g = np.random.default_rng(seed)
        self.s = s
        self.x = g.normal(size=(n, d))
        self.W0 = g.normal(size=(1, d))
        self.A_np = g.normal(size=(r, d))
        self.B_np = g.normal(size=(1, r))
        self.p = (self.x @ self.W0.T)[:, 0]
        self.q = s * (self.x @ self.A_np.T @ self.B_np.T)[:, 0]
        self.m = np.asarray(m_units, dtype=np.float64)
        assert self.m.shape == (n,)
        self.t = self.p + self.q * self.m
        self.c = g.uniform(0.5, 1.5, size=n)
        self.A = torch.nn.Parameter(torch.tensor(self.A_np, dtype=dtype))
        self.B = torch.nn.Parameter(torch.tensor(self.B_np, dtype=dtype))
        self._x = torch.tensor(self.x, dtype=dtype)
        self._W0 = torch.tensor(self.W0, dtype=dtype)
        self._t = torch.tensor(self.t, dtype=dtype)
        self._c = torch.tensor(self.c, dtype=dtype)
        self.seen = []  # the B the model saw at each call

    def loss_fn(self):
        self.seen.append(self.B.detach().clone())
        y = (self._x @ self._W0.T + self.s * self._x @ self.A.T @ self.B.T)[:, 0]
        return (y - self._t) ** 2 + self._c

    def units_at(self, k):
        """Dense recomputation in numpy: each unit's loss with B stretched by k."""
        y = self.p + k * self.q
        return (y - self.t) ** 2 + self.c

    def k_star_closed_form(self):
        """argmin of L(k) = mean_i q_i^2 (k - m_i)^2 + c_i: sum q_i^2 m_i / sum q_i^2."""
        w = self.q ** 2
        return float((w * self.m).sum() / w.sum())


class KnownLosses:
    """A loss_fn that reads the k it is evaluated at from the stretched factor (B0 = 1, so k is exact) and returns
    per-unit losses from plain Python functions of k."""

    def __init__(self, unit_fns, b0=1.0):
        self.b = torch.nn.Parameter(torch.tensor([b0], dtype=torch.float64))
        self.b0 = b0
        self.unit_fns = unit_fns
        self.ks = []

    def __call__(self):
        k = float(self.b.detach()[0]) / self.b0
        self.ks.append(k)
        return [f(k) for f in self.unit_fns]

    def probe(self, ks=DEFAULT_KS, **kw):
        return scale_probe(self, [self.b], ks, **kw)


def quad_units(ms, a=None, c=None):
    """Units l_i(k) = a_i (k - m_i)^2 + c_i as plain functions."""
    a = a or [1.0] * len(ms)
    c = c or [0.0] * len(ms)
    return [lambda k, ai=ai, mi=mi, ci=ci: ai * (k - mi) ** 2 + ci for ai, mi, ci in zip(a, ms, c)]


def mean(xs):
    return sum(xs) / len(xs)


# ----------------------------------------------------------------- k*, k_best and the curve on a known problem


@pytest.mark.parametrize("centre", [2.7, 5.3, 0.4, 0.6, 11.0])
def test_k_star_is_the_closed_form_minimum_between_grid_points(centre):
    rng = np.random.default_rng(7)
    model = LinearModel(centre + rng.normal(scale=0.3, size=12))
    want = model.k_star_closed_form()
    grid = np.array(DEFAULT_KS)
    assert grid[0] < want < grid[-1] and not np.any(np.isclose(grid, want))
    got = scale_probe(model.loss_fn, [model.B])
    assert isinstance(got, ScaleProbe)
    assert got.k_star == pytest.approx(want, rel=1e-9)
    curve = np.array([model.units_at(k).mean() for k in grid])
    assert got.ks == tuple(DEFAULT_KS)
    np.testing.assert_allclose(got.losses, curve, rtol=1e-12)
    assert got.k_best == float(grid[np.argmin(curve)])
    assert got.units == 12


@pytest.mark.parametrize("centre", [0.8, 1.3])
def test_k_star_is_one_when_k_one_is_the_best_grid_point_even_if_the_true_minimum_is_not(centre):
    # §7: k* = 1 when no L(k) is below L(1); the parabola is not applied around k = 1
    model = LinearModel(np.full(12, centre))
    want = model.k_star_closed_form()
    assert want == pytest.approx(centre) and want != 1.0
    got = scale_probe(model.loss_fn, [model.B])
    curve = [model.units_at(k).mean() for k in DEFAULT_KS]
    assert int(np.argmin(curve)) == DEFAULT_KS.index(1.0)
    assert (got.k_star, got.k_best, got.gain_z) == (1.0, 1.0, 0.0)


def test_k_star_off_the_default_grid_and_k_best_on_it():
    model = LinearModel(np.full(12, 3.0) + np.linspace(-0.2, 0.3, 12))
    ks = (0.0, 0.5, 1.0, 1.5, 2.5, 4.5, 7.0)  # uneven spacing: the parabola must use k itself
    got = scale_probe(model.loss_fn, [model.B], ks)
    want = model.k_star_closed_form()
    assert 2.5 < want < 4.5
    assert got.k_star == pytest.approx(want, rel=1e-9)
    curve = [model.units_at(k).mean() for k in ks]
    assert got.k_best == ks[int(np.argmin(curve))]
    np.testing.assert_allclose(got.losses, curve, rtol=1e-12)


def test_z_values_against_a_numpy_paired_t():
    rng = np.random.default_rng(3)
    model = LinearModel(2.7 + rng.normal(scale=1.0, size=12))
    got = scale_probe(model.loss_fn, [model.B])
    grid = list(DEFAULT_KS)
    units = {k: model.units_at(k) for k in grid}
    curve = [units[k].mean() for k in grid]
    k_best = grid[int(np.argmin(curve))]
    assert k_best != 1.0 and got.k_best == k_best
    assert_z(got.gain_z, ref_paired_z(units[1.0], units[k_best]))
    assert_z(got.help_z, ref_paired_z(units[0.0], units[1.0]))
    assert got.help_z > 0  # the update helped
    assert len(got.zs) == len(grid)
    for k, z in zip(grid, got.zs):
        assert_z(z, ref_paired_z(units[1.0], units[k]))
    # the z at k_best is the gain_z
    assert got.zs[grid.index(k_best)] == pytest.approx(got.gain_z, rel=1e-12)


def test_exact_tie_on_the_grid_smallest_k_wins_and_the_parabola_gives_the_vertex():
    # l(k) = (k - 3)^2 + 1 exactly: L(2) == L(4); k_best is the smaller, k* the true minimum 3
    probe = KnownLosses(quad_units([3.0, 3.0, 3.0], c=[1.0, 2.0, 4.0])).probe()
    assert probe.k_best == 2.0
    assert probe.k_star == 3.0
    assert probe.losses == tuple(mean([(k - 3) ** 2 + c for c in (1.0, 2.0, 4.0)]) for k in DEFAULT_KS)


def test_ties_between_separate_grid_points_refine_around_the_smallest():
    # L(1) == L(3) exactly, the parabolas around them differ: the smallest k wins the tie (§7)
    xs, ys = (0.0, 1.0, 2.0, 3.0, 4.0), (5.0, 1.0, 3.0, 1.0, 5.0)
    coef = np.linalg.solve(np.vander(np.array(xs[:3]), 3), np.array(ys[:3]))
    assert refine_argmin(xs, ys) == pytest.approx(-coef[1] / (2 * coef[0]), rel=1e-12)  # 7/6, not 17/6
    table = dict(zip((0.0, 0.5, 1.0, 2.0, 3.0, 4.0), (9.0, 5.0, 6.0, 1.0, 3.0, 1.0)))
    probe = KnownLosses([lambda k: table[k], lambda k: table[k] + 1.0]).probe(ks=tuple(table))
    assert probe.k_best == 2.0
    three = (1.0, 2.0, 3.0)
    coef = np.linalg.solve(np.vander(np.array(three), 3), np.array([table[k] + 0.5 for k in three]))
    assert probe.k_star == pytest.approx(-coef[1] / (2 * coef[0]), rel=1e-12)


def test_vertex_stays_between_the_neighbours_midpoints():
    # with the best point lowest of the three, the vertex lies in [(k_{i-1} + k_i) / 2, (k_i + k_{i+1}) / 2]:
    # a steep wall on one side pulls it towards the other, never past the neighbour
    got = refine_argmin((0.0, 1.0, 2.0), (1e6, 0.0, 1e-9))
    assert 1.0 < got <= 1.5 and got == pytest.approx(1.5, rel=1e-6)
    got = refine_argmin((0.0, 1.0, 2.0), (1e-9, 0.0, 1e6))
    assert 0.5 <= got < 1.0 and got == pytest.approx(0.5, rel=1e-6)


def test_refine_argmin_matches_an_independent_parabola():
    rng = np.random.default_rng(11)
    xs = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    for _ in range(50):
        ys = list(rng.uniform(0, 10, size=len(xs)))
        i = int(np.argmin(ys))
        if i in (0, len(xs) - 1):
            want = xs[i]
        else:
            x3, y3 = np.array(xs[i - 1:i + 2]), np.array(ys[i - 1:i + 2])
            # Lagrange: y = sum y_j prod (x - x_l)/(x_j - x_l); solve the 3x3 system instead of reusing the code's
            coef = np.linalg.solve(np.vander(x3, 3), y3)
            want = float(np.clip(-coef[1] / (2 * coef[0]), x3[0], x3[2]))
        assert refine_argmin(xs, ys) == pytest.approx(want, rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------- §7's edge cases


def test_flat_curve_gives_k_star_one_and_gain_z_zero():
    probe = KnownLosses([lambda k: 2.0, lambda k: 3.0, lambda k: 5.0]).probe()
    assert (probe.k_star, probe.k_best, probe.gain_z) == (1.0, 1.0, 0.0)
    assert probe.help_z == 0.0  # every difference 0: z 0
    assert probe.zs == tuple([0.0] * len(DEFAULT_KS))
    assert probe.losses == tuple([10.0 / 3] * len(DEFAULT_KS))


def test_minimum_exactly_at_one_gives_one():
    probe = KnownLosses(quad_units([1.0, 1.0], a=[1.0, 2.0], c=[0.0, 1.0])).probe()
    assert (probe.k_star, probe.k_best, probe.gain_z) == (1.0, 1.0, 0.0)


def test_no_k_below_L1_but_ties_with_it_gives_one():
    # L(k) == L(1) for every k >= 1, higher below: nothing is *below* L(1), so k* = 1 (not the parabola)
    probe = KnownLosses([lambda k: 1.0 if k >= 1 else 2.0 - k, lambda k: 3.0 if k >= 1 else 4.0]).probe()
    assert (probe.k_star, probe.k_best, probe.gain_z) == (1.0, 1.0, 0.0)


@pytest.mark.parametrize("m, edge", [(100.0, 16.0), (-1.0, 0.0)])
def test_minimum_at_the_grids_edge_is_the_edge(m, edge):
    probe = KnownLosses(quad_units([m, m + 0.5, m - 0.5])).probe()
    assert probe.k_best == edge and probe.k_star == edge
    units = {k: [(k - mi) ** 2 for mi in (m, m + 0.5, m - 0.5)] for k in DEFAULT_KS}
    assert_z(probe.gain_z, ref_paired_z(units[1.0], units[edge]))
    assert_z(probe.help_z, ref_paired_z(units[0.0], units[1.0]))
    if edge == 0.0:
        assert probe.help_z < 0 and probe.help_z == pytest.approx(-probe.gain_z)


def test_non_convex_triple_gives_the_grid_point():
    # Around a strict argmin the parabola always opens upwards, except when the divided differences underflow:
    # (5e-324 - 0) / 2 rounds to 0, so the triple reads as flat (a = 0): the grid point, not a vertex.
    xs = (0.0, 2.0, 4.0, 6.0)
    assert refine_argmin(xs, (1.0, 5e-324, 0.0, 0.0)) == 4.0
    assert refine_argmin((0.0, 2.0, 4.0), (5e-324, 0.0, 0.0)) == 2.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_neighbour_gives_the_grid_point(bad):
    # the minimum is near 2.7 (the parabola would refine it) but a unit is not finite at k = 4
    fns = quad_units([2.7, 2.6, 2.9])
    fns.append(lambda k: bad if k == 4.0 else 0.5)
    probe = KnownLosses(fns).probe()
    j4 = DEFAULT_KS.index(4.0)
    assert probe.losses[j4] == math.inf  # L(k) is +inf when any unit is not finite
    assert probe.k_best == 2.0 and probe.k_star == 2.0
    assert probe.zs[j4] is None  # a non-finite difference
    # the same curve without the bad unit value refines between the points
    fns[-1] = lambda k: 0.5
    assert KnownLosses(fns).probe().k_star != 2.0


def test_non_finite_left_neighbour_gives_the_grid_point():
    # the minimum near 0.45 (between 0.25 and 0.5) but a unit is not finite at k = 0.25
    fns = quad_units([0.45, 0.4]) + [lambda k: math.inf if k == 0.25 else 0.0]
    probe = KnownLosses(fns).probe()
    assert probe.losses[DEFAULT_KS.index(0.25)] == math.inf
    assert probe.k_best == 0.5 and probe.k_star == 0.5
    fns[-1] = lambda k: 0.0
    assert KnownLosses(fns).probe().k_star == pytest.approx(_vertex_of_units(fns, (0.25, 0.5, 1.0)), rel=1e-9)


def _vertex_of_units(fns, three):
    ys = [mean([f(k) for f in fns]) for k in three]
    coef = np.linalg.solve(np.vander(np.array(three), 3), np.array(ys))
    return float(np.clip(-coef[1] / (2 * coef[0]), three[0], three[2]))


def test_one_unit_gives_no_z():
    probe = KnownLosses(quad_units([2.7])).probe()
    assert probe.units == 1
    assert probe.gain_z is None and probe.help_z is None
    assert all(z is None for k, z in zip(probe.ks, probe.zs) if k != 1.0)
    assert probe.k_star == pytest.approx(2.7, rel=1e-9)


def test_one_unit_given_as_a_scalar_or_0d_tensor():
    b = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    probe = scale_probe(lambda: float((b.detach()[0] - 3.0) ** 2), [b])
    assert probe.units == 1 and probe.k_star == pytest.approx(3.0, rel=1e-9)
    probe = scale_probe(lambda: (b.detach()[0] - 3.0) ** 2, [b])
    assert probe.units == 1 and probe.k_star == pytest.approx(3.0, rel=1e-9)


def test_zero_sd_gives_signed_infinity_or_zero():
    # l_i(k) = (k - 3)^2 + c_i with integer c_i: every paired difference is the same number exactly
    ks = (0.0, 1.0, 2.0, 5.0, 16.0)
    probe = KnownLosses(quad_units([3.0] * 4, c=[0.0, 1.0, 2.0, 7.0])).probe(ks=ks)
    # l(1) - l(2) = 4 - 1 = 3 for every unit: +inf
    assert probe.k_best == 2.0 and probe.gain_z == math.inf
    assert probe.help_z == math.inf  # l(0) - l(1) = 9 - 4 = 5
    zs = dict(zip(ks, probe.zs))
    assert zs[5.0] == 0.0  # l(1) - l(5) = 4 - 4 = 0
    assert zs[16.0] == -math.inf  # l(1) - l(16) = 4 - 169
    assert zs[1.0] == 0.0


def test_non_finite_loss_at_one_is_refused():
    for bad in (math.nan, math.inf):
        fns = quad_units([2.0, 3.0]) + [lambda k, bad=bad: bad if k == 1.0 else 0.0]
        with pytest.raises(NonFiniteError, match="k=1"):
            KnownLosses(fns).probe()


def test_changing_unit_count_is_refused_and_factors_restored():
    b = torch.nn.Parameter(torch.tensor([1.5, -2.25], dtype=torch.float32))
    before = b.detach().clone()
    calls = []

    def loss():
        calls.append(1)
        return [1.0, 2.0, 3.0] if len(calls) < 3 else [1.0, 2.0]

    with pytest.raises(ValueError, match="same number"):
        scale_probe(loss, [b])
    assert torch.equal(b.detach(), before)
    with pytest.raises(ValueError, match="same number"):
        scale_probe(lambda: [], [b])
    with pytest.raises(ValueError, match="same number"):
        scale_probe(lambda: torch.zeros(0), [b])
    assert torch.equal(b.detach(), before)


@pytest.mark.parametrize("ks", [
    (0.0, 2.0, 4.0),  # no 1
    (1.0, 2.0, 4.0),  # nothing below 1
    (0.0, 0.5, 1.0),  # nothing above 1
    (1.0,),
    (),
    (-1.0, 1.0, 2.0),  # negative
    (-0.0 - 1e-300, 1.0, 2.0),
    (0.0, 1.0, math.inf),
    (0.0, 1.0, math.nan),
    (0.0, 1.0, 2.0, -math.inf),
])
def test_bad_grids_are_refused_naming_the_values(ks):
    b = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError) as e:
        scale_probe(lambda: [1.0, 2.0], [b], ks)
    assert f"got {tuple(ks)}" in str(e.value)
    with pytest.raises(ValueError):
        check_ks(ks)


@pytest.mark.parametrize("ks", [(0.0, 1.0, "abc"), (0.0, 1.0, None), (0.0, 1.0, [2.0]), (0.0, 1.0, object())])
def test_non_number_grids_are_refused_naming_the_values(ks):
    b = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError) as e:
        scale_probe(lambda: [1.0, 2.0], [b], ks)
    assert repr(ks[-1]) in str(e.value)


def test_grid_is_sorted_and_repeats_dropped():
    probe = KnownLosses(quad_units([2.7, 2.8])).probe(ks=(4, 1, 0, 2, 1, 2.0, 0.5))
    assert probe.ks == (0.0, 0.5, 1.0, 2.0, 4.0)
    assert len(probe.losses) == len(probe.zs) == 5
    assert check_ks([16, 1, 0]) == (0.0, 1.0, 16.0)


def test_help_z_is_none_without_zero_in_the_grid():
    probe = KnownLosses(quad_units([2.7, 2.9, 3.1])).probe(ks=(0.5, 1.0, 2.0, 4.0))
    assert probe.help_z is None
    assert probe.gain_z is not None


def test_help_z_negative_when_the_update_hurt():
    # the loss is lowest without the update (m_i near 0) and the units agree
    ms = [0.1, -0.2, 0.05, 0.3]
    probe = KnownLosses(quad_units(ms)).probe()
    units0 = [(0 - m) ** 2 for m in ms]
    units1 = [(1 - m) ** 2 for m in ms]
    assert_z(probe.help_z, ref_paired_z(units0, units1))
    assert probe.help_z < 0


def test_paired_z_helper_against_the_reference():
    rng = np.random.default_rng(5)
    for n in (2, 3, 10):
        x, y = rng.normal(size=n), rng.normal(size=n)
        assert paired_z(list(x), list(y)) == pytest.approx(ref_paired_z(x, y), rel=1e-12)
    assert paired_z([1.0], [0.0]) is None
    assert paired_z([1.0, math.inf], [0.0, 0.0]) is None
    assert paired_z([2.0, 3.0], [1.0, 2.0]) == math.inf
    assert paired_z([1.0, 2.0], [2.0, 3.0]) == -math.inf
    assert paired_z([1.0, 2.0], [1.0, 2.0]) == 0.0


# ----------------------------------------------------------------- factors: stretched in place, restored


def test_factors_are_multiplied_by_k_during_each_call():
    model = LinearModel(np.full(12, 2.7))
    b0, a0 = model.B.detach().clone(), model.A.detach().clone()
    scale_probe(model.loss_fn, [model.B])
    assert len(model.seen) == len(DEFAULT_KS)
    for k, seen in zip(sorted(DEFAULT_KS), model.seen):
        assert torch.equal(seen, b0 * k)
    assert torch.equal(model.B.detach(), b0) and torch.equal(model.A.detach(), a0)


def test_every_factor_is_stretched_and_restored_bit_exactly():
    torch.manual_seed(0)
    factors = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5).to(torch.bfloat16)),
               torch.randn(2, 2, dtype=torch.float64), torch.nn.Parameter(torch.randn(3).half())]
    before = [f.detach().clone() for f in factors]
    seen = []

    def loss():
        seen.append([f.detach().clone() for f in factors])
        return [float(f.float().sum()) for f in factors]

    ks = (0.0, 0.3, 1.0, 1.7, 3.0)
    scale_probe(loss, factors, ks)
    for k, snap in zip(ks, seen):
        for got, b in zip(snap, before):
            assert got.dtype == b.dtype
            assert torch.equal(got, b * k)
    for f, b in zip(factors, before):
        assert torch.equal(f.detach(), b)
        assert f.dtype == b.dtype


@pytest.mark.parametrize("fail_at", [1, 3, 8])
def test_factors_restored_bit_exactly_when_loss_fn_raises(fail_at):
    torch.manual_seed(1)
    factors = [torch.nn.Parameter(torch.randn(6, 2)), torch.nn.Parameter(torch.randn(3).to(torch.bfloat16))]
    before = [f.detach().clone() for f in factors]
    calls = []

    def loss():
        calls.append(1)
        if len(calls) == fail_at:
            raise RuntimeError("boom")
        return [1.0, 2.0]

    with pytest.raises(RuntimeError, match="boom"):
        scale_probe(loss, factors)
    assert len(calls) == fail_at
    assert all(torch.equal(f.detach(), b) for f, b in zip(factors, before))


def test_factors_restored_after_a_non_finite_loss_at_one():
    b = torch.nn.Parameter(torch.tensor([0.7, 1.9]))
    before = b.detach().clone()
    with pytest.raises(NonFiniteError):
        scale_probe(lambda: [math.nan, 1.0], [b])
    assert torch.equal(b.detach(), before)


def test_factors_restored_after_a_bad_grid():
    b = torch.nn.Parameter(torch.tensor([0.7, 1.9]))
    before = b.detach().clone()
    with pytest.raises(ValueError):
        scale_probe(lambda: [1.0, 2.0], [b], (0.0, 2.0))
    assert torch.equal(b.detach(), before)


# ----------------------------------------------------------------- reduce: the argmin on other means, z local


def test_reduce_moves_k_star_but_z_comes_from_this_process():
    rng = np.random.default_rng(2)
    model = LinearModel(2.7 + rng.normal(scale=0.5, size=12))
    plain = scale_probe(model.loss_fn, [model.B])
    received = []
    centre = 6.0

    def reduce(means):
        received.append(list(means))
        # "the other ranks" have their minimum at 6: average with a steep quadratic there
        return [(m + 50.0 * (k - centre) ** 2) / 2 for m, k in zip(means, DEFAULT_KS)]

    got = scale_probe(model.loss_fn, [model.B], reduce=reduce)
    local = [model.units_at(k).mean() for k in DEFAULT_KS]
    assert len(received) == 1
    np.testing.assert_allclose(received[0], local, rtol=1e-12)  # the process's means, ascending k
    reduced = [(m + 50.0 * (k - centre) ** 2) / 2 for m, k in zip(local, DEFAULT_KS)]
    np.testing.assert_allclose(got.losses, reduced, rtol=1e-12)
    # k* is the reduced curve's: the sum of two quadratics, minimum in closed form
    w = model.q ** 2
    want = (w @ model.m / len(w) + 50.0 * centre) / (w.sum() / len(w) + 50.0)
    assert got.k_star == pytest.approx(want, rel=1e-9)
    assert abs(got.k_star - plain.k_star) > 1.0
    k_best = DEFAULT_KS[int(np.argmin(reduced))]
    assert got.k_best == k_best != plain.k_best
    # z values: this process's units, unchanged by reduce (gain_z at the reduced k_best)
    assert got.help_z == plain.help_z
    assert got.zs == plain.zs
    assert_z(got.gain_z, ref_paired_z(model.units_at(1.0), model.units_at(k_best)))
    assert got.gain_z == plain.zs[DEFAULT_KS.index(k_best)]


def test_reduce_that_shifts_the_means_by_a_constant_changes_nothing_but_the_losses():
    model = LinearModel(np.linspace(2.0, 3.5, 12))
    plain = scale_probe(model.loss_fn, [model.B])
    got = scale_probe(model.loss_fn, [model.B], reduce=lambda ms: [m + 100.0 for m in ms])
    assert got.k_best == plain.k_best and got.gain_z == plain.gain_z and got.help_z == plain.help_z
    assert got.k_star == pytest.approx(plain.k_star, rel=1e-9)
    np.testing.assert_allclose(got.losses, np.array(plain.losses) + 100.0, rtol=1e-12)


def test_reduce_non_finite_values_are_inf_and_L1_is_checked_after_reduce():
    model = LinearModel(np.linspace(2.0, 3.5, 12))
    j4 = DEFAULT_KS.index(4.0)
    got = scale_probe(model.loss_fn, [model.B],
                      reduce=lambda ms: [math.nan if j == j4 else m for j, m in enumerate(ms)])
    assert got.losses[j4] == math.inf
    j1 = DEFAULT_KS.index(1.0)
    with pytest.raises(NonFiniteError):
        scale_probe(model.loss_fn, [model.B], reduce=lambda ms: [math.nan if j == j1 else m for j, m in enumerate(ms)])


def test_reduce_making_every_k_worse_than_one_gives_k_star_one():
    model = LinearModel(np.linspace(2.0, 3.5, 12))
    j1 = DEFAULT_KS.index(1.0)
    got = scale_probe(model.loss_fn, [model.B], reduce=lambda ms: [0.0 if j == j1 else 1.0 for j in range(len(ms))])
    assert (got.k_star, got.k_best, got.gain_z) == (1.0, 1.0, 0.0)


def test_default_grid_is_the_documented_one():
    assert DEFAULT_KS == (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    assert Fraction(DEFAULT_KS[1]) == Fraction(1, 4)


def test_one_unit_gives_no_z_at_any_k_and_the_grid_refuses_bools_and_text():
    import torch

    from signaldrift.scale_probe import scale_probe as probe

    b = torch.ones(1, dtype=torch.float64)
    out = probe(lambda: [float((b[0] - 2.0) ** 2)], [b])
    assert out.gain_z is None and out.help_z is None and out.zs == (None,) * len(out.ks)
    for bad in ((0, True, 2), (0, 1, "2")):
        with pytest.raises(ValueError, match="ks must be numbers"):
            probe(lambda: [1.0], [b], ks=bad)
