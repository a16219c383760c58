"""Learning without Forgetting (Li & Hoiem 2016): distillation from a frozen copy of the model, on current inputs.

At the end of each task a frozen copy of the model is taken. While later tasks train, the current model's outputs on
the current inputs are pulled towards the copy's, for every output that earlier tasks trained: every earlier head in
a multi-head model, the old classes' outputs of a single head (class- or domain-incremental). Per head, the loss is
the temperature-scaled KL divergence KL(softmax(z_old / T) || softmax(z / T)) averaged over the minibatch (it
differs from the paper's cross-entropy with the recorded soft targets by their entropy, a constant, so the
gradients are the paper's); the heads' terms are summed and weighted by alpha (the paper's lambda_o = 1, T = 2).

Per step, in a MultiHeadNet, the earlier heads see the trunk's output of the forward pass just run (kept by a forward
hook on the trunk: no second trunk pass, nor its backward, and one dropout mask as in the paper's single forward),
and earlier heads of one width distilled whole run as one stacked linear layer with one distillation over
[N, heads, classes] (tests/test_lwf.py checks both against each head through its own forward pass, in float64).
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
    """KL(softmax(old_logits / T) || softmax(logits / T)) over the last dimension, summed over any dimensions between
    the first and the last (e.g. [N, heads, classes]: every head's term) and averaged over the rows (the first).

    Written as lse(z) - lse(z_old) - sum q (z - z_old) (z = logits / T, q = softmax(z_old); equal to the KL since q
    sums to 1) so that autograd forms the gradient as (softmax(z) - q) / (N T), exactly zero where the logits equal
    the teacher's, as at a task's first step. The form sum q (log q - log_softmax(z)) leaves round-off there
    (softmax(z) sum(q) - q, with sum(q) != 1 in float32: ~1e-9 on a head's weights), which Adam, dividing by the
    gradient's own size, turns into a step of ~lr / 10 in a direction set by the rows' summation order."""
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 autocast logits: the loss in float32
    z, z_old = (logits / temperature).to(dtype), (old_logits / temperature).to(dtype)
    lse, lse_old = torch.logsumexp(z, dim=-1, keepdim=True), torch.logsumexp(z_old, dim=-1, keepdim=True)
    q = (z_old - lse_old).exp()  # the same operations as logsumexp's backward: softmax(z) == q bitwise when z == z_old
    return ((lse - lse_old).sum() - (q * (z - z_old)).sum()) / logits.shape[0]


class _TrunkTap:
    """A forward hook on a MultiHeadNet's trunk keeping its last input and output: the trainer's forward pass already
    ran the trunk on the minibatch, so the earlier heads' outputs need no second trunk pass (nor its backward). Not
    kept when the model is copied or pickled (a copy starts empty)."""

    def __init__(self):
        self.x = self.features = None

    def __call__(self, module, inputs, output):
        self.x, self.features = inputs[0], output

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.x = self.features = None


def _stacked_heads(model: MultiHeadNet, heads: List[int]):
    """Weight and bias of the given heads stacked into one linear layer (a view of the single head's when only one)."""
    if len(heads) == 1:
        return model.heads[heads[0]].weight, model.heads[heads[0]].bias
    return (torch.cat([model.heads[h].weight for h in heads]), torch.cat([model.heads[h].bias for h in heads]))


def _head_outputs(model: nn.Module, x: torch.Tensor, heads: List[int],
                  features: Optional[torch.Tensor] = None) -> Dict[int, torch.Tensor]:
    """Each head's outputs on x (a MultiHeadNet runs its trunk once for all of them, or not at all given its
    `features` on x)."""
    if isinstance(model, MultiHeadNet) and (len(heads) > 1 or features is not None):
        features = model.trunk(x) if features is None else features
        return {h: model.heads[h](features) for h in heads}
    return {h: forward_head(model, x, h) for h in heads}


@register_strategy("lwf", checks={"alpha": (lambda v: v >= 0, "a number >= 0"),
                                  "temperature": (lambda v: v > 0, "a number > 0")})
class LwF(Strategy):
    """Learning without Forgetting: distillation from the last task's frozen model (paper: T = 2, weight 1).

    Loss term alpha * sum over earlier heads of KL(softmax(z_old / T) || softmax(z / T)) on the current inputs.
    """

    needs = (("boundaries", "the old model frozen at each task's end"),)

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0):
        if alpha < 0 or temperature <= 0:
            raise ValueError(f"LwF needs alpha >= 0 and temperature > 0, got alpha={alpha}, temperature={temperature}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.old_outputs: Dict[int, List[int]] = {}  # head -> the outputs earlier tasks trained (their labels)
        self.old_weights: Dict[str, torch.Tensor] = {}  # the frozen copy's state_dict
        self._old: Optional[nn.Module] = None  # the frozen copy, built from old_weights on first use
        self._index: Dict[int, Optional[torch.Tensor]] = {}
        self._stack: Optional[tuple] = None  # (width, frozen heads' stacked weight and bias), or () where not stacked
        self._tap: Optional[_TrunkTap] = None  # the trunk's last output, and the hook's handle and module
        self._hook = None

    def _frozen(self, model: nn.Module) -> nn.Module:
        if self._old is None:  # after load_state_dict: rebuild the copy from the current model's architecture
            hook = self._hook  # not copied into the frozen model, and kept on the model: this step's forward pass
            if hook is not None:  # has already passed the tap, so the step after a resume reads it as any other
                hook[0].remove()
            self._old = copy.deepcopy(model)
            self._old.load_state_dict(self.old_weights)
            self._old.requires_grad_(False).eval()
            if hook is not None:
                self._hook = (hook[1].register_forward_hook(self._tap), hook[1])
        return self._old

    def _outputs(self, head: int, out: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The distilled outputs of one head (all of them when earlier tasks used every one)."""
        if head not in self._index:
            idx = self.old_outputs[head]
            whole = idx == list(range(out.shape[-1]))
            self._index[head] = None if whole else torch.tensor(idx, dtype=torch.long, device=device)
        idx = self._index[head]
        return out if idx is None else out.index_select(-1, idx)

    def _stacked(self, model: nn.Module, frozen: nn.Module, heads: List[int]) -> tuple:
        """(width, the frozen heads' stacked weight and bias) when every earlier head is an nn.Linear of one width
        distilled whole: their outputs are then one linear layer over the trunk's features and the distillation one
        pass over [N, heads, width]; () otherwise. Decided once per frozen copy."""
        if self._stack is None:
            self._stack = ()
            if all(isinstance(model.heads[h], nn.Linear) for h in heads):
                width = model.heads[heads[0]].out_features
                if all(self.old_outputs[h] == list(range(model.heads[h].out_features)) and
                       model.heads[h].out_features == width for h in heads):
                    with torch.no_grad():
                        self._stack = (width,) + tuple(t.clone() for t in _stacked_heads(frozen, heads))
        return self._stack

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        """Taps the trunk before the forward pass of every step (a resumed run included), so that the step is the
        same whether it is the first after a resume or not."""
        if self.old_outputs and self.alpha != 0 and isinstance(model, MultiHeadNet) and \
                (self._hook is None or self._hook[1] is not model.trunk):
            self._untap()
            self._tap = _TrunkTap()
            self._hook = (model.trunk.register_forward_hook(self._tap), model.trunk)
        return batch

    def _features(self, model: MultiHeadNet, x: torch.Tensor) -> torch.Tensor:
        """The trunk's output on x: the one the forward pass just computed when the tap saw it, else a new pass."""
        tap = self._tap
        if tap is not None and self._hook[1] is model.trunk and tap.x is x and tap.features is not None and \
                (tap.features.requires_grad or not torch.is_grad_enabled()):
            return tap.features
        return model.trunk(x)

    def _untap(self) -> None:
        if self._hook is not None:
            self._hook[0].remove()
        self._tap = self._hook = None

    def loss_term(self, model: nn.Module, batch: Batch):
        if not self.old_outputs or self.alpha == 0:
            return 0.0
        heads = sorted(self.old_outputs)
        frozen, x = self._frozen(model), batch.x
        multi = isinstance(model, MultiHeadNet)
        if multi and isinstance(batch.head, int) and batch.head not in self.old_outputs:
            stack = self._stacked(model, frozen, heads)
            if stack:  # every earlier head at once: one linear layer each side, one distillation
                width, old_weight, old_bias = stack
                with torch.no_grad():
                    old = F.linear(frozen.trunk(x), old_weight, old_bias)
                new = F.linear(self._features(model, x), *_stacked_heads(model, heads))
                n = x.shape[0]
                return self.alpha * distillation_loss(new.view(n, -1, width), old.view(n, -1, width), self.temperature)
        with torch.no_grad():
            old = _head_outputs(frozen, x, heads)
        reuse = isinstance(batch.head, int) and batch.out is not None and batch.head in old
        current = {batch.head: batch.out} if reuse else {}  # the forward pass already computed this head
        rest = [h for h in heads if h not in current]
        if rest:
            current.update(_head_outputs(model, x, rest, self._features(model, x) if multi else None))
        d = x.device
        return self.alpha * sum(distillation_loss(self._outputs(h, current[h], d), self._outputs(h, old[h], d),
                                                  self.temperature) for h in heads)

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        self._untap()  # the hook is not copied into the frozen model, nor left on the model between tasks
        labels = set(self.old_outputs.get(head, []))
        if isinstance(data, Task):  # the labels only: a task read from disk is not read again
            labels.update(data.train_y.unique().tolist())
        else:
            for _, y in iter_task_batches(data, 4096, torch.device("cpu")):
                labels.update(y.unique().tolist())
        self.old_outputs[head] = sorted(labels)
        self._old = copy.deepcopy(model).requires_grad_(False).eval()
        self.old_weights = {k: v.detach().clone() for k, v in self._old.state_dict().items()}
        self._index, self._stack = {}, None

    def state_dict(self):
        return {"hparams": {"alpha": self.alpha, "temperature": self.temperature},
                "old_outputs": {h: list(v) for h, v in self.old_outputs.items()}, "old_weights": self.old_weights}

    def load_state_dict(self, state):
        check_state_keys(self, state, ("hparams", "old_outputs", "old_weights"))
        self.alpha, self.temperature = float(state["hparams"]["alpha"]), float(state["hparams"]["temperature"])
        self.old_outputs = {int(h): [int(i) for i in v] for h, v in state["old_outputs"].items()}
        self.old_weights = {k: v.clone() for k, v in state["old_weights"].items()}
        self._untap()
        self._old, self._index, self._stack = None, {}, None
