"""The registered task-free benchmarks (builders in taskfree.py): iblurry, gaussian-schedule, mnist-360.

Registering imports no torch (`clframework list` stays fast); the data are read when a stream is built.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import Protocol, register_benchmark

if TYPE_CHECKING:
    from .scenarios import LabeledData

DATASETS = ("mnist-5k", "fashion-mnist", "mnist")
# online: one pass, minibatch 10, plain SGD at 0.1 (the MIR authors' lr for split MNIST), one optimizer throughout, the
# DER paper's MNIST MLP 784-100-100; also the protocol of a task-free stream built with taskfree.py's builders
ONLINE = Protocol(hidden=(100, 100), epochs=1, batch_size=10, lr=0.1, optimizer="sgd", reset_optimizer=False)


def _load(dataset: str, data_root: str) -> LabeledData:
    """The embedded 5k MNIST subset (always here), or Fashion-MNIST / MNIST found by benchmarks/datasets.py."""
    if dataset == "mnist-5k":
        from .embedded import mnist_5k

        return mnist_5k()
    from . import datasets

    return datasets.load(dataset, data_root or None)


_dataset = (lambda v: v in DATASETS, " or ".join(DATASETS))
_pct = (lambda v: 0 <= v <= 100, "a percentage in [0, 100]")
SOURCE = "the embedded MNIST subset (mnist-5k, default), or Fashion-MNIST / MNIST files (--option dataset=...)"


@register_benchmark("iblurry", protocol=ONLINE, source=SOURCE, checks={"dataset": _dataset, "disjoint": _pct,
                                                                       "blurry": _pct},
                    description="task-free i-Blurry-N-M (Koh et al. 2022): N% disjoint classes, M% blurry "
                                "examples, class-incremental, online")
def iblurry_benchmark(dataset: str = "mnist-5k", n_tasks: int = 5, disjoint: float = 50.0, blurry: float = 10.0,
                      stream_seed: int = 0, data_root: str = ""):
    from .taskfree import iblurry

    return iblurry(_load(dataset, data_root), n_tasks, disjoint, blurry, stream_seed, name=f"iblurry-{dataset}")


@register_benchmark("gaussian-schedule", protocol=ONLINE, source=SOURCE, checks={"dataset": _dataset},
                    description="task-free split stream whose tasks mix gradually (Gaussian schedule of width "
                                "sigma, in task lengths), class-incremental, online")
def gaussian_benchmark(dataset: str = "mnist-5k", classes_per_task: int = 2, sigma: float = 0.3,
                       stream_seed: int = 0, data_root: str = ""):
    from .taskfree import gaussian_schedule

    return gaussian_schedule(_load(dataset, data_root), classes_per_task, sigma, stream_seed,
                             name=f"gaussian-{dataset}")


@register_benchmark("mnist-360", protocol=ONLINE, source=SOURCE, checks={"dataset": _dataset},
                    description="the DER paper's general-continual MNIST-360: rotating digit pairs, no task "
                                "boundaries, online (Buzzega et al. 2020)")
def mnist360_benchmark(dataset: str = "mnist-5k", rounds: int = 3, stream_seed: int = 0, data_root: str = ""):
    from .taskfree import rotating_pairs

    return rotating_pairs(_load(dataset, data_root), rounds, 9, stream_seed, name=f"{dataset}-360")
