"""Scores a model on every task of a stream: one row of the accuracy matrix (class-IL) and, from the same outputs,
one row of the task-IL matrix.

Task-IL accuracy (as Mammoth computes it) masks the outputs of every class outside the task's own before the argmax,
so the model is told which task an example comes from. In the class setting a task's classes are the consecutive
outputs its labels were mapped to; in the task and domain settings the task's head already holds only its own
outputs, so the two rows are equal.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from clframework.models import forward_head


@torch.no_grad()
def task_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, head: int, device: torch.device,
                  batch_size: int = 2048, classes: Optional[Tuple[int, int]] = None) -> Union[float, Tuple[float,
                                                                                                         float]]:
    """Accuracy of the model's prediction on `head` (the task's own head in multi-head settings). With `classes` =
    (first, end) output indices of the task: (accuracy, task-IL accuracy with the other outputs masked)."""
    if len(y) == 0:
        raise ValueError("cannot score a task with no examples")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    correct_til = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device, non_blocking=True), y[i:i + batch_size].to(device)
        out = forward_head(model, xb, head)
        correct += (out.argmax(-1) == yb).sum()
        if classes is not None:
            correct_til += (out[:, classes[0]:classes[1]].argmax(-1) + classes[0] == yb).sum()
    model.train(was_training)
    if classes is None:
        return correct.item() / len(y)
    return correct.item() / len(y), correct_til.item() / len(y)


def task_classes(stream) -> List[Tuple[int, int]]:
    """Each task's (first, end) outputs in the class setting: tasks take consecutive blocks of the one head."""
    bounds, first = [], 0
    for task in stream.tasks:
        bounds.append((first, first + len(task.classes)))
        first += len(task.classes)
    return bounds


def evaluate_stream(model: nn.Module, stream, device: torch.device, split: str = "test",
                    task_il: bool = False) -> Union[List[float], Tuple[List[float], List[float]]]:
    """Accuracy on every task of the stream (trained or not): a row R[i, :] of the accuracy matrix; with task_il,
    (that row, the task-IL row from the same outputs)."""
    row, til = [], []
    bounds = task_classes(stream) if task_il and stream.setting == "class" else None
    for t, task in enumerate(stream.tasks):
        x, y = getattr(task, f"{split}_x"), getattr(task, f"{split}_y")
        if x is None:
            raise ValueError(f"task '{task.name}' has no {split} data; build the stream with a validation hold-out "
                             f"(benchmarks.holdout) to score on 'valid'")
        if bounds is None:
            row.append(task_accuracy(model, x, y, task.head, device))
            til.append(row[-1])
        else:
            a, b = task_accuracy(model, x, y, task.head, device, classes=bounds[t])
            row.append(a)
            til.append(b)
    return (row, til) if task_il else row
