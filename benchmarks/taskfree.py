"""Task-free streams: one stream of training examples whose task boundaries the strategy never sees.

A task-free stream is a `Stream` with `info["task_free"] = True`. Its tasks are consecutive stretches of the one
stream: each stretch's training split is in stream order (the trainer keeps that order, trains it once, keeps one
optimizer, and calls `on_task_start` before the first stretch and `on_task_end` after the last only); its test split
is the test data of one underlying task, scored after every stretch (and at every --eval-every step). Strategies that
need boundaries (a "boundaries" need) refuse such a stream before training (`plugin.check_needs`). Class-incremental,
one head.

- `iblurry`: i-Blurry-N-M (Koh et al., ICLR 2022, "Online continual learning on class incremental blurry task
  configuration with anytime inference", Sec. 3): N% of the classes are disjoint (each seen in one task only), the
  others are blurry classes, each the major class of one task, with M% of their examples moved into the other tasks.
- `gaussian_schedule`: split-style tasks mixed gradually: every training example of task k gets a stream time
  k + sigma * z, z ~ N(0, 1), and the stream is the examples sorted by time, so at time t the share of task k is
  proportional to the Gaussian density N(t; k, sigma^2) (a Gaussian-scheduled mixture; sigma 0 gives sharp tasks).
- `rotating_pairs`: the DER paper's general-continual MNIST-360 (Buzzega et al., NeurIPS 2020; aimagelab/mammoth
  datasets/mnist_360.py at commit 7ab9db97): digits 0-8 seen in pairs (0,1), (1,2), ..., (8,0), three rounds, each
  digit rotating through 360 degrees over its training examples.
All draws come from a generator seeded by `seed`: the same stream for every run with that seed.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from .online import ONLINE
from .scenarios import LabeledData, class_blocks
from .stream import Examples, Stream, Task, TensorExamples


def _share(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"{what} must be a percentage in [0, 100], got {value!r}")
    return float(value)


def _rows_of(y: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    return torch.isin(y, torch.tensor(list(classes), dtype=y.dtype)).nonzero().squeeze(1)


def _task_free(name: str, data: LabeledData, stretches: List[torch.Tensor], test_classes: List[Sequence[int]],
               n_classes: int, info: dict, task_names: Optional[List[str]] = None,
               train: Optional[Examples] = None, test: Optional[Examples] = None) -> Stream:
    """The stream: stretch k trains the rows `stretches[k]` of the training split (in that order) and scores the
    test examples of `test_classes[k]`; labels are the dataset's class ids, one head of `n_classes` outputs."""
    train = data.train if train is None else train
    test = data.test if test is None else test
    tasks = []
    for k, (rows, classes) in enumerate(zip(stretches, test_classes)):
        tname = task_names[k] if task_names else f"part{k}"
        tasks.append(Task(tname, train.take(rows), None, test.take(_rows_of(test.y, classes)), None,
                          tuple(int(c) for c in classes), head=0, decode=data.decode))
    return Stream(name, tasks, [n_classes], "class",
                  info={"task_free": True, "class_order": [list(c) for c in test_classes], **info,
                        **({"data_source": data.source} if data.source else {})}, protocol=ONLINE)


