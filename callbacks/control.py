"""AlphaController: the advisor's scale probe moves alpha during the run (docs/metrics.md §8)."""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from callbacks._lightning import check_hook_call, tensorboard_writers
from callbacks.advisor import AlphaRegimeAdvisor
from callbacks.engine import NoLoRALayersError, medians_of_views
from callbacks.measurements import PREFIX
from signaldrift.control import DEFAULT_CONTROL, ControlRules, alpha_move

log = logging.getLogger("signaldrift")

# state entry -> the power of the factor it scales by (gradients are linear in the scale); "step" is a count
MOMENTS = {"exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2, "momentum_buffer": 1}
OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def stretch_alpha(view, factor: float) -> None:
    """Multiply one LoRA layer's alpha (and so its scale: every rule is linear in alpha) by ``factor``."""
    module = view.module
    if hasattr(module, "set_alpha"):  # this project's layers: the scale follows the rule
        module.set_alpha(view.alpha * factor)
        return
    module.lora_alpha[view.adapter] = view.alpha * factor  # PEFT: its two entries for this adapter
    module.scaling[view.adapter] = module.scaling[view.adapter] * factor


def check_optimizer(optimizer) -> None:
    """Refuse an optimizer whose state the controller cannot rescale (docs/metrics.md §8)."""
    raw = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
    if not isinstance(raw, OPTIMIZERS):
        names = ", ".join(o.__name__ for o in OPTIMIZERS)
        raise ValueError(f"AlphaController rescales the optimizer's moments at a move and knows {names}; this run "
                         f"uses {type(raw).__name__}")


def rescale_moments(optimizer, params, factor: float) -> int:
    """Multiply the optimizer's moments of ``params`` by ``factor`` (first) and ``factor**2`` (second); every
    entry is checked before any is changed. Returns how many tensors were rescaled."""
    raw = getattr(optimizer, "optimizer", optimizer)
    ids = {id(p) for p in params}
    todo: list[tuple[Tensor, float]] = []
    for group in raw.param_groups:
        for p in group["params"]:
            if id(p) not in ids:
                continue
            for key, value in raw.state.get(p, {}).items():
                if key == "step" or not isinstance(value, Tensor):
                    continue
                if key not in MOMENTS:
                    raise ValueError(f"AlphaController cannot rescale the optimizer state {key!r} of "
                                     f"{type(raw).__name__}; it knows {', '.join(MOMENTS)}")
                todo.append((value, factor ** MOMENTS[key]))
    with torch.no_grad():
        for value, f in todo:
            value.mul_(f)
    return len(todo)


def _moves_text(moves: list[dict]) -> str:
    rows = [f"{m['step']} | {m['old_alpha']:.4g} | {m['new_alpha']:.4g} | {m['factor']:.3g} | {m['k_star']:.3g} | "
            f"{m['gain_z']:.3g}" for m in moves]
    return "step | alpha before | alpha after | factor | k\\* | z\n--- | --- | --- | --- | --- | ---\n" + "\n".join(rows)


class AlphaController(AlphaRegimeAdvisor):
    """The :class:`AlphaRegimeAdvisor` that moves alpha by its own scale probe (docs/metrics.md §8).

    After each probe early in the run (at most ``control.until`` of it), when the probe says, significantly,
    that the loss is lower further along the run's own update (``k_star >= control.k_up``), every LoRA
    layer's alpha is multiplied by ``k_star`` (bounded per move and in total, at most ``control.max_moves``
    moves): for ``B0 = 0`` the model is then exactly the point ``W0 + k_star * dW`` the probe measured. Alpha
    moves down only with the verdict's collapse evidence (``too-aggressive`` and ``k_star < 1``). Adam's
    moments (or SGD's momentum) of the factors are rescaled with the move, so the optimizer's next step is
    as it would have been. The fit is refused when the adapters start with ``B != 0`` or the optimizer is
    not Adam, AdamW or SGD. Every rank moves together (rank zero decides).

    Args:
        gap_every: probe every this many optimizer steps (the advisor's cadence; probes past
            ``control.until`` of the run only advise).
        control: the bounds (:class:`signaldrift.control.ControlRules`).
        **advisor_kwargs: as :class:`AlphaRegimeAdvisor`.

    Example::

        controller = AlphaController(gap_every=16)
        Trainer(max_steps=256, callbacks=[controller]).fit(model)
        controller.moves  # [{'step': 16, 'old_alpha': 8.0, 'new_alpha': 64.0, 'factor': 8.0, ...}]
    """

    warns_too_small = False  # the controller acts instead of warning

    def __init__(self, gap_every: int = 50, *, control: ControlRules = DEFAULT_CONTROL, **advisor_kwargs: Any) -> None:
        if not isinstance(control, ControlRules):
            raise ValueError(f"control must be a signaldrift.control.ControlRules, got {type(control).__name__}")
        super().__init__(gap_every, **advisor_kwargs)
        self.control = control
        self.moves: list[dict[str, Any]] = []
        self.alpha_start: float | None = None
        self._restored = False

    @property
    def total_factor(self) -> float:
        """The product of the moves' factors (1 before any)."""
        return math.prod(m["factor"] for m in self.moves)

    @property
    def alpha(self) -> float | None:
        """The alpha the run trains with now (median over layers; None before the fit starts)."""
        return None if self.alpha_start is None else self.alpha_start * self.total_factor

    def _reset(self) -> None:
        super()._reset()
        self.moves, self.alpha_start, self._restored = [], None, False

    def on_train_start(self, trainer, pl_module) -> None:
        check_hook_call("AlphaController", "on_train_start", trainer, pl_module)
        for optimizer in trainer.optimizers:
            check_optimizer(optimizer)
        total = trainer.estimated_stepping_batches
        if not isinstance(total, int) and not (isinstance(total, float) and math.isfinite(total)):
            raise ValueError("AlphaController needs to know the run's length (max_steps, or a loader with a length) "
                             "to stop moving after `until` of it")
        if not self._views(pl_module):  # Y12 of the fifth review: every layer merged gave a StatisticsError
            raise NoLoRALayersError("AlphaController found no LoRA layer it can move: every one is merged into its base "
                                    "weight (or a variant such as DoRA); call lora_alpha.unmerge_adapters first")
        if self._restored and self.moves:
            self._reapply(pl_module)
        self._restored = False
        super().on_train_start(trainer, pl_module)
        if self.alpha_start is None:
            self.alpha_start = self._median_alpha(pl_module)
        if trainer.global_step == 0 and self.from_zero is False:
            raise ValueError("AlphaController needs adapters that start with B = 0 (a move multiplies alpha, which "
                             "is W0 + k*dW only then); this model's LoRA B factors are not zero at the start")

    def _median_alpha(self, pl_module) -> float:
        return medians_of_views(self._views(pl_module))[0]

    def _reapply(self, pl_module) -> None:
        """A resumed run: the layers were built at the starting alpha; the moves are put back."""
        now, total = self._median_alpha(pl_module), self.total_factor
        if math.isclose(now, self.alpha_start * total, rel_tol=1e-6):
            return  # already there (e.g. the user rebuilt the model at the moved alpha)
        if not math.isclose(now, self.alpha_start, rel_tol=1e-6):
            raise ValueError(f"AlphaController: the checkpoint's run started at alpha {self.alpha_start:.6g} and moved "
                             f"to {self.alpha_start * total:.6g}; this model's alpha is {now:.6g}")
        for view in self._views(pl_module):
            stretch_alpha(view, total)

    def _probe_step(self, trainer, pl_module) -> None:
        before = len(self.probes)
        super()._probe_step(trainer, pl_module)
        if len(self.probes) == before:
            return
        record = self.probes[-1]
        total_steps = int(trainer.estimated_stepping_batches)
        sizes = [p.get("step_size_max") for p in self.probes[self.evidence_from:][-self.window:]]
        sizes = [v for v in sizes if v is not None and math.isfinite(v)]
        decision = alpha_move(record.get("k_star"), record.get("scale_gain_z"), record.get("scale_help_z"),
                              record.get("verdict"), record["step"], total_steps, len(self.moves), self.total_factor,
                              max(sizes) if sizes else None, self.control)
        # every rank moves together, as rank zero decided (its z is the one recorded)
        factor, reason, z = trainer.strategy.broadcast((decision.factor, decision.reason, record.get("scale_gain_z")), src=0)
        record["control"] = reason if factor is not None else f"no move: {reason}"
        if factor is not None:
            self._move(trainer, pl_module, float(factor), record, z)

    def _move(self, trainer, pl_module, factor: float, record: dict, gain_z: float | None) -> None:
        views = self._views(pl_module)
        params = [p for v in views for p in (v.A, v.B)]
        old = self._median_alpha(pl_module)
        for optimizer in trainer.optimizers:  # checked at the fit's start; each refuses before it changes anything
            rescale_moments(optimizer, params, factor)
        for view in views:
            stretch_alpha(view, factor)
        move = {"step": record["step"], "old_alpha": old, "new_alpha": self._median_alpha(pl_module),
                "factor": factor, "k_star": record.get("k_star"), "gain_z": gain_z,
                "reason": record["control"]}
        self.moves.append(move)
        self.evidence_from = len(self.probes)  # the verdict counts the probes at the new alpha
        if trainer.is_global_zero:
            log.info("alpha control at step %d: alpha %.4g -> %.4g (%s)", move["step"], old, move["new_alpha"],
                     record["control"])
            for w in tensorboard_writers(trainer):
                w.add_text(f"{PREFIX}/alpha_moves", _moves_text(self.moves), global_step=move["step"])

    def state_dict(self) -> dict:
        return {**super().state_dict(), "moves": [dict(m) for m in self.moves], "alpha_start": self.alpha_start}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.moves = [dict(m) for m in state_dict.get("moves", [])]
        self.alpha_start = state_dict.get("alpha_start")
        self._restored = True
