"""Conformance harness: our strategy through our real `Trainer`, and a reference step written from the authors' code,
side by side from the same initial weights, on the same minibatches and the same memory draws, compared after every
task (parameters, BatchNorm running statistics, memory contents, scored accuracy) to 1e-6 in float64.

What is shared, and how:
- weights: one model is built (float64, seeded) and deep-copied for each side (`make_model`);
- minibatches: the Trainer draws each epoch's order as `torch.randperm(n, generator)` from a generator seeded with its
  `seed`; `run_reference` draws the same permutations from a generator seeded alike and slices them the same way;
- memory draws: every random number our memories draw comes from their own generator (`ReplayMemory.generator`:
  `reservoir_slots` draws `torch.rand(n, float64)` per batch offered, `draw_rows` `torch.randperm(len(memory))`,
  `iter_task_batches(limit=k)` `torch.randperm(n)`). `run_ours` seeds every memory generator of the strategy with
  `DRAW_SEED` (`seed_draws`), and a reference draws from `Reference.draws`, seeded alike, with the same calls in the
  same order (`RefBuffer` does it for a reservoir buffer). The reference turns the draws into indices with its own
  code (e.g. the sequential Algorithm R), so a mistake in ours (an index off by one, one sample used twice) shows;
- the learning step: plain SGD (no momentum, no weight decay) on both sides; `Reference.sgd` is written by hand.

Adding a method (another test file in tests/conformance/):
1. subclass `Reference`: `observe(model, x, y, head)` takes one whole training step as the reference code does
   (forward passes, loss, `self.sgd(model, loss)`, memory update); `begin_task(model, t, task)` / `end_task(model,
   task)` for what happens at task boundaries; `memory()` returns the stored fields to compare under our memory's
   names (`x`, `y`, `head`, `logits`...), as tensors in slot order; `train_data(stream, t)` the (x, y) a task trains
   on where that is not the task's own data (cumulative, joint). Name the file and commit of the code you followed
   in a comment; write your own code;
2. call `check(lambda: make_strategy(name, **hp), lambda lr: YourReference(lr, ...), model="mlp"|"resnet",
   setting="class"|"task")`; it builds the stream and model, runs both and asserts. `check` returns both `Run`s for
   further assertions (e.g. that a projection happened at least once, so the test could see a wrong one);
3. a strategy whose state is not a `ReplayMemory` attribute passes `memory_of=` (its stored fields) and, if it draws
   random numbers from a generator of its own, makes `seed_draws` reach it (`draw_seeders=`).
`model="resnet"` is a tiny ResNet of the DER code's BasicBlocks with BatchNorm (`resnet_trunk`, 4 filters, one block
per stage, 16 px): BatchNorm in train mode is where forward-pass layouts differ; "reduced_resnet18" is the real one at
16 px (0.2 s a step in float64 on one CPU thread: for occasional checks).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from clframework.benchmarks.stream import Stream, Task
from clframework.callbacks import TrainerCallback
from clframework.models import MultiHeadNet, mlp, reduced_resnet18, resnet_trunk
from clframework.strategies.memory import ReplayMemory
from clframework.trainer import Trainer

DRAW_SEED = 1234  # both sides' memory draws
TOL = 1e-6


# ---- data and models ----------------------------------------------------------------------------------------------

def make_stream(setting: str = "class", image: bool = False, n_tasks: int = 3, classes_per_task: int = 2,
                train_per_class: int = 8, test_per_class: int = 4, seed: int = 0) -> Stream:
    """A tiny float64 stream of Gaussian class clusters: class-incremental (one head, every task adds its classes)
    or task-incremental (setting="task": one head of `classes_per_task` outputs per task). Inputs are 10 features,
    or 3x16x16 images with image=True."""
    g = torch.Generator().manual_seed(seed)
    shape = (3, 16, 16) if image else (10,)
    n_classes = n_tasks * classes_per_task
    means = torch.randn(n_classes, *shape, generator=g, dtype=torch.float64)

    def draw(per_class):
        y = torch.arange(n_classes).repeat_interleave(per_class)
        return means[y] + 0.7 * torch.randn(len(y), *shape, generator=g, dtype=torch.float64), y

    (xtr, ytr), (xte, yte) = draw(train_per_class), draw(test_per_class)
    tasks = []
    for t in range(n_tasks):
        classes = list(range(t * classes_per_task, (t + 1) * classes_per_task))
        tr, te = (ytr >= classes[0]) & (ytr <= classes[-1]), (yte >= classes[0]) & (yte <= classes[-1])
        shift = classes[0] if setting == "task" else 0
        tasks.append(Task(f"t{t}", xtr[tr], ytr[tr] - shift, xte[te], yte[te] - shift, classes,
                          head=t if setting == "task" else 0))
    heads = [classes_per_task] * n_tasks if setting == "task" else [n_classes]
    return Stream(f"conformance-{setting}", tasks, heads, setting)


def make_model(kind: str, stream: Stream, seed: int = 0) -> nn.Module:
    """A float64 model for the stream: "mlp" (one hidden layer of 16), "resnet" (tiny BatchNorm ResNet) or
    "reduced_resnet18"."""
    torch.manual_seed(seed)
    shape, heads = stream.input_shape, stream.head_sizes
    if kind == "mlp":
        model = mlp(int(torch.tensor(shape).prod()), heads, hidden=(16,))
    elif kind == "resnet":
        model = MultiHeadNet(resnet_trunk(shape[0], 4, (1, 1, 1, 1)), 32, heads)
    elif kind == "reduced_resnet18":
        model = reduced_resnet18(shape, heads)
    else:
        raise ValueError(f"unknown conformance model {kind!r}; one of mlp, resnet, reduced_resnet18")
    return model.double()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ---- what a run leaves ----------------------------------------------------------------------------------------------

@dataclass
class Snapshot:
    """After one task (and its evaluation): parameters, buffers (BatchNorm statistics), memory fields."""

    params: Dict[str, torch.Tensor]
    buffers: Dict[str, torch.Tensor]
    memory: Dict[str, torch.Tensor]


@dataclass
class Run:
    snapshots: List[Snapshot] = field(default_factory=list)
    accuracy: List[List[float]] = field(default_factory=list)
    task_il: List[List[float]] = field(default_factory=list)


def snapshot(model: nn.Module, memory: Dict[str, torch.Tensor]) -> Snapshot:
    return Snapshot({n: p.detach().clone() for n, p in model.named_parameters()},
                    {n: b.detach().clone() for n, b in model.named_buffers()},
                    {k: v.detach().clone() for k, v in memory.items()})


# ---- our side -------------------------------------------------------------------------------------------------------

def seed_draws(strategy, seed: int = DRAW_SEED) -> int:
    """Seed every memory generator the strategy holds (its ReplayMemory attributes, or generators of its own);
    returns how many."""
    n = 0
    for value in vars(strategy).values():
        gen = value.generator if isinstance(value, ReplayMemory) else value if isinstance(value, torch.Generator) \
            else None
        if gen is not None:
            gen.manual_seed(seed)
            n += 1
    return n


def stored_memory(strategy) -> Dict[str, torch.Tensor]:
    """Our strategy's stored fields (its `memory`'s), {} without one."""
    memory = getattr(strategy, "memory", None)
    return dict(memory.stored()) if isinstance(memory, ReplayMemory) and len(memory) else {}


class _Snapshots(TrainerCallback):
    def __init__(self, model, strategy, memory_of, run):
        self.model, self.strategy, self.memory_of, self.run = model, strategy, memory_of, run

    def on_task_evaluated(self, task_index, accuracies):
        if task_index >= 0:
            self.run.snapshots.append(snapshot(self.model, self.memory_of(self.strategy)))


def run_ours(strategy, model: nn.Module, stream: Stream, *, epochs: int = 1, batch_size: int = 4, lr: float = 0.1,
             seed: int = 0, memory_of: Callable = stored_memory, draw_seeders: Sequence[Callable] = (),
             optimizer: str = "sgd") -> Run:
    """Our strategy through our Trainer (CPU, plain SGD or `optimizer`, reset per task), snapshotted after every
    task."""
    seed_draws(strategy)
    for seeder in draw_seeders:
        seeder(strategy, DRAW_SEED)
    run = Run()
    trainer = Trainer(model, strategy, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, device="cpu",
                      seed=seed, quiet=True, callbacks=[_Snapshots(model, strategy, memory_of, run)])
    result = trainer.fit(stream)
    run.accuracy, run.task_il = result.accuracy_matrix, result.task_il_matrix
    return run


# ---- the reference side -------------------------------------------------------------------------------------------

def outputs(model: nn.Module, x: torch.Tensor, heads: Union[int, torch.Tensor]) -> torch.Tensor:
    """The network's outputs in one forward pass over x (so BatchNorm sees all of x): through one head, or through
    each row's own head (rows of narrower heads padded with -inf)."""
    features = model.trunk(x)
    if isinstance(heads, int):
        return model.heads[heads](features)
    rows = [model.heads[int(h)](features[i:i + 1])[0] for i, h in enumerate(heads.tolist())]
    width = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r.new_full((width - len(r),), float("-inf"))]) for r in rows])