def iblurry(data: LabeledData, n_tasks: int = 5, disjoint: float = 50.0, blurry: float = 10.0, seed: int = 0,
            name: Optional[str] = None) -> Stream:
    """i-Blurry-N-M with N = `disjoint`, M = `blurry` (percentages). The classes, in a seeded random order, are cut
    into round(C * N / 100) disjoint classes and the rest blurry, each group dealt out evenly over the tasks (so each
    group's size must be a multiple of n_tasks). Each task's blurry classes lose a random M% of their training
    examples; those are pooled, shuffled and dealt out evenly over all tasks. A task's training examples are
    shuffled; its test data are those of its own classes (disjoint and blurry). Labels stay the dataset's."""
    disjoint, blurry = _share(disjoint, "disjoint (N, the % of disjoint classes)"), _share(
        blurry, "blurry (M, the % of blurry examples)")
    classes = data.classes
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or not 1 <= n_tasks <= len(classes):
        raise ValueError(f"n_tasks must be an integer between 1 and {len(classes)} (the classes of {data.name}), got "
                         f"{n_tasks!r}")
    n_disjoint = round(len(classes) * disjoint / 100)
    n_blurry = len(classes) - n_disjoint
    if n_disjoint % n_tasks or n_blurry % n_tasks:
        fits = sorted({round(100 * d / len(classes), 2) for d in range(0, len(classes) + 1, n_tasks)
                       if (len(classes) - d) % n_tasks == 0})
        raise ValueError(f"disjoint={disjoint:g}% makes {n_disjoint} disjoint and {n_blurry} blurry classes of "
                         f"{len(classes)}, which {n_tasks} tasks cannot share evenly; choose disjoint among {fits}")
    gen = torch.Generator().manual_seed(seed)
    order = [classes[i] for i in torch.randperm(len(classes), generator=gen).tolist()]
    disjoint_of, blurry_of = ([group[t::n_tasks] for t in range(n_tasks)]  # dealt out in turn
                              for group in (order[:n_disjoint], order[n_disjoint:]))
    y = data.train.y
    own, moved = [], []
    for t in range(n_tasks):
        major = _rows_of(y, blurry_of[t]) if blurry_of[t] else torch.empty(0, dtype=torch.long)
        major = major[torch.randperm(len(major), generator=gen)]
        cut = len(major) * int(round(blurry * 100)) // 10000  # M% of them, M given to 0.01
        moved.append(major[:cut])
        own.append(torch.cat([_rows_of(y, disjoint_of[t]) if disjoint_of[t] else major[:0], major[cut:]]))
    pool = torch.cat(moved)
    pool = pool[torch.randperm(len(pool), generator=gen)]
    stretches = []
    for t, share in enumerate(torch.tensor_split(pool, n_tasks)):
        rows = torch.cat([own[t], share])
        stretches.append(rows[torch.randperm(len(rows), generator=gen)])
    info = {"iblurry": {"disjoint": disjoint, "blurry": blurry, "seed": seed, "disjoint_classes": disjoint_of,
                        "blurry_classes": blurry_of}}
    return _task_free(name or f"iblurry{disjoint:g}-{blurry:g}-{data.name}", data, stretches,
                      [sorted(d + b) for d, b in zip(disjoint_of, blurry_of)], len(classes), info,
                      [f"blurry{t}" for t in range(n_tasks)])


