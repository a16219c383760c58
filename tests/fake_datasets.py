"""Small dataset files in the real on-disk formats, written byte by byte from the formats' specifications.

IDX (MNIST, Fashion-MNIST): big-endian magic 0x0000 0803 (unsigned bytes, 3 dims) for images and 0x0000 0801 for
labels, then one 4-byte big-endian size per dimension, then the raw bytes. CIFAR python version: pickled dicts with
`data` (N x 3072 uint8, rows of 1024 red, 1024 green, 1024 blue values) and `labels` (CIFAR-10) or `fine_labels`
(CIFAR-100), in `data_batch_1..5` + `test_batch` + `batches.meta`, or `train` + `test` + `meta`.
"""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
             ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def mnist_arrays(n_train: int = 60, n_test: int = 20, seed: int = 0, n_classes: int = 10):
    """Random pixels; labels cycle through every class so each split holds all of them."""
    rng = np.random.default_rng(seed)
    return {"train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train) % n_classes),
            "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test) % n_classes)}


def write_idx_set(folder: Path, arrays: dict, gz: bool = True) -> dict:
    """The four IDX files in `folder` (gzipped like the originals, or not); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for (split, kind), name in IDX_NAMES.items():
        data = idx_bytes(arrays[split][0 if kind == "images" else 1])
        path = folder / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        paths[(split, kind)] = path
    return paths


def cifar_arrays(n_classes: int, n_train: int, n_test: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"train": (rng.integers(0, 256, (n_train, 3072), dtype=np.uint8), list(np.arange(n_train) % n_classes)),
            "test": (rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), list(np.arange(n_test) % n_classes))}


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, arrays: dict) -> Path:
    """cifar-10-batches-py/ with the training rows spread over data_batch_1..5."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = arrays["train"]
    for i, rows in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        _pickle(folder / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": x[rows],
                                              "labels": [int(y[r]) for r in rows],
                                              "filenames": [f"img{r}.png" for r in rows]})
    tx, ty = arrays["test"]
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": tx, "labels": [int(v) for v in ty],
                                    "filenames": [f"t{r}.png" for r in range(len(ty))]})
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 10000,
                                      "num_vis": 3072})
    return folder


def write_cifar100(root: Path, arrays: dict) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("test", "test")):
        x, y = arrays[split]
        _pickle(folder / name, {"data": x, "fine_labels": [int(v) for v in y],
                                "coarse_labels": [int(v) // 5 for v in y], "filenames": [f"{split}{r}.png" for r in
                                                                                          range(len(y))]})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                              "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return folder
