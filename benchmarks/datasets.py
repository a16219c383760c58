"""Real datasets through torchvision's dataset classes, read once per process as uint8 tensors (decoded to
normalized floats per minibatch, `stream.Normalize`).

Where the files are looked for, in order: the explicit `data_root` (`--data-root`), else `$CLFRAMEWORK_DATA`, else
`~/.cache/clframework/data`; in each, torchvision's own layout (`FashionMNIST/raw/`, `cifar-10-batches-py/`, ...) and,
for MNIST-like sets, the four IDX files directly in the folder (gzip or not). A folder the user named (`--data-root` or
`$CLFRAMEWORK_DATA`) is used alone: no other folder is searched, a folder that does not exist is an error listing the
files, and a download (when allowed) goes into that folder. Without one, Fashion-MNIST is also found in
`/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`). When nothing is found the files are
downloaded (online users, unless $CLFRAMEWORK_NO_DOWNLOAD is set) into a temporary folder that is moved into place
only when complete; offline, the loader stops with an error that names the files, the folders it searched and what
to do. Nothing is ever substituted.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # torch (and the tensors' LabeledData) only when data are read: `clframework list` stays fast
    import torch

    from .scenarios import LabeledData

ENV_VAR = "CLFRAMEWORK_DATA"
NO_DOWNLOAD_VAR = "CLFRAMEWORK_NO_DOWNLOAD"  # set (to anything) to never try the network
DEFAULT_ROOT = Path("~/.cache/clframework/data")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_CACHE = Path("~/.cache/clframework/torchvision")  # torchvision_root's staged copies of flat IDX folders
EMBEDDED_HINT = "split-mnist-5k or permuted-mnist-5k (embedded real MNIST subset, no download needed)"


class DatasetNotFound(FileNotFoundError):
    """The dataset's files are neither on disk nor downloadable; the message says where we looked and what to do."""


class DatasetCorrupt(RuntimeError):
    """A dataset file exists but cannot be read as what it claims to be."""


@dataclass(frozen=True)
class Source:
    """A dataset: its torchvision class, the files it needs, and extra folders where a system may hold them."""

    name: str
    tv_name: str  # the torchvision.datasets class (imported only when needed: torchvision takes seconds to import)
    kind: str  # "idx" (MNIST-like) or "cifar"
    n_classes: int
    file_names: Tuple[str, ...]  # torchvision's file names (tests/test_datasets.py checks them against torchvision)
    folder: str = ""  # CIFAR: the folder torchvision's archive unpacks to
    system_dirs: Tuple[Path, ...] = ()
    apt_hint: str = ""  # how a Debian/Ubuntu system gets the files

    @property
    def tv_class(self) -> type:
        import torchvision.datasets

        return getattr(torchvision.datasets, self.tv_name)

    @property
    def files(self) -> List[str]:
        """The file names the loader needs (IDX files may also carry a .gz suffix)."""
        return list(self.file_names)

    def folders(self, root: Path, explicit: bool = False) -> List[Path]:
        """Where the files are looked for; an explicit root (--data-root, $CLFRAMEWORK_DATA) is used alone."""
        if self.kind == "idx":
            return [root / self.tv_name / "raw", root, *(() if explicit else self.system_dirs)]
        return [root / self.folder]

    @property
    def subfolder(self) -> str:
        """What torchvision's download creates under its root."""
        return self.tv_name if self.kind == "idx" else self.folder


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SOURCES: Dict[str, Source] = {
    "mnist": Source("MNIST", "MNIST", "idx", 10, IDX_FILES),
    "fashion-mnist": Source("Fashion-MNIST", "FashionMNIST", "idx", 10, IDX_FILES, system_dirs=(DEBIAN_FASHION,),
                            apt_hint=f"apt-get install -y dataset-fashion-mnist (installs them in {DEBIAN_FASHION})"),
    "cifar10": Source("CIFAR-10", "CIFAR10", "cifar", 10, tuple(f"data_batch_{i}" for i in range(1, 6))
                      + ("test_batch", "batches.meta"), folder="cifar-10-batches-py"),
    "cifar100": Source("CIFAR-100", "CIFAR100", "cifar", 100, ("train", "test", "meta"), folder="cifar-100-python"),
}


