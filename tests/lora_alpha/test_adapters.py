import json

import pytest
import torch

from lora_alpha import AdapterMismatchError, LoRALinear, inject, load_adapter, save_adapter
from tests.conftest import tiny_bert, tiny_gpt2
from tests.lora_alpha.test_layers import _randomize_factors


def _trained_bert():
    model = tiny_bert()
    inject(model, ["query", "value"], rank=4, alpha=12, rule="lora-alpha", trainable=["classifier"])
    _randomize_factors(model)
    with torch.no_grad():
        model.classifier.weight.add_(0.5)
    return model


def test_peft_loads_our_adapter_with_equal_outputs(tmp_path, ids):
    from peft import PeftModel

    model = _trained_bert()
    save_adapter(model, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 12 and cfg["use_rslora"] is False
    assert cfg["modules_to_save"] == ["classifier"]
    peft_model = PeftModel.from_pretrained(tiny_bert(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, model(ids).logits, atol=1e-5)


def test_peft_loads_gpt2_conv1d_and_rslora(tmp_path, ids):
    from peft import PeftModel

    model = tiny_gpt2()
    inject(model, ["c_attn"], rank=4, alpha=8, rule="rslora")
    _randomize_factors(model)
    save_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] is True and cfg["use_rslora"] is True
    peft_model = PeftModel.from_pretrained(tiny_gpt2(), tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, model(ids).logits, atol=1e-5)


def test_load_adapter_saved_by_peft(tmp_path, ids):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_bert(), LoraConfig(r=4, lora_alpha=16, target_modules=["query", "value"],
                                                        modules_to_save=["classifier"]))
    _randomize_peft(peft_model)
    peft_model.save_pretrained(tmp_path)
    ours = tiny_bert()
    names = load_adapter(ours, tmp_path)
    assert len(names) == 4 and all(isinstance(ours.get_submodule(n), LoRALinear) for n in names)
    assert ours.get_submodule(names[0]).scaling == 4.0
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, peft_model.eval()(input_ids=ids).logits, atol=1e-5)


def _randomize_peft(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n or "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_round_trip_through_our_loader_keeps_the_rule(tmp_path, ids):
    model = _trained_bert()
    save_adapter(model, tmp_path)
    fresh = tiny_bert()
    load_adapter(fresh, tmp_path)
    assert fresh.bert.encoder.layer[0].attention.self.query.rule == "lora-alpha"
    with torch.no_grad():
        assert torch.allclose(fresh(ids).logits, model(ids).logits, atol=1e-6)
    # Loading into a model that already has matching LoRA layers only copies tensors.
    load_adapter(fresh, tmp_path)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def _snapshot(model):
    return repr(model), {k: v.clone() for k, v in model.state_dict().items()}


def test_mismatched_adapters_are_refused_and_change_nothing(tmp_path):
    model = _trained_bert()
    save_adapter(model, tmp_path / "a")
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    wider = BertForSequenceClassification(BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=100, num_labels=2))
    before = _snapshot(wider)
    with pytest.raises(AdapterMismatchError, match=r"do not fit the layer, which needs A \(4, 48\)"):
        load_adapter(wider, tmp_path / "a")
    after = _snapshot(wider)
    assert before[0] == after[0] and all(torch.equal(before[1][k], after[1][k]) for k in before[1])
    gpt = tiny_gpt2()
    with pytest.raises(AdapterMismatchError, match="lacks"):
        load_adapter(gpt, tmp_path / "a")
    with pytest.raises(AdapterMismatchError, match="adapter_config.json does not exist"):
        load_adapter(tiny_bert(), tmp_path / "missing")
    other = tiny_bert()
    other.config._name_or_path = "someone/else"
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "org/base-model"
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterMismatchError, match="trained on base model 'org/base-model'"):
        load_adapter(other, tmp_path / "a")
    load_adapter(other, tmp_path / "a", check_base_model=False)


def test_save_needs_lora_layers(tmp_path):
    with pytest.raises(ValueError, match="no LoRALinear layers"):
        save_adapter(tiny_bert(), tmp_path)
    assert not any(tmp_path.iterdir())


# --- Loading into a model that already has LoRA -------------------------------------------------

def _adapter_for(tmp_path, targets=("query", "value"), alpha=12.0, rule="lora-alpha"):
    """A saved adapter with random factors (rank 4); the folder."""
    source = tiny_bert()
    inject(source, list(targets), rank=4, alpha=alpha, rule=rule)
    _randomize_factors(source, seed=5)
    return save_adapter(source, tmp_path / "adapter")


