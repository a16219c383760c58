"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) with the exact Fisher information diagonal.

Exact Fisher: F_k = mean_n sum_y p(y|x_n) (d log p(y|x_n) / d theta_k)^2 over every label y of the task's head,
never a loop over samples. Two vectorized ways to the same numbers:
- closed form, when every trainable parameter belongs to an nn.Linear applied once per forward (MLPs): the
  per-sample gradient of W is the outer product delta_y a^T (delta_y = d log p_y / d(layer output), a = layer
  input), so sum_y p_y (delta_y a^T)^2 = (sum_y p_y delta_y^2) (a^2)^T, and sum_y p_y delta_y^2 comes from backward
  passes of a few vectors at the logits (`fisher_seeds`: one for two classes, else one batched backward), then one
  matrix product per layer;
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


def fisher_seeds(prob: torch.Tensor) -> torch.Tensor:
    """[K, N, C] vectors v_k per example with sum_k v_k v_k^T = diag(p) - p p^T, the covariance of the gradient of
    log p_y at the logits (e_y - p) under y ~ p: then sum_y p_y delta_y^2 = sum_k (J^T v_k)^2 for any backward J^T,
    K backward passes. Two classes: one vector, sqrt(p_0 p_1) (1, -1); otherwise sqrt(p_y) (e_y - p) for each y."""
    if prob.shape[-1] == 2:
        return ((prob[:, :1] * prob[:, 1:]).sqrt() * prob.new_tensor([1.0, -1.0])).unsqueeze(0)
    eye = torch.eye(prob.shape[-1], dtype=prob.dtype, device=prob.device)
    return prob.T.sqrt().unsqueeze(-1) * (eye.unsqueeze(1) - prob.unsqueeze(0))


def tapped_forward(model: nn.Module, modules, x: torch.Tensor, head: int):
    """(outputs of the head, used Linears, their inputs (detached), their outputs): one forward pass with gradients
    that keeps what the per-Linear closed forms need."""
    taps = _Taps(modules)
    try:
        with torch.enable_grad():
            out = forward_head(model, x, head)
    finally:
        taps.close()
    used = list(taps.seen)
    return out, used, [taps.seen[m][0][0].detach() for m in used], [taps.seen[m][0][1] for m in used]


def per_example_chunks(n: int, bytes_per_example: int, memory_mb: int):
    """Consecutive slices of n examples whose per-example gradients (bytes_per_example each) fit in memory_mb."""
    chunk = max(1, (memory_mb << 20) // max(1, bytes_per_example))
    return (slice(i, i + chunk) for i in range(0, n, chunk))


def mean_over_examples(model: nn.Module, batches, head: int, method: str, closed_form, per_example,
                       what: str) -> Dict[str, torch.Tensor]:
    """Mean over the examples of `batches` of a per-example quantity, one tensor per trainable parameter; each
    batch's sums come from `closed_form(model, modules, x, y, head)` -> {Linear: (weight term, bias term)} where the
    nn.Linear closed form applies (method "auto", `closed_form_plan`), else from `per_example(model, params, x, y,
    head)` -> {name: term}. The model is in eval mode (no dropout) meanwhile, as at the end of a task. Shared by the
    exact Fisher and MAS importance."""
    was_training = model.training
    model.eval()
    params = {n: p.detach() for n, p in trainable(model).items()}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    try:
        owners, batches = closed_form_plan(model, params, batches, head, method)
        modules = list({m: None for m, _ in owners.values()}) if owners is not None else []
        for x, y in batches:
            if owners is None:
                terms = per_example(model, params, x, y, head)
            else:
                by_module = closed_form(model, modules, x, y, head)
                terms = {n: by_module[m][0 if pname == "weight" else 1] for n, (m, pname) in owners.items()
                         if m in by_module}
            for n, t in terms.items():
                total[n] += t
            count += len(x)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"{what} needs at least one training example; the task's data were empty")
    return {n: t / count for n, t in total.items()}


