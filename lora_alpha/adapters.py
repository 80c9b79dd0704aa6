"""Adapters on disk in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``."""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lora_alpha.files import atomic_write_many
from lora_alpha.inject import _set_module, _short_list, check_model, freeze_all_but_lora, lora_modules
from lora_alpha.layers import LoRALinear, is_conv1d, wrappable
from lora_alpha.scaling import RULES, SQRT_LAW_C, LoRAConfigError, resolve_alpha

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
EXTRA_NAME = "signaldrift_adapter.json"  # our rule and c; PEFT ignores this file
PREFIX = "base_model.model."


class AdapterMismatchError(LoRAConfigError):
    """An adapter on disk does not fit the model it is loaded into."""


class AdapterFileError(AdapterMismatchError):
    """An adapter file or folder cannot be used; the message names the file and what is wrong.

    Loading: a config that is not valid JSON or not a JSON object, a field of the wrong type, an
    unknown rule, truncated or garbage weights. Saving: a path that is a file or lies under one.
    Real I/O failures stay ``OSError``.
    """


def _model_name(model: nn.Module) -> str | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "_name_or_path", None) or getattr(cfg, "name_or_path", None) or None


def _trainable_modules(model: nn.Module) -> list[str]:
    """Owners of trainable parameters that are not LoRA factors (PEFT's ``modules_to_save``)."""
    lora = {n for n, _ in lora_modules(model)}
    owners: list[str] = []
    for pname, p in model.named_parameters():
        owner = pname.rpartition(".")[0]
        if p.requires_grad and owner not in lora and owner not in owners:
            owners.append(owner)
    return owners


def _most_common(values: dict[str, float]) -> float:
    return Counter(values.values()).most_common(1)[0][0]


def _check_save_folder(directory: Path) -> None:
    """Refuse, before writing anything, a folder that is a file or lies under one."""
    for p in (directory, *directory.parents):
        if p.exists():  # False below a file (ENOTDIR), so the loop climbs to the file itself
            if not p.is_dir():
                where = "is a file" if p == directory else f"lies under {p}, which is a file"
                raise AdapterFileError(f"cannot save an adapter to {directory}: it {where}, not a folder")
            break
    for name in (WEIGHTS_NAME, CONFIG_NAME, EXTRA_NAME):
        if (directory / name).exists() and not (directory / name).is_file():
            raise AdapterFileError(f"cannot save an adapter to {directory}: {directory / name} is not a file")


