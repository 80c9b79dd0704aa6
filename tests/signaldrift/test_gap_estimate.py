"""step_gap_estimate (docs/metrics.md section 5, estimator v2) against dense references built from the
definition: per-unit quadratics along the direction whose minima are known, the descent search, the
parabola-in-log-tau refinement, gap_gain, gap_z and the quartiles of the per-unit refined gaps, each
recomputed here with numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from signaldrift import DEFAULT_TAUS, GapEstimate, NonFiniteError, step_gap_estimate

GRID = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


# ----------------------------------------------------------------- references (independent of the library)
def ref_refine(taus, ys):
    """Spec §5 (refine of §7): i* = first argmin over finite ys; interior with three finite losses and an
    upward parabola in tau itself -> its vertex clamped to the neighbours; else tau_{i*}. The parabola is
    numpy's least-squares fit through the three points (exact for three points)."""
    ys = np.array([y if math.isfinite(y) else np.inf for y in ys], dtype=float)
    i = int(np.argmin(ys))
    if taus[i] == 1.0:  # no tau below L(1): the step fits (a flat direction reads 1)
        return 1.0
    if i == 0 or i == len(taus) - 1:
        return float(taus[i])
    y3 = ys[i - 1:i + 2]
    if not np.all(np.isfinite(y3)):
        return float(taus[i])
    x3 = np.array(taus[i - 1:i + 2], dtype=float)
    a, b, _ = np.polyfit(x3, y3, 2)
    if a <= 0:
        return float(taus[i])
    return float(np.clip(-b / (2 * a), x3[0], x3[2]))


def ref_search(mean_at, grid):
    """Spec §5's descent search on the sorted grid; returns the evaluated taus in evaluation order."""
    grid = sorted(set(grid))
    one = grid.index(1.0)
    order = [1.0, grid[one + 1]]
    best = mean_at(1.0)
    if mean_at(grid[one + 1]) < best:
        best = mean_at(grid[one + 1])
        branch = grid[one + 2:]
    else:
        branch = list(reversed(grid[:one]))
    for tau in branch:
        order.append(tau)
        if mean_at(tau) >= best:
            break
        best = mean_at(tau)
    return order


