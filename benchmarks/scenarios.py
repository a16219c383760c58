"""Scenario builders: small, composable, seed-deterministic functions that turn a dataset into a task stream.

`split` partitions classes into tasks, `permuted` applies fixed pixel permutations, `holdout` carves a validation
set from each task's training data. Each builder takes a `setting`:
  task   - task-incremental: one head per task, labels local to the task (the paper's split protocols);
  domain - domain-incremental: one shared head, labels local to the task and reused across tasks;
  class  - class-incremental: one head over every class of the stream, labels global.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

from .stream import SETTINGS, Decode, Examples, Normalize, Stream, Task, as_examples


class LabeledData:
    """A dataset: train and test `Examples` (inputs in their stored form, integer class labels) and `decode`, which
    turns stored inputs into model inputs (None: stored as model inputs, e.g. normalized floats).

    `LabeledData(name, train_x, train_y, test_x, test_y, source, decode)` takes tensors; `train=` / `test=` take
    `Examples` directly (e.g. `DatasetExamples` over files on disk). `train_x` / `test_x` are the whole splits
    decoded (small data only). class_names: the name of each class id (class_names[c]), where the data has names:
    `split` then names its tasks by them and results.json records them."""

    def __init__(self, name: str, train_x=None, train_y=None, test_x=None, test_y=None, source: Optional[dict] = None,
                 decode: Optional[Decode] = None, *, train: Optional[Examples] = None,
                 test: Optional[Examples] = None, class_names: Optional[Sequence[str]] = None):
        self.name, self.source, self.decode = name, dict(source or {}), decode
        self.class_names = list(class_names) if class_names is not None else None
        self.train = train if train is not None else as_examples(train_x, train_y)
        self.test = test if test is not None else as_examples(test_x, test_y)

    def _decoded(self, ex: Examples) -> torch.Tensor:
        raw = ex.raw()
        return raw if self.decode is None else self.decode(raw)

    train_x = property(lambda self: self._decoded(self.train))
    test_x = property(lambda self: self._decoded(self.test))
    train_y = property(lambda self: self.train.y)
    test_y = property(lambda self: self.test.y)

    @property
    def classes(self) -> List[int]:
        return sorted(set(self.train.y.tolist()) | set(self.test.y.tolist()))

    def with_examples(self, train: Examples, test: Examples) -> "LabeledData":
        return LabeledData(self.name, source=self.source, decode=self.decode, train=train, test=test,
                           class_names=self.class_names)

    def names_of(self, classes: Sequence[int]) -> Optional[List[str]]:
        """The names of these class ids (None: the data has no names)."""
        return None if self.class_names is None else [str(self.class_names[c]) for c in classes]


def _check_setting(setting: str) -> None:
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)} "
                         f"(task-, domain- or class-incremental)")


def _common_decode(parts: List[Tuple[str, LabeledData, Sequence[int]]]) -> List[Tuple[str, LabeledData,
                                                                                     Sequence[int]]]:
    """Parts whose data decode differently (e.g. CIFAR-10 and CIFAR-100, each standardized with its own statistics)
    are decoded once into float tensors, so every task of a stream decodes the same way (a memory holding raw
    examples of several tasks decodes them with any task's function)."""
    if len({id(d.decode) if not isinstance(d.decode, Normalize) else d.decode for _, d, _ in parts}) <= 1:
        return parts
    out = []
    for tname, data, classes in parts:
        if not (data.train.in_memory and data.test.in_memory):
            raise ValueError(f"the tasks of one stream must decode their stored inputs the same way; task "
                             f"'{tname}' reads {data.name} from disk with a different decoding than the others")
        out.append((tname, LabeledData(data.name, data.train_x, data.train_y, data.test_x, data.test_y,
                                       data.source, class_names=data.class_names), classes))
    return out


def _assemble(name: str, parts: List[Tuple[str, LabeledData, Sequence[int]]], setting: str) -> Stream:
    """Map each part's labels to heads for the setting. A part is (task name, its data, its classes in order)."""
    _check_setting(setting)
    parts = _common_decode(parts)
    tasks, offset = [], 0
    sizes = [len(classes) for _, _, classes in parts]
    for i, (tname, data, classes) in enumerate(parts):
        lookup = torch.full((int(max(classes)) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(list(classes))] = torch.arange(len(classes))
        base = offset if setting == "class" else 0
        train, test = (ex.relabel(lookup[ex.y] + base) for ex in (data.train, data.test))
        tasks.append(Task(tname, train, None, test, None, tuple(int(c) for c in classes),
                          head=i if setting == "task" else 0, decode=data.decode, class_names=data.names_of(classes)))
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
    """The examples of `classes` (rows of the same stored data, no copy)."""
    cls = torch.tensor(list(classes))
    return data.with_examples(*(ex.take(torch.isin(ex.y, cls).nonzero().squeeze(1)) for ex in (data.train, data.test)))


def split(data: LabeledData, classes_per_task: int = 2, class_order: Optional[Sequence[int]] = None,
          n_tasks: Optional[int] = None, setting: str = "task", name: Optional[str] = None) -> Stream:
    """Partition the classes into consecutive blocks of `classes_per_task` along `class_order` (default: sorted).
    Each task is named by its classes: their names where the data has them (`cat-dog`; more than NAMED_IN_FULL:
    the first and last, `cat..owl`), else their ids (`0-1`)."""
    blocks = class_blocks(data, classes_per_task, class_order, n_tasks)
    parts = [(_task_name(data, b), _select(data, b), b) for b in blocks]
    return _assemble(name or f"split-{data.name}", parts, setting)


NAMED_IN_FULL = 3  # a task of more named classes is named by its first and last (ImageNet-R: 20 wnids a task)


def _task_name(data: LabeledData, block: Sequence[int]) -> str:
    names = data.names_of(block)
    if names is None:
        return "-".join(map(str, block))
    return "-".join(names) if len(names) <= NAMED_IN_FULL else f"{names[0]}..{names[-1]}"


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
    """Every task is the whole dataset under its own pixel permutation (same one for train and test).

    Lazy: the tasks share the stored data and each keeps only its permutation, applied per minibatch (to the stored
    form, which `decode` then converts elementwise, so the inputs equal those of permuting decoded images). A decode
    that is not elementwise (per-channel standardization) is applied once up front instead."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be at least 1, got {n_tasks}")
    if data.decode is not None and not (isinstance(data.decode, Normalize) and not data.decode.mean):
        data = LabeledData(data.name, data.train_x, data.train_y, data.test_x, data.test_y, data.source,
                           class_names=data.class_names)
    n_features = math.prod(data.train.shape())
    classes = data.classes
    parts = []
    for t, perm in enumerate(permutations(n_tasks, n_features, seed, keep_first)):
        view = None if keep_first and t == 0 else perm
        part = data.with_examples(data.train.permute_features(view), data.test.permute_features(view))
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
        train = t.examples("train")
        idx = torch.randperm(len(train), generator=gen)
        n_valid = max(1, int(round(fraction * len(idx))))
        v, tr = idx[:n_valid], idx[n_valid:]
        tasks.append(t.with_splits(train=train.take(tr), valid=train.take(v)))
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


def _as_inputs(x, what: str, decode: Optional[Decode] = None) -> torch.Tensor:
    x = torch.as_tensor(x)
    if decode is not None:
        return x
    if not torch.is_floating_point(x):
        raise ValueError(f"{what} must be floating point (already normalized, e.g. pixels / 255), got {x.dtype}; or "
                         f"keep the compact form and give decode=Normalize(255.0) (uint8 pixels, converted per "
                         f"minibatch on the device)")
    return x.float()


def _as_labels(y, what: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.ndim != 1:
        raise ValueError(f"{what} must be a 1-D tensor of integer class ids, got dtype {y.dtype} and shape "
                         f"{tuple(y.shape)}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{what} must be non-negative class ids, got {int(y.min())}")
    return y.long()


def from_tensors(train_x, train_y, test_x, test_y, name: str = "custom", decode: Optional[Decode] = None,
                 class_names: Optional[Sequence[str]] = None) -> LabeledData:
    """Your tensors (or numpy arrays) as a dataset that `split`, `permuted` and `holdout` accept: normalized float
    inputs, or any stored form with `decode` (e.g. uint8 pixels with `Normalize(255.0)`); class_names: the name of
    each class id, if you have them (tasks are then named by them)."""
    xs = [_as_inputs(x, what, decode) for x, what in ((train_x, "train_x"), (test_x, "test_x"))]
    ys = [_as_labels(y, what) for y, what in ((train_y, "train_y"), (test_y, "test_y"))]
    for part, x, y in (("train", xs[0], ys[0]), ("test", xs[1], ys[1])):
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"{name}: {part} has {len(x)} inputs and {len(y)} labels; give the same, non-zero number")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise ValueError(f"{name}: train inputs have shape {tuple(xs[0].shape[1:])} but test inputs "
                         f"{tuple(xs[1].shape[1:])}")
    if class_names is not None and len(class_names) <= int(max(ys[0].max(), ys[1].max())):
        raise ValueError(f"{name}: {len(class_names)} class names for class ids up to "
                         f"{int(max(ys[0].max(), ys[1].max()))}; give one name per class id")
    return LabeledData(name, xs[0], ys[0], xs[1], ys[1], {"in_memory": "from_tensors", "name": name}, decode,
                       class_names=class_names)


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
