"""LoRAAlphaModule.probe_losses (the advisor's probe units, docs/metrics.md section 5) against cross-entropy
written out by hand: per example for classification (its mean is probe_loss), per sequence the mean
next-token cross-entropy over labelled tokens for a causal LM. Tiny models built from configs in code."""
from __future__ import annotations

import math

import pytest
import torch

from lora_alpha.train.module import LoRAAlphaModule
from tests.conftest import tiny_bert, tiny_gpt2


def _randomize_lora(module, seed=1):
    """B = 0 at injection would make LoRA a no-op: give every factor values so that the LoRA path counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _hand_ce(logits, target):
    """-log softmax(logits)[target] in float64, from exp and log (no torch cross_entropy)."""
    z = logits.double()
    m = z.max()
    return float(m + torch.log(torch.exp(z - m).sum()) - z[target])


def test_classification_probe_losses_are_per_example_cross_entropy():
    module = LoRAAlphaModule(tiny_bert(num_labels=3), targets=["query", "value"], rank=2, num_labels=3)
    _randomize_lora(module)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 100, (5, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    labels = torch.tensor([0, 2, 1, 1, 2])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        got = module.probe_losses(batch)
        logits = module.model(input_ids=ids, attention_mask=mask).logits
        mean_loss = float(module.probe_loss(batch))
    assert got.shape == (5,)
    ref = [_hand_ce(logits[i], int(labels[i])) for i in range(5)]
    assert got.double().tolist() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert len(set(round(v, 6) for v in ref)) == 5  # the examples differ: an average would not pass
    assert float(got.double().mean()) == pytest.approx(mean_loss, rel=1e-5)
    # the labels decide: another label gives another loss for that example alone
    other = dict(batch, labels=torch.tensor([1, 2, 1, 1, 2]))
    with torch.no_grad():
        moved = module.probe_losses(other)
    assert float(moved[0]) == pytest.approx(_hand_ce(logits[0], 1), rel=1e-5)
    assert torch.allclose(moved[1:], got[1:])


def test_classification_probe_losses_follow_the_lora_factors():
    module = LoRAAlphaModule(tiny_bert(), targets=["query", "value"], rank=2)
    _randomize_lora(module, seed=1)
    batch = {"input_ids": torch.randint(0, 100, (3, 6), generator=torch.Generator().manual_seed(3)),
             "labels": torch.tensor([0, 1, 1])}
    with torch.no_grad():
        a = module.probe_losses(batch).clone()
        _randomize_lora(module, seed=5)
        b = module.probe_losses(batch)
    assert not torch.allclose(a, b)  # the loss is the adapted model's, not the base model's


def _causal_batch():
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 100, (4, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding
    mask[2, 3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[3, :4] = -100  # a prompt whose tokens are not labelled
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _sequence_means(logits, labels):
    """Each sequence's mean over t of -log p(labels[t + 1] | logits[t]), counting labelled targets only."""
    out = []
    for b in range(labels.shape[0]):
        terms = [_hand_ce(logits[b, t], int(labels[b, t + 1])) for t in range(labels.shape[1] - 1)
                 if int(labels[b, t + 1]) != -100]
        out.append(sum(terms) / len(terms) if terms else math.nan)
    return out


def test_causal_lm_probe_losses_are_each_sequences_mean_next_token_cross_entropy():
    module = LoRAAlphaModule(tiny_gpt2(), task="causal-lm", targets=["c_attn"], rank=2)
    _randomize_lora(module)
    batch = _causal_batch()
    with torch.no_grad():
        got = module.probe_losses(batch)
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        token_mean = float(module.probe_loss(batch))
    ref = _sequence_means(logits, batch["labels"])
    assert got.shape == (4,)
    assert got.double().tolist() == pytest.approx(ref, rel=1e-5)
    # the labelled-target counts are 7, 4, 2, 4: a mean of sequence means, not the batch's token mean
    counts = [(batch["labels"][b, 1:] != -100).sum().item() for b in range(4)]
    assert counts == [7, 4, 2, 4]
    weighted = sum(r * c for r, c in zip(ref, counts)) / sum(counts)
    assert token_mean == pytest.approx(weighted, rel=1e-5)  # Hugging Face's loss: the token mean
    assert float(got.double().mean()) != pytest.approx(token_mean, rel=1e-4)


def test_causal_lm_equal_lengths_mean_is_probe_loss_and_an_unlabelled_sequence_is_left_out():
    module = LoRAAlphaModule(tiny_gpt2(), task="causal-lm", targets=["c_attn"], rank=2)
    _randomize_lora(module)
    ids = torch.randint(0, 100, (3, 6), generator=torch.Generator().manual_seed(6))
    batch = {"input_ids": ids, "labels": ids.clone()}
    with torch.no_grad():
        got = module.probe_losses(batch)
        assert float(got.double().mean()) == pytest.approx(float(module.probe_loss(batch)), rel=1e-5)
        labels = ids.clone()
        labels[1, 1:] = -100  # only the first token labelled: no next-token target
        out = module.probe_losses({"input_ids": ids, "labels": labels})
    assert out.shape == (2,)  # the sequence without a next-token target is no unit (not a NaN that voids the probe)
    assert torch.allclose(out, got[[0, 2]])
