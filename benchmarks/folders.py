"""Benchmarks read from files on disk, through DataLoader workers: image files, NumPy memory-mapped arrays, and the
folder layouts of TinyImageNet, ImageNet-R (any ImageFolder tree) and CORe50.

Nothing is read into memory up front except the file lists and labels: each split is a `DatasetExamples` whose items
are uint8 [C, H, W] tensors (decoded, resized: deterministic per-example work done in the workers); the trainer
converts and normalizes each minibatch on the device (`stream.Normalize`). A folder that does not have the expected
layout stops the build, before any training, with one error naming the folder, what was expected and what was found.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets import DatasetCorrupt, resolve_root
from .scenarios import LabeledData, split
from .stream import DatasetExamples, Normalize, Stream, Task, TensorExamples

CHECK_DATA = "CLFRAMEWORK_CHECK_DATA"  # "1" (--check-data): decode every image before training, not a sample
SAMPLE = 16  # images decoded by default before training, spread over the tree (every header is read)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class LayoutError(FileNotFoundError):
    """A dataset folder does not have the expected layout; the message says where, what was expected, what was found."""


def layout_error(folder, expected: str, found: str, fix: str = "") -> LayoutError:
    tail = f" {fix}" if fix else ""
    return LayoutError(f"{folder}: expected {expected}; found {found}.{tail}")


def _listing(folder: Path, limit: int = 8) -> str:
    if not folder.exists():
        return "no such folder"
    if not folder.is_dir():
        return "a file, not a folder"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "an empty folder"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFiles(Dataset):
    """Image files as uint8 [3, H, W] RGB tensors; `size` > 0 resizes the shorter side to `size` and crops the center
    size x size (deterministic, so a resumed run reads the same inputs). Runs in DataLoader workers."""

    def __init__(self, paths: Sequence, size: int = 0):
        self.paths, self.size = [str(p) for p in paths], int(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[i]) as f:
                img = torch.from_numpy(np.array(f.convert("RGB"))).permute(2, 0, 1)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DatasetCorrupt(f"cannot read image {self.paths[i]} ({exc}); replace the file, or delete it and start "
                                 f"the run over (--overwrite): --resume refuses data that changed") from None
        if self.size and tuple(img.shape[1:]) != (self.size, self.size):
            from torchvision.transforms.v2 import functional as F

            img = F.center_crop(F.resize(img, self.size, antialias=True), [self.size, self.size])
        return img.contiguous()


class MemmapArray(Dataset):
    """Rows of a NumPy `.npy` array opened memory-mapped (each worker maps the file itself; nothing is loaded)."""

    def __init__(self, path):
        self.path = str(path)
        self._array: Optional[np.ndarray] = None
        self.shape = np.load(self.path, mmap_mode="r").shape

    def __getstate__(self):
        return {"path": self.path, "_array": None, "shape": self.shape}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._array[i]))


def scan_images(paths: Sequence, same_size: bool) -> None:
    """Before training: every image's header is read (PIL reads no pixels for it), a spread-out sample of SAMPLE images
    is decoded (every one with $CLFRAMEWORK_CHECK_DATA=1, --check-data), and with `same_size` (images kept at their
    size) one of another size than the first is refused; each error names the file."""
    from PIL import Image, UnidentifiedImageError

    decode_all = os.environ.get(CHECK_DATA) == "1"
    step = max(1, len(paths) // SAMPLE)
    first = None
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as f:
                if decode_all or i % step == 0:
                    f.convert("RGB")
                dims = f.size
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DatasetCorrupt(f"cannot read image {p} ({exc}); replace the file or delete it (checked before "
                                 f"training)") from None
        if not same_size:
            continue
        if first is None:
            first = (p, dims)
        elif dims != first[1]:
            raise layout_error(p, f"images of one size, as they are kept at their size ({first[0]} is "
                                  f"{first[1][0]}x{first[1][1]})", f"{dims[0]}x{dims[1]}",
                               "Resize it, or have every image resized (--option size=N).")


def from_files(train_paths: Sequence, train_labels: Sequence[int], test_paths: Sequence, test_labels: Sequence[int],
               name: str = "files", size: int = 0, decode=Normalize(255.0), source: Optional[dict] = None,
               class_names: Optional[Sequence[str]] = None) -> LabeledData:
    """Lists of image files with their class ids as a dataset read from disk (uint8 images decoded per minibatch:
    `Normalize(255.0)` gives floats in [0, 1]); `split`, `permuted` and `holdout` accept it. class_names: the name of
    each class id, if any."""
    parts = []
    for what, paths, labels in (("train", train_paths, train_labels), ("test", test_paths, test_labels)):
        if len(paths) != len(labels) or not len(paths):
            raise ValueError(f"{name}: {what} has {len(paths)} files and {len(labels)} labels; give the same, non-zero "
                             f"number")
        parts.append(DatasetExamples(ImageFiles(paths, size), torch.as_tensor(list(labels), dtype=torch.long)))
    return LabeledData(name, source=source or {"files": name}, decode=decode, train=parts[0], test=parts[1],
                       class_names=class_names)


def from_memmap(train_x, train_y, test_x, test_y, name: str = "memmap", decode=None) -> LabeledData:
    """`.npy` files of inputs (read memory-mapped, row by row, in the workers) with their labels (arrays or `.npy`
    files); `decode` turns a minibatch of stored rows into model inputs (e.g. `Normalize(255.0)` for uint8 pixels)."""
    def labels(y):
        return torch.as_tensor(np.load(y) if isinstance(y, (str, Path)) else np.asarray(y), dtype=torch.long)

    return LabeledData(name, source={"memmap": [str(train_x), str(test_x)]}, decode=decode,
                       train=DatasetExamples(MemmapArray(train_x), labels(train_y)),
                       test=DatasetExamples(MemmapArray(test_x), labels(test_y)))


def to_memory(data: LabeledData, workers: int = 0, batch_size: int = 512) -> LabeledData:
    """The same dataset read once into memory in its stored form (uint8): faster epochs when it fits."""
    parts = []
    for ex in (data.train, data.test):
        raws = [raw for raw, _ in ex.minibatches(torch.arange(len(ex)), 0, batch_size, torch.device("cpu"), workers)]
        parts.append(TensorExamples(torch.cat(raws), ex.y))
    return data.with_examples(*parts)


# ---- TinyImageNet ----------------------------------------------------------------------------------------------

TINY_MEAN, TINY_STD = (0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821)  # as in the DER authors' code (mammoth)


def tiny_imagenet(root, normalize: bool = True) -> LabeledData:
    """The `tiny-imagenet-200` folder: train/<wnid>/images/*.JPEG, val/images/*.JPEG with val/val_annotations.txt
    (file, wnid, box), wnids.txt. Classes are numbered in sorted wnid order; the labelled validation set is the test
    set (the official test set has no labels)."""
    root = Path(root)
    wnids_file, train_dir, val_dir = root / "wnids.txt", root / "train", root / "val"
    expected = "tiny-imagenet-200's layout: wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and " \
               "val/val_annotations.txt"
    fix = "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it in the data root."
    for need in (wnids_file, train_dir, val_dir / "images", val_dir / "val_annotations.txt"):
        if not need.exists():
            raise layout_error(root, expected, f"no {need.relative_to(root)} (the folder holds: {_listing(root)})", fix)
    wnids = sorted(w.strip() for w in wnids_file.read_text().split() if w.strip())
    if len(wnids) < 2:
        raise layout_error(wnids_file, "one class id (wnid) per line, at least two", f"{len(wnids)}", fix)
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for w in wnids:
        folder = train_dir / w / "images"
        files = _images_in(folder) if folder.is_dir() else []
        if not files:
            raise layout_error(folder, f"the training images of class {w} (listed in wnids.txt)",
                               _listing(folder) if folder.exists() else f"no such folder (train/ holds: "
                                                                       f"{_listing(train_dir)})", fix)
        train_paths += files
        train_labels += [index[w]] * len(files)
    test_paths, test_labels = [], []
    for n, line in enumerate((val_dir / "val_annotations.txt").read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise layout_error(val_dir / "val_annotations.txt", "lines 'file<TAB>wnid<TAB>box...' naming classes of "
                               "wnids.txt", f"line {n}: {line[:80]!r}", fix)
        path = val_dir / "images" / fields[0]
        if not path.is_file():
            raise layout_error(val_dir / "images", f"{fields[0]} (line {n} of val_annotations.txt)", "no such file",
                               fix)
        test_paths.append(path)
        test_labels.append(index[fields[1]])
    if not test_paths:
        raise layout_error(val_dir / "val_annotations.txt", "one line per validation image", "no lines", fix)
    decode = Normalize(255.0, TINY_MEAN, TINY_STD) if normalize else Normalize(255.0)
    return from_files(train_paths, train_labels, test_paths, test_labels, "tiny-imagenet", 64, decode,
                      {"dataset": "TinyImageNet", "folder": str(root), "classes": len(wnids),
                       "train_images": len(train_paths), "test_images": len(test_paths)})


def split_tinyimagenet(root, setting: str = "class", classes_per_task: int = 20, n_tasks: Optional[int] = None,
                       normalize: bool = True, in_memory: bool = False, workers: int = 0) -> Stream:
    """TinyImageNet in tasks of `classes_per_task` consecutive classes (10 x 20 for the 200 classes, as in DER,
    Buzzega et al. 2020), the first `n_tasks` of them (None: all), read from disk through DataLoader workers
    (in_memory: read once into a uint8 tensor instead, with `workers` processes). `root`: the tiny-imagenet-200
    folder."""
    data = tiny_imagenet(root, normalize)
    if in_memory:
        data = to_memory(data, workers)
    return split(data, classes_per_task, n_tasks=n_tasks, setting=setting, name="split-tinyimagenet")


# ---- any ImageFolder tree (ImageNet-R) ---------------------------------------------------------------------------

def _class_folders(root: Path, expected: str, fix: str) -> Dict[str, List[Path]]:
    if not root.is_dir():
        raise layout_error(root, expected, _listing(root), fix)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if len(folders) < 2:
        raise layout_error(root, expected, _listing(root), fix)
    out = {}
    for f in folders:
        files = _images_in(f)
        if not files:
            raise layout_error(f, f"image files ({', '.join(IMAGE_SUFFIXES)}) of class {f.name}", _listing(f), fix)
        out[f.name] = files
    return out


def image_folder(root, size: int = 224, test_fraction: float = 0.2, split_seed: int = 0, normalize=Normalize(255.0),
                 name: str = "") -> LabeledData:
    """An ImageFolder tree: one folder per class of images (`root/<class>/*.jpg`, classes numbered in sorted folder
    order and named by their folders), either with `train/` and `test/` (or `val/`) subtrees or without, then
    `test_fraction` of each class's images (drawn with `split_seed`) are held out for testing. Images are resized and
    center-cropped to `size`."""
    root = Path(root)
    expected = "one folder per class holding its images (root/<class>/*.jpg), or train/ and test/ (or val/) folders " \
               "laid out that way"
    held = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if (root / "train").is_dir() and held is not None:
        train, test = _class_folders(root / "train", expected, ""), _class_folders(held, expected, "")
        if sorted(train) != sorted(test):
            missing = sorted(set(train) ^ set(test))
            raise layout_error(root, "the same class folders under train/ and " + held.name + "/",
                               f"classes in only one of them: {', '.join(missing[:8])}")
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        every = _class_folders(root, expected, "")
        rng = random.Random(split_seed)
        train, test = {}, {}
        for c, files in every.items():
            files = list(files)
            rng.shuffle(files)
            cut = max(1, int(round(test_fraction * len(files))))
            if cut >= len(files):
                raise layout_error(root / c, "at least two images per class (one to train, one to test)",
                                   f"{len(files)}")
            test[c], train[c] = sorted(files[:cut]), sorted(files[cut:])
    classes = sorted(train)
    paths = {s: [(p, i) for i, c in enumerate(classes) for p in d[c]] for s, d in (("train", train), ("test", test))}
    scan_images([p for s in ("train", "test") for p, _ in paths[s]], same_size=not size)
    return from_files([p for p, _ in paths["train"]], [i for _, i in paths["train"]],
                      [p for p, _ in paths["test"]], [i for _, i in paths["test"]], name or root.name, size,
                      normalize, {"image_folder": str(root), "classes": len(classes),
                                  "train_images": len(paths["train"]), "test_images": len(paths["test"])},
                      class_names=classes)


def split_image_folder(root, classes_per_task: int = 20, n_tasks: Optional[int] = None, setting: str = "class",
                       size: int = 224, test_fraction: float = 0.2, split_seed: int = 0, name: str = "") -> Stream:
    """An ImageFolder tree's classes (sorted) in tasks of `classes_per_task` consecutive classes, the first `n_tasks`
    of them (None: all)."""
    data = image_folder(root, size, test_fraction, split_seed, name=name)
    return split(data, classes_per_task, n_tasks=n_tasks, setting=setting, name=name or f"split-{Path(root).name}")


# ---- CORe50 ------------------------------------------------------------------------------------------------------

CORE50_TRAIN_SESSIONS = (1, 2, 4, 5, 6, 8, 9, 11)  # the NI protocol of Lomonaco & Maltoni (2017)
CORE50_TEST_SESSIONS = (3, 7, 10)


def core50(root, labels: str = "object", size: int = 0, sessions: Sequence[int] = CORE50_TRAIN_SESSIONS,
           n_tasks: Optional[int] = None, normalize=Normalize(255.0)) -> Stream:
    """CORe50 New Instances, domain-incremental: one task per training session (s1, s2, s4, s5, s6, s8, s9, s11 by
    default), each with all 50 objects; every task is scored on the same test set, sessions s3, s7 and s10. `root`:
    the `core50_128x128` folder (s1..s11/o1..o50/*.png). labels: "object" (50 classes) or "category" (10: objects
    5k+1..5k+5 form category k); n_tasks: the first sessions only (None: all)."""
    root = Path(root)
    if labels not in ("object", "category"):
        raise ValueError(f"labels must be 'object' or 'category', got {labels!r}")
    fix = "Download core50_128x128.zip from https://vlomonaco.github.io/core50/ and unzip it in the data root."
    expected = "core50_128x128's layout: session folders s1..s11, each with object folders o1..o50 of PNG frames"
    sessions = list(sessions)[:n_tasks or None]
    needed = sorted(set(sessions) | set(CORE50_TEST_SESSIONS))
    if not root.is_dir():
        raise layout_error(root, expected, _listing(root), fix)

    def session(s: int) -> Tuple[List[Path], List[int]]:
        folder = root / f"s{s}"
        if not folder.is_dir():
            raise layout_error(root, expected, f"no s{s}/ (the folder holds: {_listing(root)})", fix)
        paths, ys = [], []
        for o in range(1, 51):
            files = _images_in(folder / f"o{o}") if (folder / f"o{o}").is_dir() else []
            if not files:
                raise layout_error(folder / f"o{o}", f"the PNG frames of object {o} in session {s}",
                                   _listing(folder / f"o{o}") if (folder / f"o{o}").exists() else
                                   f"no such folder (s{s}/ holds: {_listing(folder)})", fix)
            paths += files
            ys += [(o - 1) if labels == "object" else (o - 1) // 5] * len(files)
        return paths, ys

    read = {s: session(s) for s in needed}
    test_paths = [p for s in CORE50_TEST_SESSIONS for p in read[s][0]]
    test_y = torch.tensor([y for s in CORE50_TEST_SESSIONS for y in read[s][1]])
    test = DatasetExamples(ImageFiles(test_paths, size), test_y)  # one object: scored once per row
    n_classes = 50 if labels == "object" else 10
    tasks = [Task(f"s{s}", DatasetExamples(ImageFiles(read[s][0], size), torch.tensor(read[s][1])), None, test, None,
                  tuple(range(n_classes)), 0, decode=normalize) for s in sessions]
    info = {"data_source": {"dataset": "CORe50", "folder": str(root), "labels": labels,
                            "train_sessions": list(sessions), "test_sessions": list(CORE50_TEST_SESSIONS)},
            "class_order": [list(range(n_classes))] * len(tasks)}
    return Stream("core50-ni", tasks, [n_classes], "domain", info=info)


def dataset_folder(data_root: str, name: str) -> Path:
    """`name` under the data root (--data-root, else $CLFRAMEWORK_DATA, else ~/.cache/clframework/data)."""
    return resolve_root(data_root or None) / name
