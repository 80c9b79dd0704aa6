"""The Hugging Face Trainer callback: a tiny PEFT model, transformers.Trainer, TensorBoard read back."""
import pytest
import torch

import signaldrift as sd
from callbacks.hf import SignalDriftTrainerCallback
from tests.callbacks.helpers import read_scalars
from tests.conftest import tiny_bert


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _recorder():
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self):
            self.before, self.after = {}, {}

        def _layers(self, model):
            return {v.name: v for v in sd.lora_layers(model)}

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.snapshot = {n: (v.A.detach().clone(), v.B.detach().clone()) for n, v in self._layers(model).items()}

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            self.before[state.global_step] = {n: dict(A=v.A.detach().clone(), B=v.B.detach().clone(), gA=v.A.grad.clone(),
                                                      gB=v.B.grad.clone(), s=v.scale, W0=v.base_weight.detach().clone())
                                              for n, v in self._layers(model).items()}

        def on_optimizer_step(self, args, state, control, model=None, **kw):
            self.after[state.global_step] = {n: dict(A=v.A.detach().clone(), B=v.B.detach().clone())
                                             for n, v in self._layers(model).items()}

    return Recorder()


def test_trainer_callback_logs_through_tensorboard(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(tiny_bert(), LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3,
                             per_device_train_batch_size=4, logging_steps=1, report_to=["tensorboard"], use_cpu=True,
                             learning_rate=1e-2, max_grad_norm=0.0, save_strategy="no", disable_tqdm=True, seed=0)
    rec = _recorder()
    trainer = Trainer(model=model, args=args, train_dataset=_Data(), callbacks=[rec])
    drift = SignalDriftTrainerCallback.attach(trainer, every_n_steps=1, full_grad_every=1)
    trainer.train()
    assert sorted(drift.history) == [0, 1, 2]
    scalars = read_scalars(tmp_path)
    layer = drift.engine.names[0]
    for step in range(3):
        b, a = rec.before[step][layer], rec.after[step][layer]
        A0, B0 = rec.snapshot[layer]
        norm = float(torch.linalg.matrix_norm(b["W0"]))
        split = sd.step_split(b["A"], b["B"], a["A"], a["B"], b["s"], norm)
        ref = {"step_size": split.step_size, "signal_norm": split.signal_norm}
        if split.drift_ratio is not None:
            ref["drift_ratio"] = split.drift_ratio
        gs = sd.grad_split(b["A"], b["B"], b["gA"], b["gB"], b["s"], A0, B0)
        if gs is not None:
            ref["grad_alignment"] = gs.grad_alignment
        for metric, value in ref.items():
            tag = f"signaldrift_layers/{layer}/{metric}"
            assert drift.history[step].tags()[tag] == pytest.approx(value, rel=1e-6, abs=1e-12)
            # the Trainer logs after the step, at global_step = step + 1, under its "train/" prefix
            assert scalars[f"train/{tag}"][step + 1] == pytest.approx(value, rel=1e-4, abs=1e-9)
    assert f"signaldrift_layers/{layer}/spectral_suppression" in drift.history[1].tags()
    # `signaldrift report` reads the Trainer's run as it reads a Lightning run (its tags carry "train/").
    from callbacks.report import format_report, layer_table, read_run

    record = read_run(tmp_path)
    rows = {r["layer"]: r for r in layer_table(record)}
    logged = scalars[f"train/signaldrift_layers/{layer}/drift_ratio"]
    assert set(rows) == set(drift.engine.names)
    assert rows[layer]["drift_ratio"] == pytest.approx(sorted(logged.values())[len(logged) // 2], rel=1e-6)
    assert layer in format_report(record)


def _tiny_trainer(tmp_path, callbacks=(), max_steps=3, model=None):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    model = model or get_peft_model(tiny_bert(), LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=4,
                             logging_steps=1, report_to=[], use_cpu=True, learning_rate=1e-2, save_strategy="no",
                             disable_tqdm=True, seed=0)
    return Trainer(model=model, args=args, train_dataset=_Data(), callbacks=list(callbacks))


def test_attach_needs_a_trainer_and_is_idempotent(tmp_path):
    with pytest.raises(TypeError, match=r"SignalDriftTrainerCallback.attach needs a transformers.Trainer .*got a str: 'x'"):
        SignalDriftTrainerCallback.attach("x")
    trainer = _tiny_trainer(tmp_path)
    first = SignalDriftTrainerCallback.attach(trainer, every_n_steps=1, full_grad_every=None)
    again = SignalDriftTrainerCallback.attach(trainer, every_n_steps=1, full_grad_every=None)
    ours = [c for c in trainer.callback_handler.callbacks if isinstance(c, SignalDriftTrainerCallback)]
    assert again is first and ours == [first] and trainer.callback_handler.callbacks[0] is first
    with pytest.raises(ValueError, match=r"already has a SignalDriftTrainerCallback with .*'every_n_steps': 1.*"
                                         r"'every_n_steps': 2.* would measure every step twice"):
        SignalDriftTrainerCallback.attach(trainer, every_n_steps=2, full_grad_every=None)
    assert [c for c in trainer.callback_handler.callbacks if isinstance(c, SignalDriftTrainerCallback)] == [first]
    # one passed in callbacks=[...] is found too, and moved first (before the reporting callbacks)
    given = SignalDriftTrainerCallback(full_grad_every=None)
    other = _tiny_trainer(tmp_path, callbacks=[given])
    assert SignalDriftTrainerCallback.attach(other, full_grad_every=None) is given
    assert other.callback_handler.callbacks[0] is given


def test_a_callback_reused_for_another_train_starts_clean(tmp_path):
    drift = SignalDriftTrainerCallback(every_n_steps=1, full_grad_every=None)
    first = _tiny_trainer(tmp_path, callbacks=[drift], max_steps=3)
    first.train()
    assert sorted(drift.history) == [0, 1, 2]
    layer = drift.engine.names[0]
    start = {v.name: v.A.detach().clone() for v in sd.lora_layers(first.model)}[layer]
    second = _tiny_trainer(tmp_path, callbacks=[drift], max_steps=2, model=first.model)
    second.train()
    assert sorted(drift.history) == [0, 1]
    assert torch.equal(drift.engine.snapshot[layer][0], start)  # the second run's own A0


def test_train_begin_without_a_model_or_with_merged_lora_only_says_so():
    from types import SimpleNamespace

    from lora_alpha import inject, merge_adapters

    args = SimpleNamespace(fsdp=[], deepspeed=None, fp16=False, world_size=1)
    with pytest.raises(TypeError, match=r"on_train_begin: model must be the nn.Module being trained, got NoneType"):
        SignalDriftTrainerCallback().on_train_begin(args, None, None, model=None)
    model = tiny_bert()
    inject(model, ["query"], rank=2)
    merge_adapters(model)
    with pytest.raises(ValueError, match="every LoRA layer of BertForSequenceClassification is merged") as err:
        SignalDriftTrainerCallback().on_train_begin(args, None, None, model=model)
    assert type(err.value).__name__ == "MergedLoRAError"
