"""Injection: put :class:`LoRALinear` into any model in place, freeze the rest, and undo it cleanly."""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from torch import nn

from lora_alpha.layers import LoRALinear, check_dropout, wrappable
from lora_alpha.scaling import LoRAConfigError, check_rank, check_rule, resolve_alpha, scale
from signaldrift.views import is_peft_lora, lora_layers


@dataclass(frozen=True)
class InjectSummary:
    """What :func:`inject` did.

    Attributes:
        layers: names of the wrapped layers, in module order.
        rank, alpha, rule, scale: the LoRA configuration (alpha resolved, scale derived).
        trainable_modules: modules left trainable besides the LoRA factors.
        trainable_params: parameters that now receive gradients.
        total_params: all parameters of the model (base included).
    """

    layers: tuple[str, ...]
    rank: int
    alpha: float
    rule: str
    scale: float
    trainable_modules: tuple[str, ...]
    trainable_params: int
    total_params: int

    def __str__(self) -> str:
        pct = 100.0 * self.trainable_params / max(self.total_params, 1)
        return (f"LoRA r={self.rank} alpha={self.alpha:g} ({self.rule}, scale {self.scale:.4g}) on "
                f"{len(self.layers)} layers; trainable {self.trainable_params:,} of {self.total_params:,} "
                f"parameters ({pct:.2f}%)")


def name_matches(name: str, pattern: str) -> bool:
    """A pattern matches a module name exactly, as a dotted suffix, or as a full regex."""
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _as_patterns(arg: str | Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(arg, str):
        pats = (arg,)
    elif isinstance(arg, (list, tuple, set, frozenset)):
        pats = tuple(arg)
    else:
        raise LoRAConfigError(f"{what} must be a string or a list of strings, got {arg!r}")
    if not pats:
        raise LoRAConfigError(f"{what} is empty; name at least one module pattern")
    if not all(isinstance(p, str) and p for p in pats):
        raise LoRAConfigError(f"{what} must be non-empty strings, got {arg!r}")
    return pats


def _inside_lora(name: str, lora_names: set[str]) -> bool:
    return any(name.startswith(n + ".") for n in lora_names)


def linear_layer_names(model: nn.Module) -> list[str]:
    """Names of the modules :class:`LoRALinear` could wrap (for error messages): not the base layers
    inside existing LoRA layers (``...query.base_layer``), which targets never match."""
    lora_names = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    return [n for n, m in model.named_modules() if wrappable(m) and n and not _inside_lora(n, lora_names)]


def check_model(model: object, who: str) -> nn.Module:
    """``model`` if it is an ``nn.Module``, else :class:`LoRAConfigError` naming what was passed."""
    if not isinstance(model, nn.Module):
        shown = repr(model)
        shown = shown if len(shown) <= 60 else shown[:60] + "..."
        raise LoRAConfigError(f"{who}: model must be a torch nn.Module (e.g. a Hugging Face model), got a "
                              f"{type(model).__name__}: {shown}")
    return model


def _short_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def plan_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Names of the modules the patterns select, checked: every pattern matches, every match wraps.

    Raises:
        LoRAConfigError: a pattern matches nothing (the message lists the linear layers), a
            match cannot be wrapped, or a match already carries LoRA.
    """
    check_model(model, "plan_targets")
    pats = _as_patterns(targets, "targets")
    in_order = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    lora_names = set(in_order)
    chosen: list[str] = []
    has_lora = f" ({len(in_order)} layer(s) already have LoRA: {_short_list(in_order)})" if in_order else ""
    for pat in pats:
        hits = [n for n, _ in model.named_modules() if n and name_matches(n, pat) and not _inside_lora(n, lora_names)]
        if not hits:
            raise LoRAConfigError(
                f"target pattern {pat!r} matches no module; the layers LoRA can wrap are: "
                f"{_short_list(linear_layer_names(model)) or 'none'}{has_lora}"
            )
        for n in hits:
            module = model.get_submodule(n)
            if isinstance(module, LoRALinear) or n in lora_names:
                raise LoRAConfigError(f"layer {n!r} already has LoRA; injecting twice into one layer is not allowed")
            if not wrappable(module):
                raise LoRAConfigError(
                    f"target pattern {pat!r} matches {n!r}, a {type(module).__name__}; only nn.Linear and "
                    "transformers' Conv1D can be wrapped (narrow the pattern)"
                )
            if n not in chosen:
                chosen.append(n)
    return chosen


def _plan_trainable(model: nn.Module, trainable: str | Iterable[str]) -> list[str]:
    pats = _as_patterns(trainable, "trainable") if trainable else ()
    names: list[str] = []
    for pat in pats:
        hits = [n for n, _ in model.named_modules() if n and name_matches(n, pat)]
        if not hits:
            raise LoRAConfigError(f"trainable module {pat!r} matches no module of the model")
        names.extend(h for h in hits if h not in names)
    return names


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def freeze_all_but_lora(model: nn.Module, trainable_modules: Iterable[str] = ()) -> None:
    """Freeze every parameter except LoRA factors and the named modules' parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_A.requires_grad_(True)
            m.lora_B.requires_grad_(True)
    for n in trainable_modules:
        for p in model.get_submodule(n).parameters():
            p.requires_grad_(True)


def inject(
    model: nn.Module,
    targets: str | Iterable[str],
    rank: int,
    *,
    alpha: float | None = None,
    rule: str = "lora-alpha",
    dropout: float = 0.0,
    trainable: str | Iterable[str] = (),
) -> InjectSummary:
    """Wrap the matching linear layers of ``model`` with :class:`LoRALinear`, in place.

    Everything is checked before anything changes: on error the model is exactly as it was.

    Args:
        model: any ``nn.Module`` (a Hugging Face model included).
        targets: name patterns: an exact module name, a dotted suffix ("query"), or a full regex.
        rank: LoRA rank r (at most min(in, out) of every target).
        alpha: scaling factor; None takes the rule's default (``c * sqrt(r)`` for lora-alpha).
        rule: "standard", "rslora" or "lora-alpha".
        dropout: dropout on the LoRA path.
        trainable: modules to keep trainable besides the factors (e.g. "classifier").

    Returns:
        An :class:`InjectSummary`.

    Raises:
        LoRAConfigError: ``model`` is not an ``nn.Module``, or any argument is out of range (see the
            message for what is allowed).
    """
    check_model(model, "inject")
    check_rank(rank)
    check_rule(rule)
    alpha = resolve_alpha(alpha, rank, rule)
    check_dropout(dropout)
    names = plan_targets(model, targets)
    keep = _plan_trainable(model, trainable)
    wrappers = {n: LoRALinear(model.get_submodule(n), rank, alpha, rule=rule, dropout=dropout) for n in names}
    for n, w in wrappers.items():
        _set_module(model, n, w)
    freeze_all_but_lora(model, keep)
    return InjectSummary(
        layers=tuple(names), rank=rank, alpha=alpha, rule=rule, scale=scale(alpha, rank, rule),
        trainable_modules=tuple(keep),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()),
    )


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """This project's LoRA layers in ``model``, with their names."""
    for n, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield n, m