def save_adapter(model: nn.Module, directory: str | os.PathLike, *, base_model_name_or_path: str | None = None,
                 task_type: str | None = None) -> Path:
    """Write the model's LoRA layers (and trainable modules) as a PEFT adapter.

    Keys are PEFT's (``base_model.model.<layer>.lora_A.weight``); the config carries r,
    lora_alpha, target_modules, use_rslora, fan_in_fan_out and modules_to_save, with
    ``rank_pattern``/``alpha_pattern`` where layers differ. Files are written atomically.

    Args:
        model: a model with :class:`LoRALinear` layers (from :func:`lora_alpha.inject`).
        directory: where to write (created if missing).
        base_model_name_or_path: recorded in the config; default ``model.config._name_or_path``.
        task_type: PEFT task type to record (e.g. "SEQ_CLS"); None loads as a plain PeftModel.

    Returns:
        The directory.

    Raises:
        LoRAConfigError: ``model`` is not an ``nn.Module``, has no LoRA layers, or its layers use
            different rules.
        AdapterFileError: ``directory`` is a file or lies under one (nothing is written).
    """
    from safetensors.torch import save

    check_model(model, "save_adapter")
    layers = dict(lora_modules(model))
    if not layers:
        raise LoRAConfigError("the model has no LoRALinear layers to save; call lora_alpha.inject first")
    rules = {m.rule for m in layers.values()}
    if len({r == "rslora" for r in rules}) > 1:
        raise LoRAConfigError(f"layers mix the rslora rule with others ({sorted(rules)}); PEFT stores one rule")
    if not str(directory):  # Path("") is the working folder: an empty string is a mistake, not a choice
        raise AdapterFileError("cannot save an adapter to '': the folder is empty; pass a folder (\".\" for the "
                               "working folder)")
    directory = Path(directory)
    _check_save_folder(directory)
    ranks = {n: m.rank for n, m in layers.items()}
    alphas = {n: m.alpha for n, m in layers.items()}
    r, alpha = int(_most_common(ranks)), _most_common(alphas)
    dropouts = {m.lora_dropout.p if isinstance(m.lora_dropout, nn.Dropout) else 0.0 for m in layers.values()}
    keep = _trainable_modules(model)
    tensors: dict[str, torch.Tensor] = {}
    for n, m in layers.items():
        tensors[f"{PREFIX}{n}.lora_A.weight"] = m.lora_A.detach().cpu().clone().contiguous()
        tensors[f"{PREFIX}{n}.lora_B.weight"] = m.lora_B.detach().cpu().clone().contiguous()
    for owner in keep:
        for pname, p in model.get_submodule(owner).named_parameters(recurse=False):
            tensors[f"{PREFIX}{owner}.{pname}"] = p.detach().cpu().clone().contiguous()
    rule = rules.pop() if len(rules) == 1 else "standard"
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path or _model_name(model),
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted(layers),
        "lora_dropout": max(dropouts),
        "fan_in_fan_out": all(m.lora_kind == "conv1d" for m in layers.values()),
        "bias": "none",
        "use_rslora": rule == "rslora",
        "use_dora": False,
        "modules_to_save": keep or None,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {n: v for n, v in ranks.items() if v != r},
        "alpha_pattern": {n: v for n, v in alphas.items() if v != alpha},
    }
    extra = {"rule": rule, "sqrt_law_c": SQRT_LAW_C, "format": "signaldrift-adapter/1"}
    atomic_write_many(directory, {
        # Serialized here and written into our file: safetensors' save_file makes its files 0600.
        WEIGHTS_NAME: lambda p: p.write_bytes(save(tensors, metadata={"format": "pt"})),
        CONFIG_NAME: lambda p: p.write_text(json.dumps(config, indent=2) + "\n"),
        EXTRA_NAME: lambda p: p.write_text(json.dumps(extra, indent=2) + "\n"),
    })
    return directory


@dataclass(frozen=True)
class _LayerPlan:
    name: str
    rank: int
    alpha: float
    A: torch.Tensor
    B: torch.Tensor


def _pattern_value(name: str, pattern: dict, default: float) -> float:
    import re

    for key, value in (pattern or {}).items():
        if name == key or re.fullmatch(rf"(.*\.)?({key})", name):
            return value
    return default


