"""Memory Aware Synapses (Aljundi et al. 2018): importance from the sensitivity of the learned function's output.

Omega_k = mean over the task's inputs x_n of |d ||f(x_n)||^2 / d theta_k|, with f the output of the task's head,
summed over tasks; penalty lambda * sum_k Omega_k (theta_k - theta*_k)^2 around the weights at the end of the last
task. The absolute value is per example, so it needs per-example gradients; two vectorized ways to them:
- closed form when every trainable parameter belongs to an nn.Linear applied once per forward (MLPs): the
  per-example gradient of W is delta a^T (delta = d ||f||^2 / d(layer output), a = layer input), so
  sum_n |delta_n a_n^T| = |delta|^T |a|: one backward and one matrix product per layer;
- otherwise per-example gradients with torch.func (vmap over grad), for any architecture.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from clframework.models import takes_head
from clframework.plugin import Strategy, check_state_keys, iter_task_batches, register_strategy, trainable

from .ewc import mean_over_examples, per_example_chunks, tapped_forward


def output_sensitivity(out: torch.Tensor) -> torch.Tensor:
    """The function MAS differentiates, per example: the squared L2 norm of the head's output, ||f(x)||^2."""
    return out.pow(2).sum(-1)


def _closed_form_batch(model: nn.Module, modules, x: torch.Tensor, y, head: int) -> Dict[nn.Module, tuple]:
    """This batch's sum over examples of |per-example gradient| per used nn.Linear: {module: (weight, bias term)}."""
    out, used, inputs, outputs = tapped_forward(model, modules, x, head)
    deltas = torch.autograd.grad(output_sensitivity(out).sum(), outputs)  # per example: examples are independent
    return {m: (d.abs().T @ a.abs(), d.abs().sum(0)) for m, d, a in zip(used, deltas, inputs)}


def _per_example_batch(model: nn.Module, params: Dict[str, torch.Tensor], x: torch.Tensor, y, head: int,
                       memory_mb: int = 256) -> Dict[str, torch.Tensor]:
    """This batch's sum over examples of |per-example gradient| per parameter (torch.func), in chunks that fit
    memory_mb."""
    use_head, buffers = takes_head(model), dict(model.named_buffers())

    def sensitivity(p, xi):
        args = (xi.unsqueeze(0), head) if use_head else (xi.unsqueeze(0),)
        return output_sensitivity(functional_call(model, (p, buffers), args)).squeeze(0)

    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    for rows in per_example_chunks(len(x), sum(p.numel() for p in params.values()) * 4, memory_mb):
        for n, g in vmap(grad(sensitivity), in_dims=(None, 0))(params, x[rows]).items():
            sums[n] += g.abs().sum(0)
    return sums


def mas_importance(model: nn.Module, batches, head: int = 0, method: str = "auto") -> Dict[str, torch.Tensor]:
    """Mean over the examples in `batches` of |d ||f(x)||^2 / d theta|, one tensor per trainable parameter.

    method="auto": the nn.Linear closed form where it applies, else per-example gradients; "per-sample": always
    per-example gradients (torch.func). The model is in eval mode (no dropout) meanwhile, as at the end of a task.
    """
    if method not in ("auto", "per-sample"):
        raise ValueError(f"unknown MAS importance method {method!r}; choose 'auto' or 'per-sample'")
    return mean_over_examples(model, batches, head, method, _closed_form_batch, _per_example_batch,
                              "MAS importance")


def mas_penalty(theta: torch.Tensor, anchor: torch.Tensor, omega: torch.Tensor, mas_lambda: float) -> torch.Tensor:
    """lambda * sum Omega (theta - theta*)^2, for one parameter tensor."""
    return mas_lambda * (omega * (theta - anchor).pow(2)).sum()


def mas_penalty_grad(theta: torch.Tensor, anchor: torch.Tensor, omega: torch.Tensor, mas_lambda: float) -> torch.Tensor:
    """Closed-form gradient of `mas_penalty`: 2 lambda Omega (theta - theta*)."""
    return 2.0 * mas_lambda * omega * (theta - anchor)