class RefBuffer:
    """A reservoir buffer as Mammoth's utils/buffer.py (aimagelab/mammoth 7ab9db97, unchanged in spirit at HEAD
    e75a491): examples offered in order, the i-th (0-based, over the whole stream) goes to slot i while the buffer is
    not full, else to slot j = floor(u * (i + 1)) if j < capacity, u ~ U[0, 1); samples uniformly without
    replacement. Random numbers: one float64 uniform per offered example, drawn per offered batch, and one
    permutation of the stored rows per sample, from `draws` (the same calls as our memory's)."""

    def __init__(self, capacity: int, draws: torch.Generator):
        self.capacity, self.draws, self.seen = capacity, draws, 0
        self.fields: Dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, **fields: torch.Tensor) -> None:
        n = len(next(iter(fields.values())))
        u = torch.rand(n, generator=self.draws, dtype=torch.float64)
        for i in range(n):
            slot = self.seen if self.seen < self.capacity else int(u[i].item() * (self.seen + 1))
            self.seen += 1
            if slot >= self.capacity:
                continue
            for key, value in fields.items():
                if key not in self.fields:
                    self.fields[key] = value.new_zeros((self.capacity, *value.shape[1:]))
                self.fields[key][slot] = value[i]

    def sample_rows(self, k: int) -> torch.Tensor:
        return torch.randperm(len(self), generator=self.draws)[:k]

    def sample(self, k: int) -> Dict[str, torch.Tensor]:
        rows = self.sample_rows(k)
        return {key: v[rows] for key, v in self.fields.items()}

    def contents(self) -> Dict[str, torch.Tensor]:
        return {key: v[:len(self)] for key, v in self.fields.items()}


