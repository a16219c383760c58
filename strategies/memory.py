"""The rehearsal memory every replay-based strategy shares: a fixed number of stored examples across tasks.

Each stored example keeps named fields: `x` (its stored form, `Batch.raw`: e.g. uint8 images before decoding and
augmentation; a memory's user rebuilds model inputs with `batch.inputs(x)`), `y`, `head`, and whatever else a
strategy offers with it (the task index, the logits DER keeps). Selection:
- reservoir (Vitter's algorithm R over the stream of offered examples, in order): after n examples have been offered,
  each of them is in memory with probability size / n. Replay and A-GEM offer a task's data at its end; ER, DER and
  ER-ACE after every incoming minibatch (so the current task is replayed too);
- class-balanced: an equal share of the memory per class seen (a class being a (head, label) pair), each share a
  reservoir over that class's examples, so every example of a class is kept with equal probability too.
All random draws come from the memory's own seeded generator, whose state is part of `state_dict` (resume is exact).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from clframework.models import forward_heads
from clframework.plugin import Batch, Strategy, check_state_keys, iter_task_batches, join

SELECTIONS = ("reservoir", "class-balanced")


def reservoir_slots(seen: int, incoming: int, capacity: int, generator: torch.Generator) -> Tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """Algorithm R for `incoming` new examples after `seen`: (memory slots, indices of the incoming examples that go
    there). Example i (the (seen + i)-th of the stream, 0-based) fills slot seen + i while the memory is not full,
    else replaces slot j ~ U{0..seen+i} when j < capacity. A decision never depends on the memory's contents, so all
    are drawn at once; when two land on one slot the later wins, as in the sequential algorithm. Nothing of the
    memory's size is allocated (a memory_size of 10^9 costs what 200 does), only of the minibatch's."""
    capacity = min(capacity, seen + incoming)  # no slot beyond it is ever drawn: the same slots, no int64 overflow
    count = torch.arange(seen, seen + incoming, dtype=torch.long)
    draw = (torch.rand(incoming, generator=generator, dtype=torch.float64) * (count + 1)).long()
    slot = torch.where(count < capacity, count, draw)
    keep = slot < capacity
    slot, index = slot[keep], torch.arange(incoming)[keep]
    distinct, which = torch.unique(slot, return_inverse=True)  # sorted slots, as the old per-slot scan gave them
    won = torch.full((len(distinct),), -1, dtype=torch.long).scatter_reduce_(0, which, torch.arange(len(slot)), "amax")
    return slot[won], index[won]


def balanced_quotas(n_classes: int, capacity: int) -> List[int]:
    """capacity split as evenly as possible over the classes (the first classes take the remainder)."""
    return [capacity // n_classes + (1 if i < capacity % n_classes else 0) for i in range(n_classes)]


def _widen(t: torch.Tensor, width: int) -> torch.Tensor:
    """Stored logits padded with NaN columns to `width`: heads of different widths share one tensor;
    NaN marks an output the example's head does not have."""
    if t.shape[1] >= width:
        return t
    return torch.cat([t, t.new_full((len(t), width - t.shape[1]), float("nan"))], 1)