def resolve_root(data_root: Optional[str] = None) -> Path:
    """The explicit root, else $CLFRAMEWORK_DATA, else ~/.cache/clframework/data."""
    root = data_root or os.environ.get(ENV_VAR) or str(DEFAULT_ROOT)
    return Path(root).expanduser().resolve()


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def is_explicit(data_root: Optional[str] = None) -> bool:
    """Whether the user named the data folder (--data-root or $CLFRAMEWORK_DATA): then nothing else is searched and
    nothing is downloaded, so results never come from data the user did not point at."""
    return bool(data_root or os.environ.get(ENV_VAR))


def _locate_in(src: Source, folders: List[Path]) -> Optional[Dict[str, Path]]:
    for folder in folders:
        found = {}
        for f in src.files:
            candidates = [folder / f, folder / f"{f}.gz"] if src.kind == "idx" else [folder / f]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                break
            found[f] = hit
        else:
            return found
    return None


def locate(name: str, data_root: Optional[str] = None) -> Optional[Dict[str, Path]]:
    """The first searched folder holding every file the dataset needs (file name -> path), or None."""
    src = _source(name)
    return _locate_in(src, src.folders(resolve_root(data_root), is_explicit(data_root)))


def available(name: str, data_root: Optional[str] = None) -> bool:
    """Whether the dataset's files are on this machine (no download attempted)."""
    return locate(name, data_root) is not None


def describe(name: str) -> str:
    """One line for `clframework list`: where the data come from."""
    src = _source(name)
    extra = "".join(f" or {d}" for d in src.system_dirs)
    return (f"torchvision.datasets.{src.tv_name} under --data-root / ${ENV_VAR} / {DEFAULT_ROOT}{extra}; "
            f"downloaded when online")


def missing_files(name: str, root: Path) -> List[str]:
    """The dataset's files absent from the explicit root's folders (the folder that holds the most of them)."""
    src = _source(name)
    best: List[str] = list(src.files)
    for folder in src.folders(root, explicit=True):
        missing = [f for f in src.files if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]
        if len(missing) < len(best):
            best = missing
    return best


def missing_message(name: str, root: Path, reason: str, explicit: bool = False) -> str:
    src = _source(name)
    suffix = " (each may also be gzipped, .gz)" if src.kind == "idx" else ""
    where = "\n".join(f"  {d}" for d in src.folders(root, explicit))
    fixes = [f"pass --data-root DIR (or set {ENV_VAR}=DIR) pointing at a folder that holds them",
             f"run an embedded benchmark instead: {EMBEDDED_HINT}"]
    if src.apt_hint:
        fixes.insert(1, f"on Debian/Ubuntu, as root: {src.apt_hint}")
    if src.kind == "cifar":
        fixes.insert(1, f"or put torchvision's archive {src.tv_class.filename} in {root}: it is checked and unpacked "
                        f"without a download")
    return (f"{src.name} not found: {reason}.\nExpected files{suffix}: {', '.join(src.files)}\n"
            f"Looked in:\n{where}\nWhat to do:\n" + "\n".join(f"  - {f}" for f in fixes))


