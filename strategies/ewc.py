"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) with the exact Fisher information diagonal.

Exact Fisher: F_k = mean_n sum_y p(y|x_n) (d log p(y|x_n) / d theta_k)^2 over every label y of the task's head,
never a loop over samples. Two vectorized ways to the same numbers:
- closed form, when every trainable parameter belongs to an nn.Linear applied once per forward (MLPs): the
  per-sample gradient of W is the outer product delta_y a^T (delta_y = d log p_y / d(layer output), a = layer
  input), so sum_y p_y (delta_y a^T)^2 = (sum_y p_y delta_y^2) (a^2)^T: one backward per label to the layer outputs
  and one matrix product per layer;
- otherwise per-sample gradients with torch.func (vmap over jacrev), for any architecture.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from clframework.models import forward_head, takes_head
from clframework.plugin import Strategy, check_state_keys, iter_task_batches, register_strategy, trainable

FISHER_KINDS = ("exact", "empirical")


def _log_probs_fn(model: nn.Module, head: int):
    use_head = takes_head(model)
    buffers = dict(model.named_buffers())

    def log_probs(params, x):
        out = functional_call(model, (params, buffers), (x.unsqueeze(0), head) if use_head else (x.unsqueeze(0),))
        return torch.log_softmax(out, dim=-1).squeeze(0)

    return log_probs


FISHER_METHODS = ("auto", "per-sample")


def _linear_owners(model: nn.Module, names) -> Optional[Dict[str, tuple]]:
    """param name -> (nn.Linear, "weight" | "bias") for every name, or None if one lies outside an nn.Linear."""
    owners = {}
    for mname, m in model.named_modules():
        if isinstance(m, nn.Linear):
            for pname, _ in m.named_parameters(recurse=False):
                owners[f"{mname}.{pname}" if mname else pname] = (m, pname)
    return {n: owners[n] for n in names} if all(n in owners for n in names) else None


class _Taps:
    """Forward hooks that keep each nn.Linear's input and output (and count its calls) during one forward."""

    def __init__(self, modules):
        self.seen: Dict[nn.Module, list] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, inputs, output):
        self.seen.setdefault(module, []).append((inputs[0], output))

    def close(self):
        for h in self.handles:
            h.remove()


def _closed_form_applies(model: nn.Module, modules, x: torch.Tensor, head: int) -> bool:
    """Each tapped Linear runs at most once per forward, on [batch, features] inputs (one probe forward)."""
    taps = _Taps(modules)
    try:
        with torch.no_grad():
            forward_head(model, x[:1], head)
    finally:
        taps.close()
    return all(len(calls) == 1 and calls[0][0].dim() == 2 for calls in taps.seen.values())


def closed_form_plan(model: nn.Module, params, batches, head: int, method: str):
    """(owners, batches): the per-Linear owners when the closed form applies to this model and data (method "auto"),
    else None; the first batch is peeked at to decide and put back. Shared by the exact Fisher and MAS importance."""
    batches = iter(batches)
    first = next(batches, None)
    batches = itertools.chain([first] if first is not None else [], batches)
    owners = _linear_owners(model, params) if method == "auto" and first is not None else None
    if owners is not None and not _closed_form_applies(model, {m for m, _ in owners.values()}, first[0], head):
        owners = None
    return owners, batches


