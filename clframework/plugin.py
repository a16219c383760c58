"""The strategy plugin interface: a few hooks, each named for the moment the training loop calls it.

The same hooks drive a strategy from clframework's Trainer or from a user's own PyTorch loop:

    strategy.on_task_start(model, task_index)
    for x, y in batches:
        batch = strategy.on_before_forward(model, Batch(x, y, head))  # may join examples of its own (replay)
        batch.out = strategy.forward(model, batch)  # default forward_heads(model, batch.x, batch.head)
        loss = strategy.task_loss(model, batch)  # default F.cross_entropy(batch.out, batch.y)
        (loss + strategy.loss_term(model, batch)).backward()   # an extra loss term (default: penalty(model))
        strategy.on_before_step(model)           # gradients are there, parameters not yet moved
        optimizer.step()
        strategy.on_after_step(model)            # parameters moved
        optimizer.zero_grad()
    strategy.on_task_end(model, task, head)      # sees that task's training data (a Task, or (x, y))

A strategy written to the original hooks (penalty(model), no batch) runs unchanged: `on_before_forward` returns the
minibatch as it is and `loss_term` calls `penalty` unless a strategy overrides them.

Five further hooks change what the loop does; the Trainer checks once per task whether a strategy overrides them
(`overrides`), so a strategy that does not pays nothing per step:

    task = strategy.task_data(stream, i)      # the data task i trains on (joint, cumulative); None: no steps
    strategy.on_prepare(prepare)              # with each task: stored examples -> training inputs (GDumb's fit)
    out = strategy.forward(model, batch)      # the forward pass (DER, ER-ACE: one per part of the batch)
    loss = strategy.task_loss(model, batch)   # replaces F.cross_entropy(batch.out, batch.y) (ER-ACE, iCaRL, DER)
    scorer = strategy.eval_model(model)       # the model scored after each task (iCaRL's nearest mean, GDumb)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .benchmarks.stream import Task
from .models import forward_heads
from .registry import Registry

STRATEGIES = Registry("strategy", entry_point_group="clframework.strategies", builtins="clframework.strategies")

TaskData = Union[Task, Tuple[torch.Tensor, torch.Tensor], Iterable[Tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class Batch:
    """One training minibatch as a strategy sees it.

    head: the output head every example trains (an int), or one head per example (a LongTensor) once a strategy has
    joined examples of other tasks' heads (`join`). out: the model's outputs on `x`, set by the loop after the forward
    pass (`models.forward_heads`: rows of heads narrower than the widest are padded with -inf).
    raw: the examples as the task stores them (e.g. uint8 images, before decoding and the training augmentation);
    `x` itself where the task stores model inputs. A memory keeps `raw` and turns stored examples into model inputs
    with `inputs(raw)`, so replayed examples are decoded and augmented exactly like the incoming ones.
    """

    x: torch.Tensor
    y: torch.Tensor
    head: Union[int, torch.Tensor] = 0
    out: Optional[torch.Tensor] = None
    raw: Optional[torch.Tensor] = None
    prepare: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # raw -> model input (decode, augment)

    def __post_init__(self):
        if self.raw is None:
            self.raw = self.x

    def __len__(self) -> int:
        return len(self.y)

    def heads(self) -> torch.Tensor:
        """One head index per example."""
        if isinstance(self.head, torch.Tensor):
            return self.head
        return torch.full((len(self.y),), int(self.head), dtype=torch.long, device=self.y.device)

    def inputs(self, raw: torch.Tensor) -> torch.Tensor:
        """Model inputs for stored examples `raw` (same form as `self.raw`): decoded and augmented like this batch."""
        return raw if self.prepare is None else self.prepare(raw)


def join(batch: Batch, x: torch.Tensor, y: torch.Tensor, head: Union[int, torch.Tensor],
         raw: Optional[torch.Tensor] = None) -> Batch:
    """`batch` followed by the examples (x, y) on `head` (an int or one per example); its own rows stay first.
    raw: those examples' stored form (default: x), kept beside the batch's own `raw`."""
    if isinstance(batch.head, int) and isinstance(head, int) and head == batch.head:
        joined_head: Union[int, torch.Tensor] = batch.head
    else:
        other = head if isinstance(head, torch.Tensor) else torch.full((len(y),), int(head), dtype=torch.long)
        joined_head = torch.cat([batch.heads(), other.to(batch.y.device)])
    raw = x if raw is None else raw
    joined_raw = torch.cat([batch.raw, raw]) if batch.raw.dtype == raw.dtype else None
    return Batch(torch.cat([batch.x, x]), torch.cat([batch.y, y]), joined_head, raw=joined_raw,
                 prepare=batch.prepare)


class Strategy:
    """Base class of every continual-learning strategy; every hook defaults to doing nothing (fine-tuning).

    needs: what the strategy requires of the model and the stream, checked before any training (`check_needs`): each
    a need's name (NEEDS: "class-setting", "single-head", "head-argument", "features", "boundaries", or one added with
    `register_need`) or a (name, detail) pair, the detail saying why, e.g. ("boundaries", "a Fisher computed at each
    task's end"): without "boundaries" a strategy runs on task-free streams. A property where the strategy's
    settings decide (ER-ACE's task_free)."""

    registered_name = "custom"
    needs: Tuple[Union[str, Tuple[str, str]], ...] = ()

    def on_task_start(self, model: nn.Module, task_index: int) -> None:
        """Before the first step of a task."""

    def on_before_forward(self, model: nn.Module, batch: Batch) -> Batch:
        """Before the forward pass: the minibatch to train on. Return `batch`, or a larger one whose first rows are
        `batch`'s (`join`), e.g. replay's stored examples; the loss is the mean over all its rows."""
        return batch

    def task_data(self, stream, task_index: int) -> Optional[Task]:
        """The data task `task_index` of `stream` trains on (joint, cumulative); None trains nothing (the start and
        end hooks still run). Default: that task. Called once per task, only when overridden."""
        return stream.tasks[task_index]

    def forward(self, model: nn.Module, batch: Batch, run: Callable = forward_heads) -> torch.Tensor:
        """The training forward pass: the outputs on the minibatch, by `run(model, x, head)` (the loop's forward,
        e.g. compiled). Override to change how the rows pass through the network: DER and ER-ACE, like their
        reference code, pass the incoming rows and each memory sample separately where BatchNorm would mix them.
        Default: one pass over all rows. Called only when overridden."""
        return run(model, batch.x, batch.head)

    def on_prepare(self, prepare: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        """With each task, before `on_task_start`: the function turning its stored examples into training inputs (the
        task's decode, then the training augmentation; None: stored examples are the inputs), for a strategy that
        trains on stored examples outside the minibatches (GDumb's fit on its memory). Called only when overridden."""

    def task_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss on the minibatch (`batch.out` holds the outputs), replacing the default cross-entropy
        over all its rows; `loss_term` is still added. Called only when overridden."""
        return torch.nn.functional.cross_entropy(batch.out, batch.y)

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model scored after each task (same `forward(x, head)` interface); default the trained model itself.
        Called only when overridden, once per evaluation."""
        return model

    def loss_term(self, model: nn.Module, batch: Batch) -> Union[torch.Tensor, float]:
        """The extra loss term added before backward, seeing the minibatch and `batch.out`; default `penalty(model)`."""
        return self.penalty(model)

    def penalty(self, model: nn.Module) -> Union[torch.Tensor, float]:
        """A differentiable term added to the task loss before backward (0.0: none); needs no minibatch."""
        return 0.0

    def on_before_step(self, model: nn.Module) -> None:
        """After backward, before the optimizer step: `.grad` holds the gradient, parameters are unchanged."""

    def on_after_step(self, model: nn.Module) -> None:
        """Right after the optimizer step."""

    def on_task_end(self, model: nn.Module, data: TaskData, head: int = 0) -> None:
        """After the last step of a task, with that task's training data (a Task, an (x, y) pair or batches)."""

    def state_dict(self) -> Dict[str, Any]:
        """Everything the strategy has learned and its hyperparameters, so that a run resumed from a checkpoint
        (possibly in the middle of a task, after `on_task_start`) continues exactly; also kept as strategy.pt."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a `state_dict()`; a state with missing or unexpected keys is an error naming them."""
        check_state_keys(self, state, ())


def overrides(strategy, hook: str) -> bool:
    """Whether `strategy` replaces the base class's `hook` (a strategy that does not skips its cost entirely)."""
    return getattr(type(strategy), hook, None) is not getattr(Strategy, hook)


def check_state_keys(strategy: Strategy, state: Dict[str, Any], expected) -> None:
    """Raise ValueError naming the missing and unexpected keys of a strategy state (e.g. another strategy's)."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{type(strategy).__name__}.load_state_dict: missing keys {missing}, unexpected keys "
                         f"{unexpected}; expected exactly {sorted(expected)} (is this state from another strategy?)")


def register_strategy(name: str, *, checks: Optional[Dict[str, tuple]] = None, description: str = "",
                      override: bool = False):
    """Class decorator: register a Strategy under `name`; its __init__ keyword defaults are its hyperparameters.

    `checks` maps a hyperparameter to (predicate, description of accepted values) for range checks. A name that is
    already registered is an error unless override=True (then a warning).
    """

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"@register_strategy('{name}') must decorate a subclass of clframework.Strategy")
        return STRATEGIES.register(name, checks=checks, description=description, override=override)(cls)

    return deco


def available_strategies() -> list:
    return STRATEGIES.names()


def make_strategy(name: str, **hparams) -> Strategy:
    """Create a registered strategy by name; unknown names and bad hyperparameters raise RegistryError."""
    strategy = STRATEGIES.create(name, **hparams)
    strategy.hparams = STRATEGIES.check_hparams(name, hparams)
    return strategy


# ---- what a strategy needs, checked before the first step of a run or of a study ----------------------------------

NeedCheck = Callable[[nn.Module, Any, str], Optional[str]]


def _class_setting(model: nn.Module, stream, detail: str) -> Optional[str]:
    if stream.setting != "class":
        return (f"the class-incremental setting (one head over every class: --setting class); the stream is "
                f"{stream.setting}-incremental")
    return None


def _single_head(model: nn.Module, stream, detail: str) -> Optional[str]:
    if len(stream.head_sizes) != 1:
        return (f"a single-head stream (it trains a union of tasks as one task: --setting class or domain); the "
                f"stream has {len(stream.head_sizes)} heads ({stream.setting}-incremental)")
    return None


def _head_argument(model: nn.Module, stream, detail: str) -> Optional[str]:
    from .models import takes_head

    if not takes_head(model):
        return (f"to call the model with a head, model(x, head): {type(model).__name__}.forward takes no head "
                f"argument; add one (a single-head model may ignore it)")
    return None


def _features(model: nn.Module, stream, detail: str) -> Optional[str]:
    from .models import penultimate

    task = stream.tasks[0]
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            penultimate(model, task.inputs(task.examples("train").raw(slice(0, 1))).to(device))
    except TypeError as exc:
        return f"the model's penultimate features: {exc}"
    finally:
        model.train(was)
    return None


def _boundaries(model: nn.Module, stream, detail: str) -> Optional[str]:
    if getattr(stream, "task_free", False):
        return (f"task boundaries{f' ({detail})' if detail else ''}, which the task-free stream '{stream.name}' does "
                f"not show; use a strategy that trains without them (naive, er, der, derpp, er_ace with "
                f"task_free=true, mir) or a stream with tasks")
    return None


NEEDS: Dict[str, NeedCheck] = {"class-setting": _class_setting, "single-head": _single_head,
                               "head-argument": _head_argument, "features": _features, "boundaries": _boundaries}


def register_need(name: str, check: NeedCheck) -> None:
    """A need strategies may declare (`needs = (name, ...)` or `(name, detail)`): check(model, stream, detail) gives
    None when met, else what is needed and what was found (a phrase completing "strategy 'x' needs ...")."""
    NEEDS[name] = check


def check_needs(strategy: Strategy, name: str, model: nn.Module, stream) -> None:
    """Raise a ValueError naming the first need of the strategy (an instance: its settings may decide) that the
    model or stream does not meet."""
    for need in getattr(strategy, "needs", ()):
        key, detail = (need, "") if isinstance(need, str) else need if isinstance(need, tuple) and len(need) == 2 \
            else (None, "")
        if key not in NEEDS:
            raise ValueError(f"strategy '{name}' declares an unknown need {need!r}; give a name or a (name, detail) "
                             f"pair, the name one of {', '.join(NEEDS)} or registered with register_need")
        why = NEEDS[key](model, stream, detail)
        if why:
            raise ValueError(f"strategy '{name}' needs {why}")


# ---- helpers shared by strategies -------------------------------------------------------------------------------

def trainable(model: nn.Module) -> Dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def subset_rows(n: int, limit: int, generator: Optional[torch.Generator]) -> Optional[torch.Tensor]:
    """Indices (ascending) of `limit` of `n` rows drawn uniformly without replacement with `generator`, or None for
    all rows (limit 0 or >= n). Never the first `limit`: task data are stored sorted by class."""
    if limit <= 0 or limit >= n:
        return None
    return torch.randperm(n, generator=generator)[:limit].sort().values


def iter_task_batches(data: TaskData, batch_size: int, device: torch.device, limit: int = 0,
                      generator: Optional[torch.Generator] = None,
                      raw: bool = False) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) minibatches on `device` from a Task, an (x, y) pair, or an iterable of batches.

    From a Task, x is the decoded model input (no augmentation), or with raw=True the task's stored form (e.g. uint8
    images, what a memory keeps; `Batch.inputs` decodes it later); pairs and batches are model inputs already.
    `limit` > 0 caps the number of examples: a uniformly random subset drawn with `generator` (the global one if
    None), kept in the data's order (`subset_rows`); batches given as an iterable are gathered first to draw it.
    """
    if isinstance(data, Task):
        rows = subset_rows(data.n("train"), limit, generator)
        if rows is not None:  # the chosen rows of the stored data (no copy)
            data = data.with_splits(train=data.examples("train").take(rows))
        yield from data.batches("train", batch_size, device, raw=raw)
        return
    if limit > 0 and not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor)):
        pairs = list(data)
        if not pairs:
            return
        data = (torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]))
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        rows = subset_rows(len(x), limit, generator)
        if rows is not None:
            x, y = x[rows.to(x.device)], y[rows.to(y.device)]
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        return
    for x, y in data:
        yield x.to(device), y.to(device)
