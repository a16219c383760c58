"""Scenario builders: small, composable, seed-deterministic functions that turn a dataset into a task stream.

`split` partitions classes into tasks, `permuted` applies fixed pixel permutations, `holdout` carves a validation
set from each task's training data. Each builder takes a `setting`:
  task   - task-incremental: one head per task, labels local to the task (the paper's split protocols);
  domain - domain-incremental: one shared head, labels local to the task and reused across tasks;
  class  - class-incremental: one head over every class of the stream, labels global.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
    source: dict = field(default_factory=dict)  # what was read to make it (files, package, in-memory), for results

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
    info = {"class_order": [list(c) for _, _, c in parts]}
    sources = []
    for _, data, _ in parts:
        if data.source and data.source not in sources:
            sources.append(data.source)
    if sources:
        info["data_source"] = sources[0] if len(sources) == 1 else sources
    return Stream(name, tasks, heads, setting, info=info)


def _select(data: LabeledData, classes: Sequence[int]) -> LabeledData:
    cls = torch.tensor(list(classes))
    tr, te = torch.isin(data.train_y, cls), torch.isin(data.test_y, cls)
    return LabeledData(data.name, data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te], data.source)


def split(data: LabeledData, classes_per_task: int = 2, class_order: Optional[Sequence[int]] = None,
          n_tasks: Optional[int] = None, setting: str = "task", name: Optional[str] = None) -> Stream:
    """Partition the classes into consecutive blocks of `classes_per_task` along `class_order` (default: sorted)."""
    blocks = class_blocks(data, classes_per_task, class_order, n_tasks)
    parts = [("-".join(map(str, b)), _select(data, b), b) for b in blocks]
    return _assemble(name or f"split-{data.name}", parts, setting)


def class_blocks(data: LabeledData, classes_per_task: int, class_order: Optional[Sequence[int]] = None,
                 n_tasks: Optional[int] = None) -> List[List[int]]:
    """The classes of each task: consecutive blocks along `class_order`, checked against the data's classes."""
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
    return blocks


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
                           flat_te[:, perm].reshape(-1, *shape), data.test_y, data.source)
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
    out = Stream(stream.name, tasks, list(stream.head_sizes), stream.setting, stream.input_shape, dict(stream.info),
                 stream.protocol)
    out.info["validation"] = {"fraction": fraction, "seed": seed}
    return out


def split_cifar10_100(cifar10: LabeledData, cifar100: LabeledData, cifar100_tasks: int = 5,
                      classes_per_task: int = 10, setting: str = "task", name: Optional[str] = None) -> Stream:
    """The paper's split CIFAR-10/100 (Sec. 5.3): task 1 is all of CIFAR-10, then consecutive blocks of CIFAR-100.

    In the class setting CIFAR-10's classes take outputs 0-9 and each CIFAR-100 block the next ones.
    """
    blocks = class_blocks(cifar100, classes_per_task, n_tasks=cifar100_tasks)
    parts = [("cifar10", cifar10, cifar10.classes)]
    parts += [(f"cifar100[{b[0]}-{b[-1]}]", _select(cifar100, b), b) for b in blocks]
    stream = _assemble(name or "split-cifar10-100", parts, setting)
    stream.info["sources"] = ["cifar10"] + ["cifar100"] * len(blocks)
    return stream


def _as_inputs(x, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        raise ValueError(f"{what} must be floating point (already normalized, e.g. pixels / 255), got {x.dtype}")
    return x.float()


def _as_labels(y, what: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
        raise ValueError(f"{what} must be a 1-D tensor of integer class ids, got dtype {y.dtype} and shape "
                         f"{tuple(y.shape)}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{what} must be non-negative class ids, got {int(y.min())}")
    return y.long()


def from_tensors(train_x, train_y, test_x, test_y, name: str = "custom") -> LabeledData:
    """Your tensors (or numpy arrays) as a dataset that `split`, `permuted` and `holdout` accept."""
    data = LabeledData(name, _as_inputs(train_x, "train_x"), _as_labels(train_y, "train_y"),
                       _as_inputs(test_x, "test_x"), _as_labels(test_y, "test_y"),
                       {"in_memory": "from_tensors", "name": name})
    for part in ("train", "test"):
        x, y = getattr(data, f"{part}_x"), getattr(data, f"{part}_y")
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"{name}: {part} has {len(x)} inputs and {len(y)} labels; give the same, non-zero number")
    if data.train_x.shape[1:] != data.test_x.shape[1:]:
        raise ValueError(f"{name}: train inputs have shape {tuple(data.train_x.shape[1:])} but test inputs "
                         f"{tuple(data.test_x.shape[1:])}")
    return data


def materialize(dataset, batch_size: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """All (input, label) pairs of a torch Dataset as two tensors (extra item fields such as task labels ignored)."""
    from torch.utils.data import DataLoader

    xs, ys = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise ValueError(f"{type(dataset).__name__} must yield (input, label) pairs, "
                                 f"got {type(batch).__name__}")
            xs.append(batch[0])
            ys.append(torch.as_tensor(batch[1]))
    except TypeError as exc:
        raise ValueError(f"cannot stack the items of {type(dataset).__name__} into tensors ({exc}); give the dataset a "
                         f"transform that returns tensors, e.g. torchvision.transforms.ToTensor()") from None
    if not xs:
        raise ValueError(f"{type(dataset).__name__} is empty")
    return torch.cat(xs), torch.cat(ys)


def from_dataset(train, test, name: str = "custom", batch_size: int = 1024) -> LabeledData:
    """Any torch Datasets yielding (input tensor, class id), read once into memory (transforms applied once)."""
    data = from_tensors(*materialize(train, batch_size), *materialize(test, batch_size), name=name)
    data.source = {"in_memory": "from_dataset", "name": name, "train": type(train).__name__,
                   "test": type(test).__name__}
    return data


def from_task_data(tasks: Sequence[LabeledData], setting: str = "task", name: str = "custom",
                   task_names: Optional[Sequence[str]] = None) -> Stream:
    """A stream whose tasks you already split: one LabeledData per task (e.g. from `from_tensors`).

    Each task's classes are its distinct labels, in sorted order; in the task and domain settings they map to
    outputs 0..k-1 of the task's (or the shared) head, in the class setting every task adds its own k outputs.
    """
    if not tasks:
        raise ValueError("give at least one task")
    names = list(task_names) if task_names is not None else [f"task{i}" for i in range(len(tasks))]
    if len(names) != len(tasks):
        raise ValueError(f"{len(tasks)} tasks but {len(names)} task names")
    parts = [(n, d, sorted(set(d.train_y.tolist()))) for n, d in zip(names, tasks)]
    for n, d, classes in parts:
        extra = sorted(set(d.test_y.tolist()) - set(classes))
        if extra:
            raise ValueError(f"task '{n}': test labels {extra} never occur in its training data")
    return _assemble(name, parts, setting)
