import math

import pytest

import lora_alpha
from lora_alpha import LoRAConfigError, default_alpha, scale
from signaldrift import SQRT_LAW_C


def test_rules():
    assert scale(16, 8, "standard") == 2.0
    assert scale(16, 16, "rslora") == 4.0
    assert scale(None, 16, "lora-alpha") == pytest.approx(SQRT_LAW_C * 4 / 16)
    assert scale(32, 16, "lora-alpha") == 2.0  # a user's alpha is honoured
    assert default_alpha(8, "standard") == 16 and default_alpha(8, "rslora") == 16
    assert lora_alpha.recommended_alpha(9) == pytest.approx(3 * SQRT_LAW_C)
    assert scale(None, 4, "standard") == 2.0


@pytest.mark.parametrize("args, match", [
    ((16, 0, "standard"), "rank must be a positive int, got 0"),
    ((16, 2.5, "standard"), "rank must be a positive int, got 2.5"),
    ((0, 4, "standard"), "alpha must be a positive finite number or None, got 0"),
    ((math.inf, 4, "standard"), "alpha must be"),
    ((16, 4, "lora"), "unknown scaling rule 'lora'; allowed: standard, rslora, lora-alpha"),
])
def test_bad_arguments(args, match):
    with pytest.raises(LoRAConfigError, match=match):
        scale(*args)
