"""GDumb (Prabhu et al., ECCV 2020): a greedy class-balanced memory, and at evaluation a model trained from scratch
on the memory alone.

The stream never trains the model (`task_data` gives None); each task's examples are offered to the memory in a
seeded random order. An example is stored while the memory has room; once full, it is stored only if its class holds
fewer than memory / (classes seen) examples, evicting a random example of the largest class (`greedy_balanced`).
After each task `eval_model` trains a fresh copy of the network (re-initialized from a seeded draw) on the memory
for `fit_epochs` epochs of SGD; Mammoth's GDumb adds cutmix and a cosine learning-rate schedule, which we do not.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clframework.models import forward_heads
from clframework.plugin import Strategy, check_state_keys, register_strategy


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


@register_strategy("gdumb", checks={"memory_size": (lambda v: v >= 1, "an integer >= 1"),
                                    "fit_epochs": (lambda v: v >= 1, "an integer >= 1"),
                                    "fit_lr": (lambda v: v > 0, "a number > 0"),
                                    "fit_batch_size": (lambda v: v >= 1, "an integer >= 1")},
                   description="GDumb: greedy class-balanced memory; scored by a model trained from scratch on it")
class GDumb(Strategy):
    """GDumb. memory_size: examples kept; fit_epochs, fit_lr, fit_batch_size: the SGD training on the memory."""

    needs_boundaries = "a network fitted on the memory at each task's end"

    def __init__(self, memory_size: int = 200, fit_epochs: int = 30, fit_lr: float = 0.05, fit_batch_size: int = 16):
        self.memory_size, self.fit_epochs = int(memory_size), int(fit_epochs)
        self.fit_lr, self.fit_batch_size = float(fit_lr), int(fit_batch_size)
        self.generator = torch.Generator().manual_seed(torch.initial_seed())
        self.x = self.y = self.head = None
        self.seen: set = set()

    def task_data(self, stream, task_index: int):
        return None  # the stream trains nothing: only the memory learns

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        x, y = (data.train_x, data.train_y) if hasattr(data, "train_x") else data
        order = torch.randperm(len(y), generator=self.generator)
        x, y = x[order], y[order].cpu()
        heads = torch.full_like(y, int(head))
        stored = [] if self.y is None else self.y.tolist()
        slots = greedy_balanced(stored, y.tolist(), self.memory_size, self.seen, self.generator)
        pick = lambda new, old: torch.stack([new[i] if is_new else old[i] for is_new, i in slots])  # noqa: E731
        self.x, self.y, self.head = (pick(new, old) for new, old in
                                     ((x, self.x), (y, self.y), (heads, self.head)))

    def eval_model(self, model: nn.Module) -> nn.Module:
        if self.y is None:
            return model
        device = next(model.parameters()).device
        fresh = copy.deepcopy(model)
        seed = int(torch.randint(2 ** 62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):  # the run's own random stream is untouched
            torch.manual_seed(seed)
            for m in fresh.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        opt = torch.optim.SGD(fresh.parameters(), lr=self.fit_lr)
        x, y, head = self.x.to(device), self.y.to(device), self.head.to(device)
        fresh.train()
        with torch.enable_grad():
            for _ in range(self.fit_epochs):
                order = torch.randperm(len(y), generator=self.generator).to(device)
                for i in range(0, len(y), self.fit_batch_size):
                    idx = order[i:i + self.fit_batch_size]
                    loss = F.cross_entropy(forward_heads(fresh, x[idx], head[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        return fresh.eval()

    def state_dict(self):
        return {"hparams": {"memory_size": self.memory_size, "fit_epochs": self.fit_epochs, "fit_lr": self.fit_lr,
                            "fit_batch_size": self.fit_batch_size}, "generator": self.generator.get_state(),
                "x": self.x, "y": self.y, "head": self.head, "seen": sorted(self.seen)}

    def load_state_dict(self, state):
        check_state_keys(self, state, ("hparams", "generator", "x", "y", "head", "seen"))
        self.generator.set_state(state["generator"].cpu())
        self.x, self.y, self.head = state["x"], state["y"], state["head"]
        self.seen = set(state["seen"])
