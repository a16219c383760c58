"""Task streams (in Avalanche's sense of "benchmark"): scenario builders and registered benchmarks.

The names below are resolved on first use (PEP 562), so looking up the registry (`clframework list`) does not import
torch.
"""
from clframework.lazy import lazy_exports

_PUBLIC = {
    **dict.fromkeys(["BENCHMARKS", "Protocol", "available_benchmarks", "benchmark_protocol", "make_benchmark",
                     "register_benchmark"], "registry"),
    **dict.fromkeys(["LabeledData", "from_dataset", "from_task_data", "from_tensors", "holdout", "permutations",
                     "permuted", "split", "split_cifar10_100"], "scenarios"),
    **dict.fromkeys(["SETTINGS", "Stream", "Task"], "stream"),
    **dict.fromkeys(["gaussian_schedule", "iblurry", "rotating_pairs"], "taskfree"),
}


__getattr__, __dir__ = lazy_exports(globals(), _PUBLIC, prefix=f"{__name__}.")


__all__ = sorted(_PUBLIC)
