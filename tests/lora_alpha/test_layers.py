import copy

import pytest
import torch

import lora_alpha
from lora_alpha import LoRAConfigError, LoRALinear, adapters_disabled, inject
from lora_alpha.inject import linear_layer_names, plan_targets
from tests.conftest import TinyMLP, tiny_bert, tiny_gpt2, tiny_llama


def _randomize_factors(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_A.copy_(torch.randn(m.lora_A.shape, generator=g))
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def _peft_twin(model, targets, r, alpha, **kw):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, **kw))


def _copy_into_peft(ours, peft_model):
    ours_layers = {n: m for n, m in ours.named_modules() if isinstance(m, LoRALinear)}
    copied = 0
    for name, m in peft_model.named_modules():
        key = name.removeprefix("base_model.model.")
        if key in ours_layers and hasattr(m, "lora_A"):
            with torch.no_grad():
                m.lora_A["default"].weight.copy_(ours_layers[key].lora_A)
                m.lora_B["default"].weight.copy_(ours_layers[key].lora_B)
            copied += 1
    assert copied == len(ours_layers)


@pytest.mark.parametrize("rule, use_rslora", [("standard", False), ("rslora", True)])
def test_bert_outputs_equal_peft_given_the_same_factors(ids, rule, use_rslora):
    ours = tiny_bert()
    inject(ours, ["query", "value", "dense"], rank=4, alpha=8, rule=rule)
    _randomize_factors(ours)
    twin = _peft_twin(tiny_bert(), ["query", "value", "dense"], 4, 8, use_rslora=use_rslora)
    _copy_into_peft(ours, twin)
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, twin(input_ids=ids).logits, atol=1e-5)


def test_gpt2_conv1d_outputs_equal_peft(ids):
    ours = tiny_gpt2()
    summary = inject(ours, ["c_attn", "c_proj"], rank=4, alpha=16, rule="standard")
    assert {ours.get_submodule(n).lora_kind for n in summary.layers} == {"conv1d"}
    _randomize_factors(ours)
    twin = _peft_twin(tiny_gpt2(), ["c_attn", "c_proj"], 4, 16, fan_in_fan_out=True)
    _copy_into_peft(ours, twin)
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, twin(input_ids=ids).logits, atol=1e-5)


def test_fresh_injection_keeps_the_base_outputs(ids):
    base = tiny_llama()
    with torch.no_grad():
        ref = base(ids).logits
    inject(base, ["q_proj", "v_proj"], rank=2)
    with torch.no_grad():
        assert torch.equal(base(ids).logits, ref)  # B = 0 at init


def test_merge_is_idempotent_and_equals_dense_update(ids):
    model = tiny_gpt2()
    inject(model, ["c_attn"], rank=4, alpha=16, rule="standard")
    _randomize_factors(model)
    layer = model.transformer.h[0].attn.c_attn
    W0 = layer.base_layer.weight.detach().clone()  # Conv1D: (in, out)
    with torch.no_grad():
        unmerged = model(ids).logits
    layer.merge()
    once = layer.base_layer.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.base_layer.weight, once)
    ref = W0 + (16 / 4 * layer.lora_B.detach() @ layer.lora_A.detach()).T
    assert torch.allclose(once, ref, atol=1e-6)
    assert torch.allclose(layer.delta_weight(), 4.0 * layer.lora_B @ layer.lora_A)
    lora_alpha.merge_adapters(model)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, unmerged, atol=1e-5)
    lora_alpha.unmerge_adapters(model)
    lora_alpha.unmerge_adapters(model)
    assert torch.allclose(layer.base_layer.weight, W0, atol=1e-6)


def test_the_base_weight_is_held_not_copied():
    model = TinyMLP()
    w = model.fc1.weight
    inject(model, ["fc1"], rank=2)
    assert model.fc1.base_layer.weight is w
    assert model.fc1.base_weight_mn().data_ptr() == w.data_ptr()