class Reference:
    """A method's reference step (subclass it; see the module docstring). `draws`: the generator of the memory
    draws, seeded as ours; `task`: the index of the task being trained."""

    def __init__(self, lr: float):
        self.lr, self.task = lr, 0
        self.draws = torch.Generator().manual_seed(DRAW_SEED)

    def begin_task(self, model: nn.Module, t: int, task: Task) -> None:
        self.task = t

    def train_data(self, stream: Stream, t: int):
        """(x, y) task t trains on (default: its own training data; cumulative and joint: unions), or None."""
        return stream.tasks[t].train_x, stream.tasks[t].train_y

    def observe(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, head: int) -> None:
        raise NotImplementedError

    def end_task(self, model: nn.Module, task: Task) -> None:
        pass

    def memory(self) -> Dict[str, torch.Tensor]:
        return {}

    def sgd(self, model: nn.Module, loss: Optional[torch.Tensor] = None) -> None:
        """Backward of `loss` (if given), then p <- p - lr * grad for every parameter that has a gradient."""
        if loss is not None:
            loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= self.lr * p.grad
                    p.grad = None


def _accuracy(model: nn.Module, stream: Stream):
    """Class-IL and task-IL accuracy of every task, eval mode (test split)."""
    model.eval()
    row, til, first = [], [], 0
    with torch.no_grad():
        for task in stream.tasks:
            out = outputs(model, task.test_x, task.head)
            y = task.test_y
            row.append((out.argmax(1) == y).double().mean().item())
            if stream.setting == "class":
                k = len(task.classes)
                til.append(((out[:, first:first + k].argmax(1) + first) == y).double().mean().item())
                first += k
            else:
                til.append(row[-1])
    model.train()
    return row, til


