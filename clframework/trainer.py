"""Trains a model on a task stream, calling the strategy's hooks, and records the accuracy matrix.

Each epoch's order is an index permutation drawn from the run's seeded generator (saved in checkpoints with the
position in the epoch). Tasks held in memory (compact, e.g. uint8) move to the device once per task and each minibatch
is an index gather there: no per-sample Python, no DataLoader in the hot loop. Tasks backed by a dataset (files on
disk) are read in that same order through DataLoader workers (`workers`). Either way the raw minibatch becomes the
model input through one function, `compose(task.decode, augment)` (benchmarks/stream.py).
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clframework.evaluation.continual import ContinualEvaluator, check_settings
from clframework.evaluation import health as H
from clframework.evaluation.evaluator import evaluate_stream, task_classes

from clframework.evaluation.results import OutputError

from clframework.benchmarks.stream import compose

from .callbacks import TrainerCallback  # also importable from here, its home before callbacks.py
from .checkpoint import to_device
from .models import forward_heads, takes_head
from .parallel import cores
from .plugin import Batch, Strategy, check_needs, overrides
from .recipe import Recipe


def select_device(device: Optional[str] = None) -> torch.device:
    """CUDA when available (or the device asked for, which must exist here), else CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu or "
                             f"auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} was asked for but MPS is not available here; use --device cpu or auto")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


PRECISIONS = ("fp32", "bf16")
LOSS_POINTS = 25  # training-loss points a task records (every k steps): a curve even when an epoch is the whole task
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's; reduce-overhead: CUDA graphs


def check_fast_step(precision: str, compile: Optional[str]) -> None:
    """The opt-in fast step's settings (ValueError naming the choices)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if compile is not None and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)} (torch.compile's modes), got "
                         f"{compile!r}")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


@dataclass
class StreamResult:
    accuracy_matrix: List[List[float]]
    initial_accuracy: List[float]
    train_seconds: float
    curves: List[dict] = field(default_factory=list)
    train_cpu_seconds: float = 0.0  # the process's CPU time: waiting for busy cores adds none
    task_il_matrix: List[List[float]] = field(default_factory=list)  # the same scores, other tasks' classes masked
    continual_eval: Optional[dict] = None  # the accuracy during training (eval_every), as results.json holds it
    health: List[dict] = field(default_factory=list)  # the tasks that learned nothing (evaluation/health.py)
    losses: List[dict] = field(default_factory=list)  # the training loss every k steps ({task, step, loss})


LOSS_GROWTH = 1000.0  # an epoch's mean loss this many times the run's first is warned of (once per run)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; says where (run, task, epoch, step) and what to try."""

    def __init__(self, where: dict, loss: float, scorer: bool = False):
        self.where, self.loss, self.run, self.scorer = dict(where), loss, "", scorer
        self.result: Optional[dict] = None  # the partial results the run recorded (set by runner.run)
        super().__init__()

    def __str__(self) -> str:
        w = self.where
        run = f"run {self.run}: " if self.run else ""
        if self.scorer:
            return (f"{run}the module the strategy scores with (eval_model, e.g. GDumb's network retrained on its "
                    f"memory) has {self.loss} weights after task {w['task'] + 1} ({w['task_name']}): its training "
                    f"diverged and the run was stopped. Try a lower learning rate for it (e.g. --set fit_lr=... for "
                    f"GDumb)")
        return (f"{run}the training loss became {self.loss} at task {w['task'] + 1} ({w['task_name']}), epoch "
                f"{w['epoch']}, step {w['step']}: the run diverged and was stopped. Try a lower learning rate "
                f"(--lr) or a smaller regularization strength (e.g. --set c=... for SI, ewc_lambda=... for EWC)")


class TrainingFailed(Exception):
    """An exception raised inside a strategy's hook or the user's code during training; `__cause__` holds it (with
    its traceback) and the message says where it happened. Finished tasks stay in the last checkpoint."""

    def __init__(self, where: dict, run: str = ""):
        self.where, self.run = dict(where), run
        super().__init__()

    def __str__(self) -> str:
        w, cause = self.where, self.__cause__
        run = f"run {self.run}, " if self.run else ""
        return (f"{type(cause).__name__}: {cause} (raised in {run}task {w['task'] + 1} ({w['task_name']}), "
                f"epoch {w['epoch']}, step {w['step']})")


