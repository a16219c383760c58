"""Scores a model on every task of a stream: one row of the accuracy matrix."""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from clframework.models import forward_head


@torch.no_grad()
def task_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, head: int, device: torch.device,
                  batch_size: int = 2048) -> float:
    """Accuracy of the model's prediction on `head` (the task's own head in multi-head settings)."""
    if len(y) == 0:
        raise ValueError("cannot score a task with no examples")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device, non_blocking=True), y[i:i + batch_size].to(device)
        correct += (forward_head(model, xb, head).argmax(-1) == yb).sum()
    model.train(was_training)
    return correct.item() / len(y)


def evaluate_stream(model: nn.Module, stream, device: torch.device, split: str = "test") -> List[float]:
    """Accuracy on every task of the stream (trained or not): a row R[i, :] of the accuracy matrix."""
    row = []
    for task in stream.tasks:
        x, y = getattr(task, f"{split}_x"), getattr(task, f"{split}_y")
        if x is None:
            raise ValueError(f"task '{task.name}' has no {split} data; build the stream with a validation hold-out "
                             f"(benchmarks.holdout) to score on 'valid'")
        row.append(task_accuracy(model, x, y, task.head, device))
    return row
