"""Dark Experience Replay (Buzzega et al., NeurIPS 2020): DER and DER++.

The reservoir memory keeps, with each example, the logits z the network gave it when it arrived (the training
forward pass, before the step). Loss: CE(f(x), y) on the incoming minibatch + alpha * MSE(f(x'), z') on a memory
sample; DER++ adds beta * CE(f(x''), y'') on a second, independent sample. As Mammoth's models/der.py and derpp.py
(aimagelab/mammoth 7ab9db97, the same at e75a491), the minibatch and each sample pass through the network
separately where the model has BatchNorm (memory.SeparatePasses; one joined pass otherwise, the same numbers), and
the stored logits are the incoming pass's. Stored inputs are raw and rebuilt with `batch.inputs`, i.e. augmented
like the stream.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clframework.plugin import Batch, register_strategy

from .memory import SeparatePasses

_positive = (lambda v: v >= 1, "an integer >= 1")
_nonneg = (lambda v: v >= 0, "a number >= 0")


def logit_loss(out: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between outputs and stored logits over the entries the stored logits have (NaN marks
    an output the example's head lacks); equals F.mse_loss(out, z) when z has no NaN."""
    have = ~torch.isnan(z)
    diff = torch.where(have, out - torch.nan_to_num(z), torch.zeros_like(out))
    return diff.pow(2).sum() / have.sum()


def der_loss(out: torch.Tensor, y: torch.Tensor, rows, z: torch.Tensor, alpha: float, beta: float = 0.0
             ) -> torch.Tensor:
    """CE on rows[0] + alpha * logit_loss on rows[1] against z + beta * CE on rows[2] (DER++), for the rows present."""
    a, b = rows[0]
    loss = F.cross_entropy(out[a:b], y[a:b])
    if len(rows) > 1:
        a, b = rows[1]
        loss = loss + alpha * logit_loss(out[a:b], z)
    if len(rows) > 2:
        a, b = rows[2]
        loss = loss + beta * F.cross_entropy(out[a:b], y[a:b])
    return loss


@register_strategy("der", checks={"memory_size": _positive, "minibatch_size": _positive, "alpha": _nonneg},
                   description="Dark Experience Replay: CE + alpha * MSE to the logits stored with memory examples")
class DER(SeparatePasses):
    """DER. memory_size: examples kept; minibatch_size: memory examples per step; alpha: weight of the logit loss."""

    beta = 0.0  # DER++'s second term (off)

    def __init__(self, memory_size: int = 200, minibatch_size: int = 10, alpha: float = 0.2):
        super().__init__(memory_size, minibatch_size)
        self.alpha = float(alpha)
        self._z = None

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        sizes = (self.minibatch_size,) * (2 if self.beta else 1)
        batch, samples = self.replayed(batch, *sizes)
        self._z = samples[0]["logits"] if samples else None
        return batch

    def task_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        z = batch.out[:self.rows[0][1]].detach()  # -inf: the padding of a head narrower than a memory sample's
        self.offer["logits"] = z.masked_fill(z == float("-inf"), float("nan"))
        return der_loss(batch.out, batch.y, self.rows, self._z, self.alpha, self.beta)

    def state_dict(self):
        return self._state(alpha=self.alpha)


@register_strategy("derpp", checks={"memory_size": _positive, "minibatch_size": _positive, "alpha": _nonneg,
                                    "beta": _nonneg},
                   description="DER++: DER plus beta * CE on a second memory sample's labels")
class DERpp(DER):
    """DER++. memory_size, minibatch_size, alpha as DER; beta: weight of the second sample's cross-entropy."""

    def __init__(self, memory_size: int = 200, minibatch_size: int = 10, alpha: float = 0.2, beta: float = 1.0):
        super().__init__(memory_size, minibatch_size, alpha)
        self.beta = float(beta)

    def state_dict(self):
        return self._state(alpha=self.alpha, beta=self.beta)
