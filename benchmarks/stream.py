"""Task streams: the objects every strategy trains on and every evaluator scores.

How a task holds its data (the interface other code builds on)
--------------------------------------------------------------
Each split of a task (train, test, optional valid) is an `Examples`: its labels (a LongTensor in memory, already
mapped to the task's head outputs) and its inputs in their *stored form*, the "raw" examples:

- `TensorExamples`: a tensor in memory, e.g. uint8 images shared by every task cut from the same dataset, plus
  optional `rows` (which rows of the shared tensor this split uses) and `features` (a permutation of the flattened
  features, applied per minibatch: a permuted stream stores its images once and one index permutation per task);
- `DatasetExamples`: a map-style dataset (image files, a NumPy memory-mapped array, ...) whose item `i` is one raw
  example as a tensor; training and evaluation read it through `torch.utils.data.DataLoader` worker processes.

`Task.decode` turns raw minibatches into model inputs on the device (e.g. `Normalize`: uint8 -> float / 255, then
per-channel standardization); None when the stored form already is the model input. Every task of a stream decodes
the same way, so a memory may hold raw examples of several tasks and decode them with any task's function.

What code outside the trainer uses:
- `task.batches(split, batch_size, device, raw=False, limit=0)`: (inputs, labels) minibatches on `device` in order,
  decoded (no augmentation: EWC's Fisher, MAS, LwF and the evaluator see exactly the model inputs), or with
  `raw=True` the stored form (what replay memories keep; decode it later with `batch.inputs(raw)` or `task.decode`).
- `task.train_y` / `test_y` / `valid_y`: the labels; `task.n("train")`: the number of examples;
- `task.train_x` / `test_x` / `valid_x`: the whole split decoded as one float tensor (small data and tests only: it
  materializes what the compact storage saves).
- The trainer draws each epoch's order from the run's generator, fetches raw minibatches (`Examples.minibatches`: an
  index gather in memory, a DataLoader over the same order for datasets), moves them to the device and builds the
  model input through ONE function, `compose(task.decode, augment)`; the hooks get
  `Batch(x, y, head, raw=raw, prepare=that function)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch

if TYPE_CHECKING:
    from .registry import Protocol

SETTINGS = ("task", "domain", "class")  # task-, domain-, class-incremental
SPLITS = ("train", "test", "valid")

Decode = Callable[[torch.Tensor], torch.Tensor]
Index = Union[torch.Tensor, slice]


@lru_cache(maxsize=None)
def _channel_stats(values: Tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


@dataclass(frozen=True)
class Normalize:
    """Stored pixels -> float model inputs: `x / scale`, then per channel (dim 1) `(x - mean) / std` when given.

    The same float operations, in the same order, as normalizing the whole dataset once, so the inputs are bit for
    bit those of an eagerly normalized copy."""

    scale: float = 255.0
    mean: Tuple[float, ...] = ()
    std: Tuple[float, ...] = ()

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.to(torch.float32).div_(self.scale) if not raw.is_floating_point() else raw.div(self.scale)
        if self.mean:
            shape = (1, len(self.mean)) + (1,) * (x.dim() - 2)
            x.sub_(_channel_stats(self.mean, x.device).view(shape)).div_(_channel_stats(self.std, x.device).view(shape))
        return x


def decode_record(decode: Optional[Decode]):
    """How results.json records a stream's decode, so a trained run can take the stored form: Normalize's fields,
    None (the stored form is the model input), or the name of a function of your own (not rebuilt from the name)."""
    if decode is None:
        return None
    if isinstance(decode, Normalize):
        return {"scale": decode.scale, "mean": list(decode.mean), "std": list(decode.std)}
    return f"{getattr(decode, '__module__', '?')}:{getattr(decode, '__qualname__', type(decode).__qualname__)}"


def compose(decode: Optional[Decode], augment: Optional[Decode] = None) -> Optional[Decode]:
    """The one function from raw minibatch to model input: `augment(decode(raw))` (None: the raw form is the input)."""
    if decode is None or augment is None:
        return decode if augment is None else augment
    return lambda raw: augment(decode(raw))


def _on(t: torch.Tensor, device) -> bool:
    device = torch.device(device)
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def _as_index(idx) -> Index:
    return idx if isinstance(idx, slice) else torch.as_tensor(idx, dtype=torch.long)


class Examples:
    """One split of a task: labels `y` in memory and the inputs' stored form, selected by `rows` and viewed through
    `features` (see the module docstring). Subclasses say how rows are fetched."""

    in_memory = True

    def __init__(self, y: torch.Tensor, rows: Optional[torch.Tensor] = None, features: Optional[torch.Tensor] = None):
        self.y = y if y.dtype == torch.long else y.long()
        self.rows, self.features = rows, features
        if rows is not None and len(rows) != len(self.y):
            raise ValueError(f"{len(rows)} rows selected but {len(self.y)} labels given")

    def __len__(self) -> int:
        return len(self.y)

    # -- what subclasses provide ---------------------------------------------------------------------------------
    def _fetch(self, rows: Index) -> torch.Tensor:
        raise NotImplementedError

    def _replace(self, **changes) -> "Examples":
        raise NotImplementedError

    def minibatches(self, order: torch.Tensor, start: int, batch_size: int, device: torch.device,
                    workers: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(raw, labels) on `device` for the chunks of `order` from chunk `start` on."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------------------
    def _view(self, raw: torch.Tensor) -> torch.Tensor:
        if self.features is None:
            return raw
        return raw.flatten(1).index_select(1, self.features.to(raw.device)).reshape(raw.shape)

    def _rows_of(self, idx: Index) -> Index:
        return idx if self.rows is None else self.rows[idx]

    def raw(self, idx: Index = slice(None)) -> torch.Tensor:
        """The stored form of examples `idx` (a slice or index tensor)."""
        return self._view(self._fetch(self._rows_of(_as_index(idx))))

    def take(self, idx, y: Optional[torch.Tensor] = None) -> "Examples":
        """The examples `idx` (sharing the stored data), optionally with new labels `y`."""
        idx = _as_index(idx)
        base = torch.arange(len(self.y)) if self.rows is None else self.rows
        return self._replace(y=self.y[idx] if y is None else y, rows=base[idx])

    def relabel(self, y: torch.Tensor) -> "Examples":
        return self._replace(y=y, rows=self.rows)

    def permute_features(self, features: Optional[torch.Tensor]) -> "Examples":
        return self._replace(y=self.y, rows=self.rows, features=features)

    def on(self, device) -> "Examples":
        """These examples ready to be read on `device` (in memory: stored tensors moved there, once)."""
        return self

    def shape(self) -> Tuple[int, ...]:
        """The shape of one stored example."""
        return tuple(self.raw(slice(0, 1)).shape[1:])

    def batches(self, batch_size: int, device: torch.device, limit: int = 0,
                workers: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(raw, labels) on `device`, in order; `limit` > 0: the first `limit` examples only."""
        n = len(self) if limit <= 0 else min(limit, len(self))
        return self.minibatches(torch.arange(n), 0, batch_size, torch.device(device), workers)


