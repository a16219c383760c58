"""Result files. Every file is written to a temporary name in its folder, flushed to disk and renamed, so a crash
or a full disk never leaves half a file: either the new complete file or the previous one is there."""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, IO


class OutputError(RuntimeError):
    """A result file could not be written (full disk, unwritable folder); the previous file, if any, is intact."""


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(file)` on a temporary file next to `path`, fsync it, then rename it onto `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {path.parent}: {exc.strerror or exc}") from None
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system: nothing was written
            pass
        if isinstance(exc, OSError):
            kept = " (the previous complete file is kept)" if path.exists() else ""
            fix = {errno.EROFS: "remount it writable", errno.EACCES: f"make {path.parent} writable",
                   errno.EPERM: f"make {path.parent} writable"}.get(exc.errno, "free space")
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}{kept}; {fix} or choose another "
                              f"--out") from None
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    data = text.encode()
    return write_atomic(path, lambda f: f.write(data))


def finite_json(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None, which every JSON reader accepts."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def write_json(path: Path, data: Any) -> Path:
    """JSON without NaN or Infinity (non-finite numbers become null), written atomically."""
    return write_text(path, json.dumps(finite_json(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file clframework wrote; a damaged one is an error naming the file (the parser's message alone named
    none) and what to do."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is damaged and cannot be read as JSON ({exc}); restore it, or delete it and run "
                         f"the command that wrote it again") from None


def matrix_csv(result: dict) -> str:
    """The accuracy matrix with labels: first the untrained model's row, then one row per task trained."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["after_task"] + list(result["tasks"]))
    writer.writerow(["untrained"] + list(result["initial_accuracy"]))
    for name, row in zip(result["tasks"], result["accuracy_matrix"]):
        writer.writerow([name] + list(row))
    return buf.getvalue()