class Quadratics:
    """Units ``l_i(theta) = a_i * ||theta - theta*_i||^2 + c_i`` over a list of parameter tensors, with
    ``theta*_i = theta_1 + (m_i - 1) u + e_i`` (``e_i`` orthogonal to ``u``), so that along the line
    ``theta_1 + (tau - 1) u``: ``l_i(tau) = a_i (||u||^2 (tau - m_i)^2 + ||e_i||^2) + c_i``, minimum at m_i."""

    def __init__(self, minima, a=None, c=None, seed=0, shapes=((3, 4), (5,)), dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.params = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
        self.direction = [0.3 * torch.randn(s, generator=g, dtype=dtype) for s in shapes]
        self.theta1 = [p.clone() for p in self.params]
        n = len(minima)
        self.m = [float(v) for v in minima]
        self.a = [1.0] * n if a is None else [float(v) for v in a]
        self.c = [0.0] * n if c is None else [float(v) for v in c]
        u = torch.cat([d.reshape(-1) for d in self.direction])
        self.uu = float(u @ u)
        self.e = []
        for _ in range(n):
            r = torch.randn(u.shape, generator=g, dtype=dtype)
            r = 0.1 * (r - (r @ u) / (u @ u) * u)
            self.e.append(r)
        self.targets = []
        for i in range(n):
            flat = torch.cat([t.reshape(-1) for t in self.theta1]) + (self.m[i] - 1.0) * u + self.e[i]
            self.targets.append(flat)
        self.calls = []

    def loss_fn(self):
        flat = torch.cat([p.reshape(-1) for p in self.params])
        self.calls.append(flat.clone())
        return torch.stack([self.a[i] * ((flat - self.targets[i]) ** 2).sum() + self.c[i] for i in range(len(self.m))])

    def unit(self, i, tau):
        """The analytic loss of unit i at tau."""
        return self.a[i] * (self.uu * (tau - self.m[i]) ** 2 + float(self.e[i] @ self.e[i])) + self.c[i]

    def mean(self, tau):
        return float(np.mean([self.unit(i, tau) for i in range(len(self.m))]))

    def tau_of(self, flat):
        """The tau a parameter vector sits at on the line (checks where loss_fn was called)."""
        u = torch.cat([d.reshape(-1) for d in self.direction])
        base = torch.cat([t.reshape(-1) for t in self.theta1])
        return 1.0 + float((flat - base) @ u) / self.uu


def check_against_reference(q: Quadratics, est: GapEstimate, grid=GRID):
    order = ref_search(q.mean, grid)
    assert [q.tau_of(f) for f in q.calls] == pytest.approx(order, abs=1e-9)  # evaluation order and points
    taus = sorted(order)
    assert est.taus == pytest.approx(tuple(taus), abs=0)
    means = [q.mean(t) for t in taus]
    assert est.losses == pytest.approx(tuple(means), rel=1e-10)
    assert est.units == len(q.m)
    assert est.step_gap == pytest.approx(ref_refine(taus, means), rel=1e-9)
    i_best = int(np.argmin(means))
    assert est.gap_gain == pytest.approx((q.mean(1.0) - means[i_best]) / q.mean(1.0), rel=1e-9, abs=1e-12)
    unit_gaps = [ref_refine(taus, [q.unit(i, t) for t in taus]) for i in range(len(q.m))]
    lo, hi = np.percentile(unit_gaps, [25, 75], method="linear")
    assert (est.step_gap_lo, est.step_gap_hi) == pytest.approx((lo, hi), rel=1e-9)
    if len(q.m) >= 2:
        if taus[i_best] == 1.0:
            assert est.gap_z == 0.0
        else:
            d = np.array([q.unit(i, 1.0) - q.unit(i, taus[i_best]) for i in range(len(q.m))])
            sd = d.std(ddof=1)
            expected = d.mean() / (sd / math.sqrt(len(d)))
            assert est.gap_z == pytest.approx(expected, rel=1e-6)
    else:
        assert est.gap_z is None
    return order


# ----------------------------------------------------------------- the descent search and its numbers
@pytest.mark.parametrize("minima, expected_order", [
    # in range: L(2) < L(1), L(4) not lower -> 3 evaluations
    ([3.05, 2.5, 3.4, 2.8], [1, 2, 4]),
    # at least 64: every value falls -> the grid's end, 7 evaluations
    ([500.0, 300.0, 1000.0], [1, 2, 4, 8, 16, 32, 64]),
    # stops half-way up: minimum near 10
    ([9.0, 11.0, 10.0, 12.0, 8.5], [1, 2, 4, 8, 16]),
    # overshooting: L(2) > L(1) -> down to 0, which is lower; nothing below 0
    ([-0.5, 0.2, -1.0], [1, 2, 0]),
    # at 1: neither side is lower
    ([1.0, 1.0, 1.0], [1, 2, 0]),
])
def test_descent_search_and_numbers_match_the_dense_reference(minima, expected_order):
    q = Quadratics(minima, a=[1.0 + 0.5 * i for i in range(len(minima))], c=[0.1 * i for i in range(len(minima))])
    est = step_gap_estimate(q.loss_fn, q.params, q.direction)
    order = check_against_reference(q, est)
    assert order == [float(t) for t in expected_order]  # the reference is itself checked by hand here
    assert len(q.calls) == len(expected_order)  # no evaluation beyond the stopping rule


def test_in_range_refinement_by_hand():
    """One unit, l(tau) = (tau - 3)^2 + 1 exactly: evaluated 1, 2, 4 (L(4) = L(2) is not lower: stop); the
    best is tau = 2 (the first of the tie); the vertex of the parabola through (1, 5), (2, 2), (4, 2) written
    out with Cramer's rule: at 3, the true optimum (rules v2's parabola in ln tau read 2 sqrt 2)."""
    fn, p, u = _exact_line({t: (t - 3.0) ** 2 + 1.0 for t in GRID})
    est = step_gap_estimate(fn, [p], [u])
    assert est.taus == (1.0, 2.0, 4.0) and est.losses == (5.0, 2.0, 2.0)
    x = [1.0, 2.0, 4.0]
    A = np.array([[xi * xi, xi, 1.0] for xi in x])
    a, b, _ = np.linalg.solve(A, np.array([5.0, 2.0, 2.0]))
    vertex = min(max(-b / (2 * a), x[0]), x[2])
    assert vertex == pytest.approx(3.0, rel=1e-12)
    assert est.step_gap == pytest.approx(vertex, rel=1e-12)
    assert est.gap_gain == pytest.approx(3.0 / 5.0, rel=1e-12)
    assert est.gap_z is None and est.units == 1
    assert est.step_gap_lo == est.step_gap_hi == pytest.approx(vertex, rel=1e-12)  # one unit: its own gap


def test_exact_quadratic_optima_are_read_exactly():
    """The issue's examples: a loss quadratic in tau with its optimum at 2 or 4 reads 2 or 4 (not 1.625, 3.25)."""
    for optimum in (2.0, 4.0, 3.0, 6.0):
        fn, p, u = _exact_line({t: (t - optimum) ** 2 for t in GRID})
        assert step_gap_estimate(fn, [p], [u]).step_gap == pytest.approx(optimum, rel=1e-12)


def test_down_branch_with_values_between_0_and_1_refines_in_log_tau():
    grid = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
    q = Quadratics([0.5, 0.6, 0.45], a=[1.0, 2.0, 0.5])
    est = step_gap_estimate(q.loss_fn, q.params, q.direction, taus=grid)
    order = check_against_reference(q, est, grid)
    assert order == [1.0, 2.0, 0.5, 0.25]  # 0.25 is not lower than 0.5: stop before 0.125
    assert 0.25 < est.step_gap < 1.0 and est.step_gap != 0.5  # refined between the neighbours


def test_grid_end_gives_64_and_a_large_z():
    q = Quadratics([200.0, 150.0, 250.0, 400.0], c=[1.0, 2.0, 3.0, 4.0])
    est = step_gap_estimate(q.loss_fn, q.params, q.direction)
    assert est.taus == GRID[1:]
    assert est.step_gap == 64.0 and est.step_gap_lo == 64.0 and est.step_gap_hi == 64.0
    assert est.gap_gain > 0.3 and est.gap_z > 2


def test_a_flat_direction_is_a_step_that_fits():
    """A flat loss: L(2) = L(1) is not lower (go down), L(0) = L(1) is not lower (stop); no tau beats tau = 1,
    so step_gap is 1 (spec: a flat direction), not 0 (which would read as an overshoot), for the mean curve
    and for every unit's own curve; gain 0, z 0."""
    calls = []

    def flat():
        calls.append(1)
        return [2.0, 3.0]

    p = torch.zeros(3)
    est = step_gap_estimate(flat, [p], [torch.ones(3)])
    assert est.taus == (0.0, 1.0, 2.0) and len(calls) == 3
    assert est.step_gap == 1.0 and est.gap_gain == 0.0 and est.gap_z == 0.0
    assert est.step_gap_lo == est.step_gap_hi == 1.0
    assert est.losses == (2.5, 2.5, 2.5)


def test_a_tie_below_one_still_picks_the_smallest_tau():
    """L(0) = L(0.5) < L(1): a real improvement; the refinement's argmin takes the smallest tau on ties."""
    losses = {0.0: 1.0, 0.5: 1.0, 1.0: 2.0, 2.0: 3.0}
    p = torch.zeros(1, dtype=torch.float64)

    def fn():
        return [losses[float(p[0]) + 1.0]]

    est = step_gap_estimate(fn, [p], [torch.ones(1, dtype=torch.float64)], taus=(0, 0.5, 1, 2))
    assert est.taus == (0.0, 0.5, 1.0, 2.0) and est.step_gap == 0.0 and est.gap_gain == pytest.approx(0.5)


def test_up_branch_stops_on_an_equal_value():
    losses = {1.0: 5.0, 2.0: 3.0, 4.0: 3.0, 8.0: 1.0}  # 8 would be lower but is never reached
    p = torch.zeros(1, dtype=torch.float64)

    def fn():
        return [losses[float(p[0]) + 1.0]]

    est = step_gap_estimate(fn, [p], [torch.ones(1, dtype=torch.float64)])
    assert est.taus == (1.0, 2.0, 4.0) and est.losses == (5.0, 3.0, 3.0)
    assert est.gap_gain == pytest.approx(0.4)
    # best is 2 (the first of the tie); the parabola through (1, 5), (2, 3), (4, 3) has its vertex at 3
    assert est.step_gap == pytest.approx(3.0, rel=1e-12)


def _exact_line(values_by_tau):
    """p = tau - 1 exactly (p0 = 0, u = 1, small integer taus): per-unit losses looked up by tau."""
    p = torch.zeros(1, dtype=torch.float64)

    def fn():
        return values_by_tau[float(p[0]) + 1.0]

    return fn, p, torch.ones(1, dtype=torch.float64)


def test_gap_z_definition():
    units = {1.0: [4.0, 6.0, 5.0, 9.0], 2.0: [3.0, 2.0, 4.5, 5.0], 4.0: [3.5, 3.0, 5.0, 6.0]}
    fn, p, u = _exact_line(units)
    est = step_gap_estimate(fn, [p], [u])
    assert est.taus == (1.0, 2.0, 4.0)
    d = np.array(units[1.0]) - np.array(units[2.0])
    assert est.gap_z == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(4)), rel=1e-12)
    assert est.losses == pytest.approx((6.0, 3.625, 4.375))
    # each unit's own refined gap, then numpy's linear-interpolation quartiles
    gaps = [ref_refine([1.0, 2.0, 4.0], [units[t][i] for t in (1.0, 2.0, 4.0)]) for i in range(4)]
    assert (est.step_gap_lo, est.step_gap_hi) == pytest.approx(tuple(np.percentile(gaps, [25, 75])), rel=1e-12)
    assert est.step_gap_lo < est.step_gap_hi  # the units disagree, so the spread is not a point