class DataWorkerDied(RuntimeError):
    """A DataLoader worker process was killed (kill -9, the out-of-memory killer) while it read data: not a bug of a
    strategy or model, so one line naming --resume. torch raises it in the main thread wherever that thread is
    (its SIGCHLD handler), so the command line turns a bare one into this too (`worker_death`)."""

    def __init__(self, cause: BaseException, where: str = ""):
        super().__init__(f"a DataLoader worker process died{where} ({cause}): kill -9 or the out-of-memory killer "
                         f"(fewer --workers use less memory); the checkpoints are kept: continue with the same "
                         f"command plus --resume")


def worker_death(exc: BaseException) -> bool:
    """Whether `exc` is torch's report of a DataLoader worker that died."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader worker (pid")


TINY_LAST = 8  # a final minibatch smaller than this, under BatchNorm, is warned of (_warn_tiny_last_minibatch)


def check_model_fits(model: nn.Module, stream, device: torch.device, name: str = "") -> None:
    """The model has something to train and serves every task: one probe forward per task (eval mode, no gradient,
    no random numbers drawn) must accept its inputs and give enough outputs. ValueError names what does not fit."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model {name or type(model).__name__} has no trainable parameters: there is nothing to "
                         f"train; give a model with parameters that require gradients")
    model_ = f"model {name}" if name else "model"
    was_training = model.training
    model.eval()
    try:
        for t in stream.tasks:
            try:
                with torch.no_grad():
                    first = t.inputs(t.examples("train").raw(slice(0, 1)))
                    out = forward_heads(model, first.to(device), t.head)
            except (RuntimeError, IndexError) as exc:
                heads = getattr(model, "heads", None)
                what = (f"the model has {len(heads)} head(s) but task '{t.name}' uses head {t.head}"
                        if heads is not None and t.head >= len(heads) else
                        f"the model cannot take task '{t.name}''s inputs of shape {t.input_shape} "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0]})")
                raise ValueError(f"{model_} and stream do not fit: {what}; build the model from the stream "
                                 f"(input size, head_sizes)") from None
            if out.shape[-1] < stream.head_sizes[t.head]:
                raise ValueError(f"{model_} and stream do not fit: task '{t.name}' needs "
                                 f"{stream.head_sizes[t.head]} outputs on head {t.head}, the model gives "
                                 f"{out.shape[-1]}")
    finally:
        model.train(was_training)


