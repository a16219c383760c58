"""The optimizer recipe: optimizer, weight decay, momentum, learning-rate schedule and gradient clipping.

The schedule is a pure function of where training stands in the current task (epoch, step), restarting with every
task. The trainer sets each step's learning rate from it, so a checkpoint's position (and optimizer state) is all a
resumed run needs to continue the schedule exactly, whether the optimizer is fresh per task or kept across tasks.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping, Optional, Tuple

from .registry import FLOAT32_MAX

OPTIMIZERS = ("adam", "adamw", "sgd")
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 0.01, "sgd": 0.0}  # torch's own defaults
SCHEDULES = ("constant", "step", "multistep", "cosine")


def step_lr(lr: float, epoch: int, step_epochs: int, gamma: float) -> float:
    """Step decay: lr * gamma ** floor(epoch / step_epochs), epoch counted from 0 within the task."""
    return lr * gamma ** (epoch // step_epochs)


def multistep_lr(lr: float, epoch: int, milestones, gamma: float) -> float:
    """lr * gamma ** (the number of milestones reached): torch's MultiStepLR stepped once per epoch of the task
    (the X-DER protocol's [35, 45] on seq-CIFAR-100)."""
    return lr * gamma ** sum(1 for m in milestones if epoch >= m)


def cosine_lr(lr: float, lr_min: float, step: int, total_steps: int) -> float:
    """Cosine annealing from lr (step 0) towards lr_min over the task's total_steps optimizer steps."""
    return lr - (lr - lr_min) * (1 - math.cos(math.pi * step / total_steps)) / 2  # exactly lr at step 0


def _number(name: str, value, low: float, high: float = math.inf, low_open: bool = False,
            flag: Optional[str] = None) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and \
        (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        bound += "" if high == math.inf else f" and <= {high}"
        raise ValueError(f"{flag or name} must be a finite number {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Recipe:
    """How the weights are updated. None: the optimizer's or schedule's default (set by `resolved`), or, for a
    schedule's parameters, not used by the chosen schedule. The one declaration of these fields: a benchmark's
    Protocol extends it and RunConfig takes each of them as an override (RECIPE_FIELDS).

    optimizer: sgd, adam or adamw. momentum: SGD's momentum (sgd only). weight_decay: L2 for sgd and adam,
    decoupled for adamw (default 0.01, torch's; 0 for the others). lr_schedule: constant, step (lr * lr_gamma every
    lr_step_epochs epochs; lr_gamma default 0.1) or cosine (from lr to lr_min, default 0, over each task's steps).
    grad_clip: the largest L2 norm of all gradients together before each step (0: no clipping); it clips the
    gradient the strategy's hooks leave (penalties, projections) as the optimizer would use it.
    drop_last: skip each epoch's final minibatch when it is smaller than the others (Mammoth's --drop_last, off by
    default there and here). With BatchNorm in train mode, a final minibatch of a few examples of one class is
    normalized by its own statistics, which erase what tells the classes apart: its loss and gradient are large and
    one such step can leave the task at chance (docs/fidelity.md, "BatchNorm and a tiny final minibatch").
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    lr_schedule: str = "constant"
    lr_step_epochs: Optional[int] = None
    lr_gamma: Optional[float] = None
    lr_min: Optional[float] = None
    grad_clip: Optional[float] = None
    lr_milestones: Optional[Tuple[int, ...]] = None  # multistep: the epochs (of a task) where the lr is multiplied
    drop_last: bool = False

    def resolved(self) -> "Recipe":
        """Every value checked (ValueError naming the value, what is accepted and the flag to change) and the
        defaults filled in; the fields a choice does not use stay None."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(sorted(OPTIMIZERS))}, got {self.optimizer!r}")
        lr = _number("lr", self.lr, 0, low_open=True, flag="lr (learning rate)")
        if lr > FLOAT32_MAX:  # finite, but inf in the float32 updates it scales
            raise ValueError(f"lr (learning rate) = {lr:g} is beyond float32's range (largest {FLOAT32_MAX:.4g}): "
                             f"training in float32 would overflow to inf")
        momentum = None
        if self.optimizer == "sgd":
            momentum = 0.0 if self.momentum is None else _number("momentum", self.momentum, 0, 1)
        elif self.momentum not in (None, 0, 0.0):
            raise ValueError(f"momentum applies to the sgd optimizer only (Adam's betas are fixed at 0.9, 0.999), "
                             f"got momentum {self.momentum!r} with {self.optimizer}; drop --momentum or use "
                             f"--optimizer sgd")
        weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None else \
            _number("weight_decay", self.weight_decay, 0, flag="weight decay")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        used = {"step": ("lr_step_epochs", "lr_gamma"), "multistep": ("lr_milestones", "lr_gamma"),
                "cosine": ("lr_min",)}.get(self.lr_schedule, ())
        for key in ("lr_step_epochs", "lr_gamma", "lr_min", "lr_milestones"):
            if key not in used and getattr(self, key) is not None:
                needs = {"lr_min": "cosine", "lr_milestones": "multistep"}.get(key, "step")
                raise ValueError(f"{key} applies to the {needs} schedule only, not {self.lr_schedule!r}; drop "
                                 f"--{key.replace('_', '-')} or use --lr-schedule {needs}")
        step_epochs = gamma = lr_min = milestones = None
        if self.lr_schedule == "multistep":
            milestones = self.lr_milestones
            ok = isinstance(milestones, (list, tuple)) and len(milestones) > 0 and all(
                isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in milestones)
            if not ok or list(milestones) != sorted(set(milestones)):
                raise ValueError(f"the multistep schedule needs lr_milestones, increasing epochs >= 1 (--lr-milestones "
                                 f"35,45), got {milestones!r}")
            milestones = tuple(milestones)
            gamma = 0.1 if self.lr_gamma is None else _number("lr_gamma", self.lr_gamma, 0, 1, low_open=True)
        if self.lr_schedule == "step":
            step_epochs = self.lr_step_epochs
            if isinstance(step_epochs, bool) or not isinstance(step_epochs, int) or step_epochs < 1:
                raise ValueError(f"the step schedule needs lr_step_epochs, an integer >= 1 (decay every that many "
                                 f"epochs of a task; --lr-step-epochs N), got {step_epochs!r}")
            gamma = 0.1 if self.lr_gamma is None else _number("lr_gamma", self.lr_gamma, 0, 1, low_open=True)
        elif self.lr_schedule == "cosine":
            lr_min = 0.0 if self.lr_min is None else _number("lr_min", self.lr_min, 0, lr)
        grad_clip = 0.0 if self.grad_clip is None else _number("grad_clip", self.grad_clip, 0, flag="grad clip")
        if not isinstance(self.drop_last, bool):
            raise ValueError(f"drop_last must be true or false (--drop-last), got {self.drop_last!r}")
        return replace(self, lr=lr, momentum=momentum, weight_decay=weight_decay, lr_step_epochs=step_epochs,
                       lr_gamma=gamma, lr_min=lr_min, grad_clip=grad_clip, lr_milestones=milestones)

    @classmethod
    def of(cls, values: Mapping) -> "Recipe":
        """The recipe among `values` (a training protocol as a dict; keys it lacks take the fields' defaults)."""
        return cls(**{k: values[k] for k in RECIPE_FIELDS if k in values})

    def as_dict(self) -> dict:
        return asdict(self)

    def make_optimizer(self, params):
        """A fresh torch optimizer over `params` (of a resolved recipe)."""
        import torch  # here, so that the protocols (benchmarks.registry: `clframework list`) do not import torch

        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum or 0.0,
                                   weight_decay=self.weight_decay or 0.0)
        adam = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        return adam(params, lr=self.lr, betas=(0.9, 0.999), weight_decay=self.weight_decay or 0.0)

    def lr_at(self, epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
        """The learning rate of step `step` (0-based) of epoch `epoch` (0-based) of a task of `epochs` epochs."""
        if self.lr_schedule == "step":
            return step_lr(self.lr, epoch, self.lr_step_epochs, self.lr_gamma)
        if self.lr_schedule == "multistep":
            return multistep_lr(self.lr, epoch, self.lr_milestones, self.lr_gamma)
        if self.lr_schedule == "cosine":
            return cosine_lr(self.lr, self.lr_min, epoch * steps_per_epoch + step, epochs * steps_per_epoch)
        return self.lr


RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))
