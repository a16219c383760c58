"""GDumb (Prabhu et al., ECCV 2020): a greedy class-balanced memory, and at evaluation a model trained from scratch
on the memory alone, with the authors' recipe.

The stream never trains the model (`task_data` gives None); each task's examples are offered to the memory in a
seeded random order. An example is stored while the memory has room; once full, it is stored only if its class holds
fewer than memory / (classes seen) examples, evicting a random example of the largest class (`greedy_balanced`). The
memory keeps examples in their stored form (e.g. uint8 images) and each epoch of the fit turns them into inputs with
the run's training input function (the task's decode, then the training augmentation: `on_prepare`), as the authors'
train transforms do.

The fit (`fit_memory`) follows drimpossible/GDumb src/main.py and src/utils.py (commit 4f412d7): a fresh copy of the
network (re-initialized from a seeded draw), SGD with momentum `fit_momentum` and weight decay `fit_weight_decay`,
minibatches of `fit_batch_size`, one warm-up epoch at fit_lr / 10, then fit_lr, then cosine annealing with warm
restarts (periods of 1, 2, 4, ... epochs down to `fit_min_lr`, `sgdr_lr`), the gradient norm clipped to `fit_clip`,
and cutmix (Beta(`cutmix_alpha`) box, `cutmix_prob` of the minibatches) on image inputs; `fit_epochs` 256 as their
CIFAR runs (128 on MNIST, without cutmix: the seq-MNIST protocol's settings). docs/fidelity.md lists where Mammoth's
GDumb differs.

`fit_after="last"` fits only after the stream's last task, as Mammoth's GDumb does: the earlier rows of the accuracy
matrix then score the untrained network and only the final row is meaningful (use it when only the final accuracy is
wanted: one fit instead of one per task).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clframework.models import forward_heads
from clframework.plugin import Strategy, check_state_keys, register_strategy

FIT_AFTER = ("every", "last")


def greedy_balanced(stored: List[int], incoming: List[int], capacity: int, seen: set,
                    generator: torch.Generator) -> List[Tuple[bool, int]]:
    """GDumb's memory after offering `incoming` labels to one holding `stored` labels: one (is_new, index) per slot,
    index into `incoming` (is_new) or `stored`. `seen` (classes ever offered) is updated in place."""
    slots = [(False, i) for i in range(len(stored))]
    labels = list(stored)
    by_class: Dict[int, List[int]] = {}
    for s, c in enumerate(labels):
        by_class.setdefault(c, []).append(s)
    for j, c in enumerate(incoming):
        seen.add(c)
        if len(slots) < capacity:
            by_class.setdefault(c, []).append(len(slots))
            slots.append((True, j))
            labels.append(c)
            continue
        if len(by_class.get(c, ())) >= capacity / len(seen):
            continue
        largest = max(by_class, key=lambda k: (len(by_class[k]), -k))
        victims = by_class[largest]
        slot = victims.pop(int(torch.randint(len(victims), (1,), generator=generator)))
        if not victims:
            del by_class[largest]
        by_class.setdefault(c, []).append(slot)
        slots[slot], labels[slot] = (True, j), c
    return slots


def sgdr_lr(epoch: int, max_lr: float, min_lr: float) -> float:
    """The learning rate of fit epoch `epoch` (0-based): max_lr / 10 (warm-up), max_lr, then cosine annealing with warm
    restarts of periods 1, 2, 4, ... epochs (torch's CosineAnnealingWarmRestarts(T_0=1, T_mult=2), stepped once per
    epoch from the third on, as the authors' main.py)."""
    if epoch == 0:
        return max_lr * 0.1
    t_cur, t_i = epoch - 1, 1
    while t_cur >= t_i:
        t_cur, t_i = t_cur - t_i, t_i * 2
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def cutmix_draw(rng: np.random.Generator, n: int, height: int, width: int, alpha: float,
                prob: float) -> Optional[Tuple[float, torch.Tensor, int, int]]:
    """One minibatch's cutmix draws (None: no cutmix): the mixing ratio ~ Beta(alpha, alpha), the partner of each
    row (a permutation), the box centre (row, column)."""
    if not rng.random() < prob:
        return None
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(n))
    return lam, perm, int(rng.integers(height)), int(rng.integers(width))


