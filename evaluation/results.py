"""Result files. Every file is written to a temporary name and renamed, so a crash never leaves half a file."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def matrix_csv(result: dict) -> str:
    """The accuracy matrix with labels: first the untrained model's row, then one row per task trained."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["after_task"] + list(result["tasks"]))
    writer.writerow(["untrained"] + list(result["initial_accuracy"]))
    for name, row in zip(result["tasks"], result["accuracy_matrix"]):
        writer.writerow([name] + list(row))
    return buf.getvalue()
