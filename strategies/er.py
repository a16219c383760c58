"""Experience replay as the DER paper runs it (Buzzega et al. 2020, its `er` baseline).

A reservoir memory is offered every incoming minibatch (after the optimizer step), so examples of the current task
are replayed too; each step joins a memory sample of `minibatch_size` examples to the incoming minibatch and takes
one cross-entropy mean over the joined rows, in one forward pass, as Mammoth's models/er.py (aimagelab/mammoth
7ab9db97, unchanged at e75a491): `net(cat(inputs, buf_inputs))`. `replay` is the older variant: memory filled at a
task's end with earlier tasks only, joined by a sample as large as the minibatch.
"""
from __future__ import annotations

from torch import nn

from clframework.plugin import Batch, register_strategy

from .memory import StreamRehearsal

_positive = (lambda v: v >= 1, "an integer >= 1")


@register_strategy("er", checks={"memory_size": _positive, "minibatch_size": _positive},
                   description="experience replay as in the DER paper: reservoir memory updated after every "
                               "minibatch, one CE mean over incoming + memory sample; `replay` fills its memory at "
                               "task ends")
class ER(StreamRehearsal):
    """DER-paper ER. memory_size: examples kept in all; minibatch_size: replayed examples per step."""

    def __init__(self, memory_size: int = 200, minibatch_size: int = 10):
        super().__init__(memory_size, minibatch_size)

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        return self.replayed(batch, self.minibatch_size)[0]
