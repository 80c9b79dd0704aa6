"""The scaling rule, written once: every layer, merge, diagnostic and doc calls :func:`scale`."""
from __future__ import annotations

import math

from signaldrift.errors import check_int, check_number
from signaldrift.regime import SQRT_LAW_C, recommended_alpha

RULES: tuple[str, ...] = ("standard", "rslora", "lora-alpha")


class LoRAConfigError(ValueError):
    """A LoRA argument is out of range; the message names the value and what is allowed."""


def check_rank(rank: int) -> int:
    """Return ``rank`` if it is a positive int, else raise :class:`LoRAConfigError`."""
    return check_int("rank", rank, error=LoRAConfigError)


def check_rule(rule: str) -> str:
    """Return ``rule`` if it is one of :data:`RULES`, else raise :class:`LoRAConfigError`."""
    if rule not in RULES:
        raise LoRAConfigError(f"unknown scaling rule {rule!r}; allowed: {', '.join(RULES)}")
    return rule


def default_alpha(rank: int, rule: str = "lora-alpha") -> float:
    """The alpha a rule uses when the user gives none.

    ``standard``: 2r (folklore); ``rslora``: 16; ``lora-alpha``: ``c * sqrt(r)``.
    """
    check_rank(rank)
    check_rule(rule)
    if rule == "standard":
        return 2.0 * rank
    if rule == "rslora":
        return 16.0
    return recommended_alpha(rank)


def resolve_alpha(alpha: float | None, rank: int, rule: str = "lora-alpha") -> float:
    """``alpha`` checked (positive, finite), or the rule's default when None."""
    if alpha is None:
        return default_alpha(rank, rule)
    check_rank(rank)
    check_rule(rule)
    return check_number("alpha", alpha, allow_none=True, error=LoRAConfigError)


def scale(alpha: float | None, rank: int, rule: str = "lora-alpha") -> float:
    """The LoRA scale ``s`` in ``W = W0 + s B A``.

    | rule         | s                                       |
    |--------------|-----------------------------------------|
    | standard     | alpha / r                               |
    | rslora       | alpha / sqrt(r)                         |
    | lora-alpha   | alpha / r, alpha = c * sqrt(r) if None  |

    Args:
        alpha: the scaling factor; None takes the rule's default (:func:`default_alpha`).
        rank: r, a positive int.
        rule: one of :data:`RULES`.

    Raises:
        LoRAConfigError: rank, alpha or rule is out of range.
    """
    a = resolve_alpha(alpha, rank, rule)
    return a / math.sqrt(rank) if rule == "rslora" else a / rank


__all__ = ["RULES", "SQRT_LAW_C", "LoRAConfigError", "check_rank", "check_rule", "default_alpha",
           "recommended_alpha", "resolve_alpha", "scale"]