def test_gap_z_is_inf_when_every_unit_improves_by_the_same_amount():
    units = {1.0: [4.0, 7.0, 5.0], 2.0: [3.0, 6.0, 4.0], 4.0: [3.5, 6.5, 4.5]}
    fn, p, u = _exact_line(units)
    est = step_gap_estimate(fn, [p], [u])
    assert est.gap_z == math.inf


def test_gap_z_is_zero_when_the_best_tau_is_one_and_none_with_one_unit():
    fn, p, u = _exact_line({1.0: [1.0, 2.0], 2.0: [3.0, 1.0], 0.0: [2.0, 2.5]})
    est = step_gap_estimate(fn, [p], [u])
    assert est.taus == (0.0, 1.0, 2.0) and est.step_gap == 1.0 and est.gap_z == 0.0 and est.gap_gain == 0.0
    fn, p, u = _exact_line({1.0: 4.0, 2.0: 3.0, 4.0: 3.5})  # a scalar: one unit
    est = step_gap_estimate(fn, [p], [u])
    assert est.units == 1 and est.gap_z is None and est.gap_gain == pytest.approx(0.25)


def test_a_non_finite_mean_stops_the_search_and_never_wins():
    # unit 0 is inf at tau 8, so the mean is inf there: not lower, the search stops; best stays at 4
    fn, p, u = _exact_line({1.0: [4.0, 6.0], 2.0: [3.0, 5.0], 4.0: [2.0, 4.5], 8.0: [math.inf, 1.0], 16.0: [0.0, 0.0]})
    est = step_gap_estimate(fn, [p], [u])
    assert est.taus == (1.0, 2.0, 4.0, 8.0) and est.losses == (5.0, 4.0, 3.25, math.inf)
    assert est.step_gap == 4.0 == ref_refine([1, 2, 4, 8], [5.0, 4.0, 3.25, math.inf])  # non-finite neighbour
    assert est.gap_z == pytest.approx(_z([4.0 - 2.0, 6.0 - 4.5]), rel=1e-12)
    # unit 1 falls on to tau 8 (1.0): its own refined gap is 8 (an edge), unit 0's is 4
    assert (est.step_gap_lo, est.step_gap_hi) == pytest.approx(tuple(np.percentile([4.0, 8.0], [25, 75])))