class TensorExamples(Examples):
    """Examples stored in a tensor `x` (shared by every split that selects rows of it)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, rows: Optional[torch.Tensor] = None,
                 features: Optional[torch.Tensor] = None):
        super().__init__(y, rows, features)
        self.x = x
        if rows is None and len(x) != len(self.y):
            raise ValueError(f"{len(x)} inputs but {len(self.y)} labels")

    def _fetch(self, rows: Index) -> torch.Tensor:
        return self.x[rows]

    def _replace(self, **changes) -> "TensorExamples":
        kw = {"x": self.x, "y": self.y, "rows": self.rows, "features": self.features, **changes}
        return TensorExamples(**kw)

    def to(self, device: torch.device) -> "TensorExamples":
        """These examples with their stored tensors on `device` (itself when already there)."""
        if _on(self.x, device) and _on(self.y, device):
            return self
        move = (lambda t: None if t is None else t.to(device))
        return TensorExamples(self.x.to(device), self.y.to(device), move(self.rows), move(self.features))

    on = to

    def _stored(self, rows: Index) -> torch.Tensor:
        """`raw` for rows known to be a slice or non-negative indices (minibatches, batches): `index_select`, on the
        CPU over ten times faster than indexing a [N, C, H, W] tensor with a tensor (which also takes negative
        indices)."""
        return self._view(self.x[rows] if isinstance(rows, slice) else self.x.index_select(0, rows))

    def minibatches(self, order, start, batch_size, device, workers=0):
        src = self.to(device)
        order = order.to(device)
        for i in range(start * batch_size, len(order), batch_size):
            idx = order[i:i + batch_size]
            rows = idx if src.rows is None else src.rows.index_select(0, idx)
            yield src._stored(rows), src.y.index_select(0, idx)

    def batches(self, batch_size, device, limit=0, workers=0):
        n = len(self) if limit <= 0 else min(limit, len(self))
        for i in range(0, n, batch_size):  # slices: views of the stored tensor where no rows are selected
            part = slice(i, min(i + batch_size, n))
            rows = part if self.rows is None else self.rows[part]
            yield self._stored(rows).to(device), self.y[part].to(device)


class _Rows(torch.utils.data.Dataset):
    """The rows of a map-style dataset that a split selects, each item its raw tensor (a pair's first element)."""

    def __init__(self, dataset, rows: Optional[torch.Tensor]):
        self.dataset, self.rows = dataset, None if rows is None else rows.tolist()

    def __len__(self):
        return len(self.dataset) if self.rows is None else len(self.rows)

    def __getitem__(self, i):
        item = self.dataset[i if self.rows is None else self.rows[i]]
        return torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item)


