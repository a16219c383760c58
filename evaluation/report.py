"""A study's comparison table for a paper or a report (`clframework report STUDY [STUDY ...] --format md|latex|csv`):
mean ± SEM over seeds per metric, in percent with two decimals (or fractions), methods by their display names
(names.py), the best method of each column in bold, bounds (joint, cumulative) marked and never bold, a buffer column
when a method has a memory, and a mark where a method differs from the column's best (or from a named baseline) in a
paired t-test over the same seeds. Several studies of one benchmark (buffer 200 and 500, say) make one table, each
study's best and tests within it. Read from summary.json only; the statistics are aggregate.py's (describe, paired).
"""
from __future__ import annotations

import csv
import io
from typing import Dict, List, Optional, Sequence

from .names import SETTING_NAMES, default_columns, display, metric_name

LOWER_IS_BETTER = {"forgetting", "wf10"}
FORMATS = ("md", "latex", "csv")
SCALES = ("percent", "fraction")
BOUND_LABELS = {"upper": "upper bound"}  # a bound of another kind reads "(bound)"
NOT_OPTIONS = ("setting", "data_root")  # benchmark options the caption names otherwise, or not at all
MEANINGLESS = {"class": {"fwt": "FWT is not meaningful in the class-incremental setting (a task's classes score 0 "
                                "before it is trained)"}}


def recorded_metrics(summary: dict) -> List[str]:
    """Every metric a study's runs recorded, in the order first seen (acc, bwt, ..., and any added later)."""
    seen: Dict[str, None] = {}
    for s in summary["strategies"].values():
        seen.update(dict.fromkeys(s.get("metrics", {})))
    return list(seen)


def comparison(summary: dict, baseline: Optional[str] = None, alpha: float = 0.05,
               metrics: Optional[Sequence[str]] = None, study: str = "") -> dict:
    """Per strategy and metric: mean, SEM, n, whether it is the column's best, and the paired test against the
    reference (the baseline if named, else the column's best learner): `p` (None where the test is undefined: one
    common seed, or the same difference on every seed) and `significant` (p < alpha). A bound (joint, cumulative:
    a reference point, not a continual learner) is never best, tested or tested against; a column the setting makes
    meaningless (FWT in class-IL) gets no marks. `metrics` None: the setting's default columns (names.py)."""
    from .aggregate import paired  # scipy only where a table is made

    strategies = summary["strategies"]
    setting = summary.get("setting")
    if baseline is not None and baseline not in strategies:
        raise ValueError(f"--baseline {baseline!r} is not in this study; choose one of {', '.join(strategies)}")
    bounds = {n: s["bound"] for n, s in strategies.items() if s.get("bound")}
    if baseline in bounds:
        learners = ", ".join(n for n in strategies if n not in bounds) or "(none: every one is a bound)"
        raise ValueError(f"--baseline {baseline!r} is a bound ({bounds[baseline]}), not a continual learner; choose "
                         f"one of {learners}")
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1), got {alpha}")
    known = recorded_metrics(summary)
    metrics = [m for m in default_columns(setting) if m in known] if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in known]
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; this study recorded "
                         f"{', '.join(known)}")
    finished = {n: s for n, s in strategies.items() if s.get("runs")}
    if baseline is not None and baseline not in finished:
        raise ValueError(f"--baseline {baseline!r} has no finished run (every seed diverged)")
    meaningless = {m: why for m, why in MEANINGLESS.get(setting, {}).items() if m in metrics}
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
    rows = [{"name": n, "bound": s.get("bound"), "buffer": (s.get("hparams") or {}).get("memory_size"),
             "hparams": s.get("hparams") or {}, "train": s.get("train")} for n, s in strategies.items()]
    return {"study": study, "benchmark": summary["benchmark"], "setting": setting, "tasks": len(summary["tasks"]),
            "benchmark_options": summary.get("benchmark_options") or {}, "seeds": list(summary["seeds"]),
            "metrics": metrics, "baseline": baseline, "alpha": alpha, "references": references, "cells": cells,
            "rows": rows, "meaningless": meaningless,
            "diverged": {n: s.get("diverged_seeds") or [] for n, s in strategies.items()}}