def run_reference(ref: Reference, model: nn.Module, stream: Stream, *, epochs: int = 1, batch_size: int = 4,
                  seed: int = 0) -> Run:
    """The reference over the stream: each epoch's minibatch order drawn as the Trainer draws it (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    run = Run()
    model.train()
    for t, task in enumerate(stream.tasks):
        ref.begin_task(model, t, task)
        data = ref.train_data(stream, t)
        x, y = data if data is not None else (None, ())
        for _ in range(epochs if data is not None else 0):
            order = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), batch_size):
                rows = order[i:i + batch_size]
                ref.observe(model, x[rows], y[rows], task.head)
        ref.end_task(model, task)
        row, til = _accuracy(model, stream)
        run.accuracy.append(row)
        run.task_il.append(til)
        run.snapshots.append(snapshot(model, ref.memory()))
    return run


# ---- comparison ---------------------------------------------------------------------------------------------------

def _close(what: str, ours: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    if ours.shape != ref.shape:
        raise AssertionError(f"{what}: shape {tuple(ours.shape)} (ours) vs {tuple(ref.shape)} (reference)")
    if ours.numel() == 0:
        return
    if not ours.is_floating_point():
        if not torch.equal(ours, ref.to(ours.dtype)):
            raise AssertionError(f"{what}: differs (ours {ours.tolist()}, reference {ref.tolist()})")
        return
    both_nan = torch.isnan(ours) & torch.isnan(ref.to(ours.dtype))
    diff = (ours.double() - ref.double()).abs().masked_fill(both_nan, 0.0)
    worst = float(diff.max())
    if not worst <= tol:
        raise AssertionError(f"{what}: max difference {worst:.3g} > {tol}")


def assert_conforms(ours: Run, ref: Run, tol: float = TOL, memory: bool = True) -> None:
    """Every task's snapshot equal (parameters, buffers, the memory fields the reference keeps), and the accuracy
    matrices (class-IL and task-IL) equal."""
    if len(ours.snapshots) != len(ref.snapshots):
        raise AssertionError(f"{len(ours.snapshots)} tasks (ours) vs {len(ref.snapshots)} (reference)")
    for t, (a, b) in enumerate(zip(ours.snapshots, ref.snapshots)):
        for kind, mine, theirs in (("parameter", a.params, b.params), ("buffer", a.buffers, b.buffers)):
            if set(mine) != set(theirs):
                raise AssertionError(f"after task {t}: {kind}s {sorted(mine)} vs {sorted(theirs)}")
            for name in mine:
                _close(f"after task {t}: {kind} {name}", mine[name], theirs[name], tol)
        if memory:
            missing = sorted(set(b.memory) - set(a.memory))
            if missing:
                raise AssertionError(f"after task {t}: our memory lacks {missing} (has {sorted(a.memory)})")
            for key in b.memory:
                _close(f"after task {t}: memory field {key}", a.memory[key], b.memory[key], tol)
    for what, mine, theirs in (("accuracy", ours.accuracy, ref.accuracy), ("task-IL accuracy", ours.task_il,
                                                                            ref.task_il)):
        _close(what, torch.tensor(mine, dtype=torch.float64), torch.tensor(theirs, dtype=torch.float64), tol)


def check(make_ours: Callable[[], object], make_reference: Callable[[float], Reference], model: str = "mlp",
          setting: str = "class", *, epochs: int = 1, batch_size: int = 4, lr: float = 0.1, seed: int = 0,
          memory_of: Callable = stored_memory, draw_seeders: Sequence[Callable] = (), optimizer: str = "sgd",
          **stream_options):
    """Run our strategy and its reference from the same weights on the same stream and assert they conform; returns
    (ours, reference) runs. model: mlp, resnet (BatchNorm) or reduced_resnet18; setting: class or task; optimizer:
    our Trainer's (a reference that is not plain SGD writes its own step)."""
    stream = make_stream(setting, image=model != "mlp", **stream_options)
    initial = make_model(model, stream, seed)
    ours = run_ours(make_ours(), copy.deepcopy(initial), stream, epochs=epochs, batch_size=batch_size, lr=lr,
                    seed=seed, memory_of=memory_of, draw_seeders=draw_seeders, optimizer=optimizer)
    ref = run_reference(make_reference(lr), copy.deepcopy(initial), stream, epochs=epochs, batch_size=batch_size,
                        seed=seed)
    assert_conforms(ours, ref)
    return ours, ref
