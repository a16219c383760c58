"""Any clframework strategy as an Avalanche 0.6 plugin (optional extra: `pip install clframework[avalanche]`).

    from avalanche.training import Naive
    from clframework import make_strategy
    from clframework.avalanche import AvalanchePlugin, as_multitask_module

    model = as_multitask_module(mlp(784, [2] * 5))      # or any Avalanche MultiTaskModule / plain nn.Module
    cl = Naive(model=model, optimizer=..., plugins=[AvalanchePlugin(make_strategy("si", c=1.0))])

Our hooks map onto Avalanche's callbacks:

| clframework hook | Avalanche callback |
|---|---|
| `on_task_start(model, task_index)` | `before_training_exp` |
| `on_before_forward(model, Batch(mb_x, mb_y, head))` (a larger minibatch replaces `strategy.mbatch`) | `before_forward` |
| `loss_term(model, Batch(mb_x, mb_y, head, mb_output))` (added to `strategy.loss`) | `before_backward` |
| `on_before_step(model)` (gradients there, weights unchanged) | `before_update` |
| `on_after_step(model)` | `after_update` |
| `on_task_end(model, (x, y), head)` | `after_training_exp`, with the experience's training data as tensors |

A strategy that adds examples to the minibatch (`on_before_forward`: replay) has them trained on their own task
labels: the joined minibatch's heads become its per-example task labels (a MultiTaskModule sends each row through
its head; a single-head model ignores them).

A strategy that overrides `task_data`, `forward`, `task_loss` or `eval_model` (cumulative, joint, DER, ER-ACE, iCaRL,
GDumb) changes the loop itself, which stays Avalanche's: the plugin refuses it (TypeError) rather than run another
method.

Our strategies see the Avalanche model through `TaskView`, whose `forward(x, head)` sends inputs to one task's head
(`forward_single_task` of a MultiTaskModule), so that, for example, EWC's Fisher uses the finished task's head.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

try:
    from avalanche.core import SupervisedPlugin
    from avalanche.models import MultiTaskModule
    from avalanche.models.utils import is_multi_task_module
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("clframework.avalanche needs avalanche-lib 0.6: pip install 'clframework[avalanche]' "
                      "(or pip install avalanche-lib==0.6.0)") from exc

from .models import takes_head
from .plugin import Batch, Strategy, overrides


class MultiHeadAdapter(MultiTaskModule):
    """A clframework model (`forward(x, head)`) as an Avalanche MultiTaskModule: task label t uses head t."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if not takes_head(net):
            raise TypeError(f"{type(net).__name__}.forward takes no head index; give a clframework model "
                            f"(forward(x, head)) or use the plain module with Avalanche directly")
        self.net = net

    def forward(self, x: torch.Tensor, task_labels) -> torch.Tensor:
        """A minibatch from one task (the usual case) goes through that head in one call."""
        labels = task_labels
        if isinstance(labels, torch.Tensor) and labels.numel() and bool((labels == labels[0]).all()):
            return self.net(x, int(task_labels[0]))
        return super().forward(x, task_labels)

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.net(x, int(task_label))


def as_multitask_module(net: nn.Module) -> MultiHeadAdapter:
    """Wrap a clframework multi-head model for Avalanche's task-aware forward."""
    return MultiHeadAdapter(net)


class TaskView(nn.Module):
    """What our strategies see: `forward(x, head)` runs one task's head of an Avalanche model (any head-less
    model simply ignores `head`). Parameter names are those of the wrapped model under `model.`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        if is_multi_task_module(self.model):
            return self.model.forward_single_task(x, head)
        return self.model(x)


def experience_tensors(dataset, batch_size: int = 4096) -> Tuple[torch.Tensor, torch.Tensor]:
    """An experience's training inputs and labels as two tensors (eval transforms: no augmentation)."""
    from torch.utils.data import DataLoader

    data = dataset.eval() if hasattr(dataset, "eval") else dataset
    collate = getattr(data, "collate_fn", None)
    xs, ys = [], []
    for batch in DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate):
        xs.append(batch[0])
        ys.append(batch[1])
    if not xs:
        raise ValueError("the experience's training dataset is empty")
    return torch.cat(xs), torch.cat(ys)