def _z(d):
    d = np.array(d, dtype=float)
    return d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))


def test_a_non_finite_value_above_one_sends_the_search_down():
    fn, p, u = _exact_line({1.0: [2.0, 2.0], 2.0: [math.nan, 1.0], 0.0: [1.0, 1.5]})
    est = step_gap_estimate(fn, [p], [u])
    assert est.taus == (0.0, 1.0, 2.0) and est.losses == (1.25, 2.0, math.inf)
    assert est.step_gap == 0.0 and est.gap_gain == pytest.approx(0.375)


# ----------------------------------------------------------------- reduce
def test_reduce_is_applied_to_the_mean_per_tau_and_steers_the_path():
    q = Quadratics([2.6, 2.9])
    seen = []

    def plain_reduce(values):
        seen.append(list(values))
        return values

    est = step_gap_estimate(q.loss_fn, q.params, q.direction, reduce=plain_reduce)
    assert est.taus == (1.0, 2.0, 4.0)
    assert [len(s) for s in seen] == [1, 1, 1]  # one number per tau: this process's mean
    assert [s[0] for s in seen] == pytest.approx([q.mean(1.0), q.mean(2.0), q.mean(4.0)], rel=1e-12)

    # a reduce that flips the means' sign turns descent into ascent: tau 2 is now worse than tau 1
    q2 = Quadratics([2.6, 2.9])
    est2 = step_gap_estimate(q2.loss_fn, q2.params, q2.direction, reduce=lambda v: [-v[0]])
    assert est2.taus == (0.0, 1.0, 2.0)
    assert est2.losses == pytest.approx(tuple(-q2.mean(t) for t in (0.0, 1.0, 2.0)), rel=1e-12)
    assert est2.step_gap == 0.0  # -L(0) < -L(1): the reduced means decide
    # gap_z uses the process's own units: every l_i(1) - l_i(0) is negative here
    d = [q2.unit(i, 1.0) - q2.unit(i, 0.0) for i in range(2)]
    assert all(v < 0 for v in d)
    assert est2.gap_z == pytest.approx(_z(d), rel=1e-9) and est2.gap_z < 0

    # a constant offset (the other ranks' mean) moves the decision too: here tau 2 stops winning
    q3 = Quadratics([2.6, 2.9])
    offsets = iter([0.0, 1e6, 0.0])
    est3 = step_gap_estimate(q3.loss_fn, q3.params, q3.direction, reduce=lambda v: [v[0] + next(offsets)])
    assert est3.taus == (0.0, 1.0, 2.0)


