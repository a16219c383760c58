"""Averaged Gradient Episodic Memory (Chaudhry et al. 2019).

Each step, the reference gradient g_ref is the loss gradient on a random sample of an episodic memory of earlier
tasks' examples (filled at each task's end, as replay's memory). When the minibatch's gradient g conflicts with it
(g . g_ref < 0) the update uses the projection of Eq. 11, g - (g . g_ref / g_ref . g_ref) g_ref: the vector nearest g
whose dot product with g_ref is not negative. g and g_ref run over every trainable parameter (zeros where a head
took no part), so replayed examples of earlier heads move those heads too.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clframework.models import forward_heads
from clframework.plugin import Batch, Strategy, check_state_keys, register_strategy, trainable

from .memory import SELECTIONS, ReplayMemory, add_task_data, stores_raw


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """Eq. 11: g when g . g_ref >= 0, else g - (g . g_ref / g_ref . g_ref) g_ref (no host sync: no branch).

    The dot products are taken in float64: once the memory is learned, g_ref can be so small that g_ref . g_ref
    underflows to 0 in float32 while g . g_ref does not, and the ratio would be infinite."""
    dot, norm2 = torch.dot(g.double(), g_ref.double()), torch.dot(g_ref.double(), g_ref.double())
    scale = torch.where((dot < 0) & (norm2 > 0), dot / norm2, torch.zeros_like(dot))
    return g - scale.to(g.dtype) * g_ref


@register_strategy("agem", checks={"memory_size": (lambda v: v >= 1, "an integer >= 1"),
                                   "sample_size": (lambda v: v >= 1, "an integer >= 1"),
                                   "selection": (lambda v: v in SELECTIONS, "'reservoir' or 'class-balanced'")})
class AGEM(Strategy):
    """A-GEM: project the update when it would increase the loss on a memory sample (Eq. 11).

    memory_size: episodic memory of earlier tasks, examples in all (default 200, as replay); sample_size: examples
    per reference gradient (the paper's 256); selection: 'reservoir' or 'class-balanced'.
    """

    def __init__(self, memory_size: int = 200, sample_size: int = 256, selection: str = "reservoir"):
        if memory_size < 1 or sample_size < 1:
            raise ValueError(f"A-GEM needs memory_size >= 1 and sample_size >= 1, got {memory_size}, {sample_size}")
        self.sample_size = int(sample_size)
        self.memory = ReplayMemory(memory_size, selection)
        self._params: List[nn.Parameter] = []
        self._prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self._raw = True  # the memory keeps stored examples (see memory.stores_raw)

    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        self._params = list(trainable(model).values())

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        self._prepare = batch.prepare  # the memory holds stored examples: decoded (and augmented) like this minibatch
        self._raw = stores_raw(batch)
        return batch

    def on_before_step(self, model: nn.Module) -> None:
        if not len(self.memory):
            return
        params = self._params or list(trainable(model).values())
        raw, y, head = self.memory.sample(self.sample_size)
        with torch.enable_grad():
            loss = F.cross_entropy(forward_heads(model, raw if self._prepare is None else self._prepare(raw), head), y)
            ref = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
            r = torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(ref, params)])
            projected = agem_project(g, r).split([p.numel() for p in params])
            for p, new in zip(params, projected):
                if p.grad is None:
                    p.grad = new.view_as(p).clone()
                else:
                    p.grad.copy_(new.view_as(p))

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        add_task_data(self.memory, model, data, head, raw=self._raw)

    def state_dict(self) -> Dict[str, object]:
        return {"hparams": {"memory_size": self.memory.size, "sample_size": self.sample_size,
                            "selection": self.memory.selection}, "memory": self.memory.state_dict()}

    def load_state_dict(self, state) -> None:
        check_state_keys(self, state, ("hparams", "memory"))
        self.sample_size = int(state["hparams"]["sample_size"])
        self.memory.load_state_dict(state["memory"])
        self._params = []  # taken from the model on the next step (resuming skips on_task_start)