class DatasetExamples(Examples):
    """Examples read from a map-style dataset (item i: the raw example, a tensor of one fixed shape) through
    DataLoader workers; per-example transforms belong in the dataset and run in the workers. They must be
    deterministic (decoding, resizing): random augmentation goes in the trainer's `augment`, drawn from the run's
    checkpointed generator, so a resumed run equals an uninterrupted one."""

    in_memory = False

    def __init__(self, dataset, y: torch.Tensor, rows: Optional[torch.Tensor] = None,
                 features: Optional[torch.Tensor] = None):
        super().__init__(torch.as_tensor(y), rows, features)
        self.dataset = dataset
        if rows is None and len(dataset) != len(self.y):
            raise ValueError(f"the dataset has {len(dataset)} items but {len(self.y)} labels were given")

    def _fetch(self, rows: Index) -> torch.Tensor:
        picked = range(len(self.dataset))[rows] if isinstance(rows, slice) else rows.tolist()
        return torch.stack([_Rows(self.dataset, None)[int(i)] for i in picked])

    def _replace(self, **changes) -> "DatasetExamples":
        kw = {"dataset": self.dataset, "y": self.y, "rows": self.rows, "features": self.features, **changes}
        return DatasetExamples(**kw)

    def loader(self, chunks: Sequence[torch.Tensor], device: torch.device, workers: int = 0):
        """A DataLoader yielding the raw examples of each index chunk, in order (pinned memory and prefetching on
        CUDA)."""
        from torch.utils.data import DataLoader

        cuda = torch.device(device).type == "cuda"
        return DataLoader(_Rows(self.dataset, self.rows), batch_sampler=[c.tolist() for c in chunks],
                          num_workers=workers, pin_memory=cuda, prefetch_factor=4 if workers else None,
                          persistent_workers=False)

    def minibatches(self, order, start, batch_size, device, workers=0):
        chunks = list(order.cpu().split(batch_size))[start:]
        for idx, raw in zip(chunks, self.loader(chunks, device, workers)):
            yield self._view(raw).to(device, non_blocking=True), self.y[idx].to(device, non_blocking=True)


def as_examples(x, y) -> Optional[Examples]:
    """Tensors (x, y) as TensorExamples; an Examples as it is; (None, None) as None."""
    if isinstance(x, Examples):
        return x
    if x is None:
        if y is not None:
            raise ValueError("labels given without inputs")
        return None
    if y is None:
        raise ValueError("inputs given without labels")
    return TensorExamples(torch.as_tensor(x), torch.as_tensor(y))