def test_reduce_returning_non_finite_counts_as_inf():
    q = Quadratics([3.0])
    est = step_gap_estimate(q.loss_fn, q.params, q.direction,
                            reduce=lambda v: [math.nan] if len(q.calls) == 2 else v)
    assert est.taus == (0.0, 1.0, 2.0) and est.losses[2] == math.inf


# ----------------------------------------------------------------- parameters restored
def test_parameters_are_restored_bit_exactly_and_moved_in_place():
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g)]  # float32: (tau-1)*u is inexact
    direction = [torch.randn(4, 3, generator=g) * 1e-3, torch.randn(7, generator=g) * 1e-3]
    saved = [p.clone() for p in params]
    saved_dir = [d.clone() for d in direction]
    ptrs = [p.data_ptr() for p in params]
    seen = []

    def fn():
        seen.append([p.clone() for p in params])
        return torch.stack([(params[0] ** 2).sum(), (params[1] - 5).pow(2).sum()])

    est = step_gap_estimate(fn, params, direction)
    for p, s, ptr in zip(params, saved, ptrs):
        assert torch.equal(p, s) and p.data_ptr() == ptr and p.dtype == torch.float32
    for d, s in zip(direction, saved_dir):
        assert torch.equal(d, s)
    # each call saw theta_1 + (tau - 1) u computed from the saved copy (in the parameter's dtype)
    for tau, got in zip([1.0] + [t for t in est.taus if t != 1.0], seen):
        for g_, s, d in zip(got, saved, direction):
            assert torch.equal(g_, s + (tau - 1.0) * d)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_parameters_are_restored_when_loss_fn_raises(fail_at):
    q = Quadratics([300.0])
    saved = [p.clone() for p in q.params]
    n = []

    def fn():
        n.append(1)
        if len(n) == fail_at:
            raise RuntimeError("boom")
        return q.loss_fn()

    with pytest.raises(RuntimeError, match="boom"):
        step_gap_estimate(fn, q.params, q.direction)
    assert all(torch.equal(p, s) for p, s in zip(q.params, saved))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_at_one_raises_and_restores(bad):
    p = torch.tensor([1.5, -2.0])
    saved = p.clone()
    with pytest.raises(NonFiniteError, match="tau=1"):
        step_gap_estimate(lambda: [1.0, bad], [p], [torch.ones(2)])
    assert torch.equal(p, saved)


def test_non_finite_reduced_loss_at_one_raises():
    p = torch.zeros(2)
    with pytest.raises(NonFiniteError):
        step_gap_estimate(lambda: [1.0, 2.0], [p], [torch.ones(2)], reduce=lambda v: [math.inf])


