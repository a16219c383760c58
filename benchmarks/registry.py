"""Registered benchmarks: a name, the stream factory, the paper's training protocol and where the data come from."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Optional, Tuple

from clframework.recipe import Recipe
from clframework.registry import Registry

BENCHMARKS = Registry("benchmark", entry_point_group="clframework.benchmarks", param_word="option",
                      builtins="clframework.benchmarks.builtin")


@dataclass(frozen=True)
class Protocol(Recipe):
    """How the paper trains on a benchmark: the optimizer recipe (the fields of clframework.recipe.Recipe: optimizer,
    lr, momentum, weight decay, lr schedule, gradient clipping), model, epochs, batch size, augmentation, and strategy
    hyperparameters."""

    model: str = "mlp"
    hidden: Tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    epochs: int = 10
    batch_size: int = 64
    reset_optimizer: bool = True
    augment: str = "none"  # the training augmentation (clframework.augment)
    strategy_hparams: Dict[str, dict] = field(default_factory=dict)
    # per strategy, per memory size (-1: any), the published best settings (training settings such as lr or
    # weight_decay, and hyperparameters), chosen by the run's memory_size; they take precedence over strategy_hparams
    method_settings: Dict[str, Dict[int, dict]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def for_method(self, strategy: str, memory_size: int = -1) -> dict:
        """The published settings of `strategy` at this memory size (else its size-independent ones, else none)."""
        table = self.method_settings.get(strategy, {})
        return dict(table.get(memory_size, table.get(-1, {})))


def register_benchmark(name: str, *, protocol: Protocol, source: str,
                       available: Callable[[Optional[str]], bool] = lambda root: True, description: str = "",
                       override: bool = False, checks: Optional[Dict[str, tuple]] = None):
    """Decorator for a function `(seed=..., **options) -> Stream`; `source` says where its data come from and
    `available(data_root)` whether they are on this machine; `checks` maps an option to (predicate, accepted values),
    checked before anything is built. A name already registered needs override=True."""
    return BENCHMARKS.register(name, checks=checks, description=description, protocol=protocol, source=source,
                               available=available, override=override)


def available_benchmarks() -> list:
    return BENCHMARKS.names()


def benchmark_protocol(name: str) -> Protocol:
    return BENCHMARKS.get(name).extra["protocol"]


def make_benchmark(name: str, **options):
    """Build a registered benchmark's stream; unknown names and options raise RegistryError."""
    return BENCHMARKS.create(name, **options)