def _read_json_object(path: Path) -> dict:
    """The JSON object in ``path``; :class:`AdapterFileError` for anything else (OSError passes)."""
    raw = path.read_bytes()
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise AdapterFileError(f"{path} is not UTF-8 text (byte {e.start}); is the file corrupt?") from None
    except json.JSONDecodeError as e:
        raise AdapterFileError(f"{path} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    if not isinstance(value, dict):
        raise AdapterFileError(f"{path} holds a JSON {type(value).__name__}, not an object of fields")
    return value


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_rank(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_alpha(v: object) -> bool:
    return _is_number(v) and math.isfinite(v) and v > 0


def _is_names(v: object) -> bool:
    return v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


# Fields of adapter_config.json that loading reads, with the type each must have when present.
_CONFIG_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "peft_type": (lambda v: isinstance(v, str), "a string"),
    "r": (_is_rank, "a positive integer"),
    "lora_alpha": (_is_alpha, "a positive finite number"),
    "use_rslora": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "use_dora": (lambda v: v is None or isinstance(v, bool), "true or false"),
    "base_model_name_or_path": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "target_modules": (_is_names, "a string, a list of strings or null"),
    "modules_to_save": (_is_names, "a list of strings or null"),
}


def _check_config(path: Path, config: dict) -> None:
    """Refuse a config whose fields have the wrong type, naming the file, the field and its value."""
    for field, (ok, allowed) in _CONFIG_FIELDS.items():
        if field in config and not ok(config[field]):
            raise AdapterFileError(f"{path}: {field!r} must be {allowed}, got {config[field]!r}")
    for field, ok, allowed in (("rank_pattern", _is_rank, "positive integers"),
                               ("alpha_pattern", _is_alpha, "positive finite numbers")):
        pattern = config.get(field)
        if pattern is None:
            continue
        if not isinstance(pattern, dict):
            raise AdapterFileError(f"{path}: {field!r} must be an object of layer -> value, got {pattern!r}")
        bad = {k: v for k, v in pattern.items() if not ok(v)}
        if bad:
            raise AdapterFileError(f"{path}: {field!r} values must be {allowed}, got {bad!r}")


def _read_rule(path: Path, config: dict) -> str:
    """The scaling rule: ours from ``signaldrift_adapter.json`` if present, else PEFT's flag."""
    if path.is_file():
        extra = _read_json_object(path)
        if "rule" in extra:
            if extra["rule"] not in RULES:
                raise AdapterFileError(f"{path}: 'rule' must be one of {', '.join(RULES)}, got {extra['rule']!r}")
            return extra["rule"]
    return "rslora" if config.get("use_rslora") else "standard"


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors in a safetensors file; :class:`AdapterFileError` when it is truncated or garbage."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        size = path.stat().st_size
        raise AdapterFileError(f"{path} is not a readable safetensors file ({size} bytes; {e}); "
                               "is it truncated or corrupt?") from None


def _lora_names_differ(directory: Path, only_adapter: list[str], only_model: list[str]) -> str:
    parts = []
    if only_adapter:
        parts.append(f"the adapter has {len(only_adapter)} layer(s) the model's LoRA lacks: "
                     f"{_short_list(only_adapter, 5)}")
    if only_model:
        parts.append(f"the model has {len(only_model)} LoRA layer(s) the adapter lacks: {_short_list(only_model, 5)}")
    return (f"adapter {directory} is for other layers than the model's LoRA: {'; '.join(parts)}. Pass "
            "strict=False to load it anyway (the adapter's other layers are wrapped; the model's others "
            "keep their factors, alpha and rule)")


def load_adapter(model: nn.Module, directory: str | os.PathLike, *, check_base_model: bool = True,
                 strict: bool = True) -> list[str]:
    """Load an adapter saved by :func:`save_adapter` or by PEFT's ``save_pretrained``.

    Layers without LoRA are wrapped (rank from the factors, alpha and rule from the adapter).
    Layers that already carry LoRA must match its shapes; they take the adapter's factors, alpha
    and rule, so the scale (derived from the three) is the adapter's. Everything is checked
    before anything changes.

    Args:
        model: the base model (or the same model with LoRA already injected).
        directory: the adapter folder.
        check_base_model: refuse an adapter whose recorded base model differs from the model's.
        strict: when the model already has LoRA layers, refuse an adapter for other layers (the
            adapter has layers the model's LoRA lacks, or the other way round). With
            ``strict=False`` the adapter's other layers are wrapped and the model's other LoRA
            layers are left as they are.

    Returns:
        The names of the layers that received LoRA factors.

    Raises:
        AdapterFileError: a file is unreadable: not JSON, not a JSON object, a field of the wrong
            type, an unknown rule, truncated or garbage weights, factors with NaN or infinite values,
            factors of another rank than the config's ``r`` (or ``rank_pattern``) for their layer (the
            message names the file).
        AdapterMismatchError: missing files, a non-LoRA adapter, a layer the model lacks, layers
            that differ from the model's LoRA layers (``strict``), shapes that differ, a merged
            layer, or a different base model.
        LoRAConfigError: ``model`` is not an ``nn.Module``.
        OSError: a file could not be read.
    """
    check_model(model, "load_adapter")
    adapter = _read_adapter(Path(directory), model, check_base_model)
    plans = _plan(model, adapter, strict)
    _apply(model, plans, adapter)
    return [p.name for p in plans]


@dataclass(frozen=True)
class _Adapter:
    """An adapter folder, read and checked: its rule, per-layer factors and other tensors."""

    directory: Path
    config: dict
    rule: str
    factors: dict[str, dict[str, torch.Tensor]]
    others: dict[str, torch.Tensor]


def _read_adapter(directory: Path, model: nn.Module, check_base_model: bool) -> _Adapter:
    """Read: the files exist and parse, the adapter is plain LoRA for this base model."""
    if directory.is_file():  # YA12 of the fourth review: the weights file itself was given
        raise AdapterMismatchError(f"{directory} is a file; load_adapter takes the adapter's folder (the one holding "
                                   f"{CONFIG_NAME} and {WEIGHTS_NAME}), e.g. {directory.parent}")
    for fname in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / fname).is_file():
            raise AdapterMismatchError(f"{directory / fname} does not exist; an adapter folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    config_path = directory / CONFIG_NAME
    config = _read_json_object(config_path)
    _check_config(config_path, config)
    if config.get("peft_type") != "LORA":
        raise AdapterMismatchError(f"adapter in {directory} is of type {config.get('peft_type')!r}; only LORA is supported")
    if config.get("use_dora"):
        raise AdapterMismatchError("DoRA adapters are not supported by LoRALinear; load them with PEFT")
    recorded, actual = config.get("base_model_name_or_path"), _model_name(model)
    if check_base_model and recorded and actual and Path(str(recorded)).name != Path(str(actual)).name:
        raise AdapterMismatchError(
            f"adapter was trained on base model {recorded!r} but the model is {actual!r} "
            "(pass check_base_model=False to load anyway)"
        )
    rule = _read_rule(directory / EXTRA_NAME, config)
    weights_path = directory / WEIGHTS_NAME
    factors: dict[str, dict[str, torch.Tensor]] = {}
    others: dict[str, torch.Tensor] = {}
    for key, value in _read_weights(weights_path).items():
        k = key[len(PREFIX):] if key.startswith(PREFIX) else key
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if k.endswith(suffix):
                if value.ndim != 2 or not value.is_floating_point():
                    raise AdapterFileError(f"{weights_path}: {key!r} is a {value.ndim}-d {value.dtype} tensor; "
                                           "LoRA factors are 2-d floating point")
                bad = int((~torch.isfinite(value)).sum())
                if bad:
                    raise AdapterFileError(f"{weights_path}: {key!r} holds {bad} NaN or infinite value(s) of "
                                           f"{value.numel()}; LoRA factors must be finite (a diverged or damaged adapter)")
                layer = k[: -len(suffix)]
                _check_rank(weights_path, key, value.shape[0] if part == "lora_A" else value.shape[1],
                            config_path, config, layer)
                factors.setdefault(layer, {})[part] = value
                break
        else:
            if "lora_embedding" in k or "lora_magnitude" in k:
                raise AdapterMismatchError(f"adapter key {key!r} is an embedding/DoRA factor; LoRALinear cannot hold it")
            others[k] = value
    if not factors:
        raise AdapterFileError(f"{weights_path} holds no LoRA factors (no '.lora_A.weight'/'.lora_B.weight' keys)")
    return _Adapter(directory, config, rule, factors, others)


def _check_rank(weights_path: Path, key: str, rank: int, config_path: Path, config: dict, layer: str) -> None:
    """Refuse a factor whose rank is not the config's ``r`` (or ``rank_pattern``) for its layer: loaded, its
    scale would be alpha over the wrong rank (PEFT refuses such an adapter too)."""
    pattern = config.get("rank_pattern") or {}
    want = _pattern_value(layer, pattern, config.get("r"))
    if want is None or want == rank:
        return
    source = "rank_pattern" if _pattern_value(layer, pattern, None) is not None else "r"
    raise AdapterFileError(f"{weights_path}: {key!r} has rank {rank}, but {config_path} gives {source} = {want} for "
                           f"layer {layer!r}; the factors and the config disagree (the scale would be alpha over the "
                           "wrong rank): is the config from another adapter?")


def _plan(model: nn.Module, adapter: _Adapter, strict: bool) -> list[_LayerPlan]:
    """Plan: every layer and tensor of the adapter fits the model (nothing changes yet)."""
    modules = dict(model.named_modules())
    has_lora = sorted(n for n, m in modules.items() if isinstance(m, LoRALinear))
    if has_lora and strict:
        only_adapter = sorted(set(adapter.factors) - set(has_lora))
        only_model = sorted(set(has_lora) - set(adapter.factors))
        if only_adapter or only_model:
            raise AdapterMismatchError(_lora_names_differ(adapter.directory, only_adapter, only_model))
    plans: list[_LayerPlan] = []
    for name, pair in adapter.factors.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterMismatchError(f"adapter has only {sorted(pair)} for layer {name!r}")
        module = modules.get(name)
        if module is None:
            raise AdapterMismatchError(f"adapter has a layer {name!r} that the model lacks")
        A, B = pair["lora_A"], pair["lora_B"]
        rank = A.shape[0]
        alpha = float(_pattern_value(name, adapter.config.get("alpha_pattern"), adapter.config.get("lora_alpha", 8)))
        if isinstance(module, LoRALinear):
            if module.merged:
                raise AdapterMismatchError(f"layer {name!r} is merged; unmerge it before loading an adapter into it")
            want_a, want_b = tuple(module.lora_A.shape), tuple(module.lora_B.shape)
        elif wrappable(module):
            w = module.weight
            out_f, in_f = (w.shape[1], w.shape[0]) if is_conv1d(module) else tuple(w.shape)
            want_a, want_b = (rank, in_f), (out_f, rank)
        else:
            raise AdapterMismatchError(f"layer {name!r} is a {type(module).__name__}; it cannot hold LoRA factors")
        if tuple(A.shape) != want_a or tuple(B.shape) != want_b:
            raise AdapterMismatchError(
                f"layer {name!r}: adapter factors A {tuple(A.shape)}, B {tuple(B.shape)} do not fit the "
                f"layer, which needs A {want_a}, B {want_b}"
            )
        resolve_alpha(alpha, rank, adapter.rule)  # refused here, not half-way through the changes
        plans.append(_LayerPlan(name, rank, alpha, A, B))
    params = dict(model.named_parameters())
    for k, v in adapter.others.items():
        target = params.get(k)
        if target is None or tuple(target.shape) != tuple(v.shape):
            have = "missing" if target is None else tuple(target.shape)
            raise AdapterMismatchError(f"adapter tensor {k!r} {tuple(v.shape)} does not fit the model ({have})")
    return plans


def _apply(model: nn.Module, plans: list[_LayerPlan], adapter: _Adapter) -> None:
    """Apply a checked plan: wrap, copy the factors, set the adapter's alpha and rule, freeze."""
    modules = dict(model.named_modules())
    for p in plans:
        if not isinstance(modules[p.name], LoRALinear):
            _set_module(model, p.name, LoRALinear(modules[p.name], p.rank, p.alpha, rule=adapter.rule))
    with torch.no_grad():
        for p in plans:
            layer = model.get_submodule(p.name)
            layer.lora_A.copy_(p.A.to(layer.lora_A.dtype))
            layer.lora_B.copy_(p.B.to(layer.lora_B.dtype))
            # The adapter's alpha and rule, not the layer's: its scale is derived from these.
            layer.rule = adapter.rule
            layer.set_alpha(p.alpha)
        live = dict(model.named_parameters())
        for k, v in adapter.others.items():
            live[k].copy_(v.to(live[k].dtype))
    freeze_all_but_lora(model, sorted({k.rpartition(".")[0] for k in adapter.others}))
