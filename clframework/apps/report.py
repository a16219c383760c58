"""`clframework report STUDY [STUDY ...] --format md|latex|csv`: finished compares' or reproductions' comparison
table, ready for a paper (evaluation/report.py): several studies of one protocol (buffer 200 and 500) in one table,
with the paper's numbers beside ours for a reproduction."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from clframework.evaluation.report import combine, comparison, render
from clframework.evaluation.results import read_json


def _summary(study: Path) -> dict:
    try:
        return read_json(study / "summary.json")
    except FileNotFoundError:
        partial = " (its study.json says it was started: finish it with --resume)" if (study / "study.json").exists() \
            else ""
        raise FileNotFoundError(f"no summary.json in {study}{partial}; give the folder of a finished compare or "
                                f"reproduce (`clframework runs` lists them)") from None


def _paper(study: Path, summary: dict) -> Optional[dict]:
    if not (study / "reproduction.json").exists():
        return None
    arms = read_json(study / "reproduction.json").get("arms") or {}
    return {name: arms[name]["published"] for name in summary["strategies"]
            if (arms.get(name) or {}).get("published")} or None


def report(studies, fmt: str = "md", baseline: Optional[str] = None, alpha: float = 0.05,
           metrics: Optional[Sequence[str]] = None, scale: str = "percent") -> str:
    """`studies`: one folder or several; `metrics` None: the setting's default columns."""
    studies = [Path(studies)] if isinstance(studies, (str, Path)) else [Path(s) for s in studies]
    tables = []
    for study in studies:
        summary = _summary(study)
        table = comparison(summary, baseline, alpha, metrics, study=study.resolve().name)
        tables.append({**table, "paper": _paper(study, summary)})
    return render(combine(tables), fmt, scale=scale)