def experience_head(experience, model: nn.Module) -> int:
    """The head a finished experience trained: its task label for a multi-task model, else 0."""
    labels: Sequence[int] = list(getattr(experience, "task_labels", [0]))
    if not is_multi_task_module(model):
        return 0
    if len(labels) != 1:
        raise ValueError(f"experience {getattr(experience, 'current_experience', '?')} mixes task labels {labels}; "
                         f"a per-task strategy needs one task label per experience (use a task-incremental benchmark)")
    return int(labels[0])


# the hooks that change what the training loop itself does, which a plugin of Avalanche's loop cannot: a strategy
# overriding one would run silently as another method
UNSUPPORTED_HOOKS = {
    "task_data": "the data each experience trains on is the experience's",
    "forward": "the forward pass is one over the whole minibatch",
    "task_loss": "the training loss is its criterion on all rows",
    "eval_model": "evaluation scores the model itself",
}


class AvalanchePlugin(SupervisedPlugin):
    """Runs a clframework Strategy (e.g. `make_strategy("si")`, `make_strategy("ewc")`) inside an Avalanche strategy."""

    def __init__(self, strategy: Strategy):
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise TypeError(f"AvalanchePlugin wraps a clframework Strategy (make_strategy('si', ...)), "
                            f"got {type(strategy).__name__}")
        unsupported = [hook for hook in UNSUPPORTED_HOOKS if overrides(strategy, hook)]
        if unsupported:
            raise TypeError(f"AvalanchePlugin cannot run {type(strategy).__name__}: it overrides "
                            f"{', '.join(unsupported)}, which Avalanche's own loop decides (" +
                            "; ".join(UNSUPPORTED_HOOKS[h] for h in unsupported) + "); train it with clframework's "
                            f"Trainer")
        self.strategy = strategy
        self._joins = overrides(strategy, "on_before_forward")  # else no per-step cost
        self._view: TaskView | None = None

    def _model(self, cl) -> TaskView:
        if self._view is None or self._view.model is not cl.model:
            self._view = TaskView(cl.model)
        return self._view

    def before_training_exp(self, strategy, **kwargs):
        self.strategy.on_task_start(self._model(strategy), strategy.clock.train_exp_counter)

    def before_forward(self, strategy, **kwargs):
        if not self._joins:
            return
        head = experience_head(strategy.experience, strategy.model)
        batch = self.strategy.on_before_forward(self._model(strategy), Batch(strategy.mb_x, strategy.mb_y, head))
        if len(batch) != len(strategy.mb_y):
            if len(strategy.mbatch) != 3:
                raise ValueError(f"{type(self.strategy).__name__} joined examples to a minibatch of "
                                 f"{len(strategy.mbatch)} parts; AvalanchePlugin joins (inputs, labels, task labels) "
                                 f"minibatches only")
            strategy.mbatch = [batch.x, batch.y, batch.heads().to(batch.y.device)]

    def before_backward(self, strategy, **kwargs):
        head = experience_head(strategy.experience, strategy.model)
        batch = Batch(strategy.mb_x, strategy.mb_y, head, strategy.mb_output)
        extra = self.strategy.loss_term(self._model(strategy), batch)
        if isinstance(extra, torch.Tensor):
            strategy.loss = strategy.loss + extra

    def before_update(self, strategy, **kwargs):
        self.strategy.on_before_step(self._model(strategy))

    def after_update(self, strategy, **kwargs):
        self.strategy.on_after_step(self._model(strategy))

    def after_training_exp(self, strategy, **kwargs):
        view = self._model(strategy)
        head = experience_head(strategy.experience, strategy.model)
        x, y = experience_tensors(strategy.experience.dataset)
        self.strategy.on_task_end(view, (x.to(strategy.device), y.to(strategy.device)), head)