def _download(src: Source, root: Path) -> None:
    """torchvision's download (checksums included) into a temporary folder, moved into place only when complete."""
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".download-{src.subfolder}-", dir=root))
    archive = root / getattr(src.tv_class, "filename", "")
    if src.kind == "cifar" and archive.is_file():  # torchvision unpacks an archive already there (md5 checked)
        (tmp / archive.name).symlink_to(archive)
    try:
        src.tv_class(str(tmp), train=True, download=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(root.iterdir()):
            root.rmdir()
        raise
    staged, target = tmp / src.subfolder, root / src.subfolder
    for path in sorted(staged.rglob("*")):
        if path.is_file():
            dest = target / path.relative_to(staged)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
    shutil.rmtree(tmp, ignore_errors=True)


def _find_or_download(name: str, root: Path, download: bool, explicit: bool = False) -> Dict[str, Path]:
    src = _source(name)
    found = _locate_in(src, src.folders(root, explicit))
    if found is not None:
        return found
    for folder in src.folders(root, explicit):  # some of the files but not all: name the missing, download nothing
        missing = [f for f in src.files if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]
        if 0 < len(missing) < len(src.files):
            raise DatasetNotFound(missing_message(
                name, root, f"{folder} holds {len(src.files) - len(missing)} of its {len(src.files)} files and lacks "
                            f"{', '.join(missing)}; put {'it' if len(missing) == 1 else 'them'} there (nothing is "
                            f"downloaded over a partial copy)", explicit))
    if explicit and not root.is_dir():
        raise DatasetNotFound(missing_message(
            name, root, f"the data folder you named ({root}) does not exist, so {', '.join(src.files)} are missing; "
                        f"a folder named by --data-root or ${ENV_VAR} is used alone, never another one", True))
    if explicit and (not download or os.environ.get(NO_DOWNLOAD_VAR)):
        raise DatasetNotFound(missing_message(
            name, root, f"the data folder you named ({root}) lacks {', '.join(missing_files(name, root))} and "
                        f"downloading is off; a folder named by --data-root or ${ENV_VAR} is used alone, never "
                        f"another one", True))
    if not download or os.environ.get(NO_DOWNLOAD_VAR):
        raise DatasetNotFound(missing_message(name, root, "its files are not on disk and downloading is off"))
    try:
        _download(src, root)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DatasetNotFound(missing_message(
            name, root, f"its files are not on disk and the download failed (offline?): {exc}")) from None
    found = locate(name, str(root))
    if found is None:
        raise DatasetNotFound(missing_message(name, root, "the download finished but the files are still missing"))
    return found


def _corrupt(src: Source, paths, exc: BaseException) -> DatasetCorrupt:
    listed = ", ".join(str(p) for p in paths)
    return DatasetCorrupt(f"{src.name}: cannot read {listed} ({type(exc).__name__}: {exc}). The files are damaged or "
                          f"not in the expected format; delete them and download again (or reinstall the package "
                          f"that provided them).")


def _stage_idx(src: Source, found: Dict[str, Path], tmp: Path) -> None:
    """Give torchvision's class its `<Class>/raw/` layout: gunzip .gz files, link plain ones."""
    raw = tmp / src.tv_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for fname, path in found.items():
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fin, open(raw / fname, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            (raw / fname).symlink_to(path)


def _load_idx(src: Source, found: Dict[str, Path]) -> LabeledData:
    """MNIST-like: uint8 images [N, 1, 28, 28], decoded per minibatch to float in [0, 1]."""
    from .scenarios import LabeledData
    from .stream import Normalize
    parts = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _stage_idx(src, found, Path(tmp))
            for split, train in (("train", True), ("test", False)):
                ds = src.tv_class(tmp, train=train, download=False)
                parts[split] = (ds.data, ds.targets)
    except (OSError, EOFError, AssertionError, ValueError, TypeError, RuntimeError, IndexError, zlib.error) as exc:
        raise _corrupt(src, found.values(), exc) from None
    out = []
    for split, (x, y) in parts.items():
        if x.ndim != 3 or tuple(x.shape[1:]) != (28, 28) or len(x) != len(y) or len(y) == 0:
            raise _corrupt(src, found.values(), ValueError(
                f"{split} images have shape {tuple(x.shape)} for {len(y)} labels; expected [N, 28, 28] with N labels"))
        _check_labels(src, found.values(), split, y)
        out += [x.unsqueeze(1), y.long()]
    return LabeledData(src.name, *out, decode=Normalize(255.0))


def _check_labels(src: Source, paths, split: str, y: torch.Tensor) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= src.n_classes):
        raise _corrupt(src, paths, ValueError(
            f"{split} labels range over [{int(y.min())}, {int(y.max())}], outside 0..{src.n_classes - 1}"))


def _unchecked(cls: type) -> type:
    """torchvision's CIFAR class without its md5 comparison when reading files already on disk.

    The download path still verifies the archive's md5; for files on disk, parsing and shape checks catch damage, and
    the same code reads the real batches and any other file in the format (e.g. the tests' small ones).
    """
    return type(cls.__name__, (cls,), {"train_list": [[f, None] for f, _ in cls.train_list],
                                       "test_list": [[f, None] for f, _ in cls.test_list],
                                       "meta": {**cls.meta, "md5": None}})


def _load_cifar(src: Source, found: Dict[str, Path]) -> LabeledData:
    """CIFAR: uint8 HWC -> uint8 [N, 3, 32, 32], decoded per minibatch to float with each channel standardized by the
    training set's mean and std."""
    import torch

    from .scenarios import LabeledData
    from .stream import Normalize
    root = str(next(iter(found.values())).parent.parent)
    cls = _unchecked(src.tv_class)
    parts = {}
    try:
        for split, train in (("train", True), ("test", False)):
            ds = cls(root, train=train, download=False)
            parts[split] = (torch.from_numpy(ds.data), torch.tensor(ds.targets, dtype=torch.long))
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError, IndexError, AttributeError,
            RuntimeError) as exc:
        raise _corrupt(src, found.values(), exc) from None
    xs = {}
    for split, (x, y) in parts.items():
        if x.ndim != 4 or tuple(x.shape[1:]) != (32, 32, 3) or len(x) != len(y) or len(y) == 0:
            raise _corrupt(src, found.values(), ValueError(
                f"{split} images have shape {tuple(x.shape)} for {len(y)} labels; expected [N, 32, 32, 3]"))
        _check_labels(src, found.values(), split, y)
        xs[split] = x.permute(0, 3, 1, 2).contiguous()
    train = xs["train"].to(torch.float32).div_(255.0)  # the statistics once, as of the eagerly normalized data
    mean = train.mean(dim=(0, 2, 3))
    std = train.std(dim=(0, 2, 3)).clamp_min(1e-6)
    del train
    return LabeledData(src.name, xs["train"], parts["train"][1], xs["test"], parts["test"][1],
                       decode=Normalize(255.0, tuple(mean.tolist()), tuple(std.tolist())))


