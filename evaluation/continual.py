"""Continual evaluation (De Lange, van de Ven & Tuytelaars, ICLR 2023): the accuracy on every task seen so far,
every few optimizer steps during training, on a fixed seeded subset of each task's split (docs/continual-evaluation.md).

Cheap by construction: each task's subset is stored once on the device (its stored form, e.g. uint8); the tasks that
share a head and a decoding are concatenated, so one evaluation point is a few large forward passes; the correct
counts stay on the device (no host synchronisation) until the trainer moves a task's points to the host at once.
Nothing here draws from the training's random streams, and the model is scored in eval mode (BatchNorm's running
statistics untouched, dropout off), every module's mode restored afterwards.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from clframework.models import forward_head

from .evaluator import task_classes

SUBSET_SEED = 0x5EED  # added to the run's seed: the subsets' generator is apart from every training generator


def check_settings(every: Optional[int], subset: Optional[int]) -> None:
    """--eval-every and --eval-subset on their own (ValueError naming the value and what is accepted)."""
    for name, value in (("eval_every", every), ("eval_subset", subset)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            flag = "--" + name.replace("_", "-")
            what = "optimizer steps between evaluations" if name == "eval_every" else "test examples per task"
            raise ValueError(f"{flag} (eval_{name[5:]}) must be an integer >= 1 ({what}), got {value!r}")
    if subset is not None and every is None:
        raise ValueError("--eval-subset (eval_subset) needs --eval-every (eval_every): it sizes the evaluation "
                         "during training")


def check_subset(stream, subset: Optional[int], split: str = "test") -> None:
    """A subset larger than a task's split is an error naming the sizes (before training)."""
    if subset is None:
        return
    sizes = {t.name: t.n(split) for t in stream.tasks}
    small = {name: n for name, n in sizes.items() if n < subset}
    if small:
        name, n = min(small.items(), key=lambda kv: kv[1])
        raise ValueError(f"--eval-subset {subset} is larger than task '{name}''s {split} split ({n} examples; "
                         f"{len(small)} of {len(sizes)} tasks have fewer than {subset}); give at most "
                         f"{min(sizes.values())}, or leave --eval-subset out to score the whole split")


class _Group:
    """Consecutive tasks scored by one forward pass: same head, same decoding. Their subsets are concatenated."""

    def __init__(self, tasks: Sequence, first: int, picks: Sequence[Optional[torch.Tensor]], split: str,
                 device: torch.device, bounds: Optional[Sequence[tuple]]):
        self.first, self.head, self.decode = first, tasks[0].head, tasks[0].decode
        raws, ys, ends, lo, hi = [], [], [], [], []
        for j, (task, idx) in enumerate(zip(tasks, picks)):
            ex = task.examples(split)
            rows = slice(None) if idx is None else idx
            raw, y = ex.raw(rows), ex.y[rows]
            raws.append(raw)
            ys.append(y)
            ends.append(sum(len(r) for r in raws))
            if bounds is not None:
                a, b = bounds[first + j]
                lo.append(torch.full((len(y),), a))
                hi.append(torch.full((len(y),), b))
        on_device = all(t.in_memory for t in tasks)  # files read from disk: kept on the host, moved per chunk
        home = device if on_device else torch.device("cpu")
        self.raw = torch.cat(raws).to(home)
        self.y = torch.cat(ys).to(device)
        self.ends = ends  # examples of tasks first..first+j: the prefix self.raw[:ends[j]]
        self.task = torch.cat([torch.full((len(y),), first + j, dtype=torch.long) for j, y in enumerate(ys)]).to(device)
        self.lo = torch.cat(lo).to(device) if bounds is not None else None
        self.hi = torch.cat(hi).to(device) if bounds is not None else None
        self.last = first + len(tasks) - 1
        self._mask: Optional[torch.Tensor] = None

    def til_mask(self, width: int) -> torch.Tensor:
        """Per example, 0 on its own task's outputs and -inf elsewhere (made once): task-IL scores = argmax of
        outputs + mask."""
        if self._mask is None or self._mask.shape[1] != width:
            cols = torch.arange(width, device=self.lo.device)
            own = (cols >= self.lo[:, None]) & (cols < self.hi[:, None])
            self._mask = torch.zeros(own.shape, device=own.device).masked_fill_(~own, float("-inf"))
        return self._mask


class ContinualEvaluator:
    """Scores a model on the fixed subsets of tasks 0..k (`evaluate`), class-IL and task-IL, returning correct
    counts on the device. subset None: the whole split."""

    def __init__(self, stream, device: torch.device, subset: Optional[int] = None, split: str = "test",
                 seed: int = 0, batch_size: int = 4096):
        check_subset(stream, subset, split)
        self.device, self.batch_size = torch.device(device), batch_size
        gen = torch.Generator().manual_seed(seed + SUBSET_SEED)
        picks = []
        for task in stream.tasks:
            n = task.n(split)
            if n == 0:
                raise ValueError(f"cannot evaluate task '{task.name}' during training: it has no {split} examples")
            picks.append(None if subset is None else torch.randperm(n, generator=gen)[:subset].sort().values)
        self.sizes = [task.n(split) if idx is None else len(idx) for task, idx in zip(stream.tasks, picks)]
        self.indices = picks  # which examples of each split are scored (None: all), for the record and the tests
        bounds = task_classes(stream) if stream.setting == "class" else None
        self.groups: List[_Group] = []
        start = 0
        tasks = stream.tasks
        for i in range(1, len(tasks) + 1):
            if i == len(tasks) or tasks[i].head != tasks[start].head or tasks[i].decode is not tasks[start].decode:
                self.groups.append(_Group(tasks[start:i], start, picks[start:i], split, self.device, bounds))
                start = i
        self.n_tasks = len(tasks)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, upto: int) -> torch.Tensor:
        """Correct counts (upto+1, 2) on the device: column 0 class-IL, column 1 task-IL (the other tasks' outputs
        masked in the class setting; elsewhere the same as column 0)."""
        modes = [m.training for m in model.modules()]
        model.eval()
        counts = torch.zeros(self.n_tasks, 2, dtype=torch.long, device=self.device)
        try:
            for g in self.groups:
                if g.first > upto:
                    break
                n = g.ends[min(upto, g.last) - g.first]
                for i in range(0, n, self.batch_size):
                    part = slice(i, min(i + self.batch_size, n))
                    raw = g.raw[part].to(self.device, non_blocking=True)
                    out = forward_head(model, raw if g.decode is None else g.decode(raw), g.head)
                    y, task = g.y[part], g.task[part]
                    right = (out.argmax(-1) == y).long()
                    if g.lo is not None:
                        right_til = ((out + g.til_mask(out.shape[-1])[part]).argmax(-1) == y).long()
                    else:
                        right_til = right
                    counts.index_add_(0, task, torch.stack([right, right_til], 1))
        finally:
            for m, mode in zip(model.modules(), modes):
                m.training = mode
        return counts[:upto + 1]