def _linear_fisher_batch(model: nn.Module, modules, x: torch.Tensor, y: torch.Tensor, head: int, kind: str):
    """This batch's summed Fisher per used Linear: {module: (weight term [out, in], bias term [out])}."""
    taps = _Taps(modules)
    try:
        with torch.enable_grad():
            logp = torch.log_softmax(forward_head(model, x, head), dim=-1)
    finally:
        taps.close()
    used = list(taps.seen)
    inputs = [taps.seen[m][0][0].detach() for m in used]
    outputs = [taps.seen[m][0][1] for m in used]
    if kind == "exact":
        prob = logp.detach().exp()
        weighted = [torch.zeros_like(o) for o in outputs]   # sum_y p_y delta_y^2, per sample
        for label in range(logp.shape[-1]):
            deltas = torch.autograd.grad(logp[:, label].sum(), outputs, retain_graph=True)
            for w, d in zip(weighted, deltas):
                w.addcmul_(d.square(), prob[:, label:label + 1])
    else:
        deltas = torch.autograd.grad(logp.gather(1, y.reshape(-1, 1)).sum(), outputs)
        weighted = [d.square() for d in deltas]
    return {m: (w.T @ a.square(), w.sum(0)) for m, w, a in zip(used, weighted, inputs)}


def _linear_fisher(model: nn.Module, owners: Dict[str, tuple], batches, head: int, kind: str, fisher) -> int:
    """Accumulate the closed-form Fisher sums into `fisher`; returns the number of examples."""
    modules = list({m: None for m, _ in owners.values()})
    count = 0
    for x, y in batches:
        terms = _linear_fisher_batch(model, modules, x, y, head, kind)
        for n, (m, pname) in owners.items():
            if m in terms:
                fisher[n] += terms[m][0] if pname == "weight" else terms[m][1]
        count += len(x)
    return count


