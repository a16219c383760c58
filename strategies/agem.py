"""Averaged Gradient Episodic Memory (Chaudhry et al. 2019).

Each step, the reference gradient g_ref is the loss gradient on a random sample of an episodic memory of earlier
tasks' examples (filled at each task's end, as replay's memory). When the minibatch's gradient g conflicts with it
(g . g_ref < 0) the update uses the projection of Eq. 11, g - (g . g_ref / g_ref . g_ref) g_ref: the vector nearest g
whose dot product with g_ref is not negative. g and g_ref run over every trainable parameter (zeros where a head
took no part), so replayed examples of earlier heads move those heads too; a parameter neither reached keeps no
gradient (None), as in fine-tuning.

The memory is offered every example of each finished task (reservoir or class-balanced over them all). Mammoth's
A-GEM (models/agem.py at aimagelab/mammoth 7ab9db97, the code behind the DER paper's A-GEM rows) keeps instead one
random batch of memory_size // n_tasks examples of each task: `per_task=k` offers k random examples of each finished
task. The DER protocols (benchmarks/der.py) run the default.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from clframework.models import MultiHeadNet, forward_head
from clframework.plugin import Batch, Strategy, check_state_keys, register_strategy, trainable

from .memory import SELECTIONS, ReplayMemory, add_task_data, stores_raw

Grads = Union[torch.Tensor, Sequence[Optional[torch.Tensor]]]
# g_ref is the gradient of REF_SCALE x the memory's loss: scaling by a power of two is exact and leaves Eq. 11 as it
# is, but a learned memory's gradient (~1e-40, the loss as small) would otherwise be float32 denormals or zeros (75% of
# its entries in a diverged run), its direction lost. 2^48 lifts it 3e14-fold while g_ref . g_ref stays finite in
# float32 until the unscaled gradient's norm passes 65,536 (at 2^64 it overflowed once that norm passed 1: in 354 of
# the 1,504 steps of the bench's A-GEM run, scripts/agem_paths.py, sending conflicts to the slower scaled way).
REF_SCALE = 2.0 ** 48


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """sum_j a_j . b_j over per-parameter tensors (0 when there are none)."""
    if not a:
        return like.new_zeros(())
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]).sum()


def _standing(gs: List[Optional[torch.Tensor]], refs: List[torch.Tensor]) -> List[torch.Tensor]:
    """Eq. 11 without a conflict: g stands, zeros where only g_ref reached (so Adam steps those parameters as it
    would on the projection's zeros)."""
    return [g if g is not None else torch.zeros_like(r) for g, r in zip(gs, refs)]


def _project_unscaled(gs: List[torch.Tensor], refs: List[torch.Tensor], both: List[int]
                      ) -> Optional[List[torch.Tensor]]:
    """Eq. 11 on the CPU (reading a value is no device sync) from g . g_ref and g_ref . g_ref as they are, one
    tensor per g_ref: g itself where the minibatch reached, zeros or the removed component where only g_ref did.
    Without a conflict one pass (the dot product, reading g and g_ref), with one two more (g_ref . g_ref, then
    g - c g_ref written anew); None when float32's range does not make the sign and the ratio trustworthy (a dot
    product or squared norm not finite, or so small that products flushed below the normal range could matter, or
    their ratio beyond float32): then `_project_scaled`."""
    info = torch.finfo(refs[0].dtype)
    safe = sum(r.numel() for r in refs) * info.tiny / info.eps  # every flushed product together < eps of it
    dot = _dot([gs[j] for j in both], [refs[j] for j in both], refs[0]).item()
    if not math.isfinite(dot) or abs(dot) <= safe:
        return None
    if dot > 0:
        return _standing(gs, refs)
    norm2 = torch.stack(torch._foreach_powsum(refs, 2)).sum().item()
    if not safe < norm2 < math.inf or abs(dot) >= norm2 * info.max:  # (the ratio must be a float32 too)
        return None
    scale = dot / norm2
    only = [j for j, g in enumerate(gs) if g is None]
    out = list(gs)
    for j, new in zip(both, torch._foreach_add([gs[j] for j in both], [refs[j] for j in both], alpha=-scale)):
        out[j] = new
    if only:  # where only g_ref reached: the removed component alone
        for j, new in zip(only, torch._foreach_mul([refs[j] for j in only], -scale)):
            out[j] = new
    return out


def _project_scaled(gs: List[torch.Tensor], refs: List[torch.Tensor], both: List[int]) -> List[torch.Tensor]:
    """Eq. 11 for any g_ref, with no host sync where the tensors live on a GPU (no branch). g_ref is first divided by
    its largest |element|, which leaves the projection unchanged: once the memory is learned g_ref can be denormal
    (|g_ref| ~ 1e-40), where g_ref . g_ref underflows to 0 in float32 and the ratio g . g_ref / g_ref . g_ref exceeds
    float32's range even when formed in float64 (inf, and inf * 0 = NaN). Scaled, g_ref . g_ref >= 1 and the
    removed component, of length |g . g_ref| / |g_ref| <= |g|, cannot overflow."""
    # max |element| of g_ref, exact (an element); 10x faster on CPU than _foreach_norm's ord=inf
    peak = torch.stack(torch._foreach_max(torch._foreach_abs(refs))).max()
    unit = torch._foreach_div(refs, torch.where(peak > 0, peak, torch.ones_like(peak)))  # |elements| <= 1
    dot = _dot([gs[j] for j in both], [unit[j] for j in both], peak)
    if dot.device.type == "cpu" and dot.item() >= 0:  # spares the norm and two passes
        return _standing(gs, refs)
    norm2 = torch.stack(torch._foreach_powsum(unit, 2)).sum()
    scale = torch.where(dot < 0, dot / norm2, torch.zeros_like(dot))
    torch._foreach_mul_(unit, -scale)  # the component added to g
    if both:
        torch._foreach_add_([unit[j] for j in both], [gs[j] for j in both])
    return unit


def agem_project(g: Grads, g_ref: Grads) -> Grads:
    """Eq. 11: g when g . g_ref >= 0, else g - (g . g_ref / g_ref . g_ref) g_ref.

    g, g_ref: one tensor each, or equally long lists of per-parameter tensors in which None stands for zeros (a
    parameter the minibatch or the memory sample did not reach); the result has g's form (None where both are).
    On the CPU from the dot products as they are (`_project_unscaled`) where float32's range allows, which is every
    step of a sane training; else, and on a GPU (no host sync), from g_ref divided by its largest |element|
    (`_project_scaled`: finite even for a denormal g_ref)."""
    single = isinstance(g, torch.Tensor)
    gs, rs = ([g], [g_ref]) if single else (list(g), list(g_ref))
    if len(gs) != len(rs):
        raise ValueError(f"agem_project needs one reference gradient per gradient, got {len(rs)} for {len(gs)}")
    live = [i for i, r in enumerate(rs) if r is not None]
    if not live:
        return g
    refs, lives = [rs[i] for i in live], [gs[i] for i in live]
    both = [j for j, t in enumerate(lives) if t is not None]
    new = _project_unscaled(lives, refs, both) if refs[0].device.type == "cpu" else None
    if new is None:
        new = _project_scaled(lives, refs, both)
    out = list(gs)
    for i, t in zip(live, new):
        out[i] = t
    return out[0] if single else out


def grouped_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, groups: Sequence[Tuple[int, int, int]]
                 ) -> torch.Tensor:
    """Mean cross-entropy of the rows [a, b) of x through head h, for each (h, a, b) of `groups` (contiguous rows
    covering x): what `forward_heads` with one head per row gives, but the trunk of a MultiHeadNet runs once and
    each head on its part, with no per-step search for each head's rows (a host sync). The parts come from one
    `split`, whose backward is one concatenation (a slice per head would pad each head's gradient with zeros to the
    whole batch and add them up). Heads of one width: one cross-entropy over the parts' outputs concatenated (the
    same gradient, bit for bit: -1/len(y) at each row's label either way, in fewer operations)."""
    if len(groups) == 1:
        return F.cross_entropy(forward_head(model, x, groups[0][0]), y)
    sizes = [b - a for _, a, b in groups]
    if isinstance(model, MultiHeadNet):
        parts = zip(model.trunk(x).split(sizes), (model.heads[h] for h, _, _ in groups))
        logits = [head(part) for part, head in parts]
    else:
        logits = [forward_head(model, part, h) for part, (h, _, _) in zip(x.split(sizes), groups)]
    if len({out.shape[1:] for out in logits}) == 1:
        return F.cross_entropy(torch.cat(logits), y)
    losses = [F.cross_entropy(out, part, reduction="sum") for out, part in zip(logits, y.split(sizes))]
    return sum(losses[1:], losses[0]) / len(y)


