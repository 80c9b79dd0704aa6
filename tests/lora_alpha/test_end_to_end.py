"""The real embedded MiniLM on a few dozen Rotten Tomatoes snippets, through the command's own code."""
import json

import torch

from lora_alpha.train.cli import main


def test_real_minilm_end_to_end(tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lora_alpha.train.data import RottenTomatoesDataModule, demo_model_path

    rc = main(["train", "--train-size", "48", "--eval-size", "16", "--max-steps", "3", "--batch-size", "16",
               "--gap-every", "2", "--full-grad-every", "2", "--output", str(tmp_path), "--name", "e2e", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "verdict" in out
    info = json.loads((tmp_path / "e2e" / "run.json").read_text())
    assert info["status"] == "finished" and 0.0 <= info["test"]["test_acc"] <= 1.0
    # The saved adapter loads in PEFT and reproduces the run's own logits.
    from lora_alpha import load_adapter

    ours = AutoModelForSequenceClassification.from_pretrained(demo_model_path(), num_labels=2)
    load_adapter(ours, tmp_path / "e2e" / "adapter")
    peft = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(demo_model_path(), num_labels=2),
                                     tmp_path / "e2e" / "adapter")
    batch = next(iter(RottenTomatoesDataModule(train_size=8, val_size=8, test_size=8, batch_size=8).test_dataloader()))
    with torch.no_grad():
        assert torch.allclose(ours.eval()(**batch).logits, peft.eval()(**batch).logits, atol=1e-5)
