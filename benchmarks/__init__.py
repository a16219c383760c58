"""Task streams (in Avalanche's sense of "benchmark"): scenario builders and registered benchmarks.

The names below are resolved on first use (PEP 562), so looking up the registry (`clframework list`) does not import
torch.
"""
import importlib

_PUBLIC = {
    **dict.fromkeys(["BENCHMARKS", "Protocol", "available_benchmarks", "benchmark_protocol", "make_benchmark",
                     "register_benchmark"], "registry"),
    **dict.fromkeys(["LabeledData", "from_dataset", "from_task_data", "from_tensors", "holdout", "permutations",
                     "permuted", "split", "split_cifar10_100"], "scenarios"),
    **dict.fromkeys(["SETTINGS", "Stream", "Task"], "stream"),
    **dict.fromkeys(["gaussian_schedule", "iblurry", "rotating_pairs"], "taskfree"),
}


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])


__all__ = sorted(_PUBLIC)
