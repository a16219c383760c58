"""ER-ACE (Caccia et al., ICLR 2022, "New Insights on Reducing Abrupt Representation Change in Online Continual
Learning"): experience replay with an asymmetric cross-entropy, as its authors' code and Mammoth's run it.

The incoming minibatch's softmax keeps the outputs of the classes present in it and every output from the highest
class seen so far onward (classes not yet seen stay in), so new classes do not push down the logits of old ones; the
replayed sample's cross-entropy runs over all outputs. Task-based (the default, Mammoth's models/er_ace.py): during
the first task neither the mask nor replay applies; `task_free=True` (the authors' pclucas14/AML methods/er_ace.py,
which always runs task-free) applies both from the first step. The memory is the DER family's reservoir, offered
every minibatch; the minibatch and the memory sample pass through the network separately where the model has
BatchNorm (memory.SeparatePasses), as both reference codes do. A class is an output index of the head.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clframework.plugin import Batch, register_strategy

from .memory import SeparatePasses

_positive = (lambda v: v >= 1, "an integer >= 1")


def masked_cross_entropy(out: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy with the outputs outside `allowed` (a bool per output) removed from the softmax; every
    label must be allowed."""
    return F.cross_entropy(out.masked_fill(~allowed, float("-inf")), y)


def present(y: torch.Tensor, width: int) -> torch.Tensor:
    """A bool per output: whether the class occurs among the labels y (no host sync)."""
    return torch.zeros(width, dtype=torch.bool, device=y.device).index_fill_(0, y, True)


def ace_mask(now: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """The incoming softmax's outputs: the classes present (`now`) and every output from the highest class seen
    onward (`seen`: a bool per output, at least one true), as `mask[:, seen_so_far.max():] = 1` (no host sync)."""
    index = torch.arange(len(seen), device=seen.device)
    return now | (index >= torch.where(seen, index, -1).max())


@register_strategy("er_ace", checks={"memory_size": _positive, "minibatch_size": _positive},
                   description="ER-ACE: incoming CE over the classes in the minibatch and those not yet seen, "
                               "replay CE over all outputs; from the second task unless task_free")
class ERACE(SeparatePasses):
    """ER-ACE. memory_size: examples kept in all; minibatch_size: replayed examples per step; task_free: mask and
    replay from the first step (the authors' code) instead of from the second task (Mammoth's)."""

    def __init__(self, memory_size: int = 200, minibatch_size: int = 10, task_free: bool = False):
        super().__init__(memory_size, minibatch_size)
        self.task_free = bool(task_free)
        self.seen: Optional[torch.Tensor] = None  # bool per output: classes seen so far

    @property
    def needs(self) -> tuple:
        """Mammoth's form tells the first task apart (no mask, no replay); the task-free form needs no boundary."""
        return () if self.task_free else (("boundaries", "its first task told apart, trained without the mask and "
                                                         "replay; set task_free=true for its task-free form"),)

    def _asymmetric(self) -> bool:
        return self.task_free or self.task_index > 0

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        return self.replayed(batch, *((self.minibatch_size,) if self._asymmetric() else ()))[0]

    def task_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        out, y = batch.out, batch.y
        a, b = self.rows[0]
        now = present(y[a:b], out.shape[1])
        if self.seen is not None and len(self.seen) < len(now):  # a wider head appeared: pad the record
            self.seen = torch.cat([self.seen, now.new_zeros(len(now) - len(self.seen))])
        self.seen = now if self.seen is None else self.seen[:len(now)] | now
        if self._asymmetric():
            loss = masked_cross_entropy(out[a:b], y[a:b], ace_mask(now, self.seen))
        else:
            loss = F.cross_entropy(out[a:b], y[a:b])
        for a, b in self.rows[1:]:
            loss = loss + F.cross_entropy(out[a:b], y[a:b])
        return loss

    def state_dict(self):
        return {**self._state(task_free=self.task_free), "seen": self.seen}

    def load_state_dict(self, state):
        state = dict(state)
        self.seen = state.pop("seen")
        super().load_state_dict(state)
