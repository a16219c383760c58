"""Experience replay: a fixed-size memory of earlier tasks' examples, a sample of which joins every training minibatch.

The memory (strategies/memory.py) is offered each task's training data at the task's end, so while a task trains it
holds only earlier tasks (the current task's examples are in the minibatch already). `er` is the DER paper's variant:
its memory is offered every incoming minibatch, and the two losses are summed instead of averaged over one batch.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from clframework.plugin import Batch, Strategy, check_state_keys, join, register_strategy

from .memory import SELECTIONS, ReplayMemory, add_task_data, stores_raw

_selection = (lambda v: v in SELECTIONS, "'reservoir' or 'class-balanced'")


@register_strategy("replay", checks={"memory_size": (lambda v: v >= 1, "an integer >= 1"), "selection": _selection})
class Replay(Strategy):
    """Experience replay: each minibatch joined by an equal-size sample of a fixed memory of earlier tasks' examples.

    memory_size: examples kept in all (default 200); selection: 'reservoir' or 'class-balanced'.
    """

    needs = (("boundaries", "a memory filled with each task's examples at its end"),)

    def __init__(self, memory_size: int = 200, selection: str = "reservoir"):
        if memory_size < 1:
            raise ValueError(f"memory_size must be >= 1, got {memory_size}")
        self.memory = ReplayMemory(memory_size, selection)
        self._single_head: Optional[int] = None  # the one head every stored example uses, if so (no per-row heads)
        self._raw = True  # the memory keeps stored examples (see memory.stores_raw)

    def on_task_start(self, model: Optional[nn.Module], task_index: int) -> None:
        self._single_head = None
        if len(self.memory):
            heads = self.memory.contents()[2].unique().tolist()
            self._single_head = heads[0] if len(heads) == 1 else None

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        self._raw = stores_raw(batch)
        if not len(self.memory):
            return batch
        x, y, head = self.memory.sample(len(batch))
        same = self._single_head is not None and isinstance(batch.head, int) and self._single_head == batch.head
        return join(batch, batch.inputs(x), y, batch.head if same else head, raw=x)

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        add_task_data(self.memory, model, data, head, raw=self._raw)

    def state_dict(self):
        return {"hparams": {"memory_size": self.memory.size, "selection": self.memory.selection},
                "memory": self.memory.state_dict()}

    def load_state_dict(self, state):
        check_state_keys(self, state, ("hparams", "memory"))
        self.memory.load_state_dict(state["memory"])
        self.on_task_start(None, -1)  # recompute what the memory's heads imply (resuming skips on_task_start)
