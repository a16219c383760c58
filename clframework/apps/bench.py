"""`clframework bench`: our strategies against a bare PyTorch loop and against Avalanche 0.6, in one process.

Every entry trains the same initial weights on the same in-memory stream with the same optimizer (Adam), minibatch,
epochs and optimizer reset rule, and is scored by the same evaluator at the end. Only training is timed (for each
task: from its first step through the strategy's end-of-task work, e.g. EWC's Fisher), never evaluation or imports.

Ratios that hold still on a machine whose speed moves: a shared VM's cores here ran up to 1.6x slower for seconds at
a time, invisibly to the guest (no steal time, CPU time = wall time), so an entry's seconds moved 12-24% between
invocations and no ratio of two entries timed a minute apart could be trusted. What holds still is a ratio of two
timings taken seconds apart (scripts/bench_pairing.py measures this on the machine at hand). So the entries train
side by side, task by task: for each task every entry trains that task in turn (in an order rotated per task and
repeat), with the garbage collector paused; `repeats` such passes over the stream. An entry's ratio to the floor
(`paired_ratio`) is, per task, the median over the repeats of its time over the floor's time on the same task in the
same pass, weighted by the floor's mean task times. Its seconds are the sum over tasks of each task's fastest repeat. Its
spread is how far the ratio moves between two independent halves of the repeats (even and odd ones): what a second
invocation would be expected to move; an entry whose spread exceeds `max_spread` gets no verdict on its budget. The
floor's own spread (of its seconds) shows how much the machine moved.
Before the timed passes, one untimed pass trains every entry alone, one after the other: it pays imports, allocator
and caches, and gives each entry's accuracy, peak memory and matrix-product FLOPs (`MatrixProducts`). With the
strategy's end-of-task work timed apart (`Clock.end_of_task`), each row also says how much of its ratio is its steps,
its end-of-task work and its own extra arithmetic: why a budget is out of reach where it is. The entry `floor-agem`
(`train_floor_agem`) goes further for A-GEM: the floor plus the reference gradient every A-GEM step must compute,
timed like any entry, so A-GEM's budget line says how much of its ratio no implementation can avoid.

Peak memory: the growth of the process's peak resident set size while the entry trains (Linux: the kernel's
high-water mark, reset before the entry through /proc/self/clear_refs, so nothing runs beside the timed loop;
elsewhere sampled every 5 ms by a thread); on CUDA torch.cuda.max_memory_allocated over the entry. `tracemalloc` is
not used: it does not see tensor storage.
"""
from __future__ import annotations

import copy
import gc
import json
import os
import platform
import statistics
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clframework.benchmarks import Stream, Task, benchmark_protocol, make_benchmark
from clframework.evaluation.evaluator import evaluate_stream

from ..models import build_model
from ..plugin import make_strategy, overrides
from ..trainer import Trainer, select_device

OURS = ("naive", "si", "ewc", "mas", "lwf", "replay", "agem")
AVALANCHE = tuple(f"avalanche-{name}" for name in OURS)
ENTRIES = ("floor",) + OURS + AVALANCHE
COUNTERPART = {name: f"avalanche-{name}" for name in OURS}
# The class-incremental rehearsal family (`--entries rehearsal --setting class`) and Avalanche 0.6's versions of it
# (Avalanche has no DER++ and no DER-paper ER distinct from its Replay; its ICaRL needs an nc_benchmark scenario,
# which these tensor streams are not, so it is left out).
REHEARSAL = ("er", "der", "derpp", "er_ace", "icarl", "gdumb")
AVALANCHE_REHEARSAL = ("avalanche-der", "avalanche-er_ace", "avalanche-gdumb")
COUNTERPART.update({name: f"avalanche-{name}" for name in ("der", "er_ace", "gdumb")})
REHEARSAL_ENTRIES = ("floor", "naive") + REHEARSAL + AVALANCHE_REHEARSAL
# An entry that does a method's irreducible work alone (train_floor_agem), by the method whose budget line cites it;
# chosen by name (`--entries floor,agem,floor-agem`), not part of "all".
IRREDUCIBLE = {"agem": "floor-agem"}
ALL_ENTRIES = ENTRIES + tuple(IRREDUCIBLE.values()) + REHEARSAL + AVALANCHE_REHEARSAL
QUICK = {"tasks": 2, "max_train": 256, "epochs": 1}


@dataclass
class BenchConfig:
    """What every entry shares. Unset fields take the benchmark's paper protocol."""

    benchmark: str = "split-mnist-5k"
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    tasks: int = 0          # first N tasks only (0 = all)
    max_train: int = 0      # at most N training examples per task (0 = all)
    repeats: int = 5
    entries: Sequence[str] = ENTRIES
    seed: int = 0
    device: str = "cpu"
    hparams: Dict[str, dict] = field(default_factory=dict)  # our strategies' hyperparameters, by name
    max_spread: float = 0.03  # no verdict on an entry whose ratio's spread (see the module's docstring) is wider
    setting: str = ""  # the benchmark's setting ("" = its default); the rehearsal entries need "class"

    def check(self) -> None:
        unknown = [e for e in self.entries if e not in ALL_ENTRIES]
        if unknown or not self.entries:
            raise ValueError(f"unknown bench entries {unknown or '(none given)'}; choose from {', '.join(ALL_ENTRIES)}")
        if "floor" not in self.entries:
            raise ValueError("the entries must include 'floor' (every ratio is relative to it)")
        sizes = (("repeats", self.repeats), ("epochs", self.epochs or 1), ("batch size", self.batch_size or 1))
        for name, value in sizes:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.tasks < 0 or self.max_train < 0:
            raise ValueError(f"tasks and max_train must be >= 0 (0 = all), got {self.tasks} and {self.max_train}")
        if not 0 < self.max_spread < 1:
            raise ValueError(f"max_spread must be a fraction in (0, 1), e.g. 0.03, got {self.max_spread}")


