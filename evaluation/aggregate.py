"""Across seeds: mean, SD and SEM of every metric and matrix cell, the head-to-head table, and paired comparisons.

Strategies compared on the same seeds see the same data order and initial weights, so the per-seed differences are
paired; a paired t-test on them says whether "A beats B" is more than seed noise.
"""
from __future__ import annotations

import csv
import io
import itertools
from typing import Dict, List, Optional, Sequence

import numpy as np

from .names import METRIC_NAMES

# task-IL ACC: the same run scored task-IL; CONTINUAL: from the curves of --eval-every runs (metrics.py)
CONTINUAL = ("min_acc", "wc_acc", "wf10", "wp10", "lca10", "a_auc")
METRICS = ("acc", "bwt", "fwt", "forgetting", "task_il_acc") + CONTINUAL
LABELS = {**METRIC_NAMES, "forgetting": "forgetting", "task_il_acc": "task-IL ACC"}  # table.md's column heads


def describe(values: Sequence[float]) -> dict:
    """Mean, sample SD (ddof=1) and SEM of independent values; SD and SEM are None for a single value."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"describe needs a non-empty list of numbers, got shape {v.shape}")
    n = len(v)
    sd = float(v.std(ddof=1)) if n > 1 else None
    return {"mean": float(v.mean()), "sd": sd, "sem": sd / np.sqrt(n) if n > 1 else None, "n": n}


def cellwise(arrays: Sequence) -> dict:
    """Element-wise mean, SD and SEM over seeds of equally shaped arrays (accuracy matrices, curves)."""
    a = np.asarray(arrays, dtype=float)
    if a.ndim < 2 or len(a) == 0:
        raise ValueError(f"cellwise needs a non-empty list of equally shaped arrays, got shape {a.shape}")
    n = len(a)
    sd = a.std(axis=0, ddof=1) if n > 1 else None
    return {"mean": a.mean(axis=0).tolist(), "sd": None if sd is None else sd.tolist(),
            "sem": None if sd is None else (sd / np.sqrt(n)).tolist(), "n": n}


def aggregate_runs(runs: Sequence[dict]) -> dict:
    """One strategy's runs (results.json dicts) -> per-metric and per-cell statistics over seeds."""
    if not runs:
        raise ValueError("aggregate_runs needs at least one run")
    metrics = {m: describe([r["metrics"][m] for r in runs]) for m in METRICS if all(m in r["metrics"] for r in runs)}
    out = {"metrics": metrics, "matrix": cellwise([r["accuracy_matrix"] for r in runs]),
           "average_seen": cellwise([r["average_seen"] for r in runs])}
    if all(r.get("task_il_accuracy_matrix") for r in runs):
        out["task_il_matrix"] = cellwise([r["task_il_accuracy_matrix"] for r in runs])
    return out


def mean_cpu_seconds(runs: Sequence[dict]) -> Optional[float]:
    """Mean CPU seconds of training per run (`train_cpu_seconds`), or None when a run has none (older results)."""
    cpu = [r.get("train_cpu_seconds") for r in runs]
    return None if not cpu or None in cpu else float(np.mean(cpu))