class _Pool:
    """One reservoir: stored fields (tensors on the data's device, one row per example) and how many it has seen."""

    def __init__(self, capacity: int):
        self.capacity, self.seen = capacity, 0
        self.fields: Dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.fields["y"]) if self.fields else 0

    def add(self, fields: Dict[str, torch.Tensor], generator: torch.Generator) -> None:
        n = len(fields["y"])
        slots, index = reservoir_slots(self.seen, n, self.capacity, generator)
        self.seen += n
        if not len(slots):
            return
        if self.fields and set(fields) != set(self.fields):
            raise ValueError(f"examples offered with fields {sorted(fields)} to a memory holding {sorted(self.fields)}")
        size = min(self.seen, self.capacity)
        slots, index = slots.to(fields["y"].device), index.to(fields["y"].device)
        for key, new in fields.items():
            stored = self.fields.get(key)
            if key == "logits" and stored is not None and stored.shape[1] != new.shape[1]:
                width = max(stored.shape[1], new.shape[1])
                stored, new = _widen(stored, width), _widen(new, width)
            if stored is None or len(stored) < size:  # the memory grows until full; new rows are written below
                extra = new.new_zeros((size - (0 if stored is None else len(stored)), *new.shape[1:]))
                stored = extra if stored is None else torch.cat([stored, extra])
            stored[slots] = new[index]
            self.fields[key] = stored

    def shrink(self, capacity: int, generator: torch.Generator) -> None:
        """Keep a uniformly random `capacity` of the stored examples (a uniform sample of a uniform sample)."""
        self.capacity = capacity
        if len(self) > capacity:
            keep = torch.randperm(len(self), generator=generator)[:capacity].sort().values.to(self.fields["y"].device)
            self.fields = {k: v[keep] for k, v in self.fields.items()}

    def state(self) -> dict:
        return {"capacity": self.capacity, "seen": self.seen, "fields": dict(self.fields)}

    @classmethod
    def from_state(cls, state: dict) -> "_Pool":
        pool = cls(int(state["capacity"]))
        pool.seen = int(state["seen"])
        pool.fields = {k: v.clone() for k, v in state["fields"].items()}
        return pool