def shrink(stream: Stream, tasks: int, max_train: int) -> Stream:
    """The first `tasks` tasks, each with at most `max_train` training examples drawn at random with a fixed seed
    (task data may be stored class by class, so the first examples could all share one label)."""
    chosen = stream.tasks[:tasks] if tasks else stream.tasks
    gen = torch.Generator().manual_seed(0)
    out = []
    for t in chosen:
        keep = torch.randperm(len(t.train_y), generator=gen)[:max_train or None].sort().values
        out.append(t.with_splits(train=t.examples("train").take(keep)))
    return Stream(stream.name, out, stream.head_sizes, stream.setting, stream.input_shape, dict(stream.info))


def _peak_rss() -> Optional[int]:
    """The kernel's peak RSS of this process in bytes (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _peak_rss() is not None
    except OSError:
        return False


class PeakMemory:
    """Peak memory growth (MB) during a `with` block: the allocator's peak on CUDA; on CPU the kernel's peak RSS
    (reset on entry), or where that is unavailable the RSS sampled by a thread."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval, self.peak_mb = device, interval, 0.0
        self._thread: Optional[threading.Thread] = None

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self._proc = psutil.Process()
        self._start = self._peak = self._proc.memory_info().rss
        if not _reset_peak_rss():
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is None:
            peak = max(self._start, _peak_rss() or 0)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (peak - self._start) / 2 ** 20
        return False


class Clock:
    """Wall and process-CPU seconds of each timed section (one per task) of one entry (CPU time shows how much of
    the wall time other processes took on a busy machine). The garbage collector waits while a section runs."""

    def __init__(self, device: torch.device):
        self.device = device
        self.walls: List[float] = []
        self.cpus: List[float] = []
        self.ends: List[float] = []  # per section: the wall seconds of the strategy's end-of-task work inside it
        self._end = 0.0

    @property
    def wall(self) -> float:
        return sum(self.walls)

    @property
    def cpu(self) -> float:
        return sum(self.cpus)

    @contextmanager
    def timing(self):
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._end = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            yield
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.walls.append(time.perf_counter() - wall)
            self.cpus.append(time.process_time() - cpu)
            self.ends.append(self._end)
        finally:
            if enabled:
                gc.enable()

    def end_of_task(self, hook: Callable) -> Callable:
        """`hook` (a strategy's on_task_end) timed apart inside the current section: the once-per-task work (EWC's
        Fisher, MAS's importance) is told from the steps."""
        def timed(*args, **kwargs):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self._end += time.perf_counter() - start

        return timed


class MatrixProducts:
    """Within a `with` block: the FLOPs of the matrix products and convolutions that ran (torch.utils.flop_counter's
    formulas, forward and backward) and the seconds their kernels took (on CUDA each is synchronized: use it only
    where nothing is timed). What an entry's extra arithmetic alone costs: a lower bound that no bookkeeping saved
    can pass (EWC's Fisher, A-GEM's reference gradient)."""

    def __init__(self, device: torch.device):
        self.device, self.flops, self.seconds = device, 0, 0.0

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        outer, cuda = self, self.device.type == "cuda"

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                count = flop_registry.get(func._overloadpacket)
                if count is None:
                    return func(*args, **kwargs)
                if cuda:
                    torch.cuda.synchronize(outer.device)
                start = time.perf_counter()
                out = func(*args, **kwargs)
                if cuda:
                    torch.cuda.synchronize(outer.device)
                outer.seconds += time.perf_counter() - start
                outer.flops += count(*args, **kwargs, out_val=out)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        return False


# Every entry is a generator over the stream's tasks: it trains one task (timed by its clock) per `next`, so the
# entries can take turns task by task; its return value is the model to score (None: the trained model).
Runner = Callable[[nn.Module, Stream, dict, Clock, int], Iterator[None]]


