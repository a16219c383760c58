"""iCaRL (Rebuffi et al., CVPR 2017): herding exemplars, sigmoid distillation, nearest-mean-of-exemplars prediction.

- Exemplars: a fixed total memory re-divided as classes arrive (memory_size // classes seen per class). Each new
  class's exemplars are chosen by herding on L2-normalized features (`herding`); an old class keeps the first ones of
  its herding order (iCaRL's reduction).
- Training: each task trains on its own data joined by the exemplars (`task_data`, as the authors' and Mammoth's
  code do), with a sigmoid binary cross-entropy over every output of the head; the targets of earlier classes are the
  previous model's sigmoid outputs on the same inputs (distillation), the others one-hot (classes not seen yet: 0).
  Every step adds `wd_reg * sum(theta^2)` over all parameters (Mammoth's iCaRL weight penalty, always on; for plain
  SGD the same step as an optimizer weight decay of 2 * wd_reg).
- Prediction (`eval_model`): the nearest class mean of the exemplars' normalized features (`nme_scores`), each mean
  averaged with the exemplars' horizontal flips where `flip_means` (the authors' and Mammoth's code, for protocols
  that train with flips). Computed in eval mode: scoring leaves the model's parameters and BatchNorm statistics as
  they were.
Reference: Mammoth models/icarl.py and utils/buffer.py (fill_buffer) at e75a491c; docs/fidelity.md lists where the
DER paper's commit 7ab9db97 differs. Class-incremental only (one head holding every class). Features come from
`models.penultimate`.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clframework.models import forward_head, penultimate
from clframework.plugin import Batch, Strategy, check_state_keys, register_need, register_strategy

from .cumulative import union_data


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of m rows chosen greedily (without repetition): each makes the mean of the chosen rows nearest the mean
    of all rows. `features`: L2-normalized, one row per example of one class."""
    mu = features.mean(0)
    chosen, total = [], torch.zeros_like(mu)
    free = torch.ones(len(features), dtype=torch.bool, device=features.device)
    for k in range(1, min(m, len(features)) + 1):
        dist = (mu - (total + features) / k).norm(dim=1).masked_fill(~free, float("inf"))
        i = int(dist.argmin())
        chosen.append(i)
        free[i] = False
        total = total + features[i]
    return torch.tensor(chosen, dtype=torch.long)


