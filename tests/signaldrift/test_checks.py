"""The shared input checks: what each accepts, what it refuses, and the message users see."""
import pytest
import torch

from signaldrift.errors import (
    NonFiniteError,
    check_base_norm,
    check_factors,
    check_finite,
    check_int,
    check_matrix,
    check_number,
    check_real,
    check_same_shape,
    check_scale,
)


def _msg(fn, *args, error=ValueError, **kw):
    with pytest.raises(error) as e:
        fn(*args, **kw)
    return str(e.value)


def test_check_matrix_messages():
    assert _msg(check_matrix, "A", [1.0]) == "A must be a torch.Tensor, got list"
    assert _msg(check_matrix, "A", torch.zeros(3)) == "A must be a 2-D matrix, got shape (3,)"


def test_check_factors_returns_m_r_n_and_names_the_factors():
    assert check_factors(torch.zeros(2, 5), torch.zeros(7, 2)) == (7, 2, 5)
    assert _msg(check_factors, [1.0], torch.zeros(7, 2)) == "A must be a torch.Tensor, got list"
    assert _msg(check_factors, torch.zeros(2, 5), torch.zeros(7)) == "B must be a 2-D matrix, got shape (7,)"
    assert _msg(check_factors, torch.zeros(2, 5), torch.zeros(7), prefix="x.") == "x.B must be a 2-D matrix, got shape (7,)"
    assert _msg(check_factors, torch.zeros(3, 5), torch.zeros(7, 2)) == (
        "factor shapes do not chain: B is (7, 2) and A is (3, 5); B must be (m, r) and A (r, n) with the same r")


def test_check_same_shape_message():
    assert _msg(check_same_shape, "grad_A", torch.zeros(2, 3), "A", torch.zeros(3, 2)) == (
        "grad_A has shape (2, 3) but A has shape (3, 2); they must match")


def test_check_finite_names_the_first_bad_tensor_whatever_the_dtype():
    check_finite(a=torch.ones(3), b=None)
    check_finite()
    assert _msg(check_finite, a=torch.ones(2), b=torch.tensor([1.0, float("nan")]), error=NonFiniteError) == (
        "b holds non-finite values (NaN or inf)")
    # float16 values whose float16 sum would overflow are still finite
    check_finite(h=torch.full((4,), 60000.0, dtype=torch.float16))
    assert _msg(check_finite, h=torch.tensor([1.0, float("inf")], dtype=torch.float16), error=NonFiniteError) == (
        "h holds non-finite values (NaN or inf)")


def test_check_real_accepts_numbers_and_one_element_float_tensors():
    assert check_real("x", 2) == 2.0 and check_real("x", 2.5) == 2.5
    assert check_real("x", torch.tensor(1.5)) == 1.5 and check_real("x", torch.tensor([1.5])) == 1.5
    for bad in (True, "1", None, torch.tensor([1.0, 2.0]), torch.tensor(2)):
        assert _msg(check_real, "x", bad) == f"x must be a real number, got {bad!r}"


def test_check_scale_and_base_norm_messages():
    assert check_scale(-2) == -2.0 and check_scale(torch.tensor(0.5)) == 0.5
    assert _msg(check_scale, "2") == "scale must be a real number, got '2'"
    for bad in (float("inf"), float("-inf"), float("nan")):
        assert _msg(check_scale, bad, error=NonFiniteError) == f"scale must be finite, got {bad}"
    assert check_base_norm(0) == 0.0 and check_base_norm(3) == 3.0
    assert _msg(check_base_norm, None) == "base_norm must be a real number, got None"
    assert _msg(check_base_norm, float("inf"), error=NonFiniteError) == "base_norm must be finite, got inf"
    assert _msg(check_base_norm, -1.0) == "base_norm must be >= 0, got -1.0"


def test_check_int():
    assert check_int("k", 1) == 1 and check_int("k", 0, minimum=0) == 0
    assert check_int("k", None, allow_none=True) is None
    assert _msg(check_int, "k", None) == "k must be a positive int, got None"
    assert _msg(check_int, "k", 0) == "k must be a positive int, got 0"
    assert _msg(check_int, "k", 2.5) == "k must be a positive int, got 2.5"
    assert _msg(check_int, "k", True, allow_none=True) == "k must be a positive int or None, got True"
    assert _msg(check_int, "k", 1, minimum=2) == "k must be an int >= 2, got 1"
    assert _msg(check_int, "k", -1, minimum=0) == "k must be an int >= 0, got -1"

    class Custom(ValueError):
        pass

    with pytest.raises(Custom):
        check_int("k", 0, error=Custom)


def test_check_number():
    assert check_number("x", 0.5) == 0.5 and check_number("x", 3) == 3.0
    assert check_number("x", 0, inclusive=True) == 0.0 and check_number("x", 2, minimum=2, inclusive=True) == 2.0
    assert check_number("x", None, allow_none=True) is None
    assert _msg(check_number, "x", 0) == "x must be a positive finite number, got 0"
    assert _msg(check_number, "x", "1") == "x must be a positive finite number, got '1'"
    assert _msg(check_number, "x", True, allow_none=True) == "x must be a positive finite number or None, got True"
    assert _msg(check_number, "x", -1, inclusive=True) == "x must be a finite number >= 0, got -1"
    assert _msg(check_number, "x", 1.5, minimum=2) == "x must be a finite number > 2, got 1.5"
    assert _msg(check_number, "x", 2, minimum=2) == "x must be a finite number > 2, got 2"
    assert _msg(check_number, "x", float("nan")) == "x must be a positive finite number, got nan"
    assert _msg(check_number, "x", 10**400) == f"x must be a positive finite number, got {10**400!r}"