def train_floor(model: nn.Module, stream: Stream, cfg: dict, clock: Clock, seed: int) -> Iterator[None]:
    """The floor: the plainest loop over in-memory tensors (no strategy, no bookkeeping). The task's model inputs
    are read before its clock starts, as a plain loop holds them (`train_x` decodes a compactly stored task whole)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    device, opt = clock.device, None
    for task in stream:
        inputs, labels = task.train_x, task.train_y
        with clock.timing():
            if opt is None or cfg["reset_optimizer"]:
                opt = torch.optim.Adam(params, lr=cfg["lr"], betas=(0.9, 0.999))
            x, y, head, n, bs = inputs.to(device), labels.to(device), task.head, len(labels), cfg["batch_size"]
            model.train()
            for _ in range(cfg["epochs"]):
                order = torch.randperm(n, generator=gen).to(device)
                for i in range(0, n, bs):
                    idx = order[i:i + bs]
                    loss = F.cross_entropy(model(x[idx], head), y[idx])
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
        yield


def _keep_uniform(memory: Optional[tuple], seen: int, x: torch.Tensor, y: torch.Tensor, head: int, size: int,
                  per_task: int, gen: torch.Generator) -> tuple:
    """A memory of min(size, all offered) examples after this task's are offered, each offered example kept with the
    same probability (the distribution of A-GEM's reservoir): `memory` (x, y, head rows, or None) holds a uniform
    subset of the `seen` examples offered before. per_task > 0: only that many of this task's are offered, a uniform
    random subset, as A-GEM's `per_task`. Rows in head order (stable): each head's rows contiguous."""
    n = len(y)
    if per_task and per_task < n:
        offered = torch.randperm(n, generator=gen)[:per_task].to(y.device)
        x, y, n = x[offered], y[offered], per_task
    chosen = torch.randperm(seen + n, generator=gen)[:size]  # a uniform subset of everything offered
    new = (chosen[chosen >= seen] - seen).to(y.device)
    kept = len(chosen) - len(new)  # of the earlier examples: a uniform subset of the memory's (itself uniform)
    parts = [(x[new], y[new], torch.full((len(new),), head, dtype=torch.long, device=y.device))]
    if kept:
        old = torch.randperm(len(memory[1]), generator=gen)[:kept].to(y.device)
        parts.insert(0, tuple(t[old] for t in memory))
    mx, my, mh = (torch.cat(t) for t in zip(*parts))
    order = torch.argsort(mh, stable=True)
    return mx[order], my[order], mh[order]


def train_floor_agem(hparams: dict) -> Runner:
    """`floor-agem`: the floor plus the work every step of a correct A-GEM must do, and nothing else: A-GEM's
    irreducible cost, so its budget line can tell how much of its ratio is unavoidable and how much is ours. From the
    second task on it holds, as model inputs, a memory of the size A-GEM's holds then (min(memory_size, examples
    offered so far), `per_task` as A-GEM's; filled at each task's end, timed as end-of-task work, each offered example
    kept with equal probability as by A-GEM's reservoir; a class-balanced A-GEM memory may hold fewer where a class
    has fewer examples than its share) and, every step, computes the gradient of the cross-entropy on a reference
    batch with torch.autograd.grad over every trainable parameter: the whole memory while sample_size >= its size (no
    draw), else sample_size rows drawn uniformly without replacement each step (A-GEM's choice, as in the authors'
    code: facebookresearch/agem 4542149, conv_split_cifar.py, `mem_sample_mask`; their model/model.py
    `create_stochastic_gem_ops` takes `tf.gradients` of the memory's loss each step). The loss is A-GEM's
    `grouped_loss`: one trunk forward over the batch, each head on its rows, one cross-entropy (the fewest operations
    that give each example its own head); a draw is sorted so each head's rows are contiguous, and their bounds read
    (a host sync, as A-GEM's). The reference gradient is then dropped: no projection, no dot product, no scaling; the
    minibatch's gradient is applied as the floor's, on the floor's data order, so the weights end as the floor's.
    Not counted as irreducible: A-GEM's Adam also steps the earlier heads that the reference gradient reaches (on a
    conflicting step the projection moves them; ours passes zeros to them otherwise)."""
    size, sample = int(hparams.get("memory_size", 200)), int(hparams.get("sample_size", 256))
    per_task = int(hparams.get("per_task", 0))

    def run(model: nn.Module, stream: Stream, cfg: dict, clock: Clock, seed: int) -> Iterator[None]:
        from clframework.strategies.agem import grouped_loss

        gen = torch.Generator().manual_seed(seed)  # the floor's data order
        draws = torch.Generator().manual_seed(seed + 1)  # the memory's own
        params = [p for p in model.parameters() if p.requires_grad]
        device, opt = clock.device, None
        memory, seen, groups, starts = None, 0, [], None

        def fill(x: torch.Tensor, y: torch.Tensor, head: int) -> None:
            nonlocal memory, seen, groups, starts
            memory = _keep_uniform(memory, seen, x, y, head, size, per_task, draws)
            seen += min(per_task, len(y)) if per_task else len(y)
            heads, counts = torch.unique_consecutive(memory[2], return_counts=True)
            ends = counts.cumsum(0)
            groups = [(h, e - c, e) for h, c, e in zip(heads.tolist(), counts.tolist(), ends.tolist())]
            starts = ends - counts

        fill = clock.end_of_task(fill)
        for task in stream:
            inputs, labels = task.train_x, task.train_y
            with clock.timing():
                if opt is None or cfg["reset_optimizer"]:
                    opt = torch.optim.Adam(params, lr=cfg["lr"], betas=(0.9, 0.999))
                x, y, head, n, bs = inputs.to(device), labels.to(device), task.head, len(labels), cfg["batch_size"]
                model.train()
                for _ in range(cfg["epochs"]):
                    order = torch.randperm(n, generator=gen).to(device)
                    for i in range(0, n, bs):
                        idx = order[i:i + bs]
                        loss = F.cross_entropy(model(x[idx], head), y[idx])
                        loss.backward()
                        if memory is not None:
                            rx, ry, parts = memory[0], memory[1], groups
                            if sample < len(ry):
                                rows = torch.randperm(len(ry), generator=draws)[:sample].to(device).sort().values
                                bounds = torch.searchsorted(rows, starts).tolist() + [len(rows)]
                                parts = [(h, a, b) for (h, _, _), a, b in zip(groups, bounds, bounds[1:]) if b > a]
                                rx, ry = rx[rows], ry[rows]
                            torch.autograd.grad(grouped_loss(model, rx, ry, parts), params, allow_unused=True)
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                fill(x, y, head)
            yield

    return run


def train_ours(name: str, hparams: dict) -> Runner:
    def run(model: nn.Module, stream: Stream, cfg: dict, clock: Clock, seed: int) -> Iterator[None]:
        strategy = make_strategy(name, **hparams)
        trainer = Trainer(model, strategy, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                          lr=cfg["lr"], reset_optimizer=cfg["reset_optimizer"], device=str(clock.device), seed=seed,
                          quiet=True)
        data, scored = overrides(strategy, "task_data"), overrides(strategy, "eval_model")
        if overrides(strategy, "on_task_end"):
            strategy.on_task_end = clock.end_of_task(strategy.on_task_end)
        scorer = model
        for i, task in enumerate(stream):
            with clock.timing():  # the hooks the Trainer's fit calls are part of the strategy's cost
                trainer.train_task(strategy.task_data(stream, i) if data else task, i, own_task=task)
                if scored:
                    scorer = strategy.eval_model(model)
            yield
        return scorer  # what is scored (iCaRL's nearest-mean classifier, GDumb's network fitted on its memory)

    return run


def avalanche_hparams(hparams: Dict[str, dict], tasks: int = 5) -> Dict[str, dict]:
    """Avalanche's settings giving the same objective as ours: its SI penalty is (lambda/2) sum Omega d^2 (ours:
    c sum Omega d^2) and its EWC penalty lambda sum F d^2 (ours: (lambda/2) sum F d^2). MAS, LwF: the same penalty
    and distillation loss, but Avalanche's MAS averages importances over tasks (alpha 0.5) where the paper sums and
    takes a batch-level |gradient| where the paper takes each example's. Replay: the same total memory (Avalanche
    balances it over experiences). A-GEM: Avalanche stores a fixed number per experience: ours / tasks."""
    si, ewc, mas, lwf = (hparams.get(k, {}) for k in ("si", "ewc", "mas", "lwf"))
    replay, agem = hparams.get("replay", {}), hparams.get("agem", {})
    der, ace, gdumb = (hparams.get(k, {}) for k in ("der", "er_ace", "gdumb"))
    return {"avalanche-si": {"si_lambda": 2.0 * si.get("c", 1.0), "eps": si.get("xi", 1e-3)},
            "avalanche-ewc": {"ewc_lambda": ewc.get("ewc_lambda", 100.0) / 2.0, "mode": "separate"},
            "avalanche-naive": {},
            "avalanche-mas": {"lambda_reg": mas.get("mas_lambda", 1.0)},
            "avalanche-lwf": {"alpha": lwf.get("alpha", 1.0), "temperature": lwf.get("temperature", 2.0)},
            "avalanche-replay": {"mem_size": replay.get("memory_size", 200)},
            "avalanche-agem": {"patterns_per_exp": max(1, agem.get("memory_size", 200) // max(1, tasks)),
                               "sample_size": agem.get("sample_size", 256)},
            "avalanche-der": {"mem_size": der.get("memory_size", 200), "batch_size_mem": der.get("minibatch_size", 10),
                              "alpha": der.get("alpha", 0.2), "beta": 0.0},
            "avalanche-er_ace": {"mem_size": ace.get("memory_size", 200),
                                 "batch_size_mem": ace.get("minibatch_size", 10)},
            "avalanche-gdumb": {"mem_size": gdumb.get("memory_size", 200)}}


def train_avalanche(name: str, hparams: dict) -> Runner:
    def run(model: nn.Module, stream: Stream, cfg: dict, clock: Clock, seed: int) -> Iterator[None]:
        from avalanche.benchmarks import tensors_benchmark
        from avalanche.training import AGEM, DER, ER_ACE, EWC, MAS, GDumb, LwF, Naive, Replay, SynapticIntelligence

        from ..avalanche import as_multitask_module

        cls = {"avalanche-naive": Naive, "avalanche-si": SynapticIntelligence, "avalanche-ewc": EWC,
               "avalanche-mas": MAS, "avalanche-lwf": LwF, "avalanche-replay": Replay, "avalanche-agem": AGEM,
               "avalanche-der": DER, "avalanche-er_ace": ER_ACE, "avalanche-gdumb": GDumb}[name]
        # the class-incremental family runs on one head and calls model(x) itself: no task-label wrapper there
        wrapped = model if name in AVALANCHE_REHEARSAL else as_multitask_module(model)
        bm = tensors_benchmark([[t.train_x, t.train_y] for t in stream], [[t.test_x, t.test_y] for t in stream],
                               task_labels=[t.head for t in stream])
        optimizer = torch.optim.Adam(wrapped.parameters(), lr=cfg["lr"], betas=(0.9, 0.999))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No loggers specified": we score every entry ourselves
            cl = cls(model=wrapped, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                     train_mb_size=cfg["batch_size"], train_epochs=cfg["epochs"], eval_mb_size=cfg["batch_size"],
                     device=clock.device, evaluator=None, **hparams)
        torch.manual_seed(seed)  # Avalanche shuffles with the global generator
        for exp in bm.train_stream:
            with clock.timing():
                cl.train(exp, reset_optimizer_state=cfg["reset_optimizer"])
            yield

    return run


def runners(hparams: Dict[str, dict], tasks: int = 5) -> Dict[str, Runner]:
    out: Dict[str, Runner] = {"floor": train_floor, "floor-agem": train_floor_agem(hparams.get("agem", {}))}
    out.update({n: train_ours(n, hparams.get(n, {})) for n in OURS + REHEARSAL})
    av = avalanche_hparams(hparams, tasks)
    out.update({n: train_avalanche(n, av[n]) for n in AVALANCHE + AVALANCHE_REHEARSAL})
    return out


def resolve(config: BenchConfig):
    """The stream, the shared training settings and our strategies' hyperparameters; all checked before training."""
    config.check()
    protocol = benchmark_protocol(config.benchmark)
    stream = make_benchmark(config.benchmark, **({"setting": config.setting} if config.setting else {}))
    stream = shrink(stream, config.tasks, config.max_train)
    class_only = [e for e in config.entries if e in REHEARSAL + AVALANCHE_REHEARSAL]
    if class_only and stream.setting != "class":
        raise ValueError(f"bench entries {class_only} are class-incremental methods; {config.benchmark} is in the "
                         f"{stream.setting} setting here: add --setting class")
    cfg = {"model": protocol.model, "hidden": list(protocol.hidden), "epochs": config.epochs or protocol.epochs,
           "batch_size": config.batch_size or protocol.batch_size, "lr": config.lr or protocol.lr,
           "reset_optimizer": protocol.reset_optimizer, "optimizer": "adam"}
    if protocol.optimizer != "adam":
        raise ValueError(f"bench compares Adam runs; {config.benchmark}'s protocol uses {protocol.optimizer}")
    from ..plugin import STRATEGIES

    hparams = {}
    for name in OURS + REHEARSAL:
        preset = {k: v for k, v in protocol.strategy_hparams.get(name, {}).items() if k in STRATEGIES.get(name).params}
        hparams[name] = STRATEGIES.check_hparams(name, {**preset, **config.hparams.get(name, {})})
    if any(e in AVALANCHE for e in config.entries):
        try:
            import avalanche  # noqa: F401
        except ImportError:
            raise RuntimeError("the avalanche-* entries need avalanche-lib 0.6 (pip install 'clframework[avalanche]'); "
                               "or pass --entries floor,naive,si,ewc") from None
    return stream, cfg, hparams


