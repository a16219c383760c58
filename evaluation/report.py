"""A study's comparison table for a paper or a report (`clframework report STUDY --format md|latex|csv`): mean ± SEM
over seeds per metric, the best of each column in bold, and a mark where a strategy differs from the column's best
(or from a named baseline) in a paired t-test over the same seeds. Read from summary.json only; the statistics are
aggregate.py's (describe, paired).

A bound (joint, cumulative: reference points, not continual learners) is shown, marked as a bound, and never bolded,
tested or tested against; a column the study's setting makes meaningless (FWT in class-IL) is shown without marks and
named in the legend."""
from __future__ import annotations

import csv
import io
from typing import Dict, List, Optional, Sequence

from .aggregate import LABELS, METRICS, paired

LOWER_IS_BETTER = {"forgetting", "wf10"}
NAMES = {**LABELS, "forgetting": "Forgetting"}
FORMATS = ("md", "latex", "csv")
MEANINGLESS = {"class": {"fwt": "FWT is not meaningful in the class-incremental setting (a task's classes score 0 "
                                "before it is trained)"}}


def comparison(summary: dict, baseline: Optional[str] = None, alpha: float = 0.05,
               metrics: Sequence[str] = METRICS) -> dict:
    """Per strategy and metric: mean, SEM, n, whether it is the column's best, and the paired test against the
    reference (the baseline if named, else the column's best): `p` (None where the test is undefined: one common
    seed, or the same difference on every seed) and `significant` (p < alpha)."""
    strategies = summary["strategies"]
    if baseline is not None and baseline not in strategies:
        raise ValueError(f"--baseline {baseline!r} is not in this study; choose one of {', '.join(strategies)}")
    bounds = {n: s["bound"] for n, s in strategies.items() if s.get("bound")}
    if baseline in bounds:
        learners = ", ".join(n for n in strategies if n not in bounds) or "(none: every one is a bound)"
        raise ValueError(f"--baseline {baseline!r} is a bound ({bounds[baseline]}), not a continual learner; choose "
                         f"one of {learners}")
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1), got {alpha}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    finished = {n: s for n, s in strategies.items() if s.get("runs")}
    if baseline is not None and baseline not in finished:
        raise ValueError(f"--baseline {baseline!r} has no finished run (every seed diverged)")
    meaningless = {m: why for m, why in MEANINGLESS.get(summary.get("setting"), {}).items() if m in metrics}
    cells: Dict[str, Dict[str, dict]] = {n: {} for n in strategies}
    references = {}
    for m in metrics:
        means = {n: s["metrics"][m]["mean"] for n, s in finished.items() if m in s["metrics"]}
        learners = {n: v for n, v in means.items() if n not in bounds}
        marked = bool(learners) and m not in meaningless
        pick = min if m in LOWER_IS_BETTER else max
        best = pick(learners.values()) if marked else None
        ref = (baseline or pick(learners, key=learners.get)) if marked else None
        if ref is not None:
            references[m] = ref
        per_seed = {n: {r["seed"]: r["metrics"][m] for r in finished[n]["runs"]} for n in means}
        for n, mean in means.items():
            stat = finished[n]["metrics"][m]
            test = paired(per_seed[n], per_seed[ref]) if ref is not None and n != ref and n in learners else None
            cells[n][m] = {"mean": mean, "sem": stat["sem"], "n": stat["n"], "best": n in learners and mean == best,
                           "reference": ref if n in learners else None, "p": test["p_value"] if test else None,
                           "significant": bool(test and test["p_value"] is not None and test["p_value"] < alpha)}
    return {"benchmark": summary["benchmark"], "seeds": len(summary["seeds"]), "metrics": list(metrics),
            "baseline": baseline, "alpha": alpha, "references": references, "cells": cells, "bounds": bounds,
            "meaningless": meaningless, "diverged": {n: s.get("diverged_seeds") or [] for n, s in strategies.items()}}


def _cell(c: Optional[dict], fmt: str) -> str:
    if c is None:
        return "-"
    pm = {"md": " ± ", "latex": r" \pm "}[fmt]
    text = f"{c['mean']:.4f}" + (f"{pm}{c['sem']:.4f}" if c["sem"] is not None else "")
    if fmt == "latex":
        text = rf"\mathbf{{{text}}}" if c["best"] else text
        return f"${text}" + (r"^{*}" if c["significant"] else "") + "$"
    return (f"**{text}**" if c["best"] else text) + ("\\*" if c["significant"] else "")


def legend(table: dict) -> str:
    """What the marks mean, and against what each column was tested."""
    against = (f"the baseline {table['baseline']}" if table["baseline"] else
               "the column's best (" + ", ".join(f"{NAMES[m]}: {r}" for m, r in table["references"].items()) + ")")
    diverged = "; ".join(f"{n}: seed(s) {', '.join(map(str, s))} diverged, left out"
                         for n, s in table["diverged"].items() if s)
    bounds = table.get("bounds") or {}
    notes = [f"{', '.join(bounds)}: bound{'s' if len(bounds) > 1 else ''} (reference points, not continual learners), "
             f"never bolded or tested"] if bounds else []
    notes += [f"{why}: shown without marks" for why in (table.get("meaningless") or {}).values()]
    return (f"Mean ± SEM over {table['seeds']} seed(s) on {table['benchmark']}; bold: best in its column "
            f"(lowest forgetting and WF10, highest otherwise); *: differs from {against} in a two-sided paired "
            f"t-test over the same seeds, p < {table['alpha']:g} (no mark where the test is undefined: one seed, or "
            f"the same difference on every seed)." + "".join(f" {n}." for n in notes) + (f" {diverged}." if diverged else ""))


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
          "±": r"$\pm$", "≈": r"$\approx$"}


def _latex_escape(text) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def render(table: dict, fmt: str, paper: Optional[Dict[str, str]] = None) -> str:
    """The table as Markdown, LaTeX (a booktabs `table`) or CSV (one row per strategy and metric). `paper` maps a
    strategy to the paper's number with its source, shown as a last column (md, latex) or field (csv)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    metrics, cells, bounds = table["metrics"], table["cells"], table.get("bounds") or {}
    paper = paper or {}
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["strategy", "metric", "mean", "sem", "n", "best", "reference", "p_value", "significant",
                         "paper", "bound", "meaningful"])
        for name, row in cells.items():
            for m in metrics:
                c = row.get(m)
                if c is not None:
                    writer.writerow([name, m, c["mean"], "" if c["sem"] is None else c["sem"], c["n"], c["best"],
                                     c["reference"] or "", "" if c["p"] is None else c["p"], c["significant"],
                                     paper.get(name, ""), bounds.get(name, ""), m not in table.get("meaningless", {})])
        return buf.getvalue()
    head = ["strategy"] + [NAMES[m] for m in metrics] + (["paper"] if paper else [])
    label = {n: f"{n} [BOUND: {bounds[n]}]" if n in bounds else n for n in cells}
    rows = [[label[name]] + [_cell(row.get(m), fmt) for m in metrics] + ([paper.get(name, "-")] if paper else [])
            for name, row in cells.items()]
    if fmt == "md":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n\n" + legend(table) + "\n"
    esc = [[_latex_escape(r[0])] + r[1:len(metrics) + 1] + [_latex_escape(x) for x in r[len(metrics) + 1:]]
           for r in rows]
    lines = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             r"\begin{tabular}{l" + "c" * len(metrics) + ("l" if paper else "") + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(r) + r" \\" for r in esc]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _latex_escape(legend(table)) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"
