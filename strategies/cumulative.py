"""The two reference points of every comparison table, marked there as bounds (not continual learners):

- `cumulative`: each task trains on the union of every task's training data seen so far (no forgetting by design);
- `joint`: one training on all tasks' data at once, at the last task (the usual upper bound); earlier tasks train
  nothing, so their rows of the accuracy matrix score the untrained model and only the last row is meaningful.

Both need one head for every task (class or domain setting): a union of tasks is trained as one task.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from clframework.benchmarks.stream import Task
from clframework.plugin import Strategy, register_strategy


def union(tasks: Sequence[Task]) -> Task:
    """One task holding the training data of `tasks` (in order); its test data are the last task's."""
    heads = {t.head for t in tasks}
    if len(heads) > 1:
        raise ValueError(f"joint/cumulative train tasks of several heads ({sorted(heads)}) as one task; they need a "
                         f"single-head stream: use --setting class or domain")
    last = tasks[-1]
    return Task("+".join(t.name for t in tasks), torch.cat([t.train_x for t in tasks]),
                torch.cat([t.train_y for t in tasks]), last.test_x, last.test_y,
                tuple(c for t in tasks for c in t.classes), last.head)


def union_data(task: Task, x: torch.Tensor, y: torch.Tensor) -> Task:
    """`task` with the examples (x, y) appended to its training data (e.g. iCaRL's exemplars)."""
    return Task(task.name, torch.cat([task.train_x, x]), torch.cat([task.train_y, y.to(task.train_y.device)]),
                task.test_x, task.test_y, task.classes, task.head)


@register_strategy("cumulative", description="BOUND: each task trained on all training data seen so far")
class Cumulative(Strategy):
    """Each task trains on the union of all tasks so far (a reference point, shown as a bound)."""

    needs = ("single-head", ("boundaries", "each task's data, joined to the earlier tasks' at its start"))

    bound = "cumulative"

    def task_data(self, stream, task_index: int) -> Optional[Task]:
        return union(stream.tasks[:task_index + 1])


@register_strategy("joint", description="BOUND (upper): all tasks' data trained at once, at the last task")
class Joint(Strategy):
    """Joint training on every task's data at once, at the last task (the upper bound, shown as a bound)."""

    needs = ("single-head", ("boundaries", "every task's data, trained at the last task"))

    bound = "upper"

    def task_data(self, stream, task_index: int) -> Optional[Task]:
        return union(stream.tasks) if task_index == len(stream.tasks) - 1 else None
