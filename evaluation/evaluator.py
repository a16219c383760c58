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
def task_accuracy(model: nn.Module, task, split: str, device: torch.device, batch_size: int = 2048,
                  classes: Optional[Tuple[int, int]] = None, workers: int = 0) -> Union[float, Tuple[float, float]]:
    """Accuracy of the model's prediction on the task's head (its own head in multi-head settings) over a split, read
    in order in the task's stored form and decoded on the device (no augmentation). With `classes` = (first, end)
    output indices of the task: (accuracy, task-IL accuracy with the other outputs masked)."""
    n = task.n(split)
    if n == 0:
        raise ValueError(f"cannot score task '{task.name}' on {split}: it has no {split} examples")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    correct_til = torch.zeros((), dtype=torch.long, device=device)
    for xb, yb in task.batches(split, batch_size, device, workers=workers):
        out = forward_head(model, xb, task.head)
        correct += (out.argmax(-1) == yb).sum()
        if classes is not None:
            correct_til += (out[:, classes[0]:classes[1]].argmax(-1) + classes[0] == yb).sum()
    model.train(was_training)
    if classes is None:
        return correct.item() / n
    return correct.item() / n, correct_til.item() / n


def task_classes(stream) -> List[Tuple[int, int]]:
    """Each task's (first, end) outputs in the class setting: tasks take consecutive blocks of the one head."""
    bounds, first = [], 0
    for task in stream.tasks:
        bounds.append((first, first + len(task.classes)))
        first += len(task.classes)
    return bounds


def evaluate_stream(model: nn.Module, stream, device: torch.device, split: str = "test", task_il: bool = False,
                    workers: int = 0) -> Union[List[float], Tuple[List[float], List[float]]]:
    """Accuracy on every task of the stream (trained or not): a row R[i, :] of the accuracy matrix; with task_il,
    (that row, the task-IL row from the same outputs). Tasks sharing one test set (CORe50) are scored once."""
    row, til, scored = [], [], {}
    bounds = task_classes(stream) if task_il and stream.setting == "class" else None
    for t, task in enumerate(stream.tasks):
        examples = task.examples(split)
        if examples is None:
            raise ValueError(f"task '{task.name}' has no {split} data; build the stream with a validation hold-out "
                             f"(benchmarks.holdout) to score on 'valid'")
        classes = None if bounds is None else bounds[t]
        key = (id(examples), task.head, id(task.decode), classes)
        if key not in scored:
            scored[key] = task_accuracy(model, task, split, device, classes=classes, workers=workers)
        if bounds is None:
            row.append(scored[key])
            til.append(row[-1])
        else:
            row.append(scored[key][0])
            til.append(scored[key][1])
    return (row, til) if task_il else row