def _secs(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def paired(a: Dict[int, float], b: Dict[int, float], confidence: float = 0.95) -> dict:
    """Paired comparison of A - B over the seeds both have: mean difference, t confidence interval, t-test p-value.

    With fewer than 2 common seeds, or differences that do not vary, the interval and p-value are None and `note`
    says why (a t-test is undefined there).
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("paired comparison needs seeds that both strategies ran; they share none")
    x, y = np.array([a[s] for s in seeds], dtype=float), np.array([b[s] for s in seeds], dtype=float)
    d = x - y
    out = {"seeds": seeds, "n": len(d), "mean_diff": float(d.mean()), "sd_diff": None, "ci_low": None,
           "ci_high": None, "confidence": confidence, "t": None, "p_value": None, "note": ""}
    if len(d) < 2:
        out["note"] = "one common seed: no confidence interval or test (run with --seeds 2 or more)"
        return out
    sd = float(d.std(ddof=1))
    out["sd_diff"] = sd
    if np.ptp(d) <= 1e-12:  # equal up to rounding (0.9 - 0.8 vs 0.8 - 0.7)
        out["note"] = "identical difference on every seed: no spread, t-test undefined"
        return out
    # Student's t from scipy.special (a fifth of scipy.stats' import time: `clframework report` answers at once);
    # the paired t-test is scipy.stats.ttest_rel's: t = mean(d) / (sd / sqrt(n)), two-sided p
    from scipy.special import stdtr, stdtrit

    df, se = len(d) - 1, sd / np.sqrt(len(d))
    half = stdtrit(df, 0.5 + confidence / 2) * se
    t = float(d.mean() / se)
    out.update(ci_low=float(d.mean() - half), ci_high=float(d.mean() + half), t=t,
               p_value=float(2 * stdtr(df, -abs(t))))
    return out


def paired_table(runs_by_strategy: Dict[str, Sequence[dict]], metrics: Sequence[str] = METRICS,
                 confidence: float = 0.95) -> List[dict]:
    """Every pair of strategies (in the given order), every metric both have: `paired` of A - B by seed."""
    rows = []
    for (na, ra), (nb, rb) in itertools.combinations(runs_by_strategy.items(), 2):
        for m in metrics:
            if all(m in r["metrics"] for r in list(ra) + list(rb)):
                va = {r["seed"]: r["metrics"][m] for r in ra}
                vb = {r["seed"]: r["metrics"][m] for r in rb}
                rows.append({"a": na, "b": nb, "metric": m, **paired(va, vb, confidence)})
    return rows


def _name(name: str, s: dict) -> str:
    """A strategy's name in a table; a reference point (joint, cumulative) is marked as a bound, not a learner."""
    return f"{name} [BOUND: {s['bound']}]" if s.get("bound") else name


def _diverged_note(s: dict) -> str:
    """A note such as ' (diverged: seeds 1, 2; left out)' for a strategy whose runs diverged (or failed: an exception
    stopped them) on some seeds."""
    notes = [f"{what}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
             for what, seeds in (("diverged", s.get("diverged_seeds") or []), ("failed", s.get("failed_seeds") or []))
             if seeds]
    return f" ({'; '.join(notes)}; left out)" if notes else ""


def _no_runs(s: dict) -> str:
    """What became of a strategy none of whose runs finished: diverged, failed, or both."""
    return "/".join(w for w, key in (("diverged", "diverged_seeds"), ("failed", "failed_seeds")) if s.get(key)) or \
        "no run"


def _pm(stat: Optional[dict]) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.4f} ± {stat['sem']:.4f}" if stat["sem"] is not None else f"{stat['mean']:.4f}"


def shown_metrics(summary: dict) -> List[str]:
    """The table's metrics: the matrix's always, the continual-evaluation ones where some strategy has them."""
    have = {m for s in summary["strategies"].values() for m in s["metrics"]}
    return [m for m in METRICS if m not in CONTINUAL or m in have]


def head_to_head(summary: dict) -> List[dict]:
    """Rows of the head-to-head table: one per strategy, mean/SD/SEM of each metric and seconds per run."""
    rows = []
    for name, s in summary["strategies"].items():
        row = {"strategy": name, "bound": s.get("bound") or "", "n_seeds": len(s["runs"]),
               "seconds_per_run": s["seconds_per_run"], "cpu_seconds_per_run": s.get("cpu_seconds_per_run")}
        for m in shown_metrics(summary):
            st = s["metrics"].get(m)
            for k in ("mean", "sd", "sem"):
                row[f"{m}_{k}"] = None if st is None else st[k]
        rows.append(row)
    return rows


