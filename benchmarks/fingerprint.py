"""A stream's data fingerprint, kept in every checkpoint so that `--resume` refuses data that changed since (issue 30:
an image tree with three files removed between a kill and the resume gave a matrix matching neither tree).

Cheap: files are fingerprinted by name, size and modification time (no file is read), one entry per folder; tensors
held in memory by a SHA-1 of their bytes; each task's split by its number of examples and a SHA-1 of its labels.
"""
from __future__ import annotations

import hashlib
import os
from typing import Dict, List

import torch


def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _tensor_digest(x: torch.Tensor) -> str:
    return _sha(x.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()) if x.numel() else _sha(b"")


def _file_sources(paths: List[str], sources: Dict[str, list]) -> None:
    """One entry per folder: [files, bytes, digest of the names, sizes and modification times]."""
    folders: Dict[str, list] = {}
    for p in paths:
        folders.setdefault(os.path.dirname(p), []).append(p)
    for folder, files in folders.items():
        lines, total = [], 0
        for p in sorted(files):
            try:
                st = os.stat(p)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            total += max(size, 0)
            lines.append(f"{os.path.basename(p)}\t{size}\t{mtime}")
        sources[f"folder {folder}"] = [len(files), total, _sha("\n".join(lines).encode())]


def _source(examples, sources: Dict[str, list], seen: Dict[int, None], files: set) -> None:
    dataset = getattr(examples, "dataset", None)
    key = id(dataset if dataset is not None else getattr(examples, "x", None))
    if key in seen:
        return
    seen[key] = None
    if dataset is None:
        x = examples.x
        sources[f"in-memory tensor {len(seen)} {tuple(x.shape)} {x.dtype}"] = [len(x), x.numel(), _tensor_digest(x)]
    elif hasattr(dataset, "paths"):  # image files
        files.update(dataset.paths)
    elif hasattr(dataset, "path"):  # a memory-mapped array
        files.add(dataset.path)
    else:
        sources[f"dataset {len(seen)} {type(dataset).__name__}"] = [len(dataset), 0, ""]


def fingerprint(stream) -> dict:
    """{"splits": {"TASK/SPLIT": [examples, labels digest]}, "sources": {what: [items, bytes, digest]}}, computed
    once per stream object."""
    cached = getattr(stream, "_fingerprint", None)  # on the object: a replaced stream (dataclasses.replace) has its own
    if cached is not None:
        return cached
    splits, sources, seen, files = {}, {}, {}, set()
    for task in stream.tasks:
        for split, ex in task.splits.items():
            if ex is None:
                continue
            rows = b"" if ex.rows is None else ex.rows.cpu().numpy().tobytes()
            splits[f"{task.name}/{split}"] = [len(ex), _sha(ex.y.cpu().numpy().tobytes() + rows)]
            _source(ex, sources, seen, files)
    _file_sources(sorted(files), sources)
    out = {"splits": splits, "sources": sources}
    stream._fingerprint = out
    return out


def changes(saved: dict, now: dict, limit: int = 5) -> List[str]:
    """What differs between two fingerprints, in words ("folder data/train/cat: 16 files in the checkpoint, 13
    now"); [] when they agree."""
    out = []
    for part, unit in (("sources", "files"), ("splits", "examples")):
        old, new = saved.get(part, {}), now.get(part, {})
        for key in sorted(set(old) | set(new)):
            if key not in new:
                out.append(f"{key}: in the checkpoint, absent now")
            elif key not in old:
                out.append(f"{key}: new (absent in the checkpoint)")
            elif old[key][0] != new[key][0]:
                what = unit if key.startswith("folder") or part == "splits" else "items"
                out.append(f"{key}: {old[key][0]} {what} in the checkpoint, {new[key][0]} now")
            elif list(old[key]) != list(new[key]):
                out.append(f"{key}: " + ("the same number of files, but their names, sizes or modification times "
                                         "differ" if key.startswith("folder") else "the same size, other content"))
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])
