"""Shared test fixtures: tiny models built from configs in code (no downloads), seeded."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from hypothesis import settings

# Property tests explore the same examples on every run (CI must not pass or fail by chance); a
# failure found here is kept as a plain test. SIGNALDRIFT_HYPOTHESIS=explore searches afresh.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("SIGNALDRIFT_HYPOTHESIS", "repeatable"))

# Two threads on the 2-core machines; `make mutation` runs with one (SIGNALDRIFT_TEST_THREADS=1): its
# workers are forked from a process that has already run torch, and forked OpenMP pools can hang.
torch.set_num_threads(int(os.environ.get("SIGNALDRIFT_TEST_THREADS", "2")))


def tiny_bert(num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


class TinyMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(8, 16)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(16, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.fc2(self.act(self.fc1(x))))


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 100, (2, 7), generator=g)


def install_fake_module(monkeypatch, dotted: str, **attributes):
    """Put ``package.module`` (a stand-in for an optional dependency: bitsandbytes, deepspeed) into
    ``sys.modules`` for one test, with ``attributes`` on the module; returns the module."""
    import sys
    import types

    package_name, _, module_name = dotted.partition(".")
    module = types.ModuleType(dotted)
    for name, value in attributes.items():
        setattr(module, name, value)
    package = types.ModuleType(package_name)
    setattr(package, module_name, module)
    monkeypatch.setitem(sys.modules, package_name, package)
    monkeypatch.setitem(sys.modules, dotted, module)
    return module
