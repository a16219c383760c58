"""`clframework runs [FOLDER]`: past runs and studies found under a folder, read from their result files only.

A study is a folder with `study.json` (its plan, written before its first run), `summary.json` (compare),
`tune.json` or `reproduction.json`; a run is a folder with `results.json`, `checkpoint.pt` or `config.json` that is
not inside a study. Each row says how far it got: finished, diverged, failed, interrupted or running for a run;
finished, partial k/n or running k/n for a study (k of its n runs done). Nothing here imports torch, so the listing
is instant.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

from ..folders import CHECKPOINT, CONFIG, FAILED, RESULTS, STUDY, in_use

STUDY_FILES = {"summary.json": "compare", "reproduction.json": "reproduce", "tune.json": "tune"}
FINAL_FILES = {kind: name for name, kind in STUDY_FILES.items()}  # the file a study writes when it ends
RUN_FILES = (RESULTS, FAILED, CHECKPOINT, CONFIG)
COLUMNS = {"date": "date (UTC)", "label": "label", "kind": "kind", "benchmark": "benchmark", "status": "status",
           "tasks": "tasks", "epochs": "epochs", "seeds": "seeds", "acc": "ACC"}


def _read(path: Path) -> Optional[dict]:
    """A JSON object, or None if the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _date(data: Optional[dict], path: Path) -> str:
    """When it finished: the provenance's end time, else the file's modification time (older result files)."""
    finished = ((data or {}).get("provenance") or {}).get("finished")
    try:
        return datetime.fromisoformat(finished).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _where(status: str, where: Optional[dict]) -> str:
    """`diverged (task 2, epoch 1)`: the status and where it happened (task 1-based, as everywhere for users)."""
    task = (where or {}).get("task")
    return f"{status} (task {task + 1}, epoch {where.get('epoch', '?')})" if isinstance(task, int) else status


def _joined(values) -> str:
    values = sorted({v for v in values if v is not None}, key=str)
    return ",".join(map(str, values)) or "-"


def run_row(folder: Path) -> dict:
    """One run's folder: its status from the files present, with what it trained (tasks, epochs, seed)."""
    results, failed, config = _read(folder / RESULTS), _read(folder / FAILED), _read(folder / CONFIG)
    data = results or failed or {}
    cfg = data.get("config") or (config or {}).get("train") or {}
    tasks = data.get("tasks")
    row = {"benchmark": data.get("benchmark") or (config or {}).get("benchmark") or "?",
           "tasks": str(len(tasks)) if isinstance(tasks, list) else str((config or {}).get("tasks") or "all"),
           "epochs": str(cfg.get("epochs", "-")), "seeds": "1", "acc": "-"}
    if results is not None:
        status = results.get("status", "finished")
        if status == "diverged":
            status = _where("diverged", results.get("diverged_at"))
        else:
            row["acc"] = _number((results.get("metrics") or {}).get("acc"))
        if results.get("health"):  # evaluation/health.py: tasks that learned nothing
            status += f" (learned nothing: task {', '.join(str(h['task'] + 1) for h in results['health'])})"
        return {**row, "status": status, "date": _date(results, folder / RESULTS)}
    if (folder / RESULTS).exists():
        return {**row, "status": f"unreadable {RESULTS}", "date": _date(None, folder / RESULTS)}
    newest = max((folder / f for f in RUN_FILES if (folder / f).exists()), key=lambda p: p.stat().st_mtime)
    if in_use(folder):
        status = "running"
    elif failed is not None:
        status = _where("failed", failed.get("failed_at"))
    else:
        status = "interrupted" if (folder / CHECKPOINT).exists() else "interrupted (no checkpoint yet)"
    return {**row, "status": status, "date": _date(failed, newest)}


def _study_acc(kind: str, data: dict) -> str:
    if kind == "compare":
        return "  ".join(f"{name} {_number(s.get('acc_mean'))}" for name, s in data.get("strategies", {}).items())
    if kind == "reproduce":
        return "  ".join(f"{name} {_number(a.get('acc_mean'))}" for name, a in data.get("arms", {}).items())
    chosen = ", ".join(f"{k}={v}" for k, v in (data.get("chosen") or {}).items())
    return f"{_number(data.get('test_acc_mean'))} (chosen {chosen})"