@lru_cache(maxsize=None)
def _load_cached(name: str, root: str, download: bool, explicit: bool = False) -> LabeledData:
    src = _source(name)
    found = _find_or_download(name, Path(root), download, explicit)
    data = (_load_idx if src.kind == "idx" else _load_cifar)(src, found)
    data.source = {"dataset": src.name, "files": [str(p) for p in found.values()]}
    return data


def load(name: str, data_root: Optional[str] = None, download: bool = True) -> LabeledData:
    """A dataset as uint8 tensors and its decoding, read once per process (every task and strategy share them)."""
    return _load_cached(name, str(resolve_root(data_root)), download, is_explicit(data_root))


def torchvision_root(name: str, data_root: Optional[str] = None, cache: Optional[Path] = None) -> Path:
    """A root that torchvision's own class for the dataset reads (`FashionMNIST(torchvision_root("fashion-mnist"),
    train=True, transform=...)`), from the files this module finds (no download). torchvision wants
    `ROOT/FashionMNIST/raw/` with the IDX files uncompressed; a flat folder such as Debian's
    /usr/share/datasets/fashion-mnist (gzipped files) is staged once under `cache` (default
    ~/.cache/clframework/torchvision) in that layout. For CIFAR the folder found is already torchvision's."""
    src = _source(name)
    found = _locate_in(src, src.folders(resolve_root(data_root), is_explicit(data_root)))
    if found is None:
        raise DatasetNotFound(missing_message(name, resolve_root(data_root), "its files are not on disk",
                                              is_explicit(data_root)))
    folder = next(iter(found.values())).parent
    if src.kind == "cifar":
        return folder.parent
    if folder.name == "raw" and folder.parent.name == src.tv_name and all(p.suffix != ".gz" for p in found.values()):
        return folder.parent.parent
    root = Path(cache or TORCHVISION_CACHE).expanduser().resolve() / hashlib.sha1(str(folder).encode()).hexdigest()[:12]
    raw = root / src.tv_name / "raw"
    if not all((raw / f).is_file() for f in src.files):  # staged in a temporary folder, moved into place whole
        tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=_made(root.parent)))
        try:
            _stage_idx(src, found, tmp)
            shutil.rmtree(raw, ignore_errors=True)
            _made(raw.parent)
            os.replace(tmp / src.tv_name / "raw", raw)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def mnist(data_root: Optional[str] = None, download: bool = True) -> LabeledData:
    return load("mnist", data_root, download)


def fashion_mnist(data_root: Optional[str] = None, download: bool = True) -> LabeledData:
    return load("fashion-mnist", data_root, download)


def cifar10(data_root: Optional[str] = None, download: bool = True) -> LabeledData:
    return load("cifar10", data_root, download)


def cifar100(data_root: Optional[str] = None, download: bool = True) -> LabeledData:
    return load("cifar100", data_root, download)
