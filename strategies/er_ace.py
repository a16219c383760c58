"""ER-ACE (Caccia et al., ICLR 2022, "New Insights on Reducing Abrupt Representation Change in Online Continual
Learning"): experience replay with an asymmetric cross-entropy.

The incoming minibatch's cross-entropy runs only over the outputs of classes present in that minibatch, so new
classes do not push down the logits of old ones; the replayed sample's runs over every class seen so far. The memory
is the DER family's reservoir, offered every minibatch. A class is an output index of the head.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from clframework.plugin import Batch, register_strategy

from .memory import StreamRehearsal

_positive = (lambda v: v >= 1, "an integer >= 1")


def masked_cross_entropy(out: torch.Tensor, y: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy with the outputs outside `allowed` (a bool per output) removed from the softmax; every
    label must be allowed."""
    return F.cross_entropy(out.masked_fill(~allowed, float("-inf")), y)


def present(y: torch.Tensor, width: int) -> torch.Tensor:
    """A bool per output: whether the class occurs among the labels y (no host sync)."""
    return torch.zeros(width, dtype=torch.bool, device=y.device).index_fill_(0, y, True)


@register_strategy("er_ace", checks={"memory_size": _positive, "minibatch_size": _positive},
                   description="ER-ACE: incoming CE over the classes in the minibatch, replay CE over classes seen")
class ERACE(StreamRehearsal):
    """ER-ACE. memory_size: examples kept in all; minibatch_size: replayed examples per step."""

    def __init__(self, memory_size: int = 200, minibatch_size: int = 10):
        super().__init__(memory_size, minibatch_size)
        self.seen: Optional[torch.Tensor] = None  # bool per output: classes seen so far

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        return self.replayed(batch, self.minibatch_size)[0]

    def task_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        out, y = batch.out, batch.y
        a, b = self.rows[0]
        now = present(y[a:b], out.shape[1])
        if self.seen is not None and len(self.seen) < len(now):  # a wider head appeared: pad the record
            self.seen = torch.cat([self.seen, now.new_zeros(len(now) - len(self.seen))])
        self.seen = now if self.seen is None else self.seen[:len(now)] | now
        loss = masked_cross_entropy(out[a:b], y[a:b], now)
        for a, b in self.rows[1:]:
            loss = loss + masked_cross_entropy(out[a:b], y[a:b], self.seen)
        return loss

    def state_dict(self):
        return {**self._state(), "seen": self.seen}

    def load_state_dict(self, state):
        state = dict(state)
        self.seen = state.pop("seen")
        super().load_state_dict(state)
