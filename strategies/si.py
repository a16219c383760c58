"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017), Eq. 3-5 of the paper.

The mathematics is in the pure functions below; the `SI` class only keeps their state per parameter, and its
per-step bookkeeping runs as a handful of fused `torch._foreach_*` operations over all parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from clframework.plugin import Strategy, check_state_keys, register_strategy, trainable


def path_integral_step(grad: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Eq. 3, one step: the contribution -g * delta of an update from `before` to `after` with gradient `grad`."""
    return -grad * (after - before)


def importance(omega: torch.Tensor, delta: torch.Tensor, xi: float) -> torch.Tensor:
    """Eq. 5: the per-parameter penalty strength a finished task adds, omega / (Delta^2 + xi)."""
    return omega / (delta.pow(2) + xi)


def surrogate_penalty(theta: torch.Tensor, reference: torch.Tensor, strength: torch.Tensor, c: float) -> torch.Tensor:
    """Eq. 4: c * sum Omega (theta_ref - theta)^2 (no 1/2)."""
    return c * (strength * (reference - theta).pow(2)).sum()


def surrogate_penalty_grad(theta: torch.Tensor, reference: torch.Tensor, strength: torch.Tensor,
                           c: float) -> torch.Tensor:
    """Closed-form gradient of `surrogate_penalty` with respect to theta: 2 c Omega (theta - theta_ref)."""
    return 2.0 * c * strength * (theta - reference)


@dataclass
class _StepPlan:
    """Aligned lists for one step: parameters with gradients, their omega and snapshot buffers, and the penalized
    subset with its strengths and Omega * theta_ref. The snapshot buffers are allocated once per task."""

    params: List[torch.Tensor]
    omega: List[torch.Tensor]
    before: List[torch.Tensor]
    pen_params: List[torch.Tensor]
    pen_index: List[int]           # their positions in `params`
    pen_Omega: List[torch.Tensor]
    pen_Omega_ref: List[torch.Tensor]  # Omega * theta_ref, fixed during a task: the penalty's gradient in two passes


_nonneg = (lambda v: v >= 0, "a number >= 0")
_pos = (lambda v: v > 0, "a number > 0")


@register_strategy("si", checks={"c": _nonneg, "xi": _pos})
class SI(Strategy):
    """Synaptic Intelligence: path-integral importance, quadratic surrogate penalty (paper defaults c=1, xi=1e-3).

    clamp: clamp the accumulated Omega at zero after each task, as the paper's own code does.
    omega_from_total_loss: accumulate omega from the regularized loss's gradient (as other libraries do) instead
    of the task loss's (the paper's Eq. 3).
    """

    needs = (("boundaries", "importances consolidated at each task's end"),)

    def __init__(self, c: float = 1.0, xi: float = 1e-3, clamp: bool = True, omega_from_total_loss: bool = False):
        if c < 0 or xi < 0:
            raise ValueError(f"SI needs c >= 0 and xi >= 0, got c={c}, xi={xi}")
        self.c, self.xi, self.clamp, self.omega_from_total_loss = float(c), float(xi), clamp, omega_from_total_loss
        self.Omega: Dict[str, torch.Tensor] = {}       # consolidated penalty strength
        self.reference: Dict[str, torch.Tensor] = {}   # theta_tilde: weights at the end of the previous task
        self.omega: Dict[str, torch.Tensor] = {}       # running path integral of the current task
        self.task_start: Dict[str, torch.Tensor] = {}  # weights at the start of the current task
        self.omega_history: List[Dict[str, torch.Tensor]] = []  # each finished task's omega, for analysis (Fig. 5)
        self._step: tuple = ()  # (plan, task-loss gradients) of the step in flight
        self._penalized: List[str] = []  # parameters with a non-zero Omega
        self._params: Dict[str, nn.Parameter] = {}  # this task's trainable parameters (fixed during a task)
        self._plans: Dict[tuple, _StepPlan] = {}    # per set of parameters that receive gradients

    # -- hooks ----------------------------------------------------------------------------------------------------
    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        self._params = trainable(model)
        for name, p in self._params.items():
            if name not in self.reference:  # a parameter seen for the first time (e.g. a new head)
                self.reference[name] = p.detach().clone()
                self.Omega[name] = torch.zeros_like(p)
            self.task_start[name] = p.detach().clone()
            self.omega[name] = torch.zeros_like(p)
        self._penalized = [n for n in self.Omega if bool(self.Omega[n].any())] if self.c > 0 else []
        self._plans = {}

    def _plan(self, model: nn.Module) -> "_StepPlan":
        """The step's tensor lists, built once per task for each set of parameters that get gradients (in a
        multi-head model: the trunk and the task's head), so a step costs a few fused in-place ops and no
        allocations."""
        if not self._params:  # state loaded in the middle of a task: bind to the model being trained
            self._params = trainable(model)
        key = tuple(p.grad is not None for p in self._params.values())
        plan = self._plans.get(key)
        if plan is None:
            names = [n for (n, p), has in zip(self._params.items(), key) if has and n in self.omega]
            pen = [n for n in self._penalized if n in names]
            plan = self._plans[key] = _StepPlan(
                params=[self._params[n] for n in names], omega=[self.omega[n] for n in names],
                before=[torch.empty_like(self._params[n]) for n in names],
                pen_params=[self._params[n] for n in pen], pen_index=[names.index(n) for n in pen],
                pen_Omega=[self.Omega[n] for n in pen],
                pen_Omega_ref=[self.Omega[n] * self.reference[n] for n in pen])
        return plan

    @torch.no_grad()
    def on_before_step(self, model: nn.Module) -> None:
        plan = self._plan(model)
        if not plan.params:
            self._step = ()
            return
        torch._foreach_copy_(plan.before, plan.params)
        task_grads = [p.grad for p in plan.params]
        if plan.pen_params:
            pen_grads = [p.grad for p in plan.pen_params]
            # g + 2c (Omega theta - Omega theta_ref), Eq. 4's gradient without forming theta - theta_ref
            if self.omega_from_total_loss:  # in place: omega integrates the gradient the optimizer uses
                total = pen_grads
                torch._foreach_addcmul_(total, plan.pen_Omega, plan.pen_params, value=2.0 * self.c)
            else:  # a new tensor becomes .grad and task_grads keep the task loss's (Eq. 3), with no copy of it
                total = torch._foreach_addcmul(pen_grads, plan.pen_Omega, plan.pen_params, value=2.0 * self.c)
                for p, g in zip(plan.pen_params, total):
                    p.grad = g
            torch._foreach_add_(total, plan.pen_Omega_ref, alpha=-2.0 * self.c)
        self._step = (plan, task_grads)

    @torch.no_grad()
    def on_after_step(self, model: nn.Module) -> None:
        if not self._step:
            return
        plan, grads = self._step
        torch._foreach_sub_(plan.before, plan.params)            # before - after = -delta
        torch._foreach_addcmul_(plan.omega, grads, plan.before)  # omega += -g * delta
        self._step = ()

    def on_task_end(self, model: nn.Module, data=None, head: int = 0) -> None:
        self.omega_history.append({n: w.detach().cpu().clone() for n, w in self.omega.items()})
        for name, p in trainable(model).items():
            if name not in self.omega:
                continue
            theta = p.detach()
            self.Omega[name] += importance(self.omega[name], theta - self.task_start[name], self.xi)
            if self.clamp:
                self.Omega[name].clamp_(min=0.0)
            self.reference[name] = theta.clone()
            self.omega[name].zero_()

    def penalty_value(self, model: nn.Module) -> torch.Tensor:
        """The surrogate loss of Eq. 4 at the current weights (for reporting; training adds its gradient directly)."""
        params = trainable(model)
        total = torch.zeros((), device=next(model.parameters()).device)
        for name, strength in self.Omega.items():
            total = total + surrogate_penalty(params[name], self.reference[name], strength, self.c)
        return total

    # -- state ----------------------------------------------------------------------------------------------------
    _STATE = ("hparams", "Omega", "reference", "omega", "task_start", "omega_history")

    def state_dict(self):
        return {"hparams": {"c": self.c, "xi": self.xi, "clamp": self.clamp,
                            "omega_from_total_loss": self.omega_from_total_loss},
                "Omega": self.Omega, "reference": self.reference, "omega": self.omega, "task_start": self.task_start,
                "omega_history": self.omega_history}

    def load_state_dict(self, state):
        check_state_keys(self, state, self._STATE)
        hp = state["hparams"]
        self.c, self.xi, self.clamp = float(hp["c"]), float(hp["xi"]), bool(hp["clamp"])
        self.omega_from_total_loss = bool(hp["omega_from_total_loss"])
        for key in ("Omega", "reference", "omega", "task_start"):
            setattr(self, key, {n: t.clone() for n, t in state[key].items()})
        self.omega_history = [dict(h) for h in state["omega_history"]]
        # the step lists pointed at the replaced tensors; they are rebuilt against the model on the next step
        self._plans, self._step, self._params = {}, (), {}
        self._penalized = [n for n in self.Omega if bool(self.Omega[n].any())] if self.c > 0 else []
