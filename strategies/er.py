"""Experience replay as the DER paper runs it (Buzzega et al. 2020, its `er` baseline).

A reservoir memory is offered every incoming minibatch (after the optimizer step), so examples of the current task
are replayed too; each step adds the cross-entropy on a memory sample of `minibatch_size` examples to the incoming
minibatch's: two means summed, not one mean over the joined rows. `replay` is the older variant: memory filled at a
task's end with earlier tasks only, and one mean over the minibatch joined by an equal-size sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clframework.plugin import Batch, register_strategy

from .memory import StreamRehearsal

_positive = (lambda v: v >= 1, "an integer >= 1")


def rows_cross_entropy(out: torch.Tensor, y: torch.Tensor, rows) -> torch.Tensor:
    """Sum over row ranges [(first, end), ...] of the mean cross-entropy on those rows (ER: incoming + replayed)."""
    return sum(F.cross_entropy(out[a:b], y[a:b]) for a, b in rows)


@register_strategy("er", checks={"memory_size": _positive, "minibatch_size": _positive},
                   description="experience replay as in the DER paper: reservoir memory updated after every "
                               "minibatch, CE(incoming) + CE(memory sample); `replay` fills its memory at task ends")
class ER(StreamRehearsal):
    """DER-paper ER. memory_size: examples kept in all; minibatch_size: replayed examples per step."""

    def __init__(self, memory_size: int = 200, minibatch_size: int = 10):
        super().__init__(memory_size, minibatch_size)

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        return self.replayed(batch, self.minibatch_size)[0]

    def task_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return rows_cross_entropy(batch.out, batch.y, self.rows)