def best_of(sections: Sequence[Sequence[float]]) -> float:
    """Sum over tasks of each task's minimum over the repeats (`sections[r][k]`: repeat r, task k)."""
    return sum(min(col) for col in zip(*sections))


def paired_ratio(sections: Sequence[Sequence[float]], floor: Sequence[Sequence[float]]) -> float:
    """An entry's time over the floor's with the machine's speed cancelled: per task, the median over the repeats of
    the entry's time over the floor's on the same task in the same pass (seconds apart), weighted by the floor's
    mean time on that task (`sections[r][k]`, `floor[r][k]`: repeat r, task k)."""
    weights = [statistics.fmean(col) for col in zip(*floor)]
    medians = [statistics.median(e / f for e, f in zip(ours, base)) for ours, base in zip(zip(*sections), zip(*floor))]
    return sum(w * m for w, m in zip(weights, medians)) / sum(weights)


def spread(sections: Sequence[Sequence[float]], floor: Optional[Sequence[Sequence[float]]] = None) -> Optional[float]:
    """How far an estimate moves between the even and the odd repeats, relative to the smaller (None: one repeat):
    the entry's `paired_ratio` to `floor`, or without `floor` its seconds (`best_of`: how much the machine moved)."""
    if len(sections) < 2:
        return None
    if floor is None:
        a, b = best_of(sections[0::2]), best_of(sections[1::2])
    else:
        a, b = paired_ratio(sections[0::2], floor[0::2]), paired_ratio(sections[1::2], floor[1::2])
    return abs(a - b) / min(a, b)