def _linear_fisher_batch(model: nn.Module, modules, x: torch.Tensor, y: torch.Tensor, head: int, kind: str):
    """This batch's summed Fisher per used Linear: {module: (weight term [out, in], bias term [out])}."""
    logits, used, inputs, outputs = tapped_forward(model, modules, x, head)
    if kind == "exact":  # sum_y p_y delta_y^2 per sample, from the backward passes of fisher_seeds at the logits
        seeds = fisher_seeds(torch.softmax(logits.detach(), dim=-1))
        if len(seeds) == 1:
            weighted = [d.square() for d in torch.autograd.grad(logits, outputs, seeds[0])]
        else:  # every seed in one batched backward
            deltas = torch.autograd.grad(logits, outputs, seeds, is_grads_batched=True)
            weighted = [d.square().sum(0) for d in deltas]
    else:
        logp = torch.log_softmax(logits, dim=-1)
        deltas = torch.autograd.grad(logp.gather(1, y.reshape(-1, 1)).sum(), outputs)
        weighted = [d.square() for d in deltas]
    return {m: (w.T @ a.square(), w.sum(0)) for m, w, a in zip(used, weighted, inputs)}


def _per_sample_fisher_batch(model: nn.Module, params, x: torch.Tensor, y: torch.Tensor, head: int, kind: str,
                             memory_mb: int) -> Dict[str, torch.Tensor]:
    """This batch's summed Fisher per parameter from per-sample gradients (torch.func), in chunks that fit
    memory_mb."""
    log_probs = _log_probs_fn(model, head)
    n_params = sum(p.numel() for p in params.values())
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    if kind == "exact":
        with torch.no_grad():
            n_out = log_probs(params, x[0]).numel()
        for rows in per_example_chunks(len(x), max(1, n_out) * n_params * 4, memory_mb):
            xs = x[rows]
            jac = vmap(jacrev(log_probs), in_dims=(None, 0))(params, xs)  # name -> [B, C, *shape]
            with torch.no_grad():
                prob = torch.exp(vmap(log_probs, in_dims=(None, 0))(params, xs))  # [B, C]
                for n, j in jac.items():
                    sums[n] += torch.einsum("bc,bc...->...", prob, j.pow(2))
        return sums

    def label_log_prob(p, xi, yi):
        return log_probs(p, xi).gather(0, yi.reshape(1)).squeeze(0)

    for rows in per_example_chunks(len(x), n_params * 4, memory_mb):
        grads = vmap(torch.func.grad(label_log_prob), in_dims=(None, 0, 0))(params, x[rows], y[rows])
        for n, g in grads.items():
            sums[n] += g.pow(2).sum(0)
    return sums


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
    return mean_over_examples(
        model, batches, head, method,
        lambda m, modules, x, y, h: _linear_fisher_batch(m, modules, x, y, h, kind),
        lambda m, params, x, y, h: _per_sample_fisher_batch(m, params, x, y, h, kind, memory_mb), "the Fisher")


def ewc_penalty(theta: torch.Tensor, anchors: List[torch.Tensor], fishers: List[torch.Tensor],
                ewc_lambda: float) -> torch.Tensor:
    """(lambda / 2) * sum over past tasks of F_t (theta - theta*_t)^2, for one parameter tensor."""
    return 0.5 * ewc_lambda * sum((f * (theta - a).pow(2)).sum() for a, f in zip(anchors, fishers))