def test_only_lora_factors_and_trainable_modules_get_gradients():
    model = TinyMLP()
    summary = inject(model, ["fc1", "fc2"], rank=2, alpha=4, rule="standard", trainable=["head"])
    _randomize_factors(model)
    model(torch.randn(5, 8)).sum().backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == {"fc1.lora_A", "fc1.lora_B", "fc2.lora_A", "fc2.lora_B", "head.weight", "head.bias"}
    assert summary.trainable_params == 2 * (8 + 16) + 2 * (16 + 4) + 4 * 2 + 2
    assert summary.layers == ("fc1", "fc2") and "trainable" in str(summary)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    model = TinyMLP().to(dtype)
    inject(model, ["fc1"], rank=2)
    assert model.fc1.lora_A.dtype == dtype
    out = model(torch.randn(3, 8, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_adapters_disabled_gives_base_outputs_and_restores(ids):
    model = tiny_bert()
    with torch.no_grad():
        base = model(ids).logits
    inject(model, ["query", "value"], rank=4)
    _randomize_factors(model)
    with torch.no_grad():
        lora = model(ids).logits
        with adapters_disabled(model):
            assert torch.equal(model(ids).logits, base)
        assert torch.equal(model(ids).logits, lora)
    with pytest.raises(RuntimeError):
        with adapters_disabled(model):
            raise RuntimeError("inside")
    assert all(m.lora_enabled for m in model.modules() if isinstance(m, LoRALinear))


def test_dropout_only_in_training():
    model = TinyMLP()
    inject(model, ["fc1"], rank=2, dropout=0.5)
    _randomize_factors(model)
    x = torch.randn(4, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    assert not torch.equal(a, model(x))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, \
        {n: p.requires_grad for n, p in model.named_parameters()}, repr(model)


@pytest.mark.parametrize("kwargs, match", [
    (dict(targets=["query"], rank=0), "rank must be a positive int, got 0"),
    (dict(targets=["query"], rank=40), r"rank 40 is larger than this layer allows: at most min\(in=32, out=32\) = 32"),
    (dict(targets=["query"], rank=4, alpha=-1.0), "alpha must be a positive finite number"),
    (dict(targets=["query"], rank=4, rule="nope"), "unknown scaling rule 'nope'"),
    (dict(targets=["nothing_here"], rank=4), r"'nothing_here' matches no module; the layers LoRA can wrap are: .*query"),
    (dict(targets=["attention"], rank=4), r"matches 'bert.encoder.layer.0.attention', a BertAttention; only nn.Linear"),
    (dict(targets=["query", "missing"], rank=4), "'missing' matches no module"),
    (dict(targets=["query"], rank=4, trainable=["clasifier"]), "trainable module 'clasifier' matches no module"),
    (dict(targets=["query"], rank=4, dropout=1.5), r"dropout must be in \[0, 1\)"),
])
def test_bad_input_raises_and_leaves_the_model_untouched(kwargs, match):
    model = tiny_bert()
    before = _state(model)
    with pytest.raises(LoRAConfigError, match=match):
        inject(model, **kwargs)
    after = _state(model)
    assert before[2] == after[2] and before[1] == after[1]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_injecting_twice_is_refused_and_changes_nothing():
    model = tiny_bert()
    inject(model, ["query"], rank=4)
    before = _state(model)
    with pytest.raises(LoRAConfigError, match="already has LoRA"):
        inject(model, ["query", "value"], rank=4)
    assert _state(model)[2] == before[2]
    inject(model, ["value"], rank=2)  # other layers are fine
    assert len(lora_alpha.lora_layers(model)) == 4


def test_regex_targets_and_unwrappable_module():
    model = tiny_bert()
    summary = inject(model, [r".*layer\.0\.attention\.self\.(query|key)"], rank=2)
    assert summary.layers == ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key")
    with pytest.raises(LoRAConfigError, match="cannot wrap a Embedding"):
        LoRALinear(torch.nn.Embedding(10, 4), rank=2)


def test_discovery_reads_scale_live():
    model = TinyMLP()
    inject(model, ["fc1"], rank=4, alpha=8, rule="standard")
    view = lora_alpha.lora_layers(model)[0]
    assert view.scale == 2.0 and view.kind == "linear" and view.base_weight.shape == (16, 8)
    copy.deepcopy(model)  # layers are deep-copyable


def test_a_model_that_is_not_a_module_is_one_config_error():
    with pytest.raises(LoRAConfigError, match=r"inject: model must be a torch nn.Module .*got a str: 'notamodel'"):
        inject("notamodel", "query", rank=4)
    with pytest.raises(LoRAConfigError, match=r"got a NoneType: None"):
        plan_targets(None, "query")


def test_the_layers_listed_as_wrappable_are_the_ones_a_target_can_match():
    """The base layer inside a LoRA layer is never matched, so the message must not offer it."""
    model = tiny_bert()
    inject(model, ["query"], rank=2)
    with pytest.raises(LoRAConfigError, match="'query.base_layer' matches no module") as err:
        inject(model, "query.base_layer", rank=2)
    message = str(err.value)
    assert "base_layer," not in message.split("already have LoRA")[0]
    assert "bert.encoder.layer.0.attention.self.key" in message
    assert "(2 layer(s) already have LoRA: bert.encoder.layer.0.attention.self.query, " in message
    assert all(".base_layer" not in n for n in linear_layer_names(model))
