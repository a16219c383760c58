"""`clframework runs [FOLDER]`: past runs and studies found under a folder, read from their result files only.

A study is a folder with `summary.json` (compare), `tune.json` (tune) or `reproduction.json` (reproduce); a run is a
folder with `results.json` that is not inside a study. Nothing here imports torch, so the listing is instant.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

STUDY_FILES = {"summary.json": "compare", "reproduction.json": "reproduce", "tune.json": "tune"}


def _date(data: dict, path: Path) -> str:
    """When it finished: the provenance's end time, else the file's modification time (older result files)."""
    finished = (data.get("provenance") or {}).get("finished")
    if finished:
        return datetime.fromisoformat(finished).strftime("%Y-%m-%d %H:%M")
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _acc(kind: str, data: dict) -> str:
    if kind == "run":
        return f"{data['metrics']['acc']:.4f}"
    if kind == "compare":
        return "  ".join(f"{name} {s['acc_mean']:.4f}" for name, s in data["strategies"].items())
    if kind == "reproduce":
        return "  ".join(f"{name} {a['acc_mean']:.4f}" for name, a in data["arms"].items())
    return f"{data['test_acc_mean']:.4f} (chosen {', '.join(f'{k}={v}' for k, v in data['chosen'].items())})"


def find(folder: Path) -> List[dict]:
    """One row per run or study under `folder` (the folder itself included), oldest first."""
    folder = Path(folder)
    studies = {p.parent: (p, STUDY_FILES[p.name]) for name in STUDY_FILES for p in folder.rglob(name)}
    found = dict(studies)
    for p in folder.rglob("results.json"):
        if not any(parent in studies for parent in p.parents):
            found.setdefault(p.parent, (p, "run"))
    rows = []
    for where, (path, kind) in found.items():
        label = str(where.relative_to(folder)) if where != folder else where.name
        try:
            data = json.loads(path.read_text())
            row = {"label": label, "kind": kind, "benchmark": data.get("benchmark", "?"), "acc": _acc(kind, data),
                   "status": data.get("status", "finished"), "date": _date(data, path)}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            row = {"label": label, "kind": kind, "benchmark": "?", "acc": "-",
                   "status": f"unreadable {path.name} ({type(exc).__name__})", "date": _date({}, path)}
        rows.append(row)
    return sorted(rows, key=lambda r: (r["date"], r["label"]))


def format_rows(rows: List[dict]) -> str:
    header = {"label": "label", "kind": "kind", "benchmark": "benchmark", "acc": "ACC", "status": "status",
              "date": "date (UTC)"}
    cols = ("date", "label", "kind", "benchmark", "status", "acc")
    width = {c: max(len(str(r[c])) for r in [header, *rows]) for c in cols[:-1]}
    return "\n".join("  ".join(f"{str(r[c]):<{width[c]}}" for c in cols[:-1]) + "  " + str(r["acc"])
                     for r in [header, *rows])


def list_runs(folder: Optional[Path] = None) -> str:
    folder = Path(folder or "runs")
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}; give the folder that holds your runs: clframework runs FOLDER")
    rows = find(folder)
    if not rows:
        return f"no runs or studies under {folder} (looked for results.json, {', '.join(STUDY_FILES)})"
    return format_rows(rows)
