"""LoRA layers: :class:`LoRALinear` wraps ``nn.Linear`` and Hugging Face's GPT-2 ``Conv1D``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_alpha.scaling import LoRAConfigError, check_rank, check_rule, resolve_alpha, scale


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (weight stored (in, out)), recognized without importing transformers."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def wrappable(module: nn.Module) -> bool:
    """Whether :class:`LoRALinear` can wrap this module."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def check_dropout(dropout: float) -> float:
    """``dropout`` if it is a number in [0, 1), else :class:`LoRAConfigError`."""
    if isinstance(dropout, bool) or not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise LoRAConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    return dropout


class LoRALinear(nn.Module):
    """``y = base(x) + s * dropout(x) @ A^T @ B^T`` with ``s = scale(alpha, rank, rule)``.

    The base layer is held, not copied, and stays frozen. ``lora_A`` (r, in) is initialized
    Kaiming-uniform as in PEFT and ``lora_B`` (out, r) with zeros, so the wrapped model starts
    equal to the base model. The parameter names contain ``lora_A``/``lora_B`` as in PEFT, so
    name-based grouping (LoRA+) finds them.

    Args:
        base: an ``nn.Linear`` or a GPT-2 ``Conv1D``.
        rank: r, at most min(in, out).
        alpha: the scaling factor; None takes the rule's default.
        rule: "standard", "rslora" or "lora-alpha" (see :func:`lora_alpha.scale`).
        dropout: dropout probability on the LoRA path's input.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, *, rule: str = "lora-alpha",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not wrappable(base):
            raise LoRAConfigError(
                f"cannot wrap a {type(base).__name__}; LoRALinear wraps nn.Linear and transformers' Conv1D"
            )
        self.lora_kind = "conv1d" if is_conv1d(base) else "linear"
        w = base.weight
        out_f, in_f = (w.shape[1], w.shape[0]) if self.lora_kind == "conv1d" else (w.shape[0], w.shape[1])
        check_rank(rank)
        if rank > min(in_f, out_f):
            raise LoRAConfigError(
                f"rank {rank} is larger than this layer allows: at most min(in={in_f}, out={out_f}) = {min(in_f, out_f)}"
            )
        check_rule(rule)
        self._alpha = resolve_alpha(alpha, rank, rule)
        check_dropout(dropout)
        self.rule = rule
        self.in_features, self.out_features = in_f, out_f
        self.base_layer = base
        self.lora_A = nn.Parameter(torch.empty(rank, in_f, dtype=w.dtype, device=w.device))  # (r, n)
        self.lora_B = nn.Parameter(torch.zeros(out_f, rank, dtype=w.dtype, device=w.device))  # (m, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.lora_enabled = True

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    @property
    def alpha(self) -> float:
        return self._alpha

    def set_alpha(self, alpha: float) -> None:
        """Change alpha (the scale follows). Refused while merged: the merged update used the old scale."""
        a = resolve_alpha(alpha, self.rank, self.rule)
        if self.merged:
            raise LoRAConfigError("cannot change alpha of a merged LoRALinear; unmerge it first")
        self._alpha = a

    @property
    def scaling(self) -> float:
        """The live scale, derived from (alpha, rank, rule) at every use; never stored."""
        return scale(self._alpha, self.rank, self.rule)

    def base_weight_mn(self) -> Tensor:
        """The frozen base weight as an (out, in) view (Conv1D stores it (in, out))."""
        w = self.base_layer.weight
        return w.T if self.lora_kind == "conv1d" else w

    def delta_weight(self) -> Tensor:
        """``s * B @ A``: (out, in), in the factors' dtype."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight. A second call is a no-op. Refused while the adapter is switched off
        (inside :func:`lora_alpha.adapters_disabled`): the merged update could not be switched off any more."""
        if self.merged:
            return
        if not self.lora_enabled:
            raise LoRAConfigError("cannot merge a LoRALinear whose adapter is switched off (inside adapters_disabled): "
                                  "the merged update would be on inside the block; merge after it")
        self.base_weight_mn().add_(self.delta_weight().to(self.base_layer.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from the base weight again. A no-op unless merged."""
        if not self.merged:
            return
        self.base_weight_mn().sub_(self.delta_weight().to(self.base_layer.weight.dtype))
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)  # (..., out)
        if self.merged or not self.lora_enabled:
            return y
        h = self.lora_dropout(x).to(self.lora_A.dtype)  # (..., in)
        lora = F.linear(F.linear(h, self.lora_A), self.lora_B)  # (..., out)
        return y + (lora * self.scaling).to(y.dtype)

    def extra_repr(self) -> str:
        return (f"{self.lora_kind}, in={self.in_features}, out={self.out_features}, rank={self.rank}, "
                f"alpha={self._alpha:g}, rule={self.rule!r}, scale={self.scaling:.4g}, merged={self.merged}")
