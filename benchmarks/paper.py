"""The paper's benchmarks on the full datasets (Zenke et al. 2017, Sec. 5), with its models and training protocols.

Fashion-MNIST versions use MNIST's protocols unchanged (same image format, ten classes). Every factory takes
`data_root` ("" = $CLFRAMEWORK_DATA or the default cache; see benchmarks.datasets), `setting`, and a validation
hold-out (`validation` fraction of each task's training data, `validation_seed`) for hyperparameter search.
"""
from __future__ import annotations

from . import datasets
from .registry import Protocol, register_benchmark

SPLIT = Protocol(hidden=(256, 256), epochs=10, batch_size=64, reset_optimizer=True,
                 strategy_hparams={"si": {"c": 1.0, "xi": 1e-3}})
PERMUTED = Protocol(hidden=(2000, 2000), epochs=20, batch_size=256, reset_optimizer=False,
                    strategy_hparams={"si": {"c": 0.1, "xi": 0.1}})
CIFAR = Protocol(model="cnn", epochs=60, batch_size=256, reset_optimizer=True,
                 strategy_hparams={"si": {"c": 0.1, "xi": 1e-3}})


def _root(data_root: str):
    return data_root or None


def _with_validation(stream, validation: float, seed: int):
    from .scenarios import holdout  # the scenario builders (and torch) only when a stream is built

    return holdout(stream, validation, seed) if validation else stream


def _available(*names):
    return lambda root=None: all(datasets.available(n, root) for n in names)


def _register_mnist_like(key: str, label: str):
    source = datasets.describe(key)

    @register_benchmark(f"split-{key}", protocol=SPLIT, source=source, available=_available(key),
                        description=f"split {label}: 5 tasks of consecutive class pairs, multi-head (paper Sec. 5.1)")
    def split_factory(data_root: str = "", setting: str = "task", n_tasks: int = 5, validation: float = 0.0,
                      validation_seed: int = 0):
        from .scenarios import split

        data = datasets.load(key, _root(data_root))
        return _with_validation(split(data, 2, n_tasks=n_tasks, setting=setting, name=f"split-{key}"),
                                validation, validation_seed)

    @register_benchmark(f"permuted-{key}", protocol=PERMUTED, source=source, available=_available(key),
                        description=f"permuted {label}: 10 pixel permutations, one shared head (paper Sec. 5.2)")
    def permuted_factory(data_root: str = "", setting: str = "domain", n_tasks: int = 10, permutation_seed: int = 0,
                         keep_first: bool = False, validation: float = 0.0, validation_seed: int = 0):
        from .scenarios import permuted

        data = datasets.load(key, _root(data_root))
        stream = permuted(data, n_tasks, permutation_seed, keep_first, setting, name=f"permuted-{key}")
        return _with_validation(stream, validation, validation_seed)


_register_mnist_like("mnist", "MNIST")
_register_mnist_like("fashion-mnist", "Fashion-MNIST")


@register_benchmark("split-cifar10-100", protocol=CIFAR, available=_available("cifar10", "cifar100"),
                    source=f"{datasets.describe('cifar10')}; {datasets.describe('cifar100')}",
                    description="split CIFAR-10/100: all of CIFAR-10, then 5 ten-class CIFAR-100 blocks, multi-head "
                                "CNN (paper Sec. 5.3)")
def split_cifar10_100_benchmark(data_root: str = "", setting: str = "task", cifar100_tasks: int = 5,
                                classes_per_task: int = 10, validation: float = 0.0, validation_seed: int = 0):
    from .scenarios import split_cifar10_100

    root = _root(data_root)
    stream = split_cifar10_100(datasets.load("cifar10", root), datasets.load("cifar100", root), cifar100_tasks,
                               classes_per_task, setting)
    return _with_validation(stream, validation, validation_seed)


@register_benchmark("split-cifar100", protocol=CIFAR, available=_available("cifar100"),
                    source=datasets.describe("cifar100"),
                    description="split CIFAR-100: consecutive ten-class blocks, multi-head CNN, the paper's CIFAR "
                                "protocol")
def split_cifar100_benchmark(data_root: str = "", setting: str = "task", classes_per_task: int = 10,
                             n_tasks: int = 0, validation: float = 0.0, validation_seed: int = 0):
    """`n_tasks` = 0 keeps every block (100 / classes_per_task tasks)."""
    from .scenarios import split

    data = datasets.load("cifar100", _root(data_root))
    stream = split(data, classes_per_task, n_tasks=n_tasks or None, setting=setting, name="split-cifar100")
    return _with_validation(stream, validation, validation_seed)
