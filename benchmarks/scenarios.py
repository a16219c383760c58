"""Scenario builders: small, composable, seed-deterministic functions that turn a dataset into a task stream.

`split` partitions classes into tasks, `permuted` applies fixed pixel permutations, `holdout` carves a validation
set from each task's training data. Each builder takes a `setting`:
  task   - task-incremental: one head per task, labels local to the task (the paper's split protocols);
  domain - domain-incremental: one shared head, labels local to the task and reused across tasks;
  class  - class-incremental: one head over every class of the stream, labels global.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .stream import SETTINGS, Stream, Task


@dataclass
class LabeledData:
    """A dataset already in memory: normalized float inputs and integer class labels for train and test."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def classes(self) -> List[int]:
        return sorted(set(self.train_y.tolist()) | set(self.test_y.tolist()))


def _check_setting(setting: str) -> None:
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)} "
                         f"(task-, domain- or class-incremental)")


def _assemble(name: str, parts: List[Tuple[str, LabeledData, Sequence[int]]], setting: str,
              class_offsets: Optional[List[int]] = None) -> Stream:
    """Map each part's labels to heads for the setting. A part is (task name, its data, its classes in order)."""
    _check_setting(setting)
    tasks, offset = [], 0
    sizes = [len(classes) for _, _, classes in parts]
    for i, (tname, data, classes) in enumerate(parts):
        lookup = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(list(classes))] = torch.arange(len(classes))
        base = offset if setting == "class" else 0
        tasks.append(Task(tname, data.train_x, lookup[data.train_y] + base, data.test_x, lookup[data.test_y] + base,
                          tuple(int(c) for c in classes), head=i if setting == "task" else 0))
        offset += len(classes)
    heads = {"task": sizes, "domain": [max(sizes)], "class": [sum(sizes)]}[setting]
    return Stream(name, tasks, heads, setting, info={"class_order": [list(c) for _, _, c in parts]})


def _select(data: LabeledData, classes: Sequence[int]) -> LabeledData:
    cls = torch.tensor(list(classes))
    tr, te = torch.isin(data.train_y, cls), torch.isin(data.test_y, cls)
    return LabeledData(data.name, data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te])


def split(data: LabeledData, classes_per_task: int = 2, class_order: Optional[Sequence[int]] = None,
          n_tasks: Optional[int] = None, setting: str = "task", name: Optional[str] = None) -> Stream:
    """Partition the classes into consecutive blocks of `classes_per_task` along `class_order` (default: sorted)."""
    available = data.classes
    order = list(class_order) if class_order is not None else available
    unknown = sorted(set(order) - set(available))
    if unknown:
        raise ValueError(f"class_order names classes {unknown} that {data.name} does not have; its classes: {available}")
    if len(set(order)) != len(order):
        raise ValueError("class_order repeats a class; each class may belong to one task only")
    if classes_per_task < 1 or len(order) % classes_per_task:
        raise ValueError(f"{len(order)} classes cannot be divided into tasks of {classes_per_task}; "
                         f"choose classes_per_task dividing {len(order)} or give a class_order of matching length")
    blocks = [order[i:i + classes_per_task] for i in range(0, len(order), classes_per_task)]
    if n_tasks is not None:
        if not 1 <= n_tasks <= len(blocks):
            raise ValueError(f"n_tasks must be between 1 and {len(blocks)} for {data.name}, got {n_tasks}")
        blocks = blocks[:n_tasks]
    parts = [("-".join(map(str, b)), _select(data, b), b) for b in blocks]
    return _assemble(name or f"split-{data.name}", parts, setting)


def permutations(n_tasks: int, n_features: int, seed: int, keep_first: bool = False) -> List[torch.Tensor]:
    """`n_tasks` fixed random permutations of the input features, reproducible from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n_features, generator=gen) for _ in range(n_tasks)]
    if keep_first:
        perms[0] = torch.arange(n_features)
    return perms


def permuted(data: LabeledData, n_tasks: int = 10, seed: int = 0, keep_first: bool = False,
             setting: str = "domain", name: Optional[str] = None) -> Stream:
    """Every task is the whole dataset under its own pixel permutation (same one for train and test)."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be at least 1, got {n_tasks}")
    shape = data.train_x.shape[1:]
    flat_tr, flat_te = data.train_x.reshape(len(data.train_x), -1), data.test_x.reshape(len(data.test_x), -1)
    classes = data.classes
    parts = []
    for t, perm in enumerate(permutations(n_tasks, flat_tr.shape[1], seed, keep_first)):
        part = LabeledData(data.name, flat_tr[:, perm].reshape(-1, *shape), data.train_y,
                           flat_te[:, perm].reshape(-1, *shape), data.test_y)
        parts.append((f"perm{t}", part, classes))
    stream = _assemble(name or f"permuted-{data.name}", parts, setting)
    stream.info["permutation_seed"] = seed
    return stream


def holdout(stream: Stream, fraction: float = 0.1, seed: int = 0) -> Stream:
    """Move a random `fraction` of each task's training data into its validation set (for hyperparameter search)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for t in stream.tasks:
        idx = torch.randperm(len(t.train_y), generator=gen)
        n_valid = max(1, int(round(fraction * len(idx))))
        v, tr = idx[:n_valid], idx[n_valid:]
        tasks.append(Task(t.name, t.train_x[tr], t.train_y[tr], t.test_x, t.test_y, t.classes, t.head,
                          t.train_x[v], t.train_y[v]))
    out = Stream(stream.name, tasks, list(stream.head_sizes), stream.setting, stream.input_shape, dict(stream.info))
    out.info["validation"] = {"fraction": fraction, "seed": seed}
    return out
