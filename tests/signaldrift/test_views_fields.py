"""Every field of a view, for this project's layers, PEFT's real layers with several adapters, and a
minimal stand-in that has only the documented PEFT attributes (no get_base_layer, no optional ones)."""
import torch
from torch import nn

import lora_alpha
from signaldrift import lora_layers
from signaldrift.views import is_peft_lora
from tests.conftest import TinyMLP, tiny_bert


class _Bare(nn.Module):
    """PEFT's documented LoraLayer attributes and nothing else: no get_base_layer, no
    merged_adapters, use_dora, lora_variant, fan_in_fan_out or lora_embedding_A."""

    def __init__(self, adapters=("default",), active="default"):
        super().__init__()
        self.base_layer = nn.Linear(5, 3)
        self.r = {a: 2 for a in adapters}
        self.lora_alpha = {a: 6 for a in adapters}
        self.scaling = {a: 3.0 for a in adapters}
        self.lora_A = nn.ModuleDict({a: nn.Linear(5, 2, bias=False) for a in adapters})
        self.lora_B = nn.ModuleDict({a: nn.Linear(2, 3, bias=False) for a in adapters})
        self.active_adapters = active


def test_a_bare_peft_layer_is_read_from_its_documented_attributes():
    layer = _Bare()
    model = nn.Sequential(layer)
    (v,) = lora_layers(model)
    assert (v.name, v.adapter, v.kind, v.scale, v.alpha, v.rank, v.merged, v.variant) == (
        "0", "default", "linear", 3.0, 6.0, 2, False, None)
    assert v.A is layer.lora_A["default"].weight and v.B is layer.lora_B["default"].weight
    assert v.base_weight is layer.base_layer.weight and v.module is layer
    layer.merged_adapters = None  # an attribute present but None: nothing merged
    assert lora_layers(model)[0].merged is False


def test_peft_detection_needs_every_documented_attribute():
    for missing in ("r", "scaling", "lora_A", "active_adapters"):
        layer = _Bare()
        if missing == "lora_A":
            del layer.lora_A
            layer.__dict__["lora_A"] = {"default": None}  # a plain dict, not an nn.ModuleDict
        else:
            delattr(layer, missing)
        assert not is_peft_lora(layer)
        assert lora_layers(nn.Sequential(layer)) == []


def test_a_variant_by_lora_variant_and_adapters_not_found_are_skipped():
    layer = _Bare(adapters=("default", "b"), active=["ghost", "default", "b"])

    class MyVariant:
        pass

    layer.lora_variant = {"b": MyVariant()}
    views = lora_layers(nn.Sequential(layer))
    assert [(v.name, v.adapter, v.variant) for v in views] == [("0", "default", None), ("0[b]", "b", "MyVariant")]
    assert [v.name for v in lora_layers(nn.Sequential(layer), include_variants=False)] == ["0"]
    layer.use_dora = {"default": True}
    assert [v.variant for v in lora_layers(nn.Sequential(layer))] == ["dora", "MyVariant"]


def test_peft_multi_adapter_linear_and_merged():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_bert(), LoraConfig(r=4, lora_alpha=8, target_modules=["query"]))
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=6, target_modules=["query"]))
    layer = next(m for m in model.modules() if is_peft_lora(m))
    layer.set_adapter(["default", "second"])
    views = [v for v in lora_layers(model) if v.module is layer]
    name = views[0].name
    assert [(v.name, v.adapter, v.kind, v.rank, v.scale, v.alpha) for v in views] == [
        (name, "default", "linear", 4, 2.0, 8.0), (f"{name}[second]", "second", "linear", 2, 3.0, 6.0)]
    assert name.endswith("query") and all(v.base_weight is layer.base_layer.weight for v in views)
    assert all(not v.merged for v in views)
    layer.merge(adapter_names=["second"])
    assert [v.merged for v in lora_layers(model) if v.module is layer] == [False, True]


class _Proto(nn.Module):
    """This project's protocol, implemented by hand, with values that tell the fields apart."""

    lora_kind = "conv1d"

    def __init__(self, enabled=True, merged=True):
        super().__init__()
        self.lora_A = nn.Parameter(torch.ones(2, 4))
        self.lora_B = nn.Parameter(torch.ones(3, 2))
        self.W = torch.zeros(3, 4)
        self.merged, self.lora_enabled = merged, enabled
        self.scaling, self.alpha, self.rank = 1.5, 3.0, 2

    def base_weight_mn(self):
        return self.W


def test_protocol_layers_every_field_and_disabled_ones_skipped():
    model = nn.Sequential(_Proto(enabled=False), _Proto(), nn.Linear(2, 2))
    (v,) = lora_layers(model)
    assert (v.name, v.adapter, v.kind, v.scale, v.alpha, v.rank, v.merged, v.variant) == (
        "1", "default", "conv1d", 1.5, 3.0, 2, True, None)
    assert type(v.alpha) is float and type(v.rank) is int and type(v.merged) is bool
    assert v.A is model[1].lora_A and v.B is model[1].lora_B and v.base_weight is model[1].W and v.module is model[1]


def test_a_module_with_lora_kind_but_not_the_protocol_is_not_a_layer():
    m = nn.Linear(2, 2)
    m.lora_kind = "linear"
    assert lora_layers(nn.Sequential(m)) == []


def test_injected_layers_in_module_order():
    model = TinyMLP()
    lora_alpha.inject(model, ["fc1", "fc2", "head"], rank=2, alpha=8.0, rule="standard")
    views = lora_layers(model)
    assert [v.name for v in views] == ["fc1", "fc2", "head"]
    assert all(v.scale == 4.0 and v.alpha == 8.0 and v.rank == 2 and v.merged is False for v in views)