def finish(steps: Iterator[None]) -> Optional[nn.Module]:
    """Train an entry's remaining tasks; its return value (the model to score, None: the trained model)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def run_bench(config: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> dict:
    """One untimed pass with each entry alone (warm-up, accuracy, peak memory), then `repeats` timed passes over the
    stream in which the entries take turns task by task, in an order rotated (and every other time reversed) per
    task and pass. Each entry's seconds: the sum over tasks of the task's fastest repeat, in wall and in CPU time;
    its ratio: `paired_ratio`; its spread: see `spread`."""
    stream, cfg, hparams = resolve(config)
    device = select_device(config.device)
    torch.manual_seed(config.seed)
    init = build_model(cfg["model"], stream.input_shape, stream.head_sizes, cfg["hidden"])
    run = runners(hparams, len(stream))
    entries = list(config.entries)
    samples: Dict[str, dict] = {e: {"walls": [], "cpus": [], "ends": []} for e in entries}
    for entry in entries:  # imports, allocator and caches are paid here, before anything is timed
        model = copy.deepcopy(init).to(device)
        with PeakMemory(device) as mem, MatrixProducts(device) as products:
            scorer = finish(run[entry](model, stream, cfg, Clock(device), config.seed)) or model
        acc = evaluate_stream(scorer, stream, device)
        samples[entry].update(acc=sum(acc) / len(acc), peak_mb=mem.peak_mb, flops=products.flops,
                              product_seconds=products.seconds)
        progress(f"untimed {entry:<16} acc {samples[entry]['acc']:.4f}  peak {mem.peak_mb:.1f} MB")
    gc.collect()
    gc.freeze()  # what lives now (modules, data) is no garbage: collections between the timed tasks skip it
    load = {"start": load_average()}
    try:
        for r in range(config.repeats):
            clocks = {e: Clock(device) for e in entries}
            steps = {e: run[e](copy.deepcopy(init).to(device), stream, cfg, clocks[e], config.seed) for e in entries}
            for k in range(len(stream)):
                shift = (r * len(stream) + k) % len(entries)
                order = entries[shift:] + entries[:shift]  # rotated: no entry always first
                for entry in order[::-1] if (r + k) % 2 else order:  # reversed: nor always after the same one
                    next(steps[entry])
            for entry in entries:
                finish(steps[entry])
                samples[entry]["walls"].append(clocks[entry].walls)
                samples[entry]["cpus"].append(clocks[entry].cpus)
                samples[entry]["ends"].append(clocks[entry].ends)
            progress(f"repeat {r + 1}/{config.repeats}: " + ", ".join(f"{e} {clocks[e].wall:.2f} s" for e in entries))
    finally:
        gc.unfreeze()
    load["end"] = load_average()
    floor = samples["floor"]
    # the floor's share of time in matrix products (their kernels timed in its untimed pass, over its timed seconds)
    products_share = floor["product_seconds"] / best_of(floor["walls"])
    rows = []
    for entry in entries:
        s = samples[entry]
        totals = [sum(w) for w in s["walls"]]
        steps_only = [[w - e for w, e in zip(walls, ends)] for walls, ends in zip(s["walls"], s["ends"])]
        rows.append({"entry": entry, "seconds": best_of(s["walls"]), "ratio": paired_ratio(s["walls"], floor["walls"]),
                     "cpu_seconds": best_of(s["cpus"]), "cpu_ratio": paired_ratio(s["cpus"], floor["cpus"]),
                     "spread": spread(s["walls"], None if entry == "floor" else floor["walls"]), "acc": s["acc"],
                     "peak_mb": s["peak_mb"], "all_seconds": totals, "median_seconds": statistics.median(totals),
                     "task_seconds": s["walls"], "task_end_seconds": s["ends"],
                     # the ratio without the strategy's end-of-task work (its steps alone), and that work's own
                     "steps_ratio": paired_ratio(steps_only, floor["walls"]),
                     "task_end_ratio": paired_ratio(s["ends"], floor["walls"]),
                     # matrix-product arithmetic (counted in the untimed pass): FLOPs over the floor's, and the time
                     # of the FLOPs beyond the floor's at the floor's rate, over the floor's time: what the method's
                     # own arithmetic adds to its ratio whatever its bookkeeping costs
                     "flops": s["flops"], "product_seconds": s["product_seconds"],
                     "flops_ratio": s["flops"] / floor["flops"] if floor["flops"] else None,
                     "extra_products": (s["flops"] / floor["flops"] - 1) * products_share if floor["flops"] else None})
    result = {"benchmark": config.benchmark, "tasks": len(stream), "train_examples": [len(t.train_y) for t in stream],
              "train": cfg, "hparams": hparams, "avalanche_hparams": avalanche_hparams(hparams, len(stream)),
              "repeats": config.repeats, "seed": config.seed, "device": str(device), "rows": rows,
              "max_spread": config.max_spread, "machine": machine(), "load_average": load,
              "floor_products_share": products_share}
    result["verdict"] = verdict(rows, config.max_spread)
    result["targets"] = targets(rows, config.max_spread) if result["verdict"]["given"] else []
    return result


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none): a speed figure is stated with it."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def machine() -> dict:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    try:
        from importlib.metadata import version

        info["avalanche"] = version("avalanche-lib")
    except Exception:  # noqa: BLE001 - only informative
        pass
    return info


# The speed budgets of issue 18: each strategy's time over the bare loop's on split Fashion-MNIST (a strategy's own
# work per step, e.g. replay's doubled minibatch or A-GEM's reference gradient, sets its budget).
BUDGETS = {"naive": 1.05, "si": 1.15, "ewc": 1.25, "mas": 1.25, "replay": 1.9, "er": 1.9, "lwf": 1.6, "agem": 2.2}


def verdict(rows: List[dict], max_spread: float) -> dict:
    """Whether the budgets can be judged: a ratio's spread needs two repeats or more. Each entry is then judged only
    where its own ratio's spread is within `max_spread` (see `targets`)."""
    floor = next(r for r in rows if r["entry"] == "floor")
    if floor["spread"] is None:
        return {"given": False, "reason": "one repeat gives no spread; use --repeats 4 or more"}
    return {"given": True, "reason": f"each ratio judged where its own spread is at most {max_spread:.0%}; the "
                                     f"floor's seconds moved {floor['spread']:.1%} between halves of the repeats"}