def table_csv(rows: List[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    return buf.getvalue()


def table_markdown(summary: dict) -> str:
    """The head-to-head table and the paired comparisons, as Markdown (mean ± SEM over seeds). Seconds per run:
    CPU seconds of training (waiting for a loaded machine's cores does not count) and wall seconds of the run."""
    n = len(summary["seeds"])
    shown = shown_metrics(summary)
    lines = [f"# {summary['benchmark']}: {n} seed(s), mean ± SEM over seeds", "",
             "| strategy | " + " | ".join(LABELS[m] for m in shown) + " | CPU s/run | wall s/run |",
             "|---|" + "---|" * (len(shown) + 2)]
    for name, s in summary["strategies"].items():
        cells = [_pm(s["metrics"].get(m)) for m in shown]
        secs = f"{_secs(s.get('cpu_seconds_per_run'))} | {_secs(s['seconds_per_run'])}"
        lines.append(f"| {_name(name, s)}{_diverged_note(s)} | " + " | ".join(cells) + f" | {secs} |")
    pairs = summary.get("paired", [])
    if pairs:
        conf = int(round(pairs[0]["confidence"] * 100))
        lines += ["", f"## Paired differences A - B over the same seeds ({conf}% t interval, paired t-test)", "",
                  "| A | B | metric | mean diff | CI | p | note |", "|---|---|---|---|---|---|---|"]
        for p in pairs:
            ci = f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]" if p["ci_low"] is not None else "-"
            pv = f"{p['p_value']:.3g}" if p["p_value"] is not None else "-"
            lines.append(f"| {p['a']} | {p['b']} | {p['metric']} | {p['mean_diff']:+.4f} | {ci} | {pv} | {p['note']} |")
    return "\n".join(lines) + "\n"


def format_console(summary: dict) -> str:
    """A short console table: final average accuracy (mean ± SEM), CPU seconds of training and wall seconds per
    run, paired ACC differences."""
    one_seed = len(summary["seeds"]) < 2  # one seed has no SEM: the value alone
    lines = [f"benchmark {summary['benchmark']}, {len(summary['seeds'])} seed(s): final average accuracy",
             f"{'strategy':<12} {'acc' if one_seed else 'acc mean +- SEM':>18} {'CPU s/run':>10} {'wall s/run':>10}"]
    for name, s in summary["strategies"].items():
        st = s["metrics"].get("acc")
        if st is None:
            lines.append(f"{_name(name, s):<12} {_no_runs(s):>18} {'-':>10} {'-':>10}{_diverged_note(s)}")
            continue
        acc = f"{st['mean']:.4f}" if st["sem"] is None else f"{st['mean']:.4f} +- {st['sem']:.4f}"
        lines.append(f"{_name(name, s):<12} {acc:>18} {_secs(s.get('cpu_seconds_per_run')):>10} "
                     f"{_secs(s['seconds_per_run']):>10}{_diverged_note(s)}")
    continual = [m for m in shown_metrics(summary) if m in CONTINUAL]
    if continual:  # --eval-every runs: the accuracy during training, mean over seeds
        lines.append("during training (--eval-every), mean over seeds:")
        lines.append(f"{'strategy':<12} " + " ".join(f"{LABELS[m]:>8}" for m in continual))
        for name, s in summary["strategies"].items():
            cells = [f"{s['metrics'][m]['mean']:>8.4f}" if m in s["metrics"] else f"{'-':>8}" for m in continual]
            lines.append(f"{_name(name, s):<12} " + " ".join(cells))
    for p in summary.get("paired", []):
        if p["metric"] != "acc":
            continue
        detail = (f"{int(p['confidence'] * 100)}% CI [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}], p = {p['p_value']:.3g}"
                  if p["p_value"] is not None else p["note"])
        lines.append(f"acc {p['a']} - {p['b']}: {p['mean_diff']:+.4f} over {p['n']} paired seed(s); {detail}")
    return "\n".join(lines)