def _dense_reference(directory):
    """tiny_bert with W0 + (alpha / r) B A folded into each layer, from the adapter's own numbers."""
    from safetensors.torch import load_file

    cfg = json.loads((directory / "adapter_config.json").read_text())
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    ref = tiny_bert()
    with torch.no_grad():
        for key, A in tensors.items():
            if key.endswith(".lora_A.weight"):
                name = key[len("base_model.model."):-len(".lora_A.weight")]
                B = tensors[key.replace("lora_A", "lora_B")]
                ref.get_submodule(name).weight.add_(cfg["lora_alpha"] / cfg["r"] * B @ A)
    return ref


@pytest.mark.parametrize("model_rule", ["lora-alpha", "rslora"])
def test_loading_into_existing_lora_takes_the_adapters_alpha_and_rule(tmp_path, ids, model_rule):
    directory = _adapter_for(tmp_path, alpha=12.0, rule="lora-alpha")
    model = tiny_bert()
    inject(model, ["query", "value"], rank=4, alpha=0.25, rule=model_rule)  # 48x smaller alpha
    load_adapter(model, directory)
    ref = _dense_reference(directory)
    for name in ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.value"):
        layer = model.get_submodule(name)
        assert layer.alpha == 12.0 and layer.rule == "lora-alpha"
        effective = layer.base_layer.weight + layer.delta_weight()
        assert torch.allclose(effective, ref.get_submodule(name).weight, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref(ids).logits, atol=1e-5)


def test_adapter_for_other_layers_than_the_models_lora_is_refused_unless_not_strict(tmp_path, ids):
    directory = _adapter_for(tmp_path, targets=("query", "value"))
    model = tiny_bert()
    inject(model, ["query"], rank=4, alpha=12.0)
    before = _snapshot(model)
    with pytest.raises(AdapterMismatchError, match=r"the adapter has 2 layer\(s\) the model's LoRA lacks: "
                                                    r"bert\.encoder\.layer\.0\.attention\.self\.value"):
        load_adapter(model, directory)
    after = _snapshot(model)
    assert before[0] == after[0] and all(torch.equal(before[1][k], after[1][k]) for k in before[1])
    names = load_adapter(model, directory, strict=False)  # the value layers are wrapped
    assert len(names) == 4
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, _dense_reference(directory)(ids).logits, atol=1e-5)


def test_model_lora_layers_the_adapter_lacks_are_named_with_a_count(tmp_path):
    directory = _adapter_for(tmp_path, targets=("query", "value"))
    model = tiny_bert()
    inject(model, ["query", "key", "value", "dense"], rank=4, alpha=3.0)
    _randomize_factors(model, seed=9)
    with pytest.raises(AdapterMismatchError, match=r"the model has 9 LoRA layer\(s\) the adapter lacks: "
                                                    r"bert\.encoder\.layer\.0\.attention\.output\.dense, .*\(9 in all\)"):
        load_adapter(model, directory)
    key = model.get_submodule("bert.encoder.layer.0.attention.self.key")
    kept = key.lora_B.clone()
    load_adapter(model, directory, strict=False)
    assert torch.equal(key.lora_B, kept) and key.alpha == 3.0  # the model's other layers are left alone
    assert model.get_submodule("bert.encoder.layer.0.attention.self.query").alpha == 12.0


def test_loading_into_a_merged_layer_is_refused(tmp_path):
    from lora_alpha import merge_adapters

    directory = _adapter_for(tmp_path)
    model = tiny_bert()
    inject(model, ["query", "value"], rank=4, alpha=12.0)
    merge_adapters(model)
    with pytest.raises(AdapterMismatchError, match="is merged"):
        load_adapter(model, directory)


# --- Corrupt files: one clear ValueError naming the file -----------------------------------------

def _rewrite_json(name, change):
    def corrupt(directory):
        path = directory / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return corrupt


def _write(name, data: bytes):
    return lambda directory: (directory / name).write_bytes(data)


def _truncate(directory):
    path = directory / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_factor(directory):
    """One entry of one factor set to NaN, the file otherwise whole (a diverged run's adapter)."""
    from safetensors.torch import load_file, save_file

    path = directory / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = sorted(k for k in tensors if k.endswith("lora_B.weight"))[-1]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(path))