def targets(rows: List[dict], max_spread: float = 1.0) -> List[dict]:
    """The budgets (BUDGETS) and the Avalanche comparisons, each with its measured value and whether it is within,
    for the entries that ran; an entry whose own spread exceeds `max_spread` is left undecided (met: None)."""
    by = {r["entry"]: r for r in rows}
    out = []
    for name, limit in BUDGETS.items():
        if name in by:
            r = by[name]
            steady = r["spread"] is not None and r["spread"] <= max_spread
            value = f"{r['ratio']:.3f}x (CPU {r['cpu_ratio']:.3f}x)"
            if r.get("extra_products") is not None:  # why a budget may be out of reach: the method's own arithmetic
                value += (f"; steps alone {r['steps_ratio']:.3f}x, end of task +{r['task_end_ratio']:.3f}x; "
                          f"its extra matrix products alone {r['extra_products']:+.3f}x")
            target = {"target": f"{name} <= {limit:.2f}x floor", "value": value,
                      "met": (r["ratio"] <= limit) if steady else None}
            bound = by.get(IRREDUCIBLE.get(name))
            if bound is not None:  # the work no implementation of the method can skip, timed alone
                held = bound["spread"] is not None and bound["spread"] <= max_spread
                reach = (("the budget is within reach" if bound["ratio"] <= limit else "the budget is out of reach")
                         if held else "its spread too wide to tell whether the budget is within reach")
                target["value"] += (f"; its irreducible work alone ({bound['entry']}) {bound['ratio']:.3f}x (spread "
                                    f"{_pct(bound['spread'])}): {reach}")
                target["irreducible"] = {"entry": bound["entry"], "ratio": bound["ratio"],
                                         "spread": bound["spread"], "reachable": (bound["ratio"] <= limit) if held
                                         else None}
            out.append(target)
    for ours, theirs in COUNTERPART.items():
        if ours in by and theirs in by:
            out.append({"target": f"{ours} faster than {theirs}",
                        "value": f"{by[ours]['ratio']:.3f}x vs {by[theirs]['ratio']:.3f}x floor",
                        "met": by[ours]["ratio"] < by[theirs]["ratio"]})
    av = [by[e] for e in ("avalanche-naive", "avalanche-si", "avalanche-ewc") if e in by]
    if "si" in by and av:
        best = max(av, key=lambda r: r["acc"])
        out.append({"target": "si accuracy above Avalanche's naive, si and ewc",
                    "value": f"{by['si']['acc']:.4f} vs best {best['entry']} {best['acc']:.4f}",
                    "met": all(by["si"]["acc"] > r["acc"] for r in av)})
    return out


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _within(met: Optional[bool]) -> str:
    return {True: "within", False: "over", None: "undecided (spread too wide)"}[met]


def format_table(result: dict, show_targets: bool = False) -> str:
    """The table users see. show_targets: also the speed budgets (BUDGETS) and whether each is within, or why no
    verdict is given."""
    t = result["train"]
    head = (f"{result['benchmark']}: {result['tasks']} tasks x {result['train_examples'][0]} training examples, "
            f"{t['epochs']} epoch(s), minibatch {t['batch_size']}, Adam lr {t['lr']}, MLP {t['hidden']}, "
            f"{result['device']}, {result['machine']['threads']} torch threads; {result['repeats']} passes, "
            f"the entries taking turns task by task; seconds: per task the fastest pass; x floor: per task the median "
            f"of the entry's time over the floor's in the same pass")
    load = result.get("load_average", {})
    if load.get("start") is not None:
        head += f"; 1-minute load average {load['start']:.2f} before the timed passes, {load['end']:.2f} after"
    lines = [head, f"{'entry':<16} {'seconds':>9} {'x floor':>8} {'final acc':>10} {'peak MB':>8} {'cpu s':>8} "
                   f"{'cpu x floor':>11} {'spread':>7} {'steps x':>8} {'task end x':>10} {'FLOPs x':>8} "
                   f"{'products +':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['entry']:<16} {r['seconds']:>9.2f} {r['ratio']:>8.3f} {r['acc']:>10.4f} {r['peak_mb']:>8.1f} "
                     f"{r['cpu_seconds']:>8.2f} {r['cpu_ratio']:>11.3f} {_pct(r['spread']):>7} "
                     f"{_num(r.get('steps_ratio'), '.3f'):>8} {_num(r.get('task_end_ratio'), '.3f'):>10} "
                     f"{_num(r.get('flops_ratio'), '.2f'):>8} {_num(r.get('extra_products'), '+.3f'):>10}")
    lines.append("spread: how far an entry's ratio (the floor's: its seconds) moved between the even and the odd "
                 "passes (what another invocation may move)")
    share = result.get("floor_products_share")
    lines.append("steps x: the ratio without the strategy's end-of-task work (e.g. EWC's Fisher); task end x: that "
                 "work's own time over the floor's; FLOPs x: matrix-product and convolution FLOPs over the floor's "
                 "(counted); products +: those beyond the floor's at the floor's rate, over the floor's time (the "
                 f"floor spends {_pct(share)} of its time in them): what the method's own arithmetic adds, whatever "
                 "its bookkeeping costs")
    if show_targets:
        v = result["verdict"]
        if not v["given"]:
            lines.append(f"budgets: no verdict: {v['reason']}")
        else:
            lines.append(f"budgets ({v['reason']}):")
            lines += [f"  {x['target']}: {x['value']}: {_within(x['met'])}" for x in result["targets"]]
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    lines = ["| entry | wall s | x floor | final avg acc | peak MB | CPU s | CPU x floor | spread | steps x floor | "
             "task end x floor | FLOPs x floor | products + |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['entry']} | {r['seconds']:.2f} | {r['ratio']:.3f} | {r['acc']:.4f} | {r['peak_mb']:.1f} | "
                     f"{r['cpu_seconds']:.2f} | {r['cpu_ratio']:.3f} | {_pct(r['spread'])} | "
                     f"{_num(r.get('steps_ratio'), '.3f')} | {_num(r.get('task_end_ratio'), '.3f')} | "
                     f"{_num(r.get('flops_ratio'), '.2f')} | {_num(r.get('extra_products'), '+.3f')} |")
    v = result["verdict"]
    if not v["given"]:
        lines += ["", f"No verdict on the speed budgets: {v['reason']}."]
    else:
        lines += ["", "| budget | measured | |", "|---|---|---|"]
        lines += [f"| {x['target']} | {x['value']} | {_within(x['met'])} |" for x in result["targets"]]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    (out_dir / "bench.md").write_text(format_markdown(result))


