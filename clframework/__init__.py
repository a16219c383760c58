"""clframework: paper-faithful continual learning (Synaptic Intelligence, exact-Fisher EWC) for head-to-head comparisons."""
__version__ = "0.1.0"

from .registry import RegistryError, import_plugin  # noqa: E402  (first: the other modules register into it)
from .plugin import Strategy, available_strategies, make_strategy, register_strategy  # noqa: E402
from .models import build_model, cifar_cnn, mlp  # noqa: E402
from .trainer import Trainer, TrainerCallback, select_device  # noqa: E402

import strategies as _builtin_strategies  # noqa: E402,F401  (registers naive, ewc, si)
from benchmarks import Stream, Task, available_benchmarks, make_benchmark, register_benchmark  # noqa: E402
from .experiment import RunConfig, compare, run  # noqa: E402

__all__ = ["RegistryError", "RunConfig", "Strategy", "Stream", "Task", "Trainer", "TrainerCallback",
           "available_benchmarks", "available_strategies", "build_model", "cifar_cnn", "compare", "import_plugin",
           "make_benchmark", "make_strategy", "mlp", "register_benchmark", "register_strategy", "run",
           "select_device"]
