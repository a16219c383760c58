"""Checkpoint files and output folders: what makes a long study survive Ctrl-C, `kill -9`, a full disk or a second
process pointed at the same folder (docs/reliability.md).

A run's folder holds, while it trains, `checkpoint.pt` (rewritten atomically after every task and every
`checkpoint_every` optimizer steps) and `config.json` (the resolved configuration, checked on `--resume`); when it
finishes, `results.json` (written last: its presence marks the run done), `model.pt` and `strategy.pt`.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from clframework.evaluation.results import OutputError, write_atomic

from .folders import (CHECKPOINT, CONFIG, FAILED, LOCK, MARKER, MODEL, RESULTS, SCORER,  # noqa: F401
                      STRATEGY_STATE, STUDY, in_use, lock_holder)

FORMAT = 1
CHECKPOINT_FACTOR = 4  # a checkpoint holds the model, up to two optimizer buffers per parameter (Adam) and a strategy's copy
COPIES = 2  # while a checkpoint is written, the previous one stays until the rename
MARGIN = 16 * 2**20  # batch order, curves, the JSON and plot files


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Disk space a run of `model` needs for its checkpoints, estimated before training: parameter and buffer bytes
    times CHECKPOINT_FACTOR, times COPIES, plus MARGIN. A replay memory's examples come on top (not known yet)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) * CHECKPOINT_FACTOR * COPIES + MARGIN


def check_free_space(folder: Path, needed: int, free: Optional[int] = None) -> None:
    """Refuse to train into a folder whose file system has less than `needed` bytes free (`free`: a test's figure
    instead of shutil.disk_usage's), so a full disk is not first noticed at a checkpoint after a task has trained."""
    if free is None:
        existing = Path(folder)
        while not existing.exists() and existing != existing.parent:  # a study's run folder is made at its first file
            existing = existing.parent
        free = shutil.disk_usage(existing).free
    if free < needed:
        raise OutputError(f"not enough free space in {folder} for this run's checkpoints: {needed / 2**20:.1f} MiB "
                          f"needed, {free / 2**20:.1f} MiB free; free space or choose another --out")


def save_torch(path: Path, obj: Any) -> Path:
    """torch.save to a temporary file, then rename: a kill at any moment leaves the previous file whole."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getbuffer()
    return write_atomic(Path(path), lambda f: f.write(data))


def save_checkpoint(path: Path, state: Dict[str, Any]) -> Path:
    return save_torch(path, {"format": FORMAT, **state})


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """A checkpoint on the CPU (tensors only: weights_only loading, no code runs), memory-mapped: restoring a large
    model does not hold a second copy of it in memory."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)  # file-backed pages, not a copy
    except Exception as exc:
        raise OutputError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); delete it to start the run "
                          f"over, or use --overwrite") from None
    if state.get("format") != FORMAT:
        raise OutputError(f"checkpoint {path} has format {state.get('format')!r}, this clframework reads {FORMAT}")
    return state


def config_differences(saved: Any, now: Any, prefix: str = "") -> List[str]:
    """Human-readable differences between two JSON-like configurations: ["hparams.c: 1.0 in the folder, 0.5 now"]."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{name}: absent in the folder, {now[key]!r} now")
            elif key not in now:
                out.append(f"{name}: {saved[key]!r} in the folder, absent now")
            else:
                out += config_differences(saved[key], now[key], name)
        return out
    return [] if saved == now else [f"{prefix}: {saved!r} in the folder, {now!r} now"]


def as_json(data: Any) -> Any:
    """The value as JSON gives it back (tuples become lists; inf and nan become the strings "inf" and "nan", as
    strict JSON has no such numbers), so saved and current configurations compare."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {str(k): as_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [as_json(v) for v in data]
    return json.loads(json.dumps(data))


def check_same_config(folder: Path, config: dict, as_now: Callable[[Any], Any] = lambda saved: saved) -> None:
    """Raise naming every difference between `config` and the one saved in `folder`/config.json (read through
    `as_now`, which puts a configuration an earlier version saved in this version's terms)."""
    path = Path(folder) / CONFIG
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(f"--resume: cannot read {path} ({exc}); use --overwrite to start this run over") from None
    refuse_other_config(as_now(saved), config, f"{folder} holds a run")