def merge_adapters(model: nn.Module) -> int:
    """Merge every :class:`LoRALinear` into its base weight (idempotent); returns how many layers."""
    layers = [m for _, m in lora_modules(model)]
    for m in layers:
        m.merge()
    return len(layers)


def unmerge_adapters(model: nn.Module) -> int:
    """Undo :func:`merge_adapters` (idempotent); returns how many layers."""
    layers = [m for _, m in lora_modules(model)]
    for m in layers:
        m.unmerge()
    return len(layers)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the base model: every LoRA layer (this project's and PEFT's) is bypassed inside the block.

    Example::

        with adapters_disabled(model):
            base_logits = model(**batch).logits
    """
    ours = [m for _, m in lora_modules(model)]
    merged = [name for name, m in lora_modules(model) if m.merged]
    if merged:  # YA17 of the fourth review: a merged update is in the base weight; switching the adapter off left it on
        raise LoRAConfigError(f"adapters_disabled cannot switch off {len(merged)} merged LoRA layer(s) (e.g. "
                              f"{merged[0]!r}): their update is in the base weights; call "
                              "lora_alpha.unmerge_adapters(model) first")
    peft = [m for m in model.modules() if is_peft_lora(m)]
    saved_ours = [m.lora_enabled for m in ours]
    saved_peft = [bool(m.disable_adapters) for m in peft]
    saved_grad = [[p.requires_grad for p in m.parameters()] for m in peft]  # PEFT toggles these too
    try:
        for m in ours:
            m.lora_enabled = False
        for m in peft:
            m.enable_adapters(False)
        yield model
    finally:
        for m, on in zip(ours, saved_ours):
            m.lora_enabled = on
        for m, off, grads in zip(peft, saved_peft, saved_grad):
            m.enable_adapters(not off)
            for p, g in zip(m.parameters(), grads):
                p.requires_grad_(g)


__all__ = ["InjectSummary", "adapters_disabled", "check_model", "freeze_all_but_lora", "inject", "linear_layer_names",
           "lora_layers", "lora_modules", "merge_adapters", "name_matches", "plan_targets", "unmerge_adapters"]
