"""Task streams: the objects every strategy trains on and every evaluator scores.

A task holds its data as tensors (inputs already normalized, labels already mapped to its head's outputs), so the
trainer can batch by index permutation with no per-sample Python. `head` says which output head of the model the
task uses; single-head settings put every task on head 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import torch

if TYPE_CHECKING:
    from .registry import Protocol

SETTINGS = ("task", "domain", "class")  # task-, domain-, class-incremental


@dataclass
class Task:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: Tuple[int, ...]
    head: int = 0
    valid_x: torch.Tensor | None = None
    valid_y: torch.Tensor | None = None

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if len(x) != len(y):
                raise ValueError(f"task '{self.name}': {split} has {len(x)} inputs but {len(y)} labels")
            if y.dtype != torch.long:
                setattr(self, f"{split}_y", y.long())

    @property
    def train(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.train_x, self.train_y

    @property
    def test(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.test_x, self.test_y


@dataclass
class Stream:
    """An ordered list of tasks plus what a model needs to know to serve them.

    protocol: how to train on it (a benchmarks.Protocol: model, epochs, optimizer recipe, strategy presets), which
    run() and compare() use for a stream of your own when no registered benchmark is named; None: Protocol()'s
    defaults."""

    name: str
    tasks: List[Task]
    head_sizes: List[int]
    setting: str = "task"
    input_shape: Tuple[int, ...] = ()
    info: dict = field(default_factory=dict)
    protocol: Optional["Protocol"] = None

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}")
        if not self.tasks:
            raise ValueError(f"stream '{self.name}' has no tasks")
        if not self.input_shape:
            self.input_shape = tuple(self.tasks[0].train_x.shape[1:])
        for t in self.tasks:
            if not 0 <= t.head < len(self.head_sizes):
                raise ValueError(f"task '{t.name}' uses head {t.head} but the stream has {len(self.head_sizes)} heads")

    @property
    def multi_head(self) -> bool:
        return len(self.head_sizes) > 1

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, i):
        return self.tasks[i]

    def validate(self) -> None:
        """Check the data before training (once per stream): every task has training and test examples of at least
        two classes, labels within its head's outputs, and finite inputs. ValueError names the task and the fix."""
        if self.info.get("_validated"):
            return
        for t in self.tasks:
            size = self.head_sizes[t.head]
            for split in ("train", "test", "valid"):
                x, y = getattr(t, f"{split}_x"), getattr(t, f"{split}_y")
                if x is None:
                    continue
                if len(y) == 0:
                    raise ValueError(f"task '{t.name}' has no {split} examples; every task needs training and test "
                                     f"data")
                low, high = int(y.min()), int(y.max())
                if low < 0 or high >= size:
                    raise ValueError(f"task '{t.name}': {split} labels range over [{low}, {high}] but its head "
                                     f"{t.head} has {size} outputs; labels must be 0..{size - 1} (map them to the "
                                     f"head's outputs)")
                if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                    bad = int((~torch.isfinite(x)).flatten(1).any(1).sum()) if x.dim() > 1 else -1
                    raise ValueError(f"task '{t.name}': {bad} {split} input(s) contain NaN or infinity; clean or "
                                     f"drop them before training")
            if len(torch.unique(t.train_y)) < 2:
                raise ValueError(f"task '{t.name}' has training examples of a single class "
                                 f"({int(t.train_y[0])}); a task needs at least two classes to learn anything")
        self.info["_validated"] = True

    def subset(self, indices: Sequence[int]) -> "Stream":
        info = {k: v for k, v in self.info.items() if k != "_validated"}
        return Stream(self.name, [self.tasks[i] for i in indices], self.head_sizes, self.setting, self.input_shape,
                      info, self.protocol)

    def first(self, n: int) -> "Stream":
        """The first `n` tasks, with only the outputs they use: the heads of those tasks (task setting), or the
        classes they bring (class setting); the same stream a builder makes when asked for `n` tasks."""
        if not 1 <= n <= len(self.tasks):
            raise ValueError(f"{self.name} has {len(self.tasks)} tasks; the number of tasks must be between 1 and "
                             f"{len(self.tasks)}, got {n}")
        tasks = self.tasks[:n]
        if self.setting == "class":
            heads = [sum(len(t.classes) for t in tasks)]
        else:
            heads = list(self.head_sizes[:max(t.head for t in tasks) + 1])
        info = {k: v for k, v in self.info.items() if k != "_validated"}
        return Stream(self.name, tasks, heads, self.setting, self.input_shape, info, self.protocol)