# -- study mode: one grid in turn with --jobs 1 --threads 1, --jobs 2 and a local Ray; the machine's own capacity ----
STUDY_MODES = ("jobs1", "jobs2", "ray")


@dataclass
class StudyBenchConfig:
    """A compare grid timed once per mode (issue 29's: naive, si, ewc, er x 3 seeds on split Fashion-MNIST, 1 epoch).
    jobs1: the runs in turn in this process, one thread each (the baseline); jobs2: `--jobs 2`, one thread per run;
    ray: a local Ray instance, one CPU per run (its start is timed apart: a cluster is started once for many
    studies). capacity_steps: the length of the loop that measures the machine's capacity (0: not measured)."""

    benchmark: str = "split-fashion-mnist"
    strategies: Sequence[str] = ("naive", "si", "ewc", "er")
    seeds: int = 3
    epochs: Optional[int] = 1
    modes: Sequence[str] = STUDY_MODES
    tasks: Optional[int] = None  # the first N tasks only
    capacity_steps: int = 1500

    def check(self) -> None:
        unknown = [m for m in self.modes if m not in STUDY_MODES]
        if unknown or "jobs1" not in self.modes:
            raise ValueError(f"--modes takes jobs1 (required: the baseline) and any of jobs2, ray; got "
                             f"{list(self.modes)}")
        if self.seeds < 1 or (self.epochs is not None and self.epochs < 1) or self.capacity_steps < 0:
            raise ValueError(f"seeds and epochs must be >= 1 and --capacity-steps >= 0, got {self.seeds}, "
                             f"{self.epochs} and {self.capacity_steps}")


def _backend(mode: str):
    from ..parallel import Backend

    return {"jobs1": Backend(jobs=1, threads=1), "jobs2": Backend(jobs=2, threads=1),
            "ray": Backend(ray="local", threads=1)}[mode]


# One single-thread process's training loop: an MLP of the protocol's widths on uint8 inputs decoded per minibatch,
# Adam. It waits for a line on stdin after its warm-up, so that two of them start together; prints its seconds.
_CAPACITY_LOOP = """
import sys, time, torch
torch.set_num_threads(1)
steps, batch, widths = int(sys.argv[1]), int(sys.argv[2]), [int(w) for w in sys.argv[3].split(",")]
gen = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (12000, widths[0]), dtype=torch.uint8, generator=gen)
y = torch.randint(0, widths[-1], (12000,), generator=gen)
layers = []
for a, b in zip(widths[:-1], widths[1:]):
    layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
model = torch.nn.Sequential(*layers[:-1])
opt = torch.optim.Adam(model.parameters(), lr=1e-3)

def step():
    idx = torch.randint(0, len(x), (batch,), generator=gen)
    loss = torch.nn.functional.cross_entropy(model(x[idx].float() / 255), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()

for _ in range(20):
    step()
print("ready", flush=True)
sys.stdin.readline()
start = time.perf_counter()
for _ in range(steps):
    step()
print(time.perf_counter() - start, flush=True)
"""


def parallel_capacity(steps: int, batch: int, widths: Sequence[int]) -> dict:
    """What the hardware allows two single-thread processes (issue 29): the same loop alone, then two side by side
    (started together), then alone again. capacity = 2 x the mean alone time / the slower of the pair: 2.0 when two
    cores do twice the work of one, less where they share caches, memory bandwidth or a clock that slows when both
    are busy."""
    import subprocess
    import sys

    def together(n: int) -> List[float]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, "-c", _CAPACITY_LOOP, str(steps), str(batch),
                                   ",".join(map(str, widths))], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=env) for _ in range(n)]
        try:
            for p in procs:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("the capacity loop's process failed before its timed steps")
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            return [float(p.stdout.readline()) for p in procs]
        except BaseException:
            for p in procs:
                p.kill()
            raise
        finally:
            for p in procs:
                p.stdin.close()
                p.stdout.close()
                p.wait()

    alone = together(1)
    pair = together(2)
    alone += together(1)
    mean_alone = statistics.mean(alone)
    return {"steps": steps, "batch": batch, "widths": list(widths), "alone_seconds": alone, "pair_seconds": pair,
            "capacity": 2 * mean_alone / max(pair), "slowdown_side_by_side": statistics.mean(pair) / mean_alone}


def _load() -> Optional[float]:
    from .. import provenance

    la = provenance.load_average()
    return la[0] if la else None