def combine(tables: Sequence[dict]) -> List[dict]:
    """Tables of several studies for one table: the same benchmark, setting, columns and protocol (the caption's:
    options, epochs, batch); a method without a memory trained the same way in two studies (the same runs) is shown
    once."""
    first = tables[0]
    for t in tables[1:]:
        for key in ("benchmark", "setting", "metrics", "tasks"):
            if t[key] != first[key]:
                raise ValueError(f"report: studies {first['study']} and {t['study']} differ in {key} "
                                 f"({first[key]} vs {t[key]}); one table compares studies of one protocol")
        if _protocol(t) != _protocol(first):  # e.g. epochs: their rows would read alike, their caption run together
            raise ValueError(f"report: studies {first['study']} and {t['study']} were run under different protocols "
                             f"({_protocol(first)} vs {_protocol(t)}); one table compares studies of one protocol: "
                             f"report them apart")
    shown = []
    out = []
    for t in tables:
        rows = []
        for r in t["rows"]:
            same = (r["name"], r["buffer"], r["hparams"], r["train"], t["benchmark_options"])
            if r["buffer"] is None and same in shown:
                continue
            shown.append(same)
            rows.append(r)
        out.append({**t, "rows": rows})
    return out


def _number(value: float, scale: str, sign: bool = False) -> str:
    v = 100 * value if scale == "percent" else value
    return f"{v:+.2f}" if sign and scale == "percent" else f"{v:.2f}" if scale == "percent" else f"{v:.4f}"


def _cell(c: Optional[dict], fmt: str, scale: str) -> str:
    if c is None:
        return "-"
    pm = {"md": " ± ", "latex": r" \pm "}[fmt]
    text = _number(c["mean"], scale) + (f"{pm}{_number(c['sem'], scale)}" if c["sem"] is not None else "")
    if fmt == "latex":
        text = rf"\mathbf{{{text}}}" if c["best"] else text
        return f"${text}" + (r"^{*}" if c["significant"] else "") + "$"
    return (f"**{text}**" if c["best"] else text) + ("\\*" if c["significant"] else "")


def row_name(row: dict) -> str:
    """A method's display name; a bound says so (`Joint (upper bound)`)."""
    name = display(row["name"])
    return f"{name} ({BOUND_LABELS.get(row['bound'], 'bound')})" if row["bound"] else name


def _protocol(t: dict) -> str:
    """`seq-fashion-mnist, class-incremental, 5 tasks, train_per_class=300, 1 epoch per task, batch 10`."""
    parts = [t["benchmark"]]
    if t["setting"]:
        parts.append(SETTING_NAMES.get(t["setting"], t["setting"]))
    parts.append(f"{t['tasks']} tasks")
    parts += [f"{k}={v}" for k, v in t["benchmark_options"].items() if k not in NOT_OPTIONS]
    trains = [r["train"] for r in t["rows"] if r.get("train")]
    for key, text in (("epochs", "{} epoch(s) per task"), ("batch_size", "batch {}")):
        values = {tr.get(key) for tr in trains}
        if len(values) == 1 and None not in values:
            parts.append(text.format(values.pop()))
    return ", ".join(parts)


def legend(tables, scale: str = "percent") -> str:
    """The caption: what was run (protocol, options, seeds, buffers), the unit, and what the marks mean."""
    tables = [tables] if isinstance(tables, dict) else list(tables)
    first = tables[0]
    protocols = list(dict.fromkeys(_protocol(t) for t in tables))
    seeds = list(dict.fromkeys(tuple(t["seeds"]) for t in tables))
    seed_text = (f"{len(seeds[0])} seed(s) ({', '.join(map(str, seeds[0]))})" if len(seeds) == 1 else
                 "; ".join(f"{t['study']}: {len(t['seeds'])} seed(s)" for t in tables))
    buffers = sorted({r["buffer"] for t in tables for r in t["rows"] if r["buffer"] is not None})
    buffer_text = (f"; buffer {' and '.join(map(str, buffers))} examples (column Buffer)" if buffers else "")
    unit = "in %" if scale == "percent" else "as fractions"
    if first["baseline"]:
        against = f"the baseline {display(first['baseline'])}"
    elif len(tables) == 1:
        against = "the column's best (" + ", ".join(
            f"{metric_name(m, first['setting'])}: {display(r) if r else '-'}"
            for m, r in first["references"].items()) + ")"
    else:
        against = "the column's best method of the same study"
    diverged = "; ".join(f"{display(n)}: seed(s) {', '.join(map(str, s))} diverged, left out"
                         for t in tables for n, s in t["diverged"].items() if s)
    bounds = list(dict.fromkeys(display(r["name"]) for t in tables for r in t["rows"] if r["bound"]))
    notes = [f"{', '.join(bounds)}: bound{'s' if len(bounds) > 1 else ''} (reference points, not continual "
             f"learners), never bold or tested"] if bounds else []
    notes += [f"{why}: shown without marks" for why in first["meaningless"].values()]
    return (f"Mean ± SEM {unit} over {seed_text} on {'; '.join(protocols)}{buffer_text}. Bold: best in its column "
            f"(lowest forgetting and WF10, highest otherwise){' within each study' if len(tables) > 1 else ''}"
            f"; *: differs from {against} in a two-sided paired t-test over the same seeds, p < "
            f"{first['alpha']:g} (no mark where the test is undefined: one seed, or the same difference on every "
            f"seed)." + "".join(f" {n}." for n in notes) + (f" {diverged}." if diverged else ""))


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"$<$", ">": r"$>$",
          "±": r"$\pm$", "≈": r"$\approx$"}