class Trainer:
    """Sequential training over a stream with a strategy's hooks.

    reset_optimizer: a fresh optimizer per task (paper: split MNIST, CIFAR) or one kept across tasks (permuted MNIST).
    optimizer, lr, momentum, weight_decay, lr_schedule, lr_step_epochs, lr_gamma, lr_min, grad_clip, lr_milestones,
    drop_last: the recipe (recipe.Recipe; the schedule restarts with every task).
    augment: a function of the decoded training minibatch (on the device), applied to training inputs only, memories'
    included (`Batch.prepare`). workers: DataLoader worker processes for tasks backed by a dataset.
    on_checkpoint: called with `state_dict()` after every task and, with checkpoint_every > 0, every that many
    optimizer steps; `fit(stream, resume=state)` continues from such a state exactly (bit for bit on CPU).
    eval_every: every that many optimizer steps (and at every task boundary), the accuracy on each task seen so far
    on `eval_subset` seeded examples of its split (None: all of it), without changing the training
    (evaluation/continual.py; docs/continual-evaluation.md).
    """

    def __init__(self, model: nn.Module, strategy: Strategy, *, epochs: int = 10, batch_size: int = 64,
                 lr: float = 1e-3, optimizer: str = "adam", reset_optimizer: bool = True,
                 device: Optional[str] = None, seed: int = 0, quiet: bool = False,
                 callbacks: Sequence[TrainerCallback] = (), evaluate_on: str = "test",
                 checkpoint_every: int = 0, on_checkpoint: Optional[Callable[[dict], None]] = None,
                 label: str = "", augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 momentum: Optional[float] = None, weight_decay: Optional[float] = None,
                 lr_schedule: str = "constant", lr_step_epochs: Optional[int] = None,
                 lr_gamma: Optional[float] = None, lr_min: Optional[float] = None, grad_clip: Optional[float] = None,
                 lr_milestones: Optional[Sequence[int]] = None, precision: str = "fp32",
                 compile: Optional[str] = None, workers: int = 0, eval_every: Optional[int] = None,
                 eval_subset: Optional[int] = None, drop_last: bool = False):
        if epochs < 1 or batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
        self.recipe = Recipe(optimizer, lr, momentum, weight_decay, lr_schedule, lr_step_epochs, lr_gamma, lr_min,
                             grad_clip, lr_milestones, drop_last).resolved()
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0: read data-backed tasks in this process), got {workers}")
        if workers > cores():  # a worker decodes on a core of its own: more only crowd them (1000 swamped the machine)
            warnings.warn(f"--workers {workers} is more than the {cores()} cores this process may use: {cores()} "
                          f"DataLoader workers are started")
            workers = cores()
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0: after every task only), got {checkpoint_every}")
        self.scorer, self._loss_warned = None, False
        check_fast_step(precision, compile)
        check_settings(eval_every, eval_subset)
        self.eval_every, self.eval_subset = eval_every or 0, eval_subset
        self._evaluator: Optional[ContinualEvaluator] = None  # built by fit from the stream
        self._eval_pending: List[tuple] = []  # (step, task, correct counts on the device) not yet on the host
        self.device = select_device(device)
        self.model = model.to(self.device)
        # the opt-in fast step (default: neither): bf16 autocast of the forward pass and the loss terms, and/or the
        # forward pass compiled by torch.compile (fused kernels; "reduce-overhead" replays CUDA graphs)
        self.precision, self.compile = precision, compile
        self._forward = forward_heads if compile is None else self._compiled_forward(compile)
        self.strategy = strategy
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.make_optimizer: Callable = self.recipe.make_optimizer
        self.reset_optimizer = reset_optimizer
        self.seed, self.quiet = seed, quiet
        self.callbacks = list(callbacks)
        self.evaluate_on = evaluate_on
        self.label = label  # names the run on its progress bars, e.g. "si seed 3"
        # the training augmentation (augment.py): model inputs = augment(decoded stored examples), for every minibatch
        # trained on, replayed ones included (Batch.prepare); its generator state is part of the checkpoint
        self.augment = augment
        self.workers = workers  # DataLoader worker processes for tasks read from a dataset
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.checkpoint_every, self.on_checkpoint = checkpoint_every, on_checkpoint
        # where training stands: task (0-based), epochs finished in it, steps finished in the current epoch
        self.position = {"task": 0, "task_name": "", "epoch": 0, "step": 0}
        self.global_step = 0
        self._epoch: Optional[dict] = None  # the epoch in flight: its batch order and running sums
        self._task_curve: List[dict] = []
        self._task_free: Optional[int] = None  # a task-free stream: its last task's index (None: tasks shown)
        self._task_losses: List[dict] = []  # the current task's training-loss points (LOSS_POINTS)
        self._progress = {"initial_accuracy": [], "accuracy_matrix": [], "task_il_matrix": [], "curves": [],
                          "train_seconds": 0.0, "train_cpu_seconds": 0.0, "eval_points": [], "eval_boundaries": [],
                          "health": [], "losses": []}
        self._clock = self._cpu_clock = 0.0  # perf_counter and process_time when the current task's timing started
        self._checkpoint_seconds = self._checkpoint_cpu_seconds = 0.0

    def _compiled_forward(self, mode: str) -> Callable:
        """forward_heads with the single-head forward pass compiled (one graph per head and batch shape); a
        minibatch joined with other heads' examples (replay) runs eagerly."""
        model = self.model
        call = (lambda x, head: model(x, head)) if takes_head(model) else (lambda x, head: model(x))
        compiled = torch.compile(call, mode=mode)

        def forward(m: nn.Module, x: torch.Tensor, head) -> torch.Tensor:
            return forward_heads(m, x, head) if isinstance(head, torch.Tensor) else compiled(x, head)

        return forward

    def _autocast(self):
        """The fast step's autocast context (reusable, entered once per step), or a no-op context."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _callback(self, name: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(*args)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything the continuation needs: model, optimizer, strategy, RNG states, position, results so far."""
        self._flush_eval()
        elapsed, cpu = self._progress["train_seconds"], self._progress.get("train_cpu_seconds", 0.0)
        if self._clock:
            elapsed += time.perf_counter() - self._clock - self._checkpoint_seconds
            cpu += time.process_time() - self._cpu_clock - self._checkpoint_cpu_seconds
        epoch = None
        if self._epoch is not None:
            epoch = {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in self._epoch.items()}
        return {
            "model": self.model.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(), "generator": self.generator.get_state(),
            "augment": self.augment.state_dict() if hasattr(self.augment, "state_dict") else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "position": dict(self.position), "global_step": self.global_step, "epoch_in_flight": epoch,
            "task_curve": [dict(p) for p in self._task_curve], "task_losses": [dict(p) for p in self._task_losses],
            "progress": {**self._progress, "train_seconds": elapsed, "train_cpu_seconds": cpu},
        }

    def _checkpoint(self) -> None:
        if self.on_checkpoint is None:
            return
        start, cpu = time.perf_counter(), time.process_time()
        self.on_checkpoint(self.state_dict())
        self._checkpoint_seconds += time.perf_counter() - start  # writing files is not training time
        self._checkpoint_cpu_seconds += time.process_time() - cpu

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`; the next `fit(stream, resume=...)` continues from its position."""
        self.model.load_state_dict(state["model"])
        self.optimizer = None
        if state["optimizer"] is not None:
            self.optimizer = self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])
            self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(to_device(state["strategy"], self.device))
        self.generator.set_state(state["generator"])
        if state.get("augment") is not None and hasattr(self.augment, "load_state_dict"):
            self.augment.load_state_dict(state["augment"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.position, self.global_step = dict(state["position"]), state["global_step"]
        epoch = state["epoch_in_flight"]
        self._epoch = None if epoch is None else {
            k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in epoch.items()}
        self._task_curve = [dict(p) for p in state["task_curve"]]
        self._task_losses = [dict(p) for p in state.get("task_losses", [])]
        progress = state["progress"]
        # (checkpoints of older versions: no CPU time, health or losses)
        self._progress = {"train_cpu_seconds": 0.0, "health": [], "losses": [], **progress,
                          "accuracy_matrix": [list(r) for r in progress["accuracy_matrix"]],
                          "task_il_matrix": [list(r) for r in progress.get("task_il_matrix", [])],
                          "curves": [dict(p) for p in progress["curves"]],
                          "eval_points": [dict(p) for p in progress.get("eval_points", [])],
                          "eval_boundaries": list(progress.get("eval_boundaries", []))}

    # -- training ------------------------------------------------------------------------------------------------
    def _diverged(self, loss: torch.Tensor) -> TrainingDiverged:
        return TrainingDiverged(self.position, float(loss.detach()))

    def train_task(self, task, task_index: int, resume: bool = False, own_task=None) -> List[dict]:
        """Train one task for `epochs` epochs; returns the per-epoch loss (of the minibatches trained, replayed rows
        included) and training accuracy (on the task's own examples).

        resume: continue the task from `self.position` as restored by `load_state_dict` (no new optimizer, no
        `on_task_start`: the restored strategy state already includes it). task None: no training steps (a strategy's
        `task_data` chose none), only the start and end hooks, the latter with `own_task` (the stream's task)."""
        model, strategy, device = self.model, self.strategy, self.device
        # resuming: the epoch in flight (1-based position["epoch"]) continues after its position["step"] steps
        first_epoch = self.position["epoch"] - 1 if resume else 0
        self.position = {"task": task_index, "task_name": (task or own_task).name, "epoch": first_epoch,
                         "step": self.position["step"] if resume else 0}
        # a task-free stream hides its boundaries: one start (before its first stretch), one end (after its last), and
        # one optimizer throughout
        hidden = self._task_free is not None
        if not resume:
            self._epoch, self._task_curve, self._task_losses = None, [], []
            if self.optimizer is None or (self.reset_optimizer and not hidden):
                self.optimizer = self.make_optimizer([p for p in model.parameters() if p.requires_grad])
        opt = self.optimizer
        if overrides(strategy, "on_prepare"):
            strategy.on_prepare(compose((task or own_task).decode, self.augment))
        if not resume and (not hidden or task_index == 0):
            strategy.on_task_start(model, task_index)
        if task is None:  # the strategy trains nothing on this task (task_data gave None)
            strategy.on_task_end(model, own_task, own_task.head)
            return []
        data = task.examples("train").on(device)  # in memory: the stored tensors move to the device once per task
        n, head = len(data), task.head
        # the examples an epoch trains on: all, or with drop_last a whole number of minibatches (a task smaller than
        # one minibatch keeps its one)
        used = n - n % self.batch_size if self.recipe.drop_last and n > self.batch_size else n
        # the hooks this strategy overrides, checked once per task: one it does not costs nothing per step (no call,
        # and no Batch object unless a hook receives one)
        task_loss = strategy.task_loss if overrides(strategy, "task_loss") else None
        own_forward = strategy.forward if overrides(strategy, "forward") else None
        before_forward = strategy.on_before_forward if overrides(strategy, "on_before_forward") else None
        before_step = strategy.on_before_step if overrides(strategy, "on_before_step") else None
        after_step = strategy.on_after_step if overrides(strategy, "on_after_step") else None
        loss_term = strategy.loss_term if overrides(strategy, "loss_term") else None
        penalty = strategy.penalty if loss_term is None and overrides(strategy, "penalty") else None  # the default
        # loss_term is penalty(model)
        prepare = compose(task.decode, self.augment)  # stored examples -> model inputs
        adjust = self._step_adjustment(opt, used)
        model.train()
        curve = self._task_curve
        check_now = device.type == "cpu"  # on CUDA a per-step check would wait for the GPU: checked per epoch
        forward, autocast = self._forward, self._autocast()  # reused: entered once per step
        # the plain forward pass on this task's own head, bound once (forward_heads decides per call otherwise)
        direct = None
        if forward is forward_heads:
            direct = (lambda inputs: model(inputs, head)) if takes_head(model) else model
        needs_batch = before_forward is not None or loss_term is not None or task_loss is not None or \
            own_forward is not None
        every, steps = self.eval_every, math.ceil(used / self.batch_size)  # the task's last step: its boundary's point
        loss_every = max(1, math.ceil(steps * self.epochs / LOSS_POINTS))  # a loss point every k steps
        bar = tqdm(range(first_epoch, self.epochs), desc=f"{self.label} task {task_index + 1} {task.name}".lstrip(),
                   leave=False, disable=True if self.quiet else None, unit="epoch")  # None: off unless a terminal
        for epoch in bar:
            self.position["epoch"] = epoch + 1
            if self._epoch is None:  # a task-free stream is trained in its stored order
                self._epoch = {"order": (torch.arange(n) if hidden else torch.randperm(n, generator=self.generator)
                                         )[:used].to(device),
                               "loss_sum": torch.zeros((), device=device),
                               "correct": torch.zeros((), dtype=torch.long, device=device),
                               "first_bad": torch.full((), -1, dtype=torch.long, device=device)}
            ep = self._epoch
            order, loss_sum, correct = ep["order"], ep["loss_sum"], ep["correct"]
            batches = data.minibatches(order, self.position["step"], self.batch_size, device, self.workers)
            for b, (raw, yb) in enumerate(batches, start=self.position["step"] + 1):
                self.position["step"] = b
                k = yb.shape[0]
                if needs_batch:
                    batch = Batch(raw if prepare is None else prepare(raw), yb, head, raw=raw, prepare=prepare)
                    if before_forward is not None:
                        batch = before_forward(model, batch)
                    inputs, targets, heads = batch.x, batch.y, batch.head
                else:
                    batch, inputs, targets, heads = None, raw if prepare is None else prepare(raw), yb, head
                with autocast:
                    if own_forward is not None:
                        out = own_forward(model, batch, forward)
                    else:
                        out = direct(inputs) if direct is not None and heads is head else forward(model, inputs, heads)
                    if batch is not None:
                        batch.out = out
                    loss = F.cross_entropy(out, targets) if task_loss is None else task_loss(model, batch)
                    extra = loss_term(model, batch) if loss_term is not None else \
                        penalty(model) if penalty is not None else None
                total = loss + extra if isinstance(extra, torch.Tensor) else loss
                if check_now:  # on the CPU reading the value is cheaper than an isfinite kernel
                    if not math.isfinite(total.item()):
                        raise self._diverged(total)
                else:
                    bad = ~torch.isfinite(total) & (ep["first_bad"] < 0)
                    ep["first_bad"] = torch.where(bad, torch.full_like(ep["first_bad"], b), ep["first_bad"])
                total.backward()
                if before_step is not None:
                    before_step(model)
                if adjust is not None:
                    adjust(epoch, b - 1)
                opt.step()
                if after_step is not None:
                    after_step(model)
                opt.zero_grad(set_to_none=True)
                loss_sum.add_(loss.detach(), alpha=k)  # detached: no autograd context needed for the running sums
                correct += ((out if out.shape[0] == k else out[:k]).argmax(-1) == yb).sum()  # the task's own rows
                self.global_step += 1
                if self.global_step % loss_every == 0:
                    self._loss_point(ep, task_index, min(b * self.batch_size, used))
                if every and self.global_step % every == 0 and (b < steps or epoch + 1 < self.epochs):
                    self._eval_point(task_index)
                if self.checkpoint_every and self.global_step % self.checkpoint_every == 0:
                    self._check_finite(ep)
                    self._checkpoint()
            self._check_finite(ep)
            point = {"task": task_index, "epoch": epoch + 1, "loss": loss_sum.item() / used,
                     "accuracy": correct.item() / used}
            curve.append(point)
            self._watch_loss(point, len(getattr(task, "classes", ())))
            self._epoch = None
            self.position["step"] = 0
            bar.set_postfix(loss=f"{point['loss']:.4f}", acc=f"{point['accuracy']:.3f}")
            self._callback("on_epoch_end", task_index, epoch + 1, point["loss"], point["accuracy"])
        if not hidden or task_index == self._task_free:
            strategy.on_task_end(model, task, head)
        return list(curve)

    def _step_adjustment(self, opt: torch.optim.Optimizer, n: int) -> Optional[Callable[[int, int], None]]:
        """What the recipe does before each optimizer step (this step's learning rate, gradient clipping), or None
        when it does nothing (constant learning rate, no clipping): the hot loop then pays nothing for it."""
        recipe, steps_per_epoch = self.recipe, math.ceil(n / self.batch_size)
        scheduled, clip = recipe.lr_schedule != "constant", recipe.grad_clip
        if not scheduled and not clip:
            return None
        params = [p for group in opt.param_groups for p in group["params"]]

        def adjust(epoch: int, step: int) -> None:
            if scheduled:
                lr = recipe.lr_at(epoch, step, steps_per_epoch, self.epochs)
                for group in opt.param_groups:
                    group["lr"] = lr
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)

        return adjust

    # -- continual evaluation ------------------------------------------------------------------------------------
    def _eval_point(self, task_index: int) -> None:
        """Score tasks 0..task_index now; the counts stay on the device until `_flush_eval`."""
        self._eval_pending.append((self.global_step, task_index, self._evaluator.evaluate(self.model, task_index)))

    def _flush_eval(self) -> None:
        """The pending points to the host in one transfer (at a task's end and before a checkpoint), recorded as
        {step, task, accuracy, task_il_accuracy} and passed to the callbacks that take them."""
        if not self._eval_pending:
            return
        pending, self._eval_pending = self._eval_pending, []
        flat = torch.cat([c.flatten() for _, _, c in pending]).tolist()
        sizes, points, at = self._evaluator.sizes, [], 0
        for step, task, counts in pending:
            k = counts.shape[0]
            cil, til = flat[at:at + 2 * k:2], flat[at + 1:at + 2 * k:2]
            at += 2 * k
            points.append({"step": step, "task": task, "accuracy": [c / sizes[j] for j, c in enumerate(cil)],
                           "task_il_accuracy": [c / sizes[j] for j, c in enumerate(til)]})
        self._progress["eval_points"] += points
        for cb in self.callbacks:
            hook = getattr(cb, "on_continual_eval", None)  # a duck-typed callback may lack it
            if hook is not None:
                hook(points)

    def continual_eval(self) -> Optional[dict]:
        """The curves as results.json records them (None without eval_every)."""
        if self._evaluator is None:
            return None
        self._flush_eval()
        p = self._progress
        return {"every": self.eval_every, "subset": self.eval_subset, "split": self.evaluate_on,
                "sizes": list(self._evaluator.sizes), "boundaries": list(p["eval_boundaries"]),
                "points": [dict(q) for q in p["eval_points"]]}

    def _check_finite(self, ep: dict) -> None:
        """On CUDA, non-finite losses are noted on the device and looked at here (epoch end, before a checkpoint)."""
        first_bad = int(ep["first_bad"])
        if first_bad >= 0:
            self.position["step"] = first_bad
            raise TrainingDiverged(self.position, float("nan"))

    def _watch_loss(self, point: dict, outputs: int) -> None:
        """Warn once per run when an epoch's mean loss is LOSS_GROWTH times that of a uniform guess over the task's
        classes (ln classes, about an untrained model's): finite, so not stopped, but diverging (--lr 1e4 trained on
        with epoch losses of 1e9 to 1e17)."""
        chance = math.log(max(outputs, 2))
        if self._loss_warned or not point["loss"] > LOSS_GROWTH * chance:
            return
        self._loss_warned = True
        warnings.warn(f"the training loss is {point['loss']:.3g} at task {point['task'] + 1}, epoch {point['epoch']}: "
                      f"more than {LOSS_GROWTH:g} times that of a uniform guess over its {outputs} classes "
                      f"({chance:.3g}); the run may be diverging: try a lower learning rate (--lr)")

    def _eval_model(self) -> nn.Module:
        """The strategy's scorer, under the guards of training: whatever training it runs (GDumb's) has diverged if
        its weights are not finite (one check per task), and an exception in it says where it was raised."""
        try:
            scorer = self.strategy.eval_model(self.model)
        except Exception as exc:
            raise TrainingFailed(self.position) from exc
        if scorer is not self.model:
            floats = [t for t in scorer.state_dict().values() if t.is_floating_point()]
            if floats and not bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()):
                nan = any(bool(torch.isnan(t).any()) for t in floats)
                raise TrainingDiverged(self.position, float("nan") if nan else float("inf"), scorer=True)
        return scorer

    def check_fits(self, stream) -> None:
        """The stream's data are sound (Stream.validate) and the model serves every task: one probe forward per
        task (eval mode, no gradient, no random numbers drawn) must accept its inputs and give enough outputs."""
        stream.validate()
        check_needs(self.strategy, getattr(self.strategy, "registered_name", type(self.strategy).__name__),
                    self.model, stream)
        check_model_fits(self.model, stream, self.device)
        self._warn_tiny_last_minibatch(stream)

    def _warn_tiny_last_minibatch(self, stream) -> None:
        """One warning when BatchNorm will train on a final minibatch of fewer than TINY_LAST examples: a few examples
        of one class, normalized by their own statistics, give a large loss and a step that can leave the task at
        chance (measured: docs/fidelity.md). The reference code keeps such minibatches too, so we only warn."""
        if self.recipe.drop_last or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            return
        tiny = [(t.name, r) for t in stream.tasks if 0 < (r := t.n("train") % self.batch_size) < TINY_LAST]
        if tiny:
            which = ", ".join(f"'{name}' ({r})" for name, r in tiny)
            warnings.warn(f"with batch size {self.batch_size}, the last minibatch of each epoch of task(s) {which} "
                          f"holds fewer than {TINY_LAST} examples; with BatchNorm one such step can leave a task at "
                          f"chance: --drop-last skips it (docs/fidelity.md)", stacklevel=2)

    def fit(self, stream, resume: Optional[dict] = None) -> StreamResult:
        """Train every task of the stream in order, scoring all tasks after each one.

        resume: a `state_dict()` (from a checkpoint) to continue from instead of starting over. An exception raised
        by a strategy or model during training comes out as TrainingFailed, saying where it happened."""
        self.check_fits(stream)
        self._task_free = None
        if stream.task_free:  # a strategy that needs task boundaries was refused by check_fits (its needs)
            if self.epochs != 1:
                raise ValueError(f"the task-free stream '{stream.name}' is seen once (online): epochs must be 1, got "
                                 f"{self.epochs}")
            self._task_free = len(stream.tasks) - 1
        if self.eval_every:
            self._evaluator = ContinualEvaluator(stream, self.device, self.eval_subset, self.evaluate_on,
                                                 seed=self.seed)
        self.scorer = None  # the module that scored the last task trained here (eval_model's, or the model)
        self._loss_warned = False
        progress = self._progress
        if resume is None:
            if self._evaluator is not None:  # the untrained model on the first task: the curve's step 0
                self._eval_point(0)
            progress["initial_accuracy"] = evaluate_stream(self.model, stream, self.device, self.evaluate_on,
                                                           workers=self.workers)
            self._callback("on_task_evaluated", -1, progress["initial_accuracy"])
            first, mid_task = 0, False
        else:
            self.load_state_dict(resume)
            progress = self._progress
            if "task_il_matrix" not in resume["progress"]:  # a checkpoint of a version that kept no task-IL rows
                if stream.setting == "class":
                    raise ValueError("the checkpoint was made by a version that kept no task-IL scores, which a "
                                     "class-incremental stream cannot recover; start the run over (--overwrite)")
                progress["task_il_matrix"] = [list(r) for r in progress["accuracy_matrix"]]  # the same scores
            first = self.position["task"]
            mid_task = self._epoch is not None
        task_data = overrides(self.strategy, "task_data")
        for i in range(first, len(stream.tasks)):
            task = self.strategy.task_data(stream, i) if task_data else stream.tasks[i]
            self._clock, self._checkpoint_seconds = time.perf_counter(), 0.0
            self._cpu_clock, self._checkpoint_cpu_seconds = time.process_time(), 0.0
            try:
                curve = self.train_task(task, i, resume=mid_task and i == first, own_task=stream.tasks[i])
            except (TrainingDiverged, OutputError):
                raise
            except Exception as exc:
                if worker_death(exc):
                    w = self.position
                    raise DataWorkerDied(exc, f" at task {w['task'] + 1} ({w['task_name']}), epoch {w['epoch']}, "
                                              f"step {w['step']}") from exc
                raise TrainingFailed(self.position) from exc
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            progress["train_seconds"] += time.perf_counter() - self._clock - self._checkpoint_seconds
            progress["train_cpu_seconds"] += time.process_time() - self._cpu_clock - self._checkpoint_cpu_seconds
            self._clock = 0.0
            progress["curves"] += curve
            progress["losses"] += self._task_losses
            self._task_losses = []
            self._task_curve = []
            if self._evaluator is not None:  # the boundary: tasks 0..i+1 (the next one's step 0), on the host now
                progress["eval_boundaries"].append(self.global_step)
                self._eval_point(min(i + 1, len(stream.tasks) - 1))
                self._flush_eval()
            scorer = self._eval_model() if overrides(self.strategy, "eval_model") else self.model
            self.scorer = scorer
            row, task_il = evaluate_stream(scorer, stream, self.device, self.evaluate_on, task_il=True,
                                           workers=self.workers)
            progress["accuracy_matrix"].append(row)
            progress["task_il_matrix"].append(task_il)
            if task is not None or scorer is not self.model:  # a task trained on, by the stream network or the
                self._check_health(scorer, stream, i, task_il[i])  # strategy's scorer (joint: nothing before the last)
            self._callback("on_task_evaluated", i, row)
            self.position = {"task": i + 1, "task_name": "", "epoch": 0, "step": 0}
            self._checkpoint()
        return StreamResult([list(r) for r in progress["accuracy_matrix"]], list(progress["initial_accuracy"]),
                            progress["train_seconds"], list(progress["curves"]), progress["train_cpu_seconds"],
                            [list(r) for r in progress["task_il_matrix"]], self.continual_eval(),
                            [dict(h) for h in progress["health"]], [dict(p) for p in progress["losses"]])

    def _loss_point(self, ep: dict, task_index: int, rows: int) -> None:
        """The mean training loss of the rows trained since the epoch's last point (one host read every k steps)."""
        total = ep["loss_sum"].item()
        last_total, last_rows = ep.get("loss_mark", (0.0, 0))
        ep["loss_mark"] = (total, rows)
        point = {"task": task_index, "step": self.global_step, "loss": (total - last_total) / (rows - last_rows)}
        self._task_losses.append(point)
        for cb in self.callbacks:
            hook = getattr(cb, "on_train_loss", None)  # a duck-typed callback may lack it
            if hook is not None:
                hook(point["step"], point["loss"])

    def _check_health(self, scorer: nn.Module, stream, i: int, accuracy: float) -> None:
        """The learning-health check of task i just trained: a one-line warning, recorded, when it learned nothing."""
        task = stream.tasks[i]
        classes = task_classes(stream)[i] if stream.setting == "class" else None  # the task-IL view
        counts = H.predicted_counts(scorer, task, self.evaluate_on, self.device, workers=self.workers,
                                    classes=classes)
        tips = H.TRY if scorer is self.model else H.TRY_SCORER
        problem = H.check(i, task.name, accuracy, len(task.classes), counts, tips)
        if problem is not None:
            problem["warning"] = (f"{self.label}: " if self.label else "") + problem["warning"]
            self._progress["health"].append(problem)
            warnings.warn(problem["warning"], H.LearningHealthWarning, stacklevel=2)