def run_study_bench(config: StudyBenchConfig, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Wall seconds of the whole study per mode (stream loading, worker start-up and every run included), the
    speed-up over jobs1, where the time went (the runs' own seconds summed, their growth over jobs1's, the core
    seconds spent outside any run: start-up, waiting, the main process's own work), whether each mode's accuracy
    matrices equal jobs1's (one thread each: they must), the machine's capacity and the load average around each."""
    from dataclasses import replace

    from ..config import RunConfig
    from ..parallel import cores, ray_started, start_method
    from ..study import compare

    config.check()
    base = RunConfig(config.strategies[0], config.benchmark, epochs=config.epochs, tasks=config.tasks, device="cpu")
    capacity = None
    if config.capacity_steps:
        protocol = benchmark_protocol(config.benchmark)
        stream = make_benchmark(config.benchmark)
        widths = [int(torch.tensor(stream.input_shape).prod()), *protocol.hidden, max(stream.head_sizes)]
        progress(f"capacity: {config.capacity_steps} steps alone, two side by side, alone again")
        capacity = {**parallel_capacity(config.capacity_steps, protocol.batch_size, widths), "load_before": _load()}
        progress(f"capacity {capacity['capacity']:.2f}x")
    # warm: the data loaded (and cached on disk), this process's imports and allocator paid, one task per strategy
    compare(list(config.strategies), config.benchmark, 1, base=replace(base, tasks=1), quiet=True,
            backend=_backend("jobs1"))
    rows = []
    for mode in config.modes:
        backend, load_before = _backend(mode), _load()
        # how jobs2's worker starts: the Pool's own choice, made here the same way (forked, or spawned: importing torch)
        workers = start_method(backend.threads_per_run(), "cpu") if backend.jobs > 1 else "ray" if backend.ray else None
        start = time.perf_counter()
        with ray_started(backend, num_cpus=cores()):  # ray: started as `--ray` starts it (workers preloading torch)
            ray_start = time.perf_counter() - start if mode == "ray" else None
            start = time.perf_counter()
            summary = compare(list(config.strategies), config.benchmark, config.seeds, base=base, quiet=True,
                              backend=backend)
            seconds = time.perf_counter() - start
        runs = [r for s in summary["strategies"].values() for r in s["runs"]]
        matrices = {n: [r["accuracy_matrix"] for r in s["runs"]] for n, s in summary["strategies"].items()}
        width = cores() if mode == "ray" else backend.jobs  # the processes that train side by side
        run_seconds = sum(r["wall_seconds"] for r in runs)
        rows.append({"mode": mode, "jobs": backend.jobs, "threads_per_run": backend.threads_per_run(),
                     "processes": width, "workers": workers, "seconds": seconds, "ray_start_seconds": ray_start,
                     "matrices": matrices,
                     "run_seconds": run_seconds, "train_seconds": sum(r["train_seconds"] for r in runs),
                     "outside_runs_core_seconds": width * seconds - run_seconds,
                     "load_before": load_before, "load_after": _load(),
                     "acc": {n: s["acc_mean"] for n, s in summary["strategies"].items()}})
        progress(f"{mode:<6} {seconds:8.1f} s")
    first = rows[0]
    for r in rows:
        r["speedup"] = first["seconds"] / r["seconds"]
        r["run_growth"] = r["run_seconds"] / first["run_seconds"]  # each run's own time inside the mode, summed
        r["same_matrices_as_jobs1"] = r["matrices"] == first["matrices"]
    by = {r["mode"]: r for r in rows}
    targets = []
    if "jobs2" in by:
        targets.append({"target": "jobs2 >= 1.6x jobs1", "value": f"{by['jobs2']['speedup']:.2f}x",
                        "met": by["jobs2"]["speedup"] >= 1.6})
    if "jobs2" in by and "ray" in by:
        slower = by["ray"]["seconds"] / by["jobs2"]["seconds"] - 1
        targets.append({"target": "ray within 10% of jobs2", "value": f"{slower:+.1%}", "met": slower <= 0.10})
    return {"benchmark": config.benchmark, "strategies": list(config.strategies), "seeds": config.seeds,
            "runs": len(config.strategies) * config.seeds, "epochs": config.epochs, "tasks": config.tasks, "rows": rows,
            "capacity": capacity, "targets": targets, "machine": {**machine(), "cores": cores()}}


def format_study(result: dict, show_targets: bool = False) -> str:
    m = result["machine"]
    lines = [f"{result['benchmark']}: {result['runs']} runs ({', '.join(result['strategies'])} x {result['seeds']} "
             f"seeds, {result['epochs'] or 'protocol'} epoch(s)), {m['cores']} cores usable of {m['cpus']}"]
    cap = result["capacity"]
    if cap is not None:
        lines.append(f"machine capacity: one single-thread loop alone {statistics.mean(cap['alone_seconds']):.2f} s, "
                     f"two side by side {max(cap['pair_seconds']):.2f} s (each {cap['slowdown_side_by_side']:.2f}x "
                     f"slower): {cap['capacity']:.2f}x (load {cap['load_before']})")
    lines.append(f"{'mode':<6} {'jobs':>4} {'thr/run':>7} {'study s':>8} {'speed-up':>8} {'of capacity':>11} "
                 f"{'runs s':>8} {'run growth':>10} {'core-s outside runs':>19} {'ray start s':>11} "
                 f"{'same matrices':>13} {'load before/after':>17} {'workers':>7}")
    for r in result["rows"]:
        start = f"{r['ray_start_seconds']:.1f}" if r["ray_start_seconds"] is not None else "-"
        of_cap = f"{r['speedup'] / cap['capacity']:.0%}" if cap is not None and r["processes"] == 2 else "-"
        load = f"{r['load_before']}/{r['load_after']}"
        lines.append(f"{r['mode']:<6} {r['jobs']:>4} {r['threads_per_run']:>7} {r['seconds']:>8.1f} "
                     f"{r['speedup']:>7.2f}x {of_cap:>11} {r['run_seconds']:>8.1f} {r['run_growth']:>9.2f}x "
                     f"{r['outside_runs_core_seconds']:>19.1f} {start:>11} "
                     f"{'yes' if r['same_matrices_as_jobs1'] else 'NO':>13} {load:>17} {r.get('workers') or '-':>7}")
    if show_targets:
        lines.append("budgets:")
        lines += [f"  {x['target']}: {x['value']}: {_within(x['met'])}" for x in result["targets"]]
    return "\n".join(lines)