def _latex_escape(text) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def render(tables, fmt: str, paper: Optional[Dict[str, str]] = None, scale: str = "percent") -> str:
    """The table as Markdown, LaTeX (a booktabs `table`) or CSV (one row per study, strategy and metric: raw
    fractions at full precision whatever `scale`). `tables`: one comparison() or several (combine()). `paper`
    maps a strategy to the paper's number with its source (one study; a table's own `paper` otherwise), shown as a
    last column (md, latex) or field (csv)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if scale not in SCALES:
        raise ValueError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    tables = [tables] if isinstance(tables, dict) else list(tables)
    if paper:
        tables = [{**tables[0], "paper": paper}] + tables[1:]
    metrics, setting = tables[0]["metrics"], tables[0]["setting"]
    with_paper = any(t.get("paper") for t in tables)
    with_buffer = any(r["buffer"] is not None for t in tables for r in t["rows"])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["study", "strategy", "display", "bound", "buffer", "metric", "mean", "sem", "n", "best",
                         "reference", "p_value", "significant", "paper", "meaningful"])
        for t in tables:
            for r in t["rows"]:
                for m in metrics:
                    c = t["cells"][r["name"]].get(m)
                    if c is not None:
                        writer.writerow([t["study"], r["name"], display(r["name"]), r["bound"] or "",
                                         "" if r["buffer"] is None else r["buffer"], m, c["mean"],
                                         "" if c["sem"] is None else c["sem"], c["n"], c["best"],
                                         c["reference"] or "", "" if c["p"] is None else c["p"], c["significant"],
                                         (t.get("paper") or {}).get(r["name"], ""), m not in t["meaningless"]])
        return buf.getvalue()
    head = (["Method"] + (["Buffer"] if with_buffer else []) + [metric_name(m, setting) for m in metrics]
            + (["paper"] if with_paper else []))
    blocks = []
    for t in tables:
        block = []
        for r in t["rows"]:
            cells = [_cell(t["cells"][r["name"]].get(m), fmt, scale) for m in metrics]
            buffer = ([("-" if r["buffer"] is None else str(r["buffer"]))] if with_buffer else [])
            extra = [(t.get("paper") or {}).get(r["name"], "-")] if with_paper else []
            name = row_name(r)
            if fmt == "latex":
                name, buffer, extra = _latex_escape(name), [_latex_escape(b) for b in buffer], \
                    [_latex_escape(x) for x in extra]
            block.append([name] + buffer + cells + extra)
        blocks.append(block)
    if fmt == "md":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for block in blocks for r in block]
        return "\n".join(lines) + "\n\n" + legend(tables, scale) + "\n"
    lines = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             r"\begin{tabular}{l" + "c" * (len(head) - 1 - with_paper) + ("l" if with_paper else "") + "}",
             r"\toprule", " & ".join(_latex_escape(h) for h in head) + r" \\", r"\midrule"]
    for i, block in enumerate(blocks):
        lines += ([r"\midrule"] if i else []) + [" & ".join(r) + r" \\" for r in block]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _latex_escape(legend(tables, scale)) + "}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"
