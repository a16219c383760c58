"""Experience replay: a fixed-size memory of earlier tasks' examples, a sample of which joins every training minibatch.

The memory is filled at the end of each task from that task's training data, so while a task trains it holds only
earlier tasks (the current task's examples are in the minibatch already). Selection:
- reservoir (Vitter's algorithm R over the stream of training examples, in task order): after n examples have been
  seen, each of them is in memory with probability size / n;
- class-balanced: an equal share of the memory per class seen (a class being a (head, label) pair), each share a
  reservoir over that class's examples, so every example of a class is kept with equal probability too.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from clframework.plugin import Batch, Strategy, check_state_keys, iter_task_batches, join, register_strategy

SELECTIONS = ("reservoir", "class-balanced")


def reservoir_slots(seen: int, incoming: int, capacity: int, generator: torch.Generator) -> Tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Algorithm R for `incoming` new examples after `seen`: (memory slots, indices of the incoming examples that go
    there). Example i (the (seen + i)-th of the stream, 0-based) fills slot seen + i while the memory is not full,
    else replaces slot j ~ U{0..seen+i} when j < capacity. A decision never depends on the memory's contents, so all
    are drawn at once; when two land on one slot the later wins, as in the sequential algorithm."""
    count = torch.arange(seen, seen + incoming, dtype=torch.long)
    draw = (torch.rand(incoming, generator=generator, dtype=torch.float64) * (count + 1)).long()
    slot = torch.where(count < capacity, count, draw)
    keep = slot < capacity
    slot, index = slot[keep], torch.arange(incoming)[keep]
    last = torch.full((capacity,), -1, dtype=torch.long).scatter_reduce_(0, slot, torch.arange(len(slot)), "amax")
    won = last[last >= 0]
    return slot[won], index[won]


