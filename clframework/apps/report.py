"""`clframework report STUDY --format md|latex|csv`: a finished compare's or reproduce's comparison table, ready for
a paper (evaluation/report.py), with the paper's numbers beside ours for a reproduction."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from clframework.evaluation.aggregate import METRICS
from clframework.evaluation.report import comparison, render
from clframework.evaluation.results import read_json


def report(study: Path, fmt: str = "md", baseline: Optional[str] = None, alpha: float = 0.05,
           metrics: Sequence[str] = METRICS) -> str:
    study = Path(study)
    try:
        summary = read_json(study / "summary.json")
    except FileNotFoundError:
        partial = " (its study.json says it was started: finish it with --resume)" if (study / "study.json").exists() \
            else ""
        raise FileNotFoundError(f"no summary.json in {study}{partial}; give the folder of a finished compare or "
                                f"reproduce (`clframework runs` lists them)") from None
    table = comparison(summary, baseline, alpha, metrics)
    paper = None
    if (study / "reproduction.json").exists():
        arms = read_json(study / "reproduction.json").get("arms") or {}
        paper = {name: arms[name]["published"] for name in summary["strategies"]
                 if (arms.get(name) or {}).get("published")} or None
    return render(table, fmt, paper)