class Task:
    """One task: its splits (`Examples`), the classes it brings, its output head and how raw inputs are decoded.

    `Task(name, train_x, train_y, test_x, test_y, classes, head, valid_x, valid_y, decode=...)` takes tensors (the
    stored form: model inputs, or compact data that `decode` turns into model inputs) or, in place of each `*_x`,
    an `Examples` whose labels are used (its `*_y` then None). class_names: the names of `classes`, in their
    order, where the data has them (an ImageFolder tree's folder names); recorded in results.json.
    """

    def __init__(self, name: str, train_x, train_y, test_x, test_y, classes: Sequence[int], head: int = 0,
                 valid_x=None, valid_y=None, decode: Optional[Decode] = None,
                 class_names: Optional[Sequence[str]] = None):
        self.name, self.classes, self.head, self.decode = name, tuple(classes), head, decode
        self.class_names = tuple(class_names) if class_names is not None else None
        if self.class_names is not None and len(self.class_names) != len(self.classes):
            raise ValueError(f"task '{name}': {len(self.class_names)} class names for {len(self.classes)} classes")
        self.splits = {}
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y), ("valid", valid_x, valid_y)):
            try:
                self.splits[split] = as_examples(x, y)
            except ValueError as exc:
                raise ValueError(f"task '{name}': {split}: {exc}") from None
        if self.splits["train"] is None or self.splits["test"] is None:
            raise ValueError(f"task '{name}' needs training and test data")

    def examples(self, split: str = "train") -> Optional[Examples]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
        return self.splits[split]

    def n(self, split: str = "train") -> int:
        ex = self.examples(split)
        return 0 if ex is None else len(ex)

    @property
    def in_memory(self) -> bool:
        return all(ex.in_memory for ex in self.splits.values() if ex is not None)

    def inputs(self, raw: torch.Tensor) -> torch.Tensor:
        """Model inputs (no augmentation) for raw examples of this task."""
        return raw if self.decode is None else self.decode(raw)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return tuple(self.inputs(self.splits["train"].raw(slice(0, 1))).shape[1:])

    def batches(self, split: str = "train", batch_size: int = 1024, device="cpu", raw: bool = False,
                limit: int = 0, workers: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, labels) minibatches of a split on `device`, in stored order: decoded model inputs, or with
        raw=True the stored form. `limit` > 0: the first `limit` examples."""
        ex = self.examples(split)
        if ex is None:
            raise ValueError(f"task '{self.name}' has no {split} data")
        for r, y in ex.batches(batch_size, device, limit, workers):
            yield (r if raw else self.inputs(r)), y

    def _whole(self, split: str) -> Optional[torch.Tensor]:
        ex = self.splits[split]
        return None if ex is None else self.inputs(ex.raw())

    def _labels(self, split: str) -> Optional[torch.Tensor]:
        ex = self.splits[split]
        return None if ex is None else ex.y

    train_x = property(lambda self: self._whole("train"), doc="The whole training split decoded (small data only).")
    test_x = property(lambda self: self._whole("test"), doc="The whole test split decoded (small data only).")
    valid_x = property(lambda self: self._whole("valid"), doc="The validation split decoded, or None.")
    train_y = property(lambda self: self._labels("train"))
    test_y = property(lambda self: self._labels("test"))
    valid_y = property(lambda self: self._labels("valid"))

    @property
    def train(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.train_x, self.train_y

    @property
    def test(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.test_x, self.test_y

    def with_splits(self, **splits: Optional[Examples]) -> "Task":
        """The same task with some splits replaced (e.g. train=..., valid=... for a hold-out)."""
        s = {**self.splits, **splits}
        return Task(self.name, s["train"], None, s["test"], None, self.classes, self.head, s["valid"], None,
                    self.decode, self.class_names)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items() if v is not None)
        return f"Task({self.name!r}, {sizes}, classes={self.classes}, head={self.head})"


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
            self.input_shape = self.tasks[0].input_shape
        for t in self.tasks:
            if not 0 <= t.head < len(self.head_sizes):
                raise ValueError(f"task '{t.name}' uses head {t.head} but the stream has {len(self.head_sizes)} heads")

    @property
    def multi_head(self) -> bool:
        return len(self.head_sizes) > 1

    @property
    def task_free(self) -> bool:
        """A task-free stream (benchmarks/taskfree.py): its tasks are consecutive stretches of one stream, trained in
        their stored order, once, with no boundary shown to the strategy; each scores its own test data."""
        return bool(self.info.get("task_free"))

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
        two classes, labels within its head's outputs, and finite inputs (stored in memory as floats; data read
        from disk are checked as they are read). ValueError names the task and the fix."""
        if self.info.get("_validated"):
            return
        for t in self.tasks:
            size = self.head_sizes[t.head]
            for split in SPLITS:
                ex = t.examples(split)
                if ex is None:
                    continue
                y = ex.y
                if len(y) == 0:
                    raise ValueError(f"task '{t.name}' has no {split} examples; every task needs training and test "
                                     f"data")
                low, high = int(y.min()), int(y.max())
                if low < 0 or high >= size:
                    raise ValueError(f"task '{t.name}': {split} labels range over [{low}, {high}] but its head "
                                     f"{t.head} has {size} outputs; labels must be 0..{size - 1} (map them to the "
                                     f"head's outputs)")
                if isinstance(ex, TensorExamples) and ex.x.is_floating_point():
                    x = ex.x if ex.rows is None else ex.x[ex.rows]
                    if not bool(torch.isfinite(x).all()):
                        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum()) if x.dim() > 1 else -1
                        raise ValueError(f"task '{t.name}': {bad} {split} input(s) contain NaN or infinity; clean "
                                         f"or drop them before training")
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
        if self.task_free:  # a stretch may hold examples of later tasks' classes: every output stays
            heads = list(self.head_sizes)
        elif self.setting == "class":
            heads = [sum(len(t.classes) for t in tasks)]
        else:
            heads = list(self.head_sizes[:max(t.head for t in tasks) + 1])
        info = {k: v for k, v in self.info.items() if k != "_validated"}
        return Stream(self.name, tasks, heads, self.setting, self.input_shape, info, self.protocol)