CORRUPTIONS = {
    "config-bad-json": ("adapter_config.json", _write("adapter_config.json", b'{"r": 4, '), "not valid JSON"),
    "config-binary": ("adapter_config.json", _write("adapter_config.json", b"\xff\xfe\x00"), "not UTF-8"),
    "config-list": ("adapter_config.json", _write("adapter_config.json", b"[1, 2]"), "holds a JSON list"),
    "config-number": ("adapter_config.json", _write("adapter_config.json", b"4"), "holds a JSON int"),
    "r-string": ("adapter_config.json", _rewrite_json("adapter_config.json", lambda c: {**c, "r": "4"}),
                 r"'r' must be a positive integer, got '4'"),
    "alpha-string": ("adapter_config.json", _rewrite_json("adapter_config.json", lambda c: {**c, "lora_alpha": "12"}),
                     r"'lora_alpha' must be a positive finite number, got '12'"),
    "alpha-pattern-list": ("adapter_config.json",
                           _rewrite_json("adapter_config.json", lambda c: {**c, "alpha_pattern": [1]}),
                           "'alpha_pattern' must be an object"),
    "extra-bad-json": ("signaldrift_adapter.json", _write("signaldrift_adapter.json", b"{rule"), "not valid JSON"),
    "extra-list": ("signaldrift_adapter.json", _write("signaldrift_adapter.json", b'["lora-alpha"]'),
                   "holds a JSON list"),
    "extra-rule": ("signaldrift_adapter.json", _rewrite_json("signaldrift_adapter.json", lambda c: {**c, "rule": 7}),
                   "'rule' must be one of standard, rslora, lora-alpha, got 7"),
    "weights-truncated": ("adapter_model.safetensors", _truncate, "truncated or corrupt"),
    "weights-garbage": ("adapter_model.safetensors", _write("adapter_model.safetensors", b"\x07" * 64),
                        "truncated or corrupt"),
    "weights-empty": ("adapter_model.safetensors", _write("adapter_model.safetensors", b""), "truncated or corrupt"),
    "weights-nan": ("adapter_model.safetensors", _nan_factor, r"lora_B.weight' holds 1 NaN or infinite value\(s\)"),
    # rank-4 factors under a config that says r=8: loaded, the scale would be alpha/8's rule at rank 4 (PEFT refuses)
    "r-not-the-factors-rank": ("adapter_config.json", _rewrite_json("adapter_config.json", lambda c: {**c, "r": 8}),
                               r"safetensors: 'base_model\.model\.bert\.encoder\.layer\.0\.attention\.self\.query\.lora_A"
                               r"\.weight' has rank 4, but .*adapter_config\.json gives r = 8 for layer "
                               r"'bert\.encoder\.layer\.0\.attention\.self\.query'"),
    "rank-pattern-not-the-factors-rank": ("adapter_config.json",
                                          _rewrite_json("adapter_config.json",
                                                        lambda c: {**c, "rank_pattern": {"value": 2}}),
                                          r"'base_model\.model\.bert\.encoder\.layer\.0\.attention\.self\.value\.lora_A"
                                          r"\.weight' has rank 4, but .* gives rank_pattern = 2 for layer"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_adapter_files_give_one_error_naming_the_file(tmp_path, case):
    from lora_alpha.adapters import AdapterFileError

    fname, corrupt, what = CORRUPTIONS[case]
    directory = _adapter_for(tmp_path)
    corrupt(directory)
    model = tiny_bert()
    before = _snapshot(model)
    with pytest.raises(AdapterFileError, match=what) as err:
        load_adapter(model, directory)
    assert isinstance(err.value, ValueError)
    assert str(directory / fname) in str(err.value)
    after = _snapshot(model)
    assert before[0] == after[0]


def test_save_to_a_file_or_below_one_is_refused_and_writes_nothing(tmp_path):
    from lora_alpha.adapters import AdapterFileError

    model = _trained_bert()
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    with pytest.raises(AdapterFileError, match=f"cannot save an adapter to {blocker}: it is a file"):
        save_adapter(model, blocker)
    with pytest.raises(AdapterFileError, match=f"lies under {blocker}, which is a file"):
        save_adapter(model, blocker / "adapter")
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_save_to_an_empty_path_is_refused(tmp_path, monkeypatch):
    """Y15 of the third review: save_adapter(model, "") wrote into the working folder, over an adapter there."""
    from lora_alpha.adapters import AdapterFileError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdapterFileError, match="cannot save an adapter to '': the folder is empty"):
        save_adapter(_trained_bert(), "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_saved_files_get_the_umasks_mode_not_0600(tmp_path, umask, mode):
    import os

    old = os.umask(umask)
    try:
        directory = save_adapter(_trained_bert(), tmp_path / "adapter")
    finally:
        os.umask(old)
    files = sorted(directory.iterdir())
    assert [p.name for p in files] == ["adapter_config.json", "adapter_model.safetensors", "signaldrift_adapter.json"]
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: mode for p in files}


def test_a_model_that_is_not_a_module_is_one_config_error(tmp_path):
    from lora_alpha import LoRAConfigError

    directory = _adapter_for(tmp_path)
    with pytest.raises(LoRAConfigError, match=r"load_adapter: model must be a torch nn.Module .*got a str: 'x'"):
        load_adapter("x", directory)
    with pytest.raises(LoRAConfigError, match=r"save_adapter: model must be a torch nn.Module .*got a NoneType: None"):
        save_adapter(None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
