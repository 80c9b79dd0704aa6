import pytest
import torch

from lora_alpha.train.data import CausalLMDataModule, TextClassificationDataModule
from lora_alpha.train.errors import UsageError
from lora_alpha.train.module import LoRAAlphaModule
from tests.callbacks.helpers import make_trainer
from tests.lora_alpha.app_helpers import save_tiny, write_csv, write_jsonl


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return save_tiny("bert", tmp_path_factory.mktemp("bert"))


def test_classification_trains_and_saves_a_peft_adapter(tiny_bert_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    dm = TextClassificationDataModule(str(tiny_bert_dir), write_csv(tmp_path / "d.csv"), batch_size=4)
    module = LoRAAlphaModule(str(tiny_bert_dir), targets=["query", "value"], rank=2, lr=1e-2,
                             adapter_dir=tmp_path / "adapter")
    assert module.lora_summary.trainable_modules == ("classifier",)
    trainer = make_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    out = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert {"test_loss", "test_acc"} <= set(out)
    peft = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir),
                                     tmp_path / "adapter").eval()
    batch = next(iter(dm.test_dataloader()))
    module.eval()
    with torch.no_grad():
        assert torch.allclose(peft(**batch).logits, module(**batch).logits, atol=1e-5)


def test_optimizer_groups_and_loraplus(tiny_bert_dir):
    module = LoRAAlphaModule(str(tiny_bert_dir), targets=["query"], rank=2, lr=1e-3, head_lr=5e-3, loraplus_ratio=16)
    groups = {g["name"]: g for g in module.param_groups()}
    assert groups["lora_A"]["lr"] == 1e-3 and groups["lora_B"]["lr"] == 16e-3 and groups["trainable"]["lr"] == 5e-3
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == module.lora_summary.trainable_params


@pytest.mark.parametrize("kind, targets", [("gpt2", ["c_attn"]), ("llama", ["q_proj", "v_proj"])])
def test_causal_lm_on_tiny_models(kind, targets, tmp_path):
    folder = save_tiny(kind, tmp_path / kind)
    rows = [{"prompt": "say hi:", "completion": " hi there"}, {"text": "some text to learn from"}] * 4
    dm = CausalLMDataModule(str(folder), write_jsonl(tmp_path / "c.jsonl", rows), batch_size=2)
    module = LoRAAlphaModule(str(folder), task="causal-lm", targets=targets, rank=2, lr=1e-2, warmup_steps=1,
                             schedule="cosine")
    trainer = make_trainer(max_steps=3, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert val["val_ppl"] == pytest.approx(float(torch.exp(torch.tensor(val["val_loss"]))), rel=1e-3)


def test_bad_arguments(tiny_bert_dir):
    with pytest.raises(UsageError, match="unknown task 'ner'"):
        LoRAAlphaModule(str(tiny_bert_dir), task="ner")
    with pytest.raises(UsageError, match="is not a folder on this machine"):
        LoRAAlphaModule("/no/such/model")
    with pytest.raises(ValueError, match="rank 64 is larger than this layer allows"):
        LoRAAlphaModule(str(tiny_bert_dir), targets=["query"], rank=64)
    with pytest.raises(UsageError, match="lr must be"):
        LoRAAlphaModule(str(tiny_bert_dir), lr=-1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the GPU path: bf16-mixed, one device)")
def test_gpu_bf16_mixed_path(tiny_bert_dir, tmp_path):
    from callbacks import AlphaRegimeAdvisor, SignalDriftMonitor
    from lora_alpha.train.cli import _trainer_kwargs, build_parser

    args = build_parser().parse_args(["train", "--max-steps", "3", "--no-progress"])
    kwargs = _trainer_kwargs(args)
    assert kwargs["precision"] == "bf16-mixed"  # chosen automatically on CUDA
    dm = TextClassificationDataModule(str(tiny_bert_dir), write_csv(tmp_path / "d.csv"), batch_size=4)
    module = LoRAAlphaModule(str(tiny_bert_dir), targets=["query", "value"], rank=2, lr=1e-2)
    monitor, advisor = SignalDriftMonitor(full_grad_every=1), AlphaRegimeAdvisor(gap_every=1)
    trainer = make_trainer(max_steps=3, accelerator="gpu", devices=1, precision="bf16-mixed",
                           callbacks=[monitor, advisor], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert module.device.type == "cuda" and monitor.history and advisor.probes


def test_fitting_merged_lora_is_refused_before_the_optimizer(tiny_bert_dir):
    """Merged factors take no part in the forward pass: without this, the first backward fails deep in autograd."""
    from torch.utils.data import DataLoader

    from lora_alpha import merge_adapters, unmerge_adapters

    module = LoRAAlphaModule(str(tiny_bert_dir), targets=["query"], rank=2, trainable=[])
    merge_adapters(module.model)
    data = [{"input_ids": torch.tensor([101, 7, 102]), "attention_mask": torch.ones(3, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(4)]
    with pytest.raises(UsageError, match=r"cannot fit: 2 LoRA layer\(s\) are merged into their base weights "
                                         r"\(bert.encoder.layer.0.attention.self.query, .*unmerge_adapters"):
        make_trainer(max_steps=1).fit(module, DataLoader(data, batch_size=2))
    unmerge_adapters(module.model)
    make_trainer(max_steps=1).fit(module, DataLoader(data, batch_size=2))
