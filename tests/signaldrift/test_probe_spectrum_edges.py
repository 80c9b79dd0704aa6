"""refine_log_argmin against parabolas in log x whose vertex is known, on both sides of each rule
that keeps the grid point; update_spectrum names each non-finite input."""
import math

import pytest
import torch

from signaldrift.errors import NonFiniteError
from signaldrift.gap_probe import refine_log_argmin
from signaldrift.spectrum import update_spectrum


def _parabola(center, curvature=1.0):
    return lambda x: curvature * (math.log(x) - math.log(center)) ** 2


@pytest.mark.parametrize("curvature", [1.0, 0.1])
def test_vertex_of_a_log_parabola_is_found_exactly(curvature):
    f = _parabola(2.0, curvature)
    xs = [0.25, 1.0, 3.0, 16.0]  # best at x = 3 (next to the last point), vertex at x = 2
    assert refine_log_argmin(xs, [f(x) for x in xs]) == pytest.approx(2.0, rel=1e-12)
    f = _parabola(4.0, curvature)
    xs = [1.0, 3.0, 16.0, 30.0]  # best at x = 3, its left neighbour is x = 1 (log 1 = 0 is fine)
    assert refine_log_argmin(xs, [f(x) for x in xs]) == pytest.approx(4.0, rel=1e-12)


def test_grid_point_at_an_edge_or_next_to_zero():
    xs = [0.5, 1.0, 2.0, 4.0]
    assert refine_log_argmin(xs, [4.0, 3.0, 2.0, 1.0]) == 4.0  # best at the last point
    assert refine_log_argmin(xs, [1.0, 2.0, 3.0, 4.0]) == 0.5  # best at the first point
    assert refine_log_argmin([0.0, 1.0, 4.0], [1.0, 0.5, 2.0]) == 1.0  # left neighbour is x = 0
    # x = 0 two points to the left does not matter: the parabola through 1, 3, 16 is used
    f = _parabola(2.0)
    assert refine_log_argmin([0.0, 1.0, 3.0, 16.0], [10.0, f(1.0), f(3.0), f(16.0)]) == pytest.approx(2.0, rel=1e-12)


def test_non_finite_losses_never_win_and_stop_the_refinement():
    xs = [0.5, 1.0, 2.0, 4.0]
    assert 1.0 <= refine_log_argmin(xs, [math.nan, 1.0, 0.5, 2.0]) <= 4.0  # refined around x = 2
    assert refine_log_argmin(xs, [1.0, math.inf, 0.5, 2.0]) == 2.0  # a neighbour is non-finite


@pytest.mark.parametrize("name", ["A", "B", "A0", "B0"])
def test_update_spectrum_names_the_non_finite_input(name):
    g = torch.Generator().manual_seed(0)
    x = dict(A=torch.randn(2, 5, generator=g, dtype=torch.float64), B=torch.randn(4, 2, generator=g, dtype=torch.float64),
             A0=torch.randn(2, 5, generator=g, dtype=torch.float64), B0=torch.randn(4, 2, generator=g, dtype=torch.float64))
    x[name][1, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=f"^{name} holds"):
        update_spectrum(x["A"], x["B"], 1.0, 1.0, A0=x["A0"], B0=x["B0"])
