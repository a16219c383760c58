"""MIR (Aljundi et al., NeurIPS 2019, "Online Continual Learning with Maximally Interfered Retrieval"), its ER form.

Each step, as the authors' code does it (optimass/Maximally_Interfered_Retrieval, mir.py `retrieve_replay_update`,
commit 35eda78bcdd35025b16b0b1039a926d34aad4851): the incoming minibatch's cross-entropy is back-propagated (the
trainer's forward and backward); a virtual SGD step theta_v = theta - lr * g on that gradient; `subsample` candidates
drawn from the memory are scored by how much the virtual step raises their loss, post - pre (both forward passes in
training mode, as theirs: BatchNorm normalizes with the candidates' batch statistics); the `minibatch_size` highest
are replayed, their cross-entropy's gradient added to the incoming one, and the optimizer steps once. The memory is
the DER family's reservoir, offered every incoming minibatch after the step.

Task-free by default: candidates come from the whole memory from the first step on. The authors' code, written for
task streams, starts replay at the second task and draws candidates from earlier tasks only (it needs task labels);
docs/fidelity.md.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clframework.models import forward_heads
from clframework.plugin import Batch, register_strategy

from .memory import StreamRehearsal

_positive = (lambda v: v >= 1, "an integer >= 1")


def virtual_step(params: Sequence[torch.Tensor], grads: Sequence[Optional[torch.Tensor]], lr: float
                 ) -> List[torch.Tensor]:
    """The parameters after one plain SGD step on `grads` (a parameter without a gradient stays put)."""
    return [p if g is None else p - lr * g for p, g in zip(params, grads)]


def interference(pre_loss: torch.Tensor, post_loss: torch.Tensor) -> torch.Tensor:
    """Per candidate, how much the virtual update raises its loss: loss after minus loss before."""
    return post_loss - pre_loss


def most_interfered(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, highest first (all candidates when there are k or fewer)."""
    return torch.sort(scores, descending=True, stable=True).indices[:k]


@register_strategy("mir", checks={"memory_size": _positive, "minibatch_size": _positive, "subsample": _positive,
                                  "virtual_lr": (lambda v: v > 0, "a number > 0")},
                   description="MIR: replay the memory examples whose loss a virtual SGD step on the incoming "
                               "minibatch raises most (Aljundi et al. 2019)")
class MIR(StreamRehearsal):
    """MIR. memory_size: examples kept; minibatch_size: examples replayed per step (the authors' buffer_batch_size);
    subsample: memory candidates scored per step; virtual_lr: the virtual step's learning rate, the optimizer's in
    the authors' code: run() and compare() set it to the run's lr unless it is given (--set virtual_lr=...); in a loop
    of your own (or Trainer) give it your lr (default 0.1, the authors' lr)."""

    lr_params = ("virtual_lr",)  # hyperparameters that follow the run's learning rate unless given

    def __init__(self, memory_size: int = 200, minibatch_size: int = 10, subsample: int = 50,
                 virtual_lr: float = 0.1):
        super().__init__(memory_size, minibatch_size)
        self.subsample, self.virtual_lr = int(subsample), float(virtual_lr)
        self._batch: Optional[Batch] = None
        self._virtual: Optional[nn.Module] = None  # the model's twin holding theta_v, reused every step

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        self._batch = batch
        return self.replayed(batch)[0]  # offered to the memory after the step; nothing joined

    def _twin(self, model: nn.Module) -> nn.Module:
        """The virtual model: the model's parameters and buffers (BatchNorm statistics) copied into a twin, whose
        parameters then take the virtual step."""
        if self._virtual is None:
            self._virtual = copy.deepcopy(model)
        twin = self._virtual
        with torch.no_grad():
            for mine, theirs in ((twin.parameters(), model.parameters()), (twin.buffers(), model.buffers())):
                mine, theirs = list(mine), list(theirs)
                if mine:
                    torch._foreach_copy_(mine, theirs)
            params = list(model.parameters())
            moved = virtual_step(params, [p.grad for p in params], self.virtual_lr)
            torch._foreach_copy_(list(twin.parameters()), moved)
        twin.train(model.training)
        return twin

    def on_before_step(self, model: nn.Module) -> None:
        if not len(self.memory):
            return
        batch = self._batch
        c = self.memory.draw(self.subsample)
        x, y = batch.inputs(c["x"]), c["y"]
        heads = batch.head if isinstance(batch.head, int) and self.heads_offered == [batch.head] else c["head"]
        with torch.no_grad():
            pre = F.cross_entropy(forward_heads(model, x, heads), y, reduction="none")
            post = F.cross_entropy(forward_heads(self._twin(model), x, heads), y, reduction="none")
            pick = most_interfered(interference(pre, post), self.minibatch_size)
        chosen = heads if isinstance(heads, int) else heads[pick]
        F.cross_entropy(forward_heads(model, x[pick], chosen), y[pick]).backward()

    def state_dict(self):
        return self._state(subsample=self.subsample, virtual_lr=self.virtual_lr)