def nme_scores(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Minus the distance of each normalized feature row to each (normalized) class mean: the largest score is the
    nearest mean."""
    return -torch.cdist(F.normalize(features, dim=1), F.normalize(means, dim=1))


def icarl_targets(y: torch.Tensor, width: int, n_past: int, old_logits: Optional[torch.Tensor]) -> torch.Tensor:
    """BCE targets over `width` outputs: one-hot labels, the first n_past replaced by sigmoid(old logits)."""
    targets = F.one_hot(y, width).to(torch.float32)
    if old_logits is not None and n_past:
        targets[:, :n_past] = torch.sigmoid(old_logits[:, :n_past])
    return targets


def class_means(features, exemplars: Dict[int, torch.Tensor], n_classes: int, flip: bool) -> torch.Tensor:
    """One row per class: the mean of its exemplars' L2-normalized features (`features(x)`), with `flip` averaged
    with the mean over the exemplars flipped horizontally (last dimension), as Mammoth's compute_class_means."""
    means = []
    for c in range(n_classes):
        mean = features(exemplars[c]).mean(0)
        if flip:
            mean = (mean + features(exemplars[c].flip(-1)).mean(0)) / 2
        means.append(mean)
    return torch.stack(means)


class NearestMeanOfExemplars(nn.Module):
    """The model scored by iCaRL: -distance to each seen class's exemplar mean (-inf for classes not seen yet). The
    model always runs in eval mode here, and switching this scorer's mode never switches the model's."""

    def __init__(self, model: nn.Module, means: torch.Tensor, width: int):
        super().__init__()
        self.model, self.width = model, width
        self.register_buffer("means", means)  # kept in state_dict: a loaded run predicts with the run's own means

    def train(self, mode: bool = True) -> "NearestMeanOfExemplars":
        """Sets this scorer's mode only: the model's stays as the trainer left it (the forward runs it in eval)."""
        self.training = mode
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        model = self.model
        was_training = model.training
        model.eval()
        scores = nme_scores(penultimate(model, x), self.means)
        model.train(was_training)
        out = scores.new_full((len(x), self.width), float("-inf"))
        out[:, :scores.shape[1]] = scores
        return out


def exemplar_per_class(model: nn.Module, stream, memory_size: int) -> Optional[str]:
    """iCaRL's need of at least one exemplar per class the stream holds, checked before training (task_data finds it
    only when the task that passes the memory's size starts, after the earlier tasks trained)."""
    n = sum(len(t.classes) for t in stream.tasks)
    if memory_size >= n:
        return None
    return (f"at least one exemplar per class: memory_size ({memory_size}) must be >= the stream's {n} classes "
            f"(--set memory_size={n} or more)")


register_need("exemplar-per-class", exemplar_per_class)


@register_strategy("icarl", checks={"memory_size": (lambda v: v >= 1, "an integer >= 1"),
                                    "wd_reg": (lambda v: v >= 0, "a number >= 0")},
                   description="iCaRL: herding exemplars, sigmoid distillation, nearest-mean-of-exemplars prediction")
class ICaRL(Strategy):
    """iCaRL. memory_size: exemplars in all, re-divided equally over the classes seen; wd_reg: the weight penalty's
    factor (Mammoth's `opt_wd`, default 1e-5); flip_means: class means averaged with the exemplars' flips."""

    needs = ("class-setting", "head-argument", "features",
             ("boundaries", "exemplars chosen and the old model frozen at each task's end"))

    def __init__(self, memory_size: int = 200, minibatch_size: int = 10, wd_reg: float = 1e-5,
                 flip_means: bool = False):
        if memory_size < 1:
            raise ValueError(f"iCaRL needs memory_size >= 1, got {memory_size}")
        self.memory_size = int(memory_size)
        self.needs = (*ICaRL.needs, ("exemplar-per-class", self.memory_size))  # by its settings: check_needs
        self.wd_reg, self.flip_means = float(wd_reg), bool(flip_means)
        self.minibatch_size = int(minibatch_size)  # kept for the published settings' record; exemplars join the task
        self.exemplars: Dict[int, torch.Tensor] = {}  # class -> stored inputs, in herding order
        self.n_seen = self.n_past = 0
        self.old_state: Optional[dict] = None  # the previous task's model (parameters and buffers)
        self._old: Optional[nn.Module] = None
        self._current = None

    def task_data(self, stream, task_index: int):
        if stream.setting != "class":
            raise ValueError(f"icarl is class-incremental: it needs one head over every class (--setting class), "
                             f"got the {stream.setting} setting")
        if self.flip_means and len(stream.input_shape) != 3:
            raise ValueError(f"icarl's flip_means flips images [channels, height, width]; the stream's inputs have "
                             f"shape {tuple(stream.input_shape)}: set flip_means=false")
        self._current = stream.tasks[task_index]
        self.n_seen = sum(len(t.classes) for t in stream.tasks[:task_index + 1])
        self.n_past = self.n_seen - len(self._current.classes)
        if self.memory_size < self.n_seen:
            raise ValueError(f"icarl keeps at least one exemplar per class: memory_size ({self.memory_size}) must be "
                             f">= the {self.n_seen} classes seen by task {task_index + 1}")
        if not self.exemplars:
            return self._current
        xs = [self.exemplars[c] for c in sorted(self.exemplars)]
        ys = [torch.full((len(x),), c, dtype=torch.long) for c, x in sorted(self.exemplars.items())]
        return union_data(self._current, torch.cat(xs).to(self._current.train_x.device), torch.cat(ys))

    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        self._old = None
        self.old_state = None if task_index == 0 else copy.deepcopy(model.state_dict())

    def _old_model(self, model: nn.Module) -> Optional[nn.Module]:
        if self.old_state is not None and self._old is None:
            self._old = copy.deepcopy(model).eval()
            self._old.load_state_dict(self.old_state)
            for p in self._old.parameters():
                p.requires_grad_(False)
        return self._old

    def task_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        old = self._old_model(model)
        old_logits = None
        if old is not None:
            with torch.no_grad():
                old_logits = old(batch.x, 0)
        targets = icarl_targets(batch.y, batch.out.shape[1], self.n_past, old_logits)
        return F.binary_cross_entropy_with_logits(batch.out, targets)

    def penalty(self, model: nn.Module):
        if not self.wd_reg:
            return 0.0
        return self.wd_reg * torch.stack([p.pow(2).sum() for p in model.parameters()]).sum()

    @torch.no_grad()
    def _features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        return torch.cat([F.normalize(penultimate(model, x[i:i + 1024].to(device)), dim=1)
                          for i in range(0, len(x), 1024)])

    def on_task_end(self, model: nn.Module, data, head: int = 0) -> None:
        task = self._current
        per_class = self.memory_size // max(self.n_seen, 1)
        self.exemplars = {c: x[:per_class] for c, x in self.exemplars.items()}
        was_training = model.training
        model.eval()
        for c in task.train_y.unique().tolist():
            x = task.train_x[task.train_y == c]
            self.exemplars[int(c)] = x[herding(self._features(model, x), per_class)].clone()
        model.train(was_training)

    @torch.no_grad()
    def eval_model(self, model: nn.Module) -> nn.Module:
        """The nearest-mean scorer; every forward here runs in eval mode, so no BatchNorm statistic moves."""
        if not self.exemplars:
            return model
        was_training = model.training
        model.eval()
        means = class_means(lambda x: self._features(model, x), self.exemplars, self.n_seen, self.flip_means)
        width = forward_head(model, self.exemplars[0][:1].to(means.device), 0).shape[1]
        model.train(was_training)
        return NearestMeanOfExemplars(model, means, width)

    def state_dict(self):
        return {"hparams": {"memory_size": self.memory_size, "minibatch_size": self.minibatch_size,
                            "wd_reg": self.wd_reg, "flip_means": self.flip_means},
                "exemplars": {str(c): x for c, x in self.exemplars.items()}, "n_seen": self.n_seen,
                "n_past": self.n_past, "old_state": self.old_state}

    def load_state_dict(self, state):
        check_state_keys(self, state, ("hparams", "exemplars", "n_seen", "n_past", "old_state"))
        hp = state["hparams"]
        self.memory_size = int(hp["memory_size"])
        self.wd_reg, self.flip_means = float(hp.get("wd_reg", self.wd_reg)), bool(hp.get("flip_means", self.flip_means))
        self.exemplars = {int(c): x.clone() for c, x in state["exemplars"].items()}
        self.n_seen, self.n_past = int(state["n_seen"]), int(state["n_past"])
        self.old_state, self._old = state["old_state"], None
