import torch

from signaldrift import lora_layers
from tests.conftest import tiny_bert, tiny_gpt2


def _peft(model, targets, **kw):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, **kw))


def test_views_of_peft_linear_conv1d_and_embedding_layers():
    model = _peft(tiny_gpt2(), ["c_attn", "wte"], fan_in_fan_out=True)
    views = lora_layers(model)
    kinds = {v.kind for v in views}
    assert kinds == {"conv1d", "embedding"}
    for v in views:
        m, r = v.B.shape
        assert v.A.shape[0] == r == v.rank == 4
        assert v.base_weight.shape == (m, v.A.shape[1])
        assert v.scale == 2.0 and v.alpha == 8.0 and v.variant is None and not v.merged
        # dW = s B A in W0's (m, n) orientation: the same as PEFT's own delta, up to its orientation.
        delta = v.module.get_delta_weight(v.adapter)
        ours = v.scale * v.B @ v.A
        assert torch.allclose(ours, delta.T if v.kind in ("conv1d", "embedding") else delta)


def test_views_are_live_and_skip_disabled_and_flag_dora():
    model = _peft(tiny_bert(), ["query"])
    layer = lora_layers(model)[0].module
    layer.scaling["default"] = 3.0
    assert lora_layers(model)[0].scale == 3.0
    with model.disable_adapter():
        assert lora_layers(model) == []
    dora = _peft(tiny_bert(), ["query"], use_dora=True)
    assert {v.variant for v in lora_layers(dora)} == {"dora"}
    assert lora_layers(dora, include_variants=False) == []


def test_plain_model_has_no_views():
    assert lora_layers(torch.nn.Sequential(torch.nn.Linear(3, 3))) == []
