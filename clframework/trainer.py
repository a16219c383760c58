"""Trains a model on a task stream, calling the strategy's hooks, and records the accuracy matrix.

Task data are tensors already in memory: they move to the device once per task and minibatches are drawn by an index
permutation from a seeded generator, so there is no per-sample Python and no DataLoader worker in the hot loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clframework.evaluation.evaluator import evaluate_stream

from .models import forward_head
from .plugin import Strategy


def select_device(device: Optional[str] = None) -> torch.device:
    """CUDA when available (or the device asked for), else CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class TrainerCallback:
    """Observer of training progress (loggers such as W&B implement these)."""

    def on_epoch_end(self, task_index: int, epoch: int, loss: float, accuracy: float) -> None:
        """After each epoch: mean training loss and accuracy on the current task's training batches."""

    def on_task_evaluated(self, task_index: int, accuracies: List[float]) -> None:
        """After each task (task_index = -1 for the untrained model): test accuracy on every task."""

    def on_run_end(self, result: dict, out_dir) -> None:
        """After a run's results (and, with an output folder, its files) are complete: loggers finish here."""


def adam(params, lr: float = 1e-3) -> torch.optim.Optimizer:
    """The paper's optimizer: Adam, lr 1e-3, betas (0.9, 0.999)."""
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))


def sgd(params, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr)


OPTIMIZERS = {"adam": adam, "sgd": sgd}


@dataclass
class StreamResult:
    accuracy_matrix: List[List[float]]
    initial_accuracy: List[float]
    train_seconds: float
    curves: List[dict] = field(default_factory=list)


class Trainer:
    """Sequential training over a stream with a strategy's hooks.

    reset_optimizer: a fresh optimizer per task (paper: split MNIST, CIFAR) or one kept across tasks (permuted MNIST).
    """

    def __init__(self, model: nn.Module, strategy: Strategy, *, epochs: int = 10, batch_size: int = 64,
                 lr: float = 1e-3, optimizer: str = "adam", reset_optimizer: bool = True,
                 device: Optional[str] = None, seed: int = 0, quiet: bool = False,
                 callbacks: Sequence[TrainerCallback] = (), evaluate_on: str = "test"):
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got epochs={epochs}, "
                             f"batch_size={batch_size}, lr={lr}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        self.device = select_device(device)
        self.model = model.to(self.device)
        self.strategy = strategy
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.make_optimizer: Callable = OPTIMIZERS[optimizer]
        self.reset_optimizer = reset_optimizer
        self.seed, self.quiet = seed, quiet
        self.callbacks = list(callbacks)
        self.evaluate_on = evaluate_on
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer: Optional[torch.optim.Optimizer] = None

    def _callback(self, name: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, name)(*args)

    def train_task(self, task, task_index: int) -> List[dict]:
        """Train one task for `epochs` epochs; returns the per-epoch loss and training accuracy."""
        model, strategy, device = self.model, self.strategy, self.device
        if self.optimizer is None or self.reset_optimizer:
            self.optimizer = self.make_optimizer([p for p in model.parameters() if p.requires_grad], lr=self.lr)
        opt = self.optimizer
        x, y = task.train_x.to(device), task.train_y.to(device)
        n, head = len(y), task.head
        strategy.on_task_start(model, task_index)
        model.train()
        curve = []
        bar = tqdm(range(self.epochs), desc=f"task {task_index + 1} {task.name}", leave=False, disable=self.quiet,
                   unit="epoch")
        for epoch in bar:
            order = torch.randperm(n, generator=self.generator).to(device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            for i in range(0, n, self.batch_size):
                idx = order[i:i + self.batch_size]
                xb, yb = x[idx], y[idx]
                out = forward_head(model, xb, head)
                loss = F.cross_entropy(out, yb)
                extra = strategy.penalty(model)
                (loss + extra if isinstance(extra, torch.Tensor) else loss).backward()
                strategy.on_before_step(model)
                opt.step()
                strategy.on_after_step(model)
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    loss_sum.add_(loss, alpha=len(idx))
                    correct += (out.argmax(-1) == yb).sum()
            point = {"task": task_index, "epoch": epoch + 1, "loss": loss_sum.item() / n, "accuracy": correct.item() / n}
            curve.append(point)
            bar.set_postfix(loss=f"{point['loss']:.4f}", acc=f"{point['accuracy']:.3f}")
            self._callback("on_epoch_end", task_index, epoch + 1, point["loss"], point["accuracy"])
        strategy.on_task_end(model, task, head)
        return curve

    def fit(self, stream) -> StreamResult:
        """Train every task of the stream in order, scoring all tasks after each one."""
        initial = evaluate_stream(self.model, stream, self.device, self.evaluate_on)
        self._callback("on_task_evaluated", -1, initial)
        matrix, curves, train_seconds = [], [], 0.0
        for i, task in enumerate(stream.tasks):
            start = time.perf_counter()
            curves += self.train_task(task, i)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            train_seconds += time.perf_counter() - start
            row = evaluate_stream(self.model, stream, self.device, self.evaluate_on)
            matrix.append(row)
            self._callback("on_task_evaluated", i, row)
        return StreamResult(matrix, initial, train_seconds, curves)