def weighted_anchor(fishers: List[torch.Tensor], anchors: List[torch.Tensor], fisher_sum: torch.Tensor
                    ) -> torch.Tensor:
    """The Fisher-weighted mean of the anchors, sum_t F_t theta*_t / sum_t F_t: the centre of the summed penalty,
    sum_t F_t (theta - theta*_t) = (sum_t F_t) (theta - centre), so its gradient costs two passes whatever the number
    of tasks. Formed as the latest anchor plus sum_t F_t (theta*_t - theta*_T) / sum_t F_t, so that it is the latest
    anchor exactly wherever the anchors of the tasks with F_t > 0 agree (one task; a weight that no later task moved,
    e.g. on a pixel black in their data): there the hook adds exactly 0 (as a quotient F theta* / F would not: it
    misses theta* by an ulp in about 10% of random float32 pairs). Where sum_t F_t is 0 or subnormal the penalty is
    flat or negligible, and the centre only kept finite."""
    latest = anchors[-1]
    offset = torch.zeros_like(latest)
    for f, a in zip(fishers[:-1], anchors[:-1]):
        offset.addcmul_(f, a - latest)
    return latest + offset / fisher_sum.clamp_min(torch.finfo(fisher_sum.dtype).tiny)


def ewc_penalty_grad(theta: torch.Tensor, fisher_sum: torch.Tensor, centre: torch.Tensor,
                     ewc_lambda: float) -> torch.Tensor:
    """Closed-form gradient of `ewc_penalty`: lambda * (sum_t F_t) (theta - centre), centre the `weighted_anchor`."""
    return ewc_lambda * fisher_sum * (theta - centre)


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
    fisher_batch_size: examples per pass of the Fisher (the per-sample path cuts them to fit 256 MB); 1024 keeps the
    closed form's matrix products long enough that per-operation overhead does not dominate on a CPU.
    """

    needs = (("boundaries", "a Fisher and an anchor computed at each task's end"),)

    def __init__(self, ewc_lambda: float = 100.0, fisher: str = "exact", fisher_samples: int = 0,
                 online: bool = False, gamma: float = 1.0, fisher_batch_size: int = 1024,
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
        self.centre: Dict[str, torch.Tensor] = {}          # sum_t F_t theta*_t / sum_t F_t (weighted_anchor)
        self._params: Dict[str, nn.Parameter] = {}  # this task's trainable parameters
        self._plans: Dict[tuple, tuple] = {}

    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        self._params = trainable(model)
        self._plans = {}

    def _plan(self, model: nn.Module) -> tuple:
        """(parameters, F sums, centres) for the penalized parameters that have gradients; built once per task and
        set of parameters with gradients."""
        params = self._params or trainable(model)
        key = tuple(p.grad is not None for p in params.values())
        plan = self._plans.get(key)
        if plan is None:
            names = [n for (n, p), has in zip(params.items(), key) if has and n in self.fisher_sum]
            plan = self._plans[key] = ([params[n] for n in names], [self.fisher_sum[n] for n in names],
                                       [self.centre[n] for n in names])
        return plan

    @torch.no_grad()
    def on_before_step(self, model: nn.Module) -> None:
        if not self.fisher_sum or self.ewc_lambda == 0:
            return
        ps, fisher_sum, centre = self._plan(model)
        if ps:  # grad += lambda (sum_t F_t) (theta - centre), as MAS: two passes (the difference a new tensor, the
            # allocator reusing last step's block). Exactly 0 is added where theta = centre (theta* wherever the tasks
            # with a Fisher agree on it: weighted_anchor) or sum_t F_t = 0, so Adam never turns round-off into steps
            # on weights with no gradient (always-black pixels)
            diff = torch._foreach_sub(ps, centre)
            torch._foreach_addcmul_([p.grad for p in ps], diff, fisher_sum, value=self.ewc_lambda)

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
        """sum_t F_t and the centres (`weighted_anchor`) of the penalized parameters."""
        self._plans = {}
        self.fisher_sum, self.centre = {}, {}
        for fisher in self.fishers:
            for n, f in fisher.items():
                self.fisher_sum[n] = self.fisher_sum.get(n, 0) + f
        for n, total in self.fisher_sum.items():
            terms = [(f[n], a[n]) for f, a in zip(self.fishers, self.anchors) if n in f]
            self.centre[n] = weighted_anchor([f for f, _ in terms], [a for _, a in terms], total)

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
