"""The learning-health check after each task: a run whose task stays at chance, or whose model answers one class
for most of the task's test data, has learned nothing there, and a table alone would not say so (BWT 0 and
forgetting 0 read as success). The check is a pure function of the task's accuracy and its predicted-class counts;
`predicted_counts` does the one extra forward pass over the task's test data it needs."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from clframework.models import forward_head

CHANCE_MARGIN = 0.05  # an accuracy within this of chance is at chance
ONE_CLASS_SHARE = 0.9  # one class predicted for at least this share of a task's test data
TRY = ("a learning rate 10x larger or smaller (--lr)", "more epochs (--epochs)")
# for a strategy that scores with a module it trains itself (eval_model): that training's own hyperparameters
TRY_SCORER = ("other hyperparameters for the strategy's own training (eval_model: e.g. GDumb's fit_lr, fit_epochs)",
              "a learning rate 10x larger or smaller for the stream network (--lr)")


class LearningHealthWarning(UserWarning):
    """A task learned nothing (clframework run and compare print it as one line)."""


def check(task_index: int, task_name: str, accuracy: float, n_classes: int, counts: Sequence[int],
          tips: Sequence[str] = TRY) -> Optional[dict]:
    """None when the task learned something; else what is wrong, as a record with its one-line `warning`.

    accuracy: the task's test accuracy right after training it, told which task it is (task-IL: in class-IL, an
    answer among its own classes, so that old classes taking some of its answers do not count as learning nothing);
    n_classes: its classes (chance = 1 / n_classes); counts: how often each class was predicted on its test data;
    tips: the two things the warning suggests trying (TRY_SCORER for a strategy's own scorer)."""
    if n_classes < 2:  # one class: no chance level to fall to, and its answers are all one class by design
        return None
    chance = 1.0 / n_classes
    total = sum(counts)
    top = max(range(len(counts)), key=lambda c: counts[c]) if total else None
    share = counts[top] / total if total else 0.0
    at_chance = accuracy <= chance + CHANCE_MARGIN
    one_class = share >= ONE_CLASS_SHARE
    if not (at_chance or one_class):
        return None
    what = [f"accuracy {accuracy:.2f}, not above chance ({chance:.2f})" if at_chance else f"accuracy {accuracy:.2f}"]
    if one_class:
        what.append(f"the model predicts class {top} for {share:.0%} of its test data")
    warning = (f"task {task_index + 1} ({task_name}) learned nothing: {', '.join(what)}; try {tips[0]} or {tips[1]}, "
               f"and check that the model learns this data in a plain loop")
    return {"task": task_index, "task_name": task_name, "accuracy": accuracy, "chance": chance,
            "top_class": top, "top_share": share, "warning": warning}


@torch.no_grad()
def predicted_counts(model, task, split: str, device: torch.device, batch_size: int = 2048, workers: int = 0,
                     classes: Optional[tuple] = None) -> list:
    """How often each output of the task's head is the prediction on the task's `split` data (eval mode); with
    `classes` = (first, end), the prediction among those outputs only (class-IL: the task-IL view)."""
    was_training = model.training
    model.eval()
    counts = None
    for xb, _ in task.batches(split, batch_size, device, workers=workers):
        out = forward_head(model, xb, task.head)
        pred = out.argmax(-1) if classes is None else out[:, classes[0]:classes[1]].argmax(-1) + classes[0]
        c = torch.bincount(pred, minlength=1)
        counts = c if counts is None else _add(counts, c)
    model.train(was_training)
    return [] if counts is None else counts.tolist()


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = max(len(a), len(b))
    return torch.nn.functional.pad(a, (0, n - len(a))) + torch.nn.functional.pad(b, (0, n - len(b)))
