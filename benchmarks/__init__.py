"""Task streams (in Avalanche's sense of "benchmark"): scenario builders and registered benchmarks."""
from . import embedded  # noqa: F401  (registers the embedded benchmarks)
from .registry import BENCHMARKS, Protocol, available_benchmarks, benchmark_protocol, make_benchmark, register_benchmark
from .scenarios import LabeledData, holdout, permutations, permuted, split
from .stream import SETTINGS, Stream, Task

__all__ = ["BENCHMARKS", "LabeledData", "Protocol", "SETTINGS", "Stream", "Task", "available_benchmarks",
           "benchmark_protocol", "holdout", "make_benchmark", "permutations", "permuted", "register_benchmark", "split"]