def balanced_quotas(n_classes: int, capacity: int) -> List[int]:
    """capacity split as evenly as possible over the classes (the first classes take the remainder)."""
    return [capacity // n_classes + (1 if i < capacity % n_classes else 0) for i in range(n_classes)]


def _grown(stored: Optional[torch.Tensor], like: torch.Tensor, size: int) -> torch.Tensor:
    """`stored` (or nothing) extended with zero rows shaped like `like` to `size` rows."""
    extra = like.new_zeros((size - (0 if stored is None else len(stored)), *like.shape[1:]))
    return extra if stored is None else torch.cat([stored, extra])


class _Pool:
    """One reservoir: stored x, y, head tensors (on the data's device) and the number of examples it has seen."""

    def __init__(self, capacity: int):
        self.capacity, self.seen = capacity, 0
        self.x: Optional[torch.Tensor] = None
        self.y: Optional[torch.Tensor] = None
        self.head: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return 0 if self.y is None else len(self.y)

    def add(self, x: torch.Tensor, y: torch.Tensor, head: torch.Tensor, generator: torch.Generator) -> None:
        slots, index = reservoir_slots(self.seen, len(y), self.capacity, generator)
        self.seen += len(y)
        if not len(slots):
            return
        size = min(self.seen, self.capacity)
        if len(self) < size:  # the memory grows until full; every new row is written just below
            self.x, self.y, self.head = (_grown(stored, new, size) for stored, new in
                                         ((self.x, x), (self.y, y), (self.head, head)))
        slots, index = slots.to(y.device), index.to(y.device)
        self.x[slots], self.y[slots], self.head[slots] = x[index], y[index], head[index]

    def shrink(self, capacity: int, generator: torch.Generator) -> None:
        """Keep a uniformly random `capacity` of the stored examples (a uniform sample of a uniform sample)."""
        self.capacity = capacity
        if len(self) > capacity:
            keep = torch.randperm(len(self), generator=generator)[:capacity].sort().values.to(self.y.device)
            self.x, self.y, self.head = self.x[keep], self.y[keep], self.head[keep]

    def state(self) -> dict:
        return {"capacity": self.capacity, "seen": self.seen, "x": self.x, "y": self.y, "head": self.head}

    @classmethod
    def from_state(cls, state: dict) -> "_Pool":
        pool = cls(int(state["capacity"]))
        pool.seen = int(state["seen"])
        pool.x, pool.y, pool.head = (None if state[k] is None else state[k].clone() for k in ("x", "y", "head"))
        return pool


class ReplayMemory:
    """A fixed-size memory of (input, label, head) examples with reservoir or class-balanced selection."""

    def __init__(self, size: int, selection: str = "reservoir", seed: Optional[int] = None):
        if selection not in SELECTIONS:
            raise ValueError(f"unknown memory selection {selection!r}; choose one of {SELECTIONS}")
        self.size, self.selection = int(size), selection
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)
        self.pools: Dict[Tuple[int, int], _Pool] = {}  # (head, label) -> pool; one pool keyed (-1, -1) for reservoir
        self._flat: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def __len__(self) -> int:
        return sum(len(p) for p in self.pools.values())

    def add(self, x: torch.Tensor, y: torch.Tensor, head: torch.Tensor) -> None:
        """Offer examples (in stream order) to the memory."""
        self._flat = None
        if self.selection == "reservoir":
            self.pools.setdefault((-1, -1), _Pool(self.size)).add(x, y, head, self.generator)
            return
        keys = sorted(set(zip(head.tolist(), y.tolist())) | set(self.pools))
        for key, quota in zip(keys, balanced_quotas(len(keys), self.size)):
            if key in self.pools:
                self.pools[key].shrink(quota, self.generator)
            else:
                self.pools[key] = _Pool(quota)
        for key in sorted(set(zip(head.tolist(), y.tolist()))):
            rows = ((head == key[0]) & (y == key[1])).nonzero().squeeze(1)
            self.pools[key].add(x[rows], y[rows], head[rows], self.generator)

    def contents(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All stored (x, y, head), concatenated (cached until the next `add`)."""
        if self._flat is None:
            pools = [p for _, p in sorted(self.pools.items()) if len(p)]
            self._flat = tuple(torch.cat([getattr(p, k) for p in pools]) for k in ("x", "y", "head"))
        return self._flat

    def sample(self, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """min(k, len) stored examples drawn uniformly without replacement."""
        x, y, head = self.contents()
        pick = torch.randperm(len(y), generator=self.generator)[:k].to(y.device)
        return x[pick], y[pick], head[pick]

    def state_dict(self) -> dict:
        return {"size": self.size, "selection": self.selection, "generator": self.generator.get_state(),
                "pools": {f"{h},{c}": p.state() for (h, c), p in self.pools.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.selection = int(state["size"]), state["selection"]
        self.generator.set_state(state["generator"].cpu())  # a checkpoint may have moved it to the device
        self.pools = {tuple(int(v) for v in k.split(",")): _Pool.from_state(p) for k, p in state["pools"].items()}
        self._flat = None


def add_task_data(memory: ReplayMemory, model: nn.Module, data, head: int, batch_size: int = 1024) -> None:
    """Offer a finished task's training data to the memory, stored on the model's device."""
    device = next(model.parameters()).device
    for x, y in iter_task_batches(data, batch_size, device):
        memory.add(x, y, torch.full((len(y),), int(head), dtype=torch.long, device=device))


_selection = (lambda v: v in SELECTIONS, "'reservoir' or 'class-balanced'")


@register_strategy("replay", checks={"memory_size": (lambda v: v >= 1, "an integer >= 1"), "selection": _selection})
class Replay(Strategy):
    """Experience replay: each minibatch joined by an equal-size sample of a fixed memory of earlier tasks' examples.

    memory_size: examples kept in all (default 200); selection: 'reservoir' or 'class-balanced'.
    """

    def __init__(self, memory_size: int = 200, selection: str = "reservoir"):
        if memory_size < 1:
            raise ValueError(f"memory_size must be >= 1, got {memory_size}")
        self.memory = ReplayMemory(memory_size, selection)
        self._single_head: Optional[int] = None  # the one head every stored example uses, if so (no per-row heads)

    def on_task_start(self, model: Optional[nn.Module], task_index: int) -> None:
        self._single_head = None
        if len(self.memory):
            heads = self.memory.contents()[2].unique().tolist()
            self._single_head = heads[0] if len(heads) == 1 else None

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        if not len(self.memory):
            return batch
        x, y, head = self.memory.sample(len(batch))
        same = self._single_head is not None and isinstance(batch.head, int) and self._single_head == batch.head
        return join(batch, x, y, batch.head if same else head)

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        add_task_data(self.memory, model, data, head)

    def state_dict(self):
        return {"hparams": {"memory_size": self.memory.size, "selection": self.memory.selection},
                "memory": self.memory.state_dict()}

    def load_state_dict(self, state):
        check_state_keys(self, state, ("hparams", "memory"))
        self.memory.load_state_dict(state["memory"])
        self.on_task_start(None, -1)  # recompute what the memory's heads imply (resuming skips on_task_start)