@register_strategy("agem", checks={"memory_size": (lambda v: v >= 1, "an integer >= 1"),
                                   "sample_size": (lambda v: v >= 1, "an integer >= 1"),
                                   "per_task": (lambda v: v >= 0, "an integer >= 0 (0: all of each task)"),
                                   "selection": (lambda v: v in SELECTIONS, "'reservoir' or 'class-balanced'")})
class AGEM(Strategy):
    """A-GEM: project the update when it would increase the loss on a memory sample (Eq. 11).

    memory_size: episodic memory of earlier tasks, examples in all (default 200, as replay); sample_size: examples
    per reference gradient (the paper's 256); selection: 'reservoir' or 'class-balanced'; per_task: examples of each
    finished task offered to the memory, a uniform random subset (0: all; memory_size // n_tasks: Mammoth's variant).
    """

    needs = (("boundaries", "a memory filled with each task's examples at its end"),)

    def __init__(self, memory_size: int = 200, sample_size: int = 256, selection: str = "reservoir",
                 per_task: int = 0):
        if memory_size < 1 or sample_size < 1 or per_task < 0:
            raise ValueError(f"A-GEM needs memory_size >= 1, sample_size >= 1 and per_task >= 0, got {memory_size}, "
                             f"{sample_size}, {per_task}")
        self.sample_size, self.per_task = int(sample_size), int(per_task)
        self.memory = ReplayMemory(memory_size, selection)
        self._params: List[nn.Parameter] = []
        self._prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self._decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # the stored form's decoding
        self._raw = True  # the memory keeps stored examples (see memory.stores_raw)
        self._layout: Optional[dict] = None  # the memory grouped by head, built when first used after it changes

    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        self._params = list(trainable(model).values())

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        self._prepare = batch.prepare  # the memory holds stored examples: decoded (and augmented) like this minibatch
        self._raw = stores_raw(batch)
        return batch

    def _laid_out(self) -> dict:
        """The memory's rows ordered by head (stable), each head's (head, start, end), and each stored row's place
        (`rank`). The memory changes only at a task's end, so its decoding is done once here when the minibatches'
        `prepare` is that decoding alone (no augmentation, which stays per step) or there is none."""
        if self._layout is None:
            flat = self.memory.stored()
            head = flat["head"]
            order = torch.argsort(head, stable=True)
            heads, counts = torch.unique_consecutive(head[order], return_counts=True)
            ends = counts.cumsum(0).tolist()  # once per task
            x = flat["x"][order]
            decoded = self._prepare is None or self._prepare == self._decode
            self._layout = {"x": x if self._prepare is None or not decoded else self._prepare(x),
                            "y": flat["y"][order], "decoded": decoded,
                            "groups": [(h, e - c, e) for h, c, e in zip(heads.tolist(), counts.tolist(), ends)],
                            "starts": counts.cumsum(0) - counts,
                            "rank": torch.empty_like(order).scatter_(0, order, torch.arange(len(order),
                                                                                            device=order.device))}
        return self._layout

    def _reference_batch(self) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int, int]]]:
        """The memory sample of this step as model inputs, labels and head groups: the whole memory when
        sample_size >= its size (no draw), else min(sample_size, len) rows drawn uniformly (memory.draw_rows), put
        in head order (the mean loss does not depend on the order)."""
        lay = self._laid_out()
        x, y, groups = lay["x"], lay["y"], lay["groups"]
        if self.sample_size < len(y):
            rows = lay["rank"][self.memory.draw_rows(self.sample_size)].sort().values
            bounds = torch.searchsorted(rows, lay["starts"]).tolist() + [len(rows)]  # a host sync: each head's rows
            groups = [(h, a, b) for (h, _, _), a, b in zip(groups, bounds, bounds[1:]) if b > a]
            x, y = x[rows], y[rows]
        if not lay["decoded"]:
            x = self._prepare(x)
        return x, y, groups

    def on_before_step(self, model: nn.Module) -> None:
        if not len(self.memory):
            return
        params = self._params or list(trainable(model).values())
        x, y, groups = self._reference_batch()
        with torch.enable_grad():
            loss = grouped_loss(model, x, y, groups)
            ref = torch.autograd.grad(loss, params, loss.new_full((), REF_SCALE), allow_unused=True)
        with torch.no_grad():
            projected = agem_project([p.grad for p in params], ref)
        for p, new in zip(params, projected):
            p.grad = new

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        add_task_data(self.memory, model, data, head, raw=self._raw, limit=self.per_task)
        self._decode, self._layout = getattr(data, "decode", None), None

    def state_dict(self) -> Dict[str, object]:
        return {"hparams": {"memory_size": self.memory.size, "sample_size": self.sample_size,
                            "selection": self.memory.selection, "per_task": self.per_task},
                "memory": self.memory.state_dict()}

    def load_state_dict(self, state) -> None:
        check_state_keys(self, state, ("hparams", "memory"))
        self.sample_size = int(state["hparams"]["sample_size"])
        self.per_task = int(state["hparams"].get("per_task", 0))  # (checkpoints of older versions had none)
        self.memory.load_state_dict(state["memory"])
        self._params, self._layout = [], None  # taken from the model on the next step (resuming skips on_task_start)