def gaussian_order(task_of: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """The stream order of examples whose task is `task_of` (0..T-1): sorted by time task + sigma * N(0, 1)."""
    times = task_of.double() + sigma * torch.randn(len(task_of), generator=generator, dtype=torch.float64)
    return torch.sort(times, stable=True).indices


def gaussian_schedule(data: LabeledData, classes_per_task: int = 2, sigma: float = 0.3, seed: int = 0,
                      class_order: Optional[Sequence[int]] = None, n_tasks: Optional[int] = None,
                      name: Optional[str] = None) -> Stream:
    """Split-style tasks (consecutive blocks of `classes_per_task` classes) mixed by a Gaussian schedule of width
    `sigma` (in task lengths; module docstring). The stream is cut into as many equal stretches as there are tasks;
    stretch k scores task k's test data."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma <= 10 or math.isnan(sigma):
        raise ValueError(f"sigma (the width of each task's Gaussian, in task lengths) must be in [0, 10], got "
                         f"{sigma!r}")
    blocks = class_blocks(data, classes_per_task, class_order, n_tasks)
    gen = torch.Generator().manual_seed(seed)
    rows, task_of = [], []
    for k, block in enumerate(blocks):
        r = _rows_of(data.train.y, block)
        rows.append(r[torch.randperm(len(r), generator=gen)])
        task_of.append(torch.full((len(r),), k))
    rows, task_of = torch.cat(rows), torch.cat(task_of)
    stream_rows = rows[gaussian_order(task_of, float(sigma), gen)]
    stretches = list(torch.tensor_split(stream_rows, len(blocks)))
    order = [c for b in blocks for c in b]
    lookup = torch.full((max(data.classes) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(order)] = torch.arange(len(order))  # class c -> output: its place in the order
    train, test = (ex.relabel(lookup[ex.y]) for ex in (data.train, data.test))
    info = {"gaussian_schedule": {"sigma": float(sigma), "seed": seed, "classes": blocks}}
    mapped = [[int(lookup[c]) for c in b] for b in blocks]
    return _task_free(name or f"gaussian{float(sigma):g}-{data.name}", data, stretches, mapped, len(order), info,
                      ["-".join(map(str, b)) for b in blocks], train, test)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Each image [N, C, H, W] rotated counter-clockwise by its angle about its centre, nearest pixel, zeros outside:
    what torchvision.transforms.functional.rotate does to one image (and PIL's Image.rotate, Mammoth's), batched."""
    x = images.float()
    rad = torch.deg2rad(degrees.double()).float()
    cos, sin = torch.cos(rad), torch.sin(rad)
    n, _, h, w = x.shape
    # output pixel -> input pixel (normalized coordinates, y down): the inverse rotation, aspect-corrected
    theta = torch.stack([torch.stack([cos, -sin * h / w, torch.zeros_like(cos)], 1),
                         torch.stack([sin * w / h, cos, torch.zeros_like(cos)], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round().to(images.dtype) if not images.is_floating_point() else out


def rotating_pairs(data: LabeledData, rounds: int = 3, n_classes: int = 9, seed: int = 0,
                   name: Optional[str] = None) -> Stream:
    """MNIST-360 (Mammoth datasets/mnist_360.py, commit 7ab9db97) on `data`: classes 0..n_classes-1; each class's
    training examples are cut into 2 * rounds chunks; the stream visits the pairs (0,1), (1,2), ..., (n-1,0) `rounds`
    times, each visit training one fresh chunk of each of its two classes, shuffled together; class j's i-th training
    example in stream order is rotated by (j - 1) * 60 + i * 360 / N_j degrees, its test examples evenly from 0 to 360
    degrees in a seeded order. The stream is cut into n_classes stretches of `rounds` visits each (3: one stretch per
    third of a round); stretch k scores class k's test data (the columns are digits, not tasks)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or not 2 <= n_classes <= len(data.classes):
        raise ValueError(f"n_classes must be an integer between 2 and {len(data.classes)}, got {n_classes!r}")
    gen = torch.Generator().manual_seed(seed)
    y = data.train.y
    chunks = []  # per class, its 2 * rounds chunks of rows (Mammoth pops them from the end: last chunk first)
    for j in range(n_classes):
        r = (y == j).nonzero().squeeze(1)
        per_chunk = len(r) // (2 * rounds) + 1
        chunks.append([r[k * per_chunk:(k + 1) * per_chunk] for k in range(2 * rounds)])
    visits = []
    for _ in range(rounds):
        for a in range(n_classes):
            b = (a + 1) % n_classes
            rows = torch.cat([chunks[a].pop(), chunks[b].pop()])
            visits.append(rows[torch.randperm(len(rows), generator=gen)])
    order = torch.cat(visits)
    # the angles: class j's examples rotate in stream order
    angle = torch.zeros(len(order), dtype=torch.float64)
    labels = y[order]
    for j in range(n_classes):
        at = (labels == j).nonzero().squeeze(1)
        angle[at] = torch.remainder((j - 1) * 60 + torch.arange(len(at), dtype=torch.float64) * 360.0 / len(at), 360)
    raw = data.train.raw(order)
    train = TensorExamples(rotate(raw, angle), labels)
    ty = data.test.y
    keep = (ty < n_classes).nonzero().squeeze(1)
    test_angle = torch.zeros(len(keep), dtype=torch.float64)
    for j in range(n_classes):
        at = (ty[keep] == j).nonzero().squeeze(1)
        at = at[torch.randperm(len(at), generator=gen)]
        test_angle[at] = torch.arange(len(at), dtype=torch.float64) * 360.0 / len(at)
    test = TensorExamples(rotate(data.test.raw(keep), test_angle), ty[keep])
    per_stretch = rounds
    stretches, start = [], 0
    for k in range(n_classes):
        n = sum(len(v) for v in visits[k * per_stretch:(k + 1) * per_stretch])
        stretches.append(torch.arange(start, start + n))
        start += n
    info = {"rotating_pairs": {"rounds": rounds, "n_classes": n_classes, "seed": seed}}
    return _task_free(name or f"{data.name}-360", data, stretches, [[k] for k in range(n_classes)], n_classes, info,
                      [f"visits{k * per_stretch + 1}-{(k + 1) * per_stretch}|digit{k}" for k in range(n_classes)],
                      train, test)