def fisher_diagonal(model: nn.Module, batches, head: int = 0, kind: str = "exact",
                    memory_mb: int = 256, method: str = "auto") -> Dict[str, torch.Tensor]:
    """Mean over the examples in `batches` of the Fisher diagonal, one tensor per trainable parameter.

    kind="exact": sum over every label weighted by the model's p(y|x); kind="empirical": the true label only.
    method="auto": the per-layer closed form where it applies (see the module docstring), else per-sample
    gradients; "per-sample": always per-sample gradients (torch.func), whatever the layers.
    The model is put in eval mode (no dropout) while the Fisher is computed, as at the end of a task.
    """
    if kind not in FISHER_KINDS:
        raise ValueError(f"unknown Fisher kind {kind!r}; choose one of {FISHER_KINDS}")
    if method not in FISHER_METHODS:
        raise ValueError(f"unknown Fisher method {method!r}; choose one of {FISHER_METHODS}")
    was_training = model.training
    model.eval()
    params = {n: p.detach() for n, p in trainable(model).items()}
    n_params = sum(p.numel() for p in params.values())
    log_probs = _log_probs_fn(model, head)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    try:
        owners, batches = closed_form_plan(model, params, batches, head, method)
        if owners is not None:
            count = _linear_fisher(model, owners, batches, head, kind, fisher)
            batches = ()
        for x, y in batches:
            if kind == "exact":
                with torch.no_grad():
                    n_out = log_probs(params, x[0]).numel()
                per_example = max(1, n_out) * n_params * 4
                chunk = max(1, (memory_mb << 20) // per_example)
                for i in range(0, len(x), chunk):
                    xs = x[i:i + chunk]
                    jac = vmap(jacrev(log_probs), in_dims=(None, 0))(params, xs)  # name -> [B, C, *shape]
                    with torch.no_grad():
                        prob = torch.exp(vmap(log_probs, in_dims=(None, 0))(params, xs))  # [B, C]
                        for n, j in jac.items():
                            fisher[n] += torch.einsum("bc,bc...->...", prob, j.pow(2))
            else:
                def label_log_prob(p, xi, yi):
                    return log_probs(p, xi).gather(0, yi.reshape(1)).squeeze(0)

                chunk = max(1, (memory_mb << 20) // (n_params * 4))
                for i in range(0, len(x), chunk):
                    grads = vmap(torch.func.grad(label_log_prob), in_dims=(None, 0, 0))(params, x[i:i + chunk],
                                                                                          y[i:i + chunk])
                    for n, g in grads.items():
                        fisher[n] += g.pow(2).sum(0)
            count += len(x)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the Fisher needs at least one training example; the task's data were empty")
    return {n: f / count for n, f in fisher.items()}


def ewc_penalty(theta: torch.Tensor, anchors: List[torch.Tensor], fishers: List[torch.Tensor],
                ewc_lambda: float) -> torch.Tensor:
    """(lambda / 2) * sum over past tasks of F_t (theta - theta*_t)^2, for one parameter tensor."""
    return 0.5 * ewc_lambda * sum((f * (theta - a).pow(2)).sum() for a, f in zip(anchors, fishers))


def ewc_penalty_grad(theta: torch.Tensor, fisher_sum: torch.Tensor, fisher_anchor_sum: torch.Tensor,
                     ewc_lambda: float) -> torch.Tensor:
    """Closed-form gradient of `ewc_penalty`: lambda * (sum_t F_t * theta - sum_t F_t theta*_t), cost independent of T."""
    return ewc_lambda * (fisher_sum * theta - fisher_anchor_sum)


_nonneg = (lambda v: v >= 0, "a number >= 0")


@register_strategy("ewc", checks={
    "ewc_lambda": _nonneg,
    "fisher": (lambda v: v in FISHER_KINDS, "'exact' or 'empirical'"),
    "fisher_samples": (lambda v: v >= 0, "an integer >= 0 (0 = all of the task's training inputs)"),
    "gamma": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "fisher_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "fisher_method": (lambda v: v in FISHER_METHODS, "'auto' (closed form for nn.Linear layers) or 'per-sample'"),
})
class EWC(Strategy):
    """EWC with the exact Fisher diagonal: penalty (lambda/2) sum_t F_t (theta - theta*_t)^2.

    online: keep one term, F <- gamma F + F_new, anchored at the latest weights (online EWC).
    fisher: 'exact' (every label, weighted by the model) or 'empirical' (true labels), for comparison.
    fisher_samples: cap on the training inputs used for the Fisher (0 = all): a random subset drawn from a generator
    seeded by the run's seed (torch.initial_seed() when the strategy is made), kept in the checkpoint.
    fisher_method: 'auto' (per-layer closed form where it applies) or 'per-sample' (torch.func); same numbers.
    """

    def __init__(self, ewc_lambda: float = 100.0, fisher: str = "exact", fisher_samples: int = 0,
                 online: bool = False, gamma: float = 1.0, fisher_batch_size: int = 256,
                 fisher_method: str = "auto"):
        if ewc_lambda < 0:
            raise ValueError(f"ewc_lambda must be >= 0, got {ewc_lambda}")
        self.ewc_lambda, self.fisher_kind, self.fisher_samples = float(ewc_lambda), fisher, int(fisher_samples)
        self.online, self.gamma, self.fisher_batch_size = online, float(gamma), int(fisher_batch_size)
        self.fisher_method = fisher_method
        self.generator = torch.Generator().manual_seed(torch.initial_seed())  # draws the fisher_samples subsets
        self.fishers: List[Dict[str, torch.Tensor]] = []   # per past task (one decayed term when online)
        self.anchors: List[Dict[str, torch.Tensor]] = []   # theta*_t
        self.fisher_sum: Dict[str, torch.Tensor] = {}      # sum_t F_t
        self.fisher_anchor_sum: Dict[str, torch.Tensor] = {}  # sum_t F_t theta*_t
        self._params: Dict[str, nn.Parameter] = {}  # this task's trainable parameters
        self._plans: Dict[tuple, tuple] = {}

    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        self._params = trainable(model)
        self._plans = {}

    def _plan(self, model: nn.Module) -> tuple:
        """(parameters, F sums, (F theta*) sums, scratch buffers) for the penalized parameters that have gradients;
        built once per task and set of parameters with gradients (a per-step allocation costs page faults on CPU)."""
        params = self._params or trainable(model)
        key = tuple(p.grad is not None for p in params.values())
        plan = self._plans.get(key)
        if plan is None:
            names = [n for (n, p), has in zip(params.items(), key) if has and n in self.fisher_sum]
            plan = self._plans[key] = ([params[n] for n in names], [self.fisher_sum[n] for n in names],
                                       [self.fisher_anchor_sum[n] for n in names],
                                       [torch.empty_like(params[n]) for n in names])
        return plan

    @torch.no_grad()
    def on_before_step(self, model: nn.Module) -> None:
        if not self.fisher_sum or self.ewc_lambda == 0:
            return
        ps, fisher_sum, fisher_anchor_sum, pen = self._plan(model)
        if ps:  # grad += lambda * (sum_t F_t * theta - sum_t F_t theta*_t); exactly 0 added where theta = theta*,
            # so Adam never turns round-off into steps on weights with no gradient (e.g. always-black pixels)
            torch._foreach_copy_(pen, ps)
            torch._foreach_mul_(pen, fisher_sum)
            torch._foreach_sub_(pen, fisher_anchor_sum)
            torch._foreach_add_([p.grad for p in ps], pen, alpha=self.ewc_lambda)

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        device = next(model.parameters()).device
        batches = iter_task_batches(data, self.fisher_batch_size, device, limit=self.fisher_samples,
                                    generator=self.generator)
        fisher = fisher_diagonal(model, batches, head, self.fisher_kind, method=self.fisher_method)
        anchor = {n: p.detach().clone() for n, p in trainable(model).items()}
        if self.online and self.fishers:
            fisher = {n: f + self.gamma * self.fishers[0].get(n, torch.zeros_like(f)) for n, f in fisher.items()}
            self.fishers, self.anchors = [fisher], [anchor]
        else:
            self.fishers.append(fisher)
            self.anchors.append(anchor)
        self._rebuild_sums()

    def _rebuild_sums(self) -> None:
        self.fisher_sum, self.fisher_anchor_sum = {}, {}
        self._plans = {}
        for fisher, anchor in zip(self.fishers, self.anchors):
            for n, f in fisher.items():
                self.fisher_sum[n] = self.fisher_sum.get(n, 0) + f
                self.fisher_anchor_sum[n] = self.fisher_anchor_sum.get(n, 0) + f * anchor[n]

    def penalty_value(self, model: nn.Module) -> torch.Tensor:
        """The EWC penalty at the current weights (for reporting; training adds its gradient directly)."""
        params = trainable(model)
        total = torch.zeros((), device=next(model.parameters()).device)
        for n in self.fisher_sum:
            total = total + ewc_penalty(params[n], [a[n] for a in self.anchors], [f[n] for f in self.fishers],
                                        self.ewc_lambda)
        return total

    _STATE = ("hparams", "fishers", "anchors", "generator")

    def state_dict(self):
        return {"hparams": {"ewc_lambda": self.ewc_lambda, "fisher": self.fisher_kind,
                            "fisher_samples": self.fisher_samples, "online": self.online, "gamma": self.gamma,
                            "fisher_batch_size": self.fisher_batch_size, "fisher_method": self.fisher_method},
                "fishers": self.fishers, "anchors": self.anchors, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        check_state_keys(self, state, self._STATE)
        hp = state["hparams"]
        self.ewc_lambda, self.fisher_kind, self.fisher_samples = float(hp["ewc_lambda"]), hp["fisher"], \
            int(hp["fisher_samples"])
        self.online, self.gamma, self.fisher_batch_size = bool(hp["online"]), float(hp["gamma"]), \
            int(hp["fisher_batch_size"])
        self.fisher_method = hp["fisher_method"]
        self.generator.set_state(state["generator"].cpu())  # a checkpoint may have moved it to the device
        self.fishers = [{n: t.clone() for n, t in f.items()} for f in state["fishers"]]
        self.anchors = [{n: t.clone() for n, t in a.items()} for a in state["anchors"]]
        self._params = {}  # bound again to the model being trained on the next step
        self._rebuild_sums()