def refuse_other_config(saved: Any, config: dict, what: str) -> None:
    """Raise a ValueError naming each difference between a saved configuration and the command's."""
    diff = config_differences(saved, as_json(config))
    if diff:
        raise ValueError(f"--resume: {what} with another configuration ({'; '.join(diff)}); run the same command as "
                         f"before, or use another --out (or --overwrite to discard it)")


_held: Dict[Path, int] = {}  # folders this process holds a lock on -> nesting depth


def lock_in_workers(pids: List[int]) -> None:
    """Add worker processes to the lock of every folder this process holds: the folder stays locked until each of
    them has stopped too, even if this process is killed first."""
    for folder in _held:
        with open(folder / LOCK, "a") as f:
            f.writelines(f"worker {pid}\n" for pid in pids)


def _program(pid: int, host: str) -> str:
    """' (NAME)': the program of a process of this host, as the kernel names it (it tells a reused pid apart)."""
    if host != socket.gethostname():
        return ""
    try:
        return f" ({Path(f'/proc/{pid}/comm').read_text().strip()})"
    except OSError:
        return ""


class OutputFolder:
    """Context manager: create the folder, prove it writable, refuse a non-empty one unless resuming or
    overwriting, and hold a lock file (pid and host) so that a second process cannot write into it meanwhile.

    Nested use by the same process (reproduce -> compare -> run) only counts depth."""

    def __init__(self, path: Path, resume: bool = False, overwrite: bool = False):
        if resume and overwrite:
            raise ValueError("--resume continues the runs in the folder and --overwrite discards them; give one of "
                             "the two")
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self.key = self.path.absolute()

    def __enter__(self) -> "OutputFolder":
        if self.key in _held:
            _held[self.key] += 1
            return self
        self._prepare()
        _held[self.key] = 1
        return self

    def __exit__(self, *exc) -> None:
        _held[self.key] -= 1
        if _held[self.key] == 0:
            del _held[self.key]
            try:
                (self.path / LOCK).unlink(missing_ok=True)
            except OSError:  # a file system turned read-only: the error in flight says so; the stale lock is taken over
                pass

    def _prepare(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {path} exists and is not a folder; choose a folder name")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
        self._lock()
        try:
            others = [p for p in path.iterdir() if p.name not in (MARKER, LOCK)]
            if others and not (self.resume or self.overwrite):
                raise OutputError(f"output folder {path} is not empty ({len(others)} entries, e.g. {others[0].name}); "
                                  f"add --resume to continue the runs it holds, --overwrite to discard them, or "
                                  f"choose another --out")
            if others and self.overwrite:
                if not (path / MARKER).exists():
                    raise OutputError(f"--overwrite: {path} was not made by clframework (no {MARKER} file), so it is "
                                      f"not emptied; choose another --out")
                for p in others:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            write_atomic(path / MARKER, lambda f: f.write(b"made by clframework: --overwrite may empty this folder\n"))
        except BaseException:
            (path / LOCK).unlink(missing_ok=True)
            raise

    def _lock(self) -> None:
        lock = self.path / LOCK
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host = lock_holder(self.path) or (-1, "")
                if in_use(self.path):
                    raise OutputError(f"output folder {self.path} is in use by process {pid}{_program(pid, host)} on "
                                      f"{host or '?'} (lock file {lock}); wait for it to finish or choose another "
                                      f"--out. If no clframework process writes into it (the writer was killed and "
                                      f"its pid reused, or the lock came from another machine), the lock is stale: "
                                      f"delete {lock}") from None
                lock.unlink(missing_ok=True)  # left by a process that no longer runs (killed): take it over
                continue
            except OSError as exc:
                raise OutputError(f"output folder {self.path} is not writable: {exc.strerror or exc}") from None
            try:
                os.write(fd, me.encode())
            except OSError as exc:
                os.close(fd)
                lock.unlink(missing_ok=True)
                raise OutputError(f"output folder {self.path} is not writable: {exc.strerror or exc}") from None
            os.close(fd)
            return
        raise OutputError(f"cannot take the lock {lock}; remove it if no clframework process uses {self.path}")


def to_device(obj: Any, device: torch.device) -> Any:
    """Every tensor inside nested dicts/lists/tuples moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj

