"""clframework: paper-faithful continual learning (Synaptic Intelligence, exact-Fisher EWC) for head-to-head comparisons."""
__version__ = "0.1.0"

from .registry import RegistryError, import_plugin  # noqa: E402  (first: the other modules register into it)
from .plugin import Strategy, available_strategies, make_strategy, register_strategy  # noqa: E402
from .models import build_model, cifar_cnn, mlp  # noqa: E402
from .trainer import Trainer, TrainerCallback, select_device  # noqa: E402

import strategies as _builtin_strategies  # noqa: E402,F401  (registers naive, ewc, si)

# Streams and experiments import this package's registry themselves, so they are re-exported lazily (no import cycle).
_LAZY = {"Stream": "benchmarks", "Task": "benchmarks", "available_benchmarks": "benchmarks",
         "make_benchmark": "benchmarks", "register_benchmark": "benchmarks",
         "RunConfig": "clframework.experiment", "run": "clframework.experiment", "compare": "clframework.experiment"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clframework' has no attribute {name!r}")


__all__ = ["RegistryError", "Strategy", "Trainer", "TrainerCallback", "available_strategies", "build_model",
           "cifar_cnn", "import_plugin", "make_strategy", "mlp", "register_strategy", "select_device", *_LAZY]
