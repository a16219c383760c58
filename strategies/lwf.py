"""Learning without Forgetting (Li & Hoiem 2016): distillation from a frozen copy of the model, on current inputs.

At the end of each task a frozen copy of the model is taken. While later tasks train, the current model's outputs on
the current inputs are pulled towards the copy's, for every output that earlier tasks trained: every earlier head in
a multi-head model, the old classes' outputs of a single head (class- or domain-incremental). Per head, the loss is
the temperature-scaled KL divergence KL(softmax(z_old / T) || softmax(z / T)) averaged over the minibatch (it
differs from the paper's cross-entropy with the recorded soft targets by their entropy, a constant, so the
gradients are the paper's); the heads' terms are summed and weighted by alpha (the paper's lambda_o = 1, T = 2).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clframework.benchmarks.stream import Task
from clframework.models import MultiHeadNet, forward_head
from clframework.plugin import Batch, Strategy, check_state_keys, iter_task_batches, register_strategy


def distillation_loss(logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(old_logits / T) || softmax(logits / T))."""
    log_p = F.log_softmax(logits / temperature, dim=-1)
    log_q = F.log_softmax(old_logits / temperature, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def _head_outputs(model: nn.Module, x: torch.Tensor, heads: List[int]) -> Dict[int, torch.Tensor]:
    """Each head's outputs on x (a MultiHeadNet runs its trunk once for all of them)."""
    if isinstance(model, MultiHeadNet) and len(heads) > 1:
        features = model.trunk(x)
        return {h: model.heads[h](features) for h in heads}
    return {h: forward_head(model, x, h) for h in heads}


@register_strategy("lwf", checks={"alpha": (lambda v: v >= 0, "a number >= 0"),
                                  "temperature": (lambda v: v > 0, "a number > 0")})
class LwF(Strategy):
    """Learning without Forgetting: distillation from the last task's frozen model (paper: T = 2, weight 1).

    Loss term alpha * sum over earlier heads of KL(softmax(z_old / T) || softmax(z / T)) on the current inputs.
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0):
        if alpha < 0 or temperature <= 0:
            raise ValueError(f"LwF needs alpha >= 0 and temperature > 0, got alpha={alpha}, temperature={temperature}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.old_outputs: Dict[int, List[int]] = {}  # head -> the outputs earlier tasks trained (their labels)
        self.old_weights: Dict[str, torch.Tensor] = {}  # the frozen copy's state_dict
        self._old: Optional[nn.Module] = None  # the frozen copy, built from old_weights on first use
        self._index: Dict[int, Optional[torch.Tensor]] = {}

    def _frozen(self, model: nn.Module) -> nn.Module:
        if self._old is None:  # after load_state_dict: rebuild the copy from the current model's architecture
            self._old = copy.deepcopy(model)
            self._old.load_state_dict(self.old_weights)
            self._old.requires_grad_(False).eval()
        return self._old

    def _outputs(self, head: int, out: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The distilled outputs of one head (all of them when earlier tasks used every one)."""
        if head not in self._index:
            idx = self.old_outputs[head]
            whole = idx == list(range(out.shape[-1]))
            self._index[head] = None if whole else torch.tensor(idx, dtype=torch.long, device=device)
        idx = self._index[head]
        return out if idx is None else out.index_select(-1, idx)

    def loss_term(self, model: nn.Module, batch: Batch):
        if not self.old_outputs or self.alpha == 0:
            return 0.0
        heads = sorted(self.old_outputs)
        with torch.no_grad():
            old = _head_outputs(self._frozen(model), batch.x, heads)
        reuse = isinstance(batch.head, int) and batch.out is not None and batch.head in old
        current = {batch.head: batch.out} if reuse else {}  # the forward pass already computed this head
        current.update(_head_outputs(model, batch.x, [h for h in heads if h not in current]))
        d = batch.x.device
        return self.alpha * sum(distillation_loss(self._outputs(h, current[h], d), self._outputs(h, old[h], d),
                                                  self.temperature) for h in heads)

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        labels = set(self.old_outputs.get(head, []))
        if isinstance(data, Task):  # the labels only: a task read from disk is not read again
            labels.update(data.train_y.unique().tolist())
        else:
            for _, y in iter_task_batches(data, 4096, torch.device("cpu")):
                labels.update(y.unique().tolist())
        self.old_outputs[head] = sorted(labels)
        self._old = copy.deepcopy(model).requires_grad_(False).eval()
        self.old_weights = {k: v.detach().clone() for k, v in self._old.state_dict().items()}
        self._index = {}

    def state_dict(self):
        return {"hparams": {"alpha": self.alpha, "temperature": self.temperature},
                "old_outputs": {h: list(v) for h, v in self.old_outputs.items()}, "old_weights": self.old_weights}

    def load_state_dict(self, state):
        check_state_keys(self, state, ("hparams", "old_outputs", "old_weights"))
        self.alpha, self.temperature = float(state["hparams"]["alpha"]), float(state["hparams"]["temperature"])
        self.old_outputs = {int(h): [int(i) for i in v] for h, v in state["old_outputs"].items()}
        self.old_weights = {k: v.clone() for k, v in state["old_weights"].items()}
        self._old, self._index = None, {}