# ----------------------------------------------------------------- bad arguments
def test_bad_params_and_directions():
    with pytest.raises(ValueError, match="2 params but 1 directions"):
        step_gap_estimate(lambda: [1.0], [torch.zeros(2), torch.zeros(3)], [torch.zeros(2)])
    with pytest.raises(ValueError, match=r"direction\[1\] has shape \(4,\) but params\[1\] has shape \(3,\)"):
        step_gap_estimate(lambda: [1.0], [torch.zeros(2), torch.zeros(3)], [torch.zeros(2), torch.zeros(4)])


@pytest.mark.parametrize("taus", [(0, 2, 4), (0, 0.5, 1), (1,), (-1, 1, 2), (0, 1, math.inf), (0, 1, 2, math.nan)])
def test_bad_taus(taus):
    calls = []
    with pytest.raises(ValueError, match="taus must be"):
        step_gap_estimate(lambda: calls.append(1) or [1.0], [torch.zeros(1)], [torch.ones(1)], taus=taus)
    assert calls == []  # refused before any evaluation


def test_unsorted_and_duplicate_taus_are_a_sorted_grid():
    q = Quadratics([3.0])
    est = step_gap_estimate(q.loss_fn, q.params, q.direction, taus=(4, 1, 0, 2, 2, 64, 8, 32, 16))
    q2 = Quadratics([3.0])
    ref = step_gap_estimate(q2.loss_fn, q2.params, q2.direction, taus=DEFAULT_TAUS)
    assert est == ref


@pytest.mark.parametrize("counts", [[2, 3], [3, 2], [2, 2, 1]])
def test_a_changing_number_of_units_is_refused(counts):
    vals = iter(counts)
    p = torch.zeros(1, dtype=torch.float64)
    saved = p.clone()

    def fn():
        k = next(vals)
        return [10.0 - float(p[0])] * k  # keeps falling: the search goes on until the count changes

    with pytest.raises(ValueError, match="same number"):
        step_gap_estimate(fn, [p], [torch.ones(1, dtype=torch.float64)])
    assert torch.equal(p, saved)


def test_no_units_is_refused():
    with pytest.raises(ValueError, match="same number"):
        step_gap_estimate(lambda: [], [torch.zeros(1)], [torch.ones(1)])
    with pytest.raises(ValueError, match="same number"):
        step_gap_estimate(lambda: torch.zeros(0), [torch.zeros(1)], [torch.ones(1)])


def test_tensor_units_of_any_shape_and_dtype_are_flattened():
    q = Quadratics([3.0, 2.5, 3.5, 2.8])
    est_vec = step_gap_estimate(q.loss_fn, q.params, q.direction)
    q2 = Quadratics([3.0, 2.5, 3.5, 2.8])
    est_mat = step_gap_estimate(lambda: q2.loss_fn().reshape(2, 2), q2.params, q2.direction)
    assert est_mat == est_vec and est_vec.units == 4


# ----------------------------------------------------------------- quartiles and random cases
@pytest.mark.parametrize("seed", range(6))
def test_random_quadratics_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    centre = float(np.exp(rng.uniform(-1.0, 4.5)))  # around 0.4 .. 90
    minima = list(centre * np.exp(rng.normal(0, 0.4, n)))
    q = Quadratics(minima, a=list(rng.uniform(0.2, 3.0, n)), c=list(rng.uniform(0, 1, n)), seed=seed)
    est = step_gap_estimate(q.loss_fn, q.params, q.direction)
    check_against_reference(q, est)


def test_the_spread_interpolates_between_unit_gaps_even_between_0_and_1():
    """Quartiles by linear interpolation (spec §5): unit gaps 0 and 1 give 0.25 and 0.75, values no single
    step gap takes on the default grid (so 'Range: step_gap_lo, step_gap_hi in {0} U [1, 64]' does not hold)."""
    fn, p, u = _exact_line({1.0: [2.0, 1.0], 2.0: [3.0, 2.0], 0.0: [1.0, 1.5]})
    est = step_gap_estimate(fn, [p], [u])
    assert est.taus == (0.0, 1.0, 2.0) and est.step_gap == 0.0
    assert (est.step_gap_lo, est.step_gap_hi) == (0.25, 0.75)
