"""Errors and input checks shared by every Signal-Drift function."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


class NonFiniteError(ValueError):
    """An input held NaN or infinity; callers skip the step instead of logging garbage."""


def check_matrix(name: str, t: Tensor) -> None:
    """Raise ``ValueError`` unless ``t`` is a 2-D tensor."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")


def check_finite(**tensors: Tensor | None) -> None:
    """Raise ``NonFiniteError`` naming the first tensor that holds NaN or inf.

    One fused check for all tensors (this runs every step for every layer); the per-tensor
    search for the culprit runs only on failure.
    """
    present = [t for t in tensors.values() if t is not None]
    if not present:
        return
    # Each tensor's sum is finite iff it holds no NaN/inf (barring float overflow, which is caught
    # by the exact per-tensor check below).
    sums = torch.stack([t.detach().sum(dtype=torch.float32) for t in present])
    if bool(torch.isfinite(sums).all()):
        return
    for name, t in tensors.items():
        if t is not None and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"{name} holds non-finite values (NaN or inf)")


def check_factors(A: Tensor, B: Tensor, prefix: str = "") -> tuple[int, int, int]:
    """Check a LoRA factor pair ``B @ A`` and return ``(m, r, n)``.

    Args:
        A: (r, n) down-projection.
        B: (m, r) up-projection.
    """
    check_matrix(f"{prefix}A", A)
    check_matrix(f"{prefix}B", B)
    if B.shape[1] != A.shape[0]:
        raise ValueError(
            f"factor shapes do not chain: {prefix}B is {tuple(B.shape)} and {prefix}A is "
            f"{tuple(A.shape)}; B must be (m, r) and A (r, n) with the same r"
        )
    return B.shape[0], A.shape[0], A.shape[1]


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise ``ValueError`` naming both shapes unless they are equal."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "they must match"
        )


def check_real(name: str, value: float) -> float:
    """``value`` as a float; ValueError unless it is a real number (not a bool, str or None)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point()):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def check_scale(scale: float) -> float:
    """Return ``scale`` as a float, or raise if it is not a finite real number."""
    s = check_real("scale", scale)
    if s != s or s in (float("inf"), float("-inf")):
        raise NonFiniteError(f"scale must be finite, got {scale}")
    return s


def check_base_norm(base_norm: float) -> float:
    """``||W0||_F`` as a float: a real number >= 0 (NaN and inf refused)."""
    b = check_real("base_norm", base_norm)
    if not math.isfinite(b):
        raise NonFiniteError(f"base_norm must be finite, got {base_norm!r}")
    if b < 0:
        raise ValueError(f"base_norm must be >= 0, got {base_norm!r}")
    return b


def check_int(name: str, value: object, *, minimum: int = 1, allow_none: bool = False,
              error: type[ValueError] = ValueError) -> int | None:
    """``value`` if it is an int >= ``minimum`` (bools refused; None with ``allow_none``), else ``error``
    naming the value and what is allowed. The one check of integer arguments in every floor."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise error(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_number(name: str, value: object, *, minimum: float = 0.0, inclusive: bool = False,
                 allow_none: bool = False, error: type[ValueError] = ValueError) -> float | None:
    """``value`` as a float if it is a finite real number above ``minimum`` (or equal, with
    ``inclusive``; bools and strings refused; None with ``allow_none``), else ``error``."""
    if value is None and allow_none:
        return None
    what = ("a positive finite number" if minimum == 0 and not inclusive else
            f"a finite number {'>=' if inclusive else '>'} {minimum:g}") + (" or None" if allow_none else "")
    if isinstance(value, (bool, str)) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be {what}, got {value!r}")
    try:
        f = float(value)
    except OverflowError:
        raise error(f"{name} must be {what}, got {value!r}") from None
    if not math.isfinite(f) or f < minimum or (f == minimum and not inclusive):
        raise error(f"{name} must be {what}, got {value!r}")
    return f


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (never lower, whatever the training dtype)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
