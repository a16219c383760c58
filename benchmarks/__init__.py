"""Task streams (in Avalanche's sense of "benchmark"): scenario builders and registered benchmarks."""
from .registry import BENCHMARKS, Protocol, available_benchmarks, benchmark_protocol, make_benchmark, register_benchmark
from .scenarios import (LabeledData, from_dataset, from_task_data, from_tensors, holdout, permutations, permuted,
                        split, split_cifar10_100)
from .stream import SETTINGS, Stream, Task

__all__ = ["BENCHMARKS", "LabeledData", "Protocol", "SETTINGS", "Stream", "Task", "available_benchmarks",
           "benchmark_protocol", "from_dataset", "from_task_data", "from_tensors", "holdout", "make_benchmark",
           "permutations", "permuted", "register_benchmark", "split", "split_cifar10_100"]