class ReplayMemory:
    """A fixed-size memory of examples (x, y, head and any further named fields) with reservoir or class-balanced
    selection."""

    def __init__(self, size: int, selection: str = "reservoir", seed: Optional[int] = None):
        if selection not in SELECTIONS:
            raise ValueError(f"unknown memory selection {selection!r}; choose one of {SELECTIONS}")
        self.size, self.selection = int(size), selection
        self.generator = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)
        self.pools: Dict[Tuple[int, int], _Pool] = {}  # (head, label) -> pool; one pool keyed (-1, -1) for reservoir
        self._flat: Optional[Dict[str, torch.Tensor]] = None

    def __len__(self) -> int:
        return sum(len(p) for p in self.pools.values())

    def add(self, x: torch.Tensor, y: torch.Tensor, head: torch.Tensor, **extra: torch.Tensor) -> None:
        """Offer examples (in stream order) to the memory; `extra`: further per-example fields (e.g. logits=...)."""
        self._flat = None
        fields = {"x": x, "y": y, "head": head, **extra}
        if self.selection == "reservoir":
            self.pools.setdefault((-1, -1), _Pool(self.size)).add(fields, self.generator)
            return
        keys = sorted(set(zip(head.tolist(), y.tolist())) | set(self.pools))
        for key, quota in zip(keys, balanced_quotas(len(keys), self.size)):
            if key in self.pools:
                self.pools[key].shrink(quota, self.generator)
            else:
                self.pools[key] = _Pool(quota)
        for key in sorted(set(zip(head.tolist(), y.tolist()))):
            rows = ((head == key[0]) & (y == key[1])).nonzero().squeeze(1)
            self.pools[key].add({k: v[rows] for k, v in fields.items()}, self.generator)

    def stored(self) -> Dict[str, torch.Tensor]:
        """Every stored field, concatenated over pools (cached until the next `add`)."""
        if self._flat is None:
            pools = [p for _, p in sorted(self.pools.items()) if len(p)]
            width = max((p.fields["logits"].shape[1] for p in pools if "logits" in p.fields), default=0)
            self._flat = {k: torch.cat([_widen(p.fields[k], width) if k == "logits" else p.fields[k] for p in pools])
                          for k in (pools[0].fields if pools else ())}
        return self._flat

    def contents(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All stored (x, y, head)."""
        flat = self.stored()
        return flat["x"], flat["y"], flat["head"]

    def draw_rows(self, k: int) -> torch.Tensor:
        """Rows of `stored()` of min(k, len) examples drawn uniformly without replacement."""
        y = self.stored()["y"]
        return torch.randperm(len(y), generator=self.generator)[:k].to(y.device)

    def draw(self, k: int) -> Dict[str, torch.Tensor]:
        """min(k, len) stored examples, every field, drawn uniformly without replacement."""
        pick = self.draw_rows(k)
        return {key: v[pick] for key, v in self.stored().items()}

    def sample(self, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """min(k, len) stored (x, y, head) drawn uniformly without replacement."""
        d = self.draw(k)
        return d["x"], d["y"], d["head"]

    def state_dict(self) -> dict:
        return {"size": self.size, "selection": self.selection, "generator": self.generator.get_state(),
                "pools": {f"{h},{c}": p.state() for (h, c), p in self.pools.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.selection = int(state["size"]), state["selection"]
        self.generator.set_state(state["generator"].cpu())  # a checkpoint may have moved it to the device
        self.pools = {tuple(int(v) for v in k.split(",")): _Pool.from_state(p) for k, p in state["pools"].items()}
        self._flat = None


def add_task_data(memory: ReplayMemory, model: nn.Module, data, head: int, batch_size: int = 1024,
                  raw: bool = True, limit: int = 0) -> None:
    """Offer a finished task's training data to the memory, on the model's device: in their stored form (e.g. uint8
    images, what the trainer's minibatches carry as `Batch.raw`), or with raw=False as model inputs (what a plain
    loop's minibatches hold when they carry no `prepare`; see `stores_raw`). limit > 0: only that many of them, a
    uniform random subset drawn with the memory's generator."""
    device = next(model.parameters()).device
    for x, y in iter_task_batches(data, batch_size, device, limit=limit, generator=memory.generator, raw=raw):
        memory.add(x, y, torch.full((len(y),), int(head), dtype=torch.long, device=device))


def stores_raw(batch: Batch) -> bool:
    """Whether a memory filled from whole tasks should keep the stored form: yes when minibatches come with the
    function that prepares it (the trainer's), no for a plain loop's `Batch(x, y, head)` of model inputs, whose
    memory must hold model inputs too."""
    return batch.prepare is not None


class StreamRehearsal(Strategy):
    """Base of the DER family (er, der, derpp, er_ace): a reservoir memory offered every incoming minibatch after the
    optimizer step (so the current task is replayed too), and memory samples joined to the minibatch.

    `replayed(batch, *sizes)` joins one memory sample per size and remembers the row ranges (`self.rows`) and each
    part's heads (`self.heads`); subclasses give their loss in `task_loss` and may add fields (e.g. logits) to
    `self.offer` before the step.
    """

    def __init__(self, memory_size: int, minibatch_size: int):
        if memory_size < 1 or minibatch_size < 1:
            raise ValueError(f"{type(self).__name__} needs memory_size >= 1 and minibatch_size >= 1, got "
                             f"{memory_size}, {minibatch_size}")
        self.minibatch_size = int(minibatch_size)
        self.memory = ReplayMemory(memory_size)
        self.task_index = 0
        self.heads_offered: List[int] = []  # the heads stored examples use (Python ints: no host sync to check)
        self.offer: Dict[str, torch.Tensor] = {}  # the incoming minibatch's fields, stored after the step
        self.rows: List[Tuple[int, int]] = []  # row ranges of the joined batch: incoming, then each memory sample
        self.heads: List[object] = []  # the heads of each of those parts (an int, or one per row)

    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        self.task_index = task_index

    def replayed(self, batch: Batch, *sizes: int) -> Tuple[Batch, List[Dict[str, torch.Tensor]]]:
        """`batch` joined by one memory sample per size (none while the memory is empty), and those samples."""
        n = len(batch)
        heads = batch.heads()
        self.offer = {"x": batch.raw[:n], "y": batch.y, "head": heads,
                      "task": torch.full_like(heads, self.task_index)}
        head_key = batch.head if isinstance(batch.head, int) else -1  # -1: per-example heads, never "single"
        if head_key not in self.heads_offered:
            self.heads_offered.append(head_key)
        self.rows, self.heads, samples = [(0, n)], [batch.head], []
        if not len(self.memory):
            return batch, samples
        single = isinstance(batch.head, int) and self.heads_offered == [batch.head]
        for size in sizes:
            s = self.memory.draw(size)
            first, head = len(batch), batch.head if single else s["head"]
            batch = join(batch, batch.inputs(s["x"]), s["y"], head, raw=s["x"])
            self.rows.append((first, len(batch)))
            self.heads.append(head)
            samples.append(s)
        return batch, samples

    def on_after_step(self, model: nn.Module) -> None:
        offer = self.offer
        if not offer:
            return
        self.memory.add(offer.pop("x"), offer.pop("y"), offer.pop("head"), **offer)
        self.offer = {}

    def _state(self, **hparams) -> Dict[str, object]:
        return {"hparams": {"memory_size": self.memory.size, "minibatch_size": self.minibatch_size, **hparams},
                "memory": self.memory.state_dict(), "task_index": self.task_index,
                "heads_offered": list(self.heads_offered)}

    def state_dict(self) -> Dict[str, object]:
        return self._state()

    def load_state_dict(self, state: Dict[str, object]) -> None:
        check_state_keys(self, state, ("hparams", "memory", "task_index", "heads_offered"))
        self.minibatch_size = int(state["hparams"]["minibatch_size"])
        for key, value in state["hparams"].items():
            if key not in ("memory_size", "minibatch_size"):
                setattr(self, key, value)
        self.memory.load_state_dict(state["memory"])
        self.task_index, self.heads_offered = int(state["task_index"]), [int(h) for h in state["heads_offered"]]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model normalizes over the batch in train mode (BatchNorm): then rows passed together change one
    another's outputs, and one forward pass over joined parts differs from one pass per part."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def forward_parts(model: nn.Module, x: torch.Tensor, rows: List[Tuple[int, int]], heads: List[object],
                  run=forward_heads) -> torch.Tensor:
    """One forward pass `run(model, x[a:b], head)` per row range, in order (BatchNorm normalizes each part with its own
    statistics and moves its running statistics once per part), stacked as one pass over all rows would give them:
    rows of narrower heads padded with -inf."""
    parts = [run(model, x[a:b], head) for (a, b), head in zip(rows, heads)]
    width = max(p.shape[1] for p in parts)
    return torch.cat([p if p.shape[1] == width else
                      torch.cat([p, p.new_full((len(p), width - p.shape[1]), float("-inf"))], 1) for p in parts])


class SeparatePasses(StreamRehearsal):
    """StreamRehearsal whose incoming minibatch and memory samples go through the network in separate forward
    passes, as the reference code of DER, DER++ and ER-ACE runs them (Mammoth: `net(inputs)`, then `net(buf_inputs)`
    per memory sample): under BatchNorm each part has its own batch statistics, the running statistics move once per
    part and the stored logits are those of the incoming rows alone. A model without BatchNorm gives the same outputs
    and gradients from one joined pass, which is then taken (checked once per task)."""

    def __init__(self, memory_size: int, minibatch_size: int):
        super().__init__(memory_size, minibatch_size)
        self._separate: Optional[bool] = None  # whether the model has BatchNorm, found at the task's first step

    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        super().on_task_start(model, task_index)
        self._separate = None

    def forward(self, model: nn.Module, batch: Batch, run=forward_heads) -> torch.Tensor:
        if self._separate is None:
            self._separate = has_batchnorm(model)
        if not self._separate or len(self.rows) == 1:
            return run(model, batch.x, batch.head)
        return forward_parts(model, batch.x, self.rows, self.heads, run)