@register_strategy("mas", checks={
    "mas_lambda": (lambda v: v >= 0, "a number >= 0"),
    "importance_samples": (lambda v: v >= 0, "an integer >= 0 (0 = all of the task's training inputs)"),
    "importance_batch_size": (lambda v: v >= 1, "an integer >= 1"),
})
class MAS(Strategy):
    """Memory Aware Synapses: penalty lambda sum Omega (theta - theta*)^2 (paper default lambda = 1).

    Omega: mean over a task's inputs of |d ||f(x)||^2 / d theta| (f: the task's head), summed over tasks.

    importance_samples: cap on the training inputs used for Omega (0 = all): a random subset drawn from a generator
    seeded by the run's seed (torch.initial_seed() when the strategy is made), kept in the checkpoint.
    importance_batch_size: examples per pass (the per-example path cuts them to fit 256 MB); 1024 keeps the closed
    form's matrix products long enough that per-operation overhead does not dominate on a CPU.
    """

    needs = (("boundaries", "importances computed at each task's end"),)

    def __init__(self, mas_lambda: float = 1.0, importance_samples: int = 0, importance_batch_size: int = 1024):
        if mas_lambda < 0:
            raise ValueError(f"mas_lambda must be >= 0, got {mas_lambda}")
        self.mas_lambda, self.importance_samples = float(mas_lambda), int(importance_samples)
        self.importance_batch_size = int(importance_batch_size)
        self.generator = torch.Generator().manual_seed(torch.initial_seed())  # draws the importance_samples subsets
        self.omega: Dict[str, torch.Tensor] = {}   # accumulated importance
        self.anchor: Dict[str, torch.Tensor] = {}  # theta*: the weights at the end of the last task
        self._params: Dict[str, nn.Parameter] = {}
        self._plans: Dict[tuple, tuple] = {}

    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        self._params, self._plans = trainable(model), {}

    def _plan(self, model: nn.Module) -> tuple:
        """(parameters, Omega, theta*) for the penalized parameters that have gradients, built once per task and set
        of parameters with gradients."""
        params = self._params or trainable(model)
        key = tuple(p.grad is not None for p in params.values())
        if key not in self._plans:
            names = [n for (n, p), has in zip(params.items(), key) if has and n in self.omega]
            self._plans[key] = ([params[n] for n in names], [self.omega[n] for n in names],
                                [self.anchor[n] for n in names])
        return self._plans[key]

    @torch.no_grad()
    def on_before_step(self, model: nn.Module) -> None:
        if not self.omega or self.mas_lambda == 0:
            return
        ps, omega, anchor = self._plan(model)
        if ps:  # grad += 2 lambda Omega (theta - theta*): two passes (the difference a new tensor, not a copy
            # subtracted in place; the allocator reuses last step's block)
            diff = torch._foreach_sub(ps, anchor)
            torch._foreach_addcmul_([p.grad for p in ps], diff, omega, value=2.0 * self.mas_lambda)

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        device = next(model.parameters()).device
        batches = iter_task_batches(data, self.importance_batch_size, device, limit=self.importance_samples,
                                    generator=self.generator)
        for n, w in mas_importance(model, batches, head).items():
            self.omega[n] = self.omega[n] + w if n in self.omega else w
        self.anchor = {n: p.detach().clone() for n, p in trainable(model).items()}
        self._plans = {}

    def penalty_value(self, model: nn.Module) -> torch.Tensor:
        """The MAS penalty at the current weights (for reporting; training adds its gradient directly)."""
        params = trainable(model)
        total = torch.zeros((), device=next(model.parameters()).device)
        for n, w in self.omega.items():
            total = total + mas_penalty(params[n], self.anchor[n], w, self.mas_lambda)
        return total

    def state_dict(self):
        return {"hparams": {"mas_lambda": self.mas_lambda, "importance_samples": self.importance_samples,
                            "importance_batch_size": self.importance_batch_size},
                "omega": self.omega, "anchor": self.anchor, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        check_state_keys(self, state, ("hparams", "omega", "anchor", "generator"))
        hp = state["hparams"]
        self.mas_lambda, self.importance_samples = float(hp["mas_lambda"]), int(hp["importance_samples"])
        self.importance_batch_size = int(hp["importance_batch_size"])
        self.generator.set_state(state["generator"].cpu())  # a checkpoint may have moved it to the device
        self.omega = {n: t.clone() for n, t in state["omega"].items()}
        self.anchor = {n: t.clone() for n, t in state["anchor"].items()}
        self._plans, self._params = {}, {}  # rebuilt against the model on the next step