def cutmix(x: torch.Tensor, lam: float, perm: torch.Tensor, cy: int, cx: int) -> Tuple[torch.Tensor, float]:
    """Cutmix (Yun et al. 2019) of images x [n, channels, H, W]: a box of area about (1 - lam) of the image, centred
    at (cy, cx) and clipped to it, is pasted from each row's partner `perm`; returns the mixed images and the exact
    share of the unpasted area (the weight of the rows' own labels)."""
    h, w = x.shape[2], x.shape[3]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    y1, y2 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    x1, x2 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    mixed = x.clone()
    mixed[:, :, y1:y2, x1:x2] = x[perm.to(x.device), :, y1:y2, x1:x2]
    return mixed, 1.0 - (y2 - y1) * (x2 - x1) / (h * w)


def fit_memory(model: nn.Module, raw: torch.Tensor, y: torch.Tensor, head: torch.Tensor,
               prepare: Optional[Callable[[torch.Tensor], torch.Tensor]], *, epochs: int, lr: float, min_lr: float,
               batch_size: int, momentum: float, weight_decay: float, clip: float, cutmix_alpha: float,
               cutmix_prob: float, generator: torch.Generator, rng: np.random.Generator) -> nn.Module:
    """Train `model` in place on the memory (stored examples `raw`, labels, heads, all on the model's device) by the
    authors' recipe (module docstring). Each epoch: an order from `generator`, the memory in that order through
    `prepare` (decode and augment; None: `raw` are model inputs), minibatches in order; cutmix draws from `rng`."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    with torch.enable_grad():
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = sgdr_lr(epoch, lr, min_lr)
            order = torch.randperm(len(y), generator=generator).to(y.device)
            inputs = raw[order] if prepare is None else prepare(raw[order])
            for i in range(0, len(y), batch_size):
                x, yb, hb = inputs[i:i + batch_size], y[order[i:i + batch_size]], head[order[i:i + batch_size]]
                draw = None
                if cutmix_prob > 0 and x.dim() == 4:  # image minibatches only
                    draw = cutmix_draw(rng, len(x), x.shape[2], x.shape[3], cutmix_alpha, cutmix_prob)
                if draw is None:
                    loss = F.cross_entropy(forward_heads(model, x, hb), yb)
                else:
                    lam, perm, cy, cx = draw
                    x, lam = cutmix(x, lam, perm, cy, cx)
                    out = forward_heads(model, x, hb)
                    loss = lam * F.cross_entropy(out, yb) + (1 - lam) * F.cross_entropy(out, yb[perm.to(yb.device)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                opt.step()
    return model.eval()


@register_strategy("gdumb", checks={"memory_size": (lambda v: v >= 1, "an integer >= 1"),
                                    "fit_epochs": (lambda v: v >= 1, "an integer >= 1"),
                                    "fit_lr": (lambda v: v > 0, "a number > 0"),
                                    "fit_min_lr": (lambda v: v >= 0, "a number >= 0"),
                                    "fit_batch_size": (lambda v: v >= 1, "an integer >= 1"),
                                    "fit_momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
                                    "fit_weight_decay": (lambda v: v >= 0, "a number >= 0"),
                                    "fit_clip": (lambda v: v >= 0, "a number >= 0 (0: no clipping)"),
                                    "cutmix_alpha": (lambda v: v > 0, "a number > 0"),
                                    "cutmix_prob": (lambda v: 0 <= v <= 1, "a number in [0, 1] (0: no cutmix)"),
                                    "fit_after": (lambda v: v in FIT_AFTER, " or ".join(FIT_AFTER))},
                   description="GDumb: greedy class-balanced memory; scored by a model trained from scratch on it")
class GDumb(Strategy):
    """GDumb. memory_size: examples kept; the fit_* values, cutmix_alpha and cutmix_prob: the training on the memory
    (module docstring); fit_after: "every" task or only after the "last"."""

    needs = (("boundaries", "a network fitted on the memory at each task's end"),)

    def __init__(self, memory_size: int = 200, fit_epochs: int = 256, fit_lr: float = 0.05, fit_min_lr: float = 5e-4,
                 fit_batch_size: int = 16, fit_momentum: float = 0.9, fit_weight_decay: float = 1e-6,
                 fit_clip: float = 10.0, cutmix_alpha: float = 1.0, cutmix_prob: float = 0.5, fit_after: str = "every"):
        self.memory_size, self.fit_epochs = int(memory_size), int(fit_epochs)
        self.fit_lr, self.fit_min_lr, self.fit_batch_size = float(fit_lr), float(fit_min_lr), int(fit_batch_size)
        self.fit_momentum, self.fit_weight_decay, self.fit_clip = float(fit_momentum), float(fit_weight_decay), \
            float(fit_clip)
        self.cutmix_alpha, self.cutmix_prob, self.fit_after = float(cutmix_alpha), float(cutmix_prob), str(fit_after)
        self.generator = torch.Generator().manual_seed(torch.initial_seed())
        self.raw = self.y = self.head = None
        self.seen: set = set()
        self.prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self.final = True  # whether the task being trained is the stream's last (set by task_data)

    def task_data(self, stream, task_index: int):
        self.final = task_index == len(stream.tasks) - 1
        return None  # the stream trains nothing: only the memory learns

    def on_prepare(self, prepare) -> None:
        self.prepare = prepare

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        if hasattr(data, "examples"):  # a Task: its stored form (decoded at the fit by `prepare`)
            x, y = data.examples("train").raw(), data.train_y
            if self.prepare is None:  # a plain loop that gave no on_prepare: decode only
                self.prepare = data.inputs
        else:
            x, y = data
        order = torch.randperm(len(y), generator=self.generator)
        x, y = x[order.to(x.device)].cpu(), y[order.to(y.device)].cpu()
        heads = torch.full_like(y, int(head))
        stored = [] if self.y is None else self.y.tolist()
        slots = greedy_balanced(stored, y.tolist(), self.memory_size, self.seen, self.generator)
        pick = lambda new, old: torch.stack([new[i] if is_new else old[i] for is_new, i in slots])  # noqa: E731
        self.raw, self.y, self.head = (pick(new, old) for new, old in
                                       ((x, self.raw), (y, self.y), (heads, self.head)))

    def eval_model(self, model: nn.Module) -> nn.Module:
        if self.y is None or (self.fit_after == "last" and not self.final):
            return model
        device = next(model.parameters()).device
        fresh = copy.deepcopy(model)
        seed = int(torch.randint(2 ** 62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):  # the run's own random stream is untouched
            torch.manual_seed(seed)
            for m in fresh.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=self.generator)))
        return fit_memory(fresh, self.raw.to(device), self.y.to(device), self.head.to(device), self.prepare,
                          epochs=self.fit_epochs, lr=self.fit_lr, min_lr=self.fit_min_lr,
                          batch_size=self.fit_batch_size, momentum=self.fit_momentum,
                          weight_decay=self.fit_weight_decay, clip=self.fit_clip, cutmix_alpha=self.cutmix_alpha,
                          cutmix_prob=self.cutmix_prob, generator=self.generator, rng=rng)

    def state_dict(self):
        hparams = {k: getattr(self, k) for k in ("memory_size", "fit_epochs", "fit_lr", "fit_min_lr", "fit_batch_size",
                                                 "fit_momentum", "fit_weight_decay", "fit_clip", "cutmix_alpha",
                                                 "cutmix_prob", "fit_after")}
        return {"hparams": hparams, "generator": self.generator.get_state(), "raw": self.raw, "y": self.y,
                "head": self.head, "seen": sorted(self.seen)}

    def load_state_dict(self, state):
        check_state_keys(self, state, ("hparams", "generator", "raw", "y", "head", "seen"))
        self.generator.set_state(state["generator"].cpu())
        self.raw, self.y, self.head = state["raw"], state["y"], state["head"]
        self.seen = set(state["seen"])