def study_row(folder: Path, kind: Optional[str]) -> dict:
    """A study's folder: finished when its final file is complete, else partial (or running) k/n, where k counts
    its run folders that finished or diverged and n is the number of runs its plan holds."""
    plan = _read(folder / STUDY) or {}
    kind = plan.get("kind") or kind or "study"
    final_name = FINAL_FILES.get(kind)
    final = _read(folder / final_name) if final_name else None
    rows = [run_row(f) for f in sorted({p.parent for name in RUN_FILES for p in folder.glob(f"*/{name}")})]

    def count(word: str) -> int:
        return sum(r["status"].startswith(word) for r in rows)

    done, diverged, failed = count("finished") + count("diverged"), count("diverged"), count("failed")
    unhealthy = sum("learned nothing" in r["status"] for r in rows)
    partial = (final or {}).get("partial")  # reproduce rewrites its table after every run: "k of n runs"
    total = plan.get("runs") or (int(partial.split()[2]) if isinstance(partial, str) else "?")
    notes = (f", {failed} failed" if failed else "") + (f", {diverged} diverged" if diverged else "") + \
        (f", {unhealthy} learned nothing on some task" if unhealthy else "")
    if final is not None and not partial:
        status = "finished" + notes
    else:
        status = f"{'running' if in_use(folder) else 'partial'} {done}/{total}{notes}"
    seeds = (final or {}).get("seeds") or plan.get("seeds")
    tasks = plan.get("tasks") or len((final or {}).get("tasks") or []) or _joined(r["tasks"] for r in rows)
    date = (_date(final, folder / final_name) if final is not None else
            max([r["date"] for r in rows] + [_date(None, folder / STUDY)]))
    epochs = _joined(plan.get("epochs") or [r["epochs"] for r in rows])
    return {"kind": kind, "benchmark": plan.get("benchmark") or (final or {}).get("benchmark") or "?",
            "status": status, "tasks": str(tasks), "epochs": epochs,
            "seeds": str(len(seeds) if isinstance(seeds, list) else seeds or "-"),
            "acc": _study_acc(kind, final) if final is not None else "-", "date": date}


def find(folder: Path) -> List[dict]:
    """One row per run or study under `folder` (the folder itself included), oldest first."""
    folder = Path(folder)
    studies = {p.parent: STUDY_FILES.get(p.name) for name in [STUDY, *STUDY_FILES] for p in folder.rglob(name)}
    runs = {p.parent for name in RUN_FILES for p in folder.rglob(name)
            if p.parent not in studies and not any(parent in studies for parent in p.parents)}
    rows = []
    for where in [*studies, *runs]:
        label = str(where.relative_to(folder)) if where != folder else where.name
        try:
            row = study_row(where, studies[where]) if where in studies else {"kind": "run", **run_row(where)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a damaged file: say which
            row = {"kind": "?", "benchmark": "?", "status": f"unreadable ({type(exc).__name__}: {exc})",
                   "tasks": "-", "epochs": "-", "seeds": "-", "acc": "-", "date": "-"}
        rows.append({**row, "label": label})
    return sorted(rows, key=lambda r: (r["date"], r["label"]))


def format_rows(rows: List[dict]) -> str:
    cols = list(COLUMNS)
    width = {c: max(len(str(r[c])) for r in [COLUMNS, *rows]) for c in cols[:-1]}
    return "\n".join("  ".join(f"{str(r[c]):<{width[c]}}" for c in cols[:-1]) + "  " + str(r["acc"])
                     for r in [COLUMNS, *rows])


def list_runs(folder: Optional[Path] = None) -> str:
    folder = Path(folder or "runs")
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}; give the folder that holds your runs: clframework runs FOLDER")
    rows = find(folder)
    if not rows:
        return f"no runs or studies under {folder} (looked for {', '.join([*RUN_FILES, STUDY, *STUDY_FILES])})"
    return format_rows(rows)
