"""Registered benchmarks read from image folders on disk (benchmarks/folders.py does the reading): TinyImageNet,
ImageNet-R, any ImageFolder tree, CORe50. Each `data_root` ("" = $CLFRAMEWORK_DATA or ~/.cache/clframework/data)
holds the dataset's own folder as it unpacks; `--workers N` reads the files in N DataLoader processes.

Where to get the data and the protocols: docs/custom-data.md ("Benchmarks read from disk").
"""
from __future__ import annotations

from pathlib import Path

from .registry import Protocol, register_benchmark

# a small default network for the folder benchmarks (inputs are flattened); `--hidden`, `--epochs` override it, and
# protocols with their own backbones (e.g. DER's ResNet-18 on seq-tinyimagenet) register on top of these loaders
FOLDERS = Protocol(hidden=(256, 256), epochs=5, batch_size=32, reset_optimizer=True)


def _folder(data_root: str, name: str) -> Path:
    from .datasets import resolve_root

    return resolve_root(data_root or None) / name


def _has(name: str):
    return lambda root=None: _folder(root or "", name).is_dir()


@register_benchmark(
    "split-tinyimagenet", protocol=FOLDERS, available=_has("tiny-imagenet-200"),
    source="the tiny-imagenet-200 folder under --data-root / $CLFRAMEWORK_DATA (http://cs231n.stanford.edu/"
           "tiny-imagenet-200.zip), read through DataLoader workers",
    description="TinyImageNet: 10 tasks of 20 classes (sorted wnids), 64x64 RGB, validation set as test set; "
                "class-incremental by default (DER, Buzzega et al. 2020)")
def split_tinyimagenet_benchmark(data_root: str = "", setting: str = "class", n_tasks: int = 0):
    from .folders import split_tinyimagenet

    return split_tinyimagenet(_folder(data_root, "tiny-imagenet-200"), setting, n_tasks=n_tasks or None)


@register_benchmark(
    "split-imagenet-r", protocol=FOLDERS, available=_has("imagenet-r"),
    source="the imagenet-r folder under --data-root / $CLFRAMEWORK_DATA (https://people.eecs.berkeley.edu/"
           "~hendrycks/imagenet-r.tar), read through DataLoader workers",
    description="ImageNet-R: 200 classes in 10 tasks of 20, 80/20 train/test split of each class (seed 0), images "
                "resized and center-cropped to 224 (L2P / DualPrompt / CODA-Prompt protocol); class-incremental")
def split_imagenet_r_benchmark(data_root: str = "", setting: str = "class", n_tasks: int = 0, size: int = 224):
    from .folders import split_image_folder

    return split_image_folder(_folder(data_root, "imagenet-r"), 20, n_tasks or None, setting, size, 0.2, 0,
                              "split-imagenet-r")


@register_benchmark(
    "split-imagefolder", protocol=FOLDERS, available=lambda root=None: bool(root) and Path(root).is_dir(),
    source="your ImageFolder tree: --data-root DIR with DIR/<class>/*.jpg (or DIR/train/<class>, DIR/test/<class>)",
    description="any ImageFolder tree (--data-root is the tree): classes in sorted order, 2 per task, 20% of each "
                "class held out for testing unless train/ and test/ are given; images kept at their size (all equal)")
def split_imagefolder_benchmark(data_root: str = "", setting: str = "class", classes_per_task: int = 2,
                                n_tasks: int = 0, size: int = 0, test_fraction: float = 0.2, split_seed: int = 0):
    from .folders import split_image_folder

    if not data_root:
        raise ValueError("split-imagefolder reads the folder given by --data-root (one subfolder per class); give it")
    return split_image_folder(data_root, classes_per_task, n_tasks or None, setting, size, test_fraction, split_seed,
                              "split-imagefolder")


@register_benchmark(
    "core50-ni", protocol=FOLDERS, available=_has("core50_128x128"),
    source="the core50_128x128 folder under --data-root / $CLFRAMEWORK_DATA (https://vlomonaco.github.io/core50/), "
           "read through DataLoader workers",
    description="CORe50 New Instances, domain-incremental: 8 tasks = training sessions s1 s2 s4 s5 s6 s8 s9 s11, 50 "
                "objects on one head, tested on sessions s3 s7 s10 (Lomonaco & Maltoni 2017)")
def core50_benchmark(data_root: str = "", labels: str = "object", n_tasks: int = 0, size: int = 0):
    from .folders import core50

    return core50(_folder(data_root, "core50_128x128"), labels, size, n_tasks=n_tasks or None)
