"""Continual-learning metrics from an accuracy matrix R (R[i][j]: accuracy on task j after training tasks 0..i).

Definitions follow ../shared/reference/PROTOCOLS.md: ACC and BWT (Lopez-Paz & Ranzato 2017), FWT against the
untrained model's accuracies b, average forgetting (Chaudhry et al. 2018), and the paper's curve of the average
accuracy over the tasks seen so far.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"the accuracy matrix must be square and non-empty (tasks x tasks), got shape {R.shape}")
    return R


def acc(R) -> float:
    """Mean accuracy over all tasks after training the last one."""
    return float(_matrix(R)[-1].mean())


def bwt(R) -> float:
    """Backward transfer: mean over j < T-1 of R[T-1, j] - R[j, j] (0 for a single task)."""
    R = _matrix(R)
    T = len(R)
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)])) if T > 1 else 0.0


def fwt(R, baseline: Sequence[float]) -> float:
    """Forward transfer: mean over j > 0 of R[j-1, j] - b[j], with b the untrained model's accuracies."""
    R, b = _matrix(R), np.asarray(baseline, dtype=float)
    if b.shape != (len(R),):
        raise ValueError(f"the baseline needs one accuracy per task ({len(R)}), got {b.shape}")
    T = len(R)
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)])) if T > 1 else 0.0


def forgetting(R) -> float:
    """Average forgetting: mean over j < T-1 of max_{i < T-1} R[i, j] - R[T-1, j] (0 for a single task)."""
    R = _matrix(R)
    T = len(R)
    return float(np.mean([R[:T - 1, j].max() - R[-1, j] for j in range(T - 1)])) if T > 1 else 0.0


def average_seen(R) -> List[float]:
    """After each task i, the mean accuracy over tasks 0..i (the paper's Fig. 3 right panel and Fig. 4)."""
    R = _matrix(R)
    return [float(R[i, :i + 1].mean()) for i in range(len(R))]


def summary(R, baseline: Optional[Sequence[float]] = None) -> Dict[str, float]:
    out = {"acc": acc(R), "bwt": bwt(R), "forgetting": forgetting(R)}
    if baseline is not None:
        out["fwt"] = fwt(R, baseline)
    return out


def omega_correlations(history: Sequence[Dict[str, "np.ndarray"]]) -> Dict[str, List[List[float]]]:
    """Per layer, the Pearson correlation across tasks of SI's per-task omega (the paper's Fig. 5).

    `history` holds one {parameter name: omega} per finished task. Layers are the weight tensors (2 or more
    dimensions) whose omega varies within every task; a task head trained on one task only has zero omega on the
    others and is left out, as its correlation is undefined.
    """
    if not history:
        return {}
    out = {}
    for name in history[0]:
        rows = [np.asarray(h[name], dtype=float).ravel() for h in history if name in h]
        if len(rows) != len(history) or np.asarray(history[0][name]).ndim < 2 or min(r.std() for r in rows) == 0:
            continue
        out[name] = np.atleast_2d(np.corrcoef(np.stack(rows))).tolist()
    return out


# -- continual evaluation (docs/continual-evaluation.md) ------------------------------------------------------------
# A curve is results.json's "continual_eval": points {step, task, accuracy: [a_0 .. a_task]} in step order (the task
# trained at that step, or about to be at step 0 and at each boundary), and "boundaries": the global step at which
# each task's training ended. Accuracies are read from "accuracy" (class-IL) unless `key` names "task_il_accuracy".

WINDOW = 10  # evaluation points in WF^w, WP^w's window and LCA's beta: the authors' defaults (docs)


def _series(curve: dict, j: int, key: str):
    """(step, accuracy on task j) of every point that scored task j, in order."""
    return [(p["step"], p[key][j]) for p in curve["points"] if len(p[key]) > j]


def min_acc(curve: dict, key: str = "accuracy") -> float:
    """Average minimum accuracy: for each task j but the last, the lowest accuracy at any point after its training
    ended (step > boundaries[j]), averaged over those tasks (De Lange et al. 2023, min-ACC; 0 tasks: nan)."""
    T, ends = len(curve["boundaries"]), curve["boundaries"]
    mins = [min((a for s, a in _series(curve, j, key) if s > ends[j]), default=None) for j in range(T - 1)]
    mins = [m for m in mins if m is not None]
    return float(np.mean(mins)) if mins else float("nan")


def wc_acc(curve: dict, key: str = "accuracy") -> float:
    """Worst-case accuracy after the last task: (1/T) a_T + (1 - 1/T) min-ACC, a_T the last task's accuracy at the
    last point (De Lange et al. 2023; T = 1: the accuracy itself)."""
    T = len(curve["boundaries"])
    last = curve["points"][-1][key][T - 1]
    return float(last) if T == 1 else float(last / T + (1 - 1 / T) * min_acc(curve, key))


def _largest_change(values: Sequence[float], w: int, sign: int) -> float:
    """max over pairs i < j in any window of w consecutive values of sign * (values[j] - values[i]), at least 0."""
    best = 0.0
    for end in range(1, len(values)):
        window = values[max(0, end - w + 1):end + 1]
        for i in range(len(window) - 1):
            best = max(best, sign * (window[-1] - window[i]))
    return best


def _tracked(curve: dict, j: int, key: str) -> List[float]:
    """Task j's accuracies from its first training step on (the authors' code tracks a task once its training
    began; task 0 also at step 0, its "pre-update" evaluation)."""
    start = ([0] + list(curve["boundaries"][:-1]))[j]
    return [a for s, a in _series(curve, j, key) if s > start or j == 0]


def windowed_forgetting(curve: dict, w: int = WINDOW, key: str = "accuracy") -> float:
    """WF^w: per task, the largest accuracy drop between two of its points at most w - 1 points apart (a window of
    w evaluations), from its training's start on; averaged over the tasks (De Lange et al. 2023)."""
    T = len(curve["boundaries"])
    return float(np.mean([_largest_change(_tracked(curve, j, key), w, -1) for j in range(T)]))


def windowed_plasticity(curve: dict, w: int = WINDOW, key: str = "accuracy") -> float:
    """WP^w: as WF^w with the largest accuracy rise."""
    T = len(curve["boundaries"])
    return float(np.mean([_largest_change(_tracked(curve, j, key), w, +1) for j in range(T)]))


def learning_curve_area(curve: dict, beta: int = WINDOW, key: str = "accuracy") -> float:
    """LCA^beta (Chaudhry et al. 2019, A-GEM): per task j, the mean of its accuracy at the first beta + 1 points
    of its training (its step 0, the boundary before it, included), averaged over tasks."""
    starts = [0] + list(curve["boundaries"][:-1])
    per_task = []
    for j, (start, end) in enumerate(zip(starts, curve["boundaries"])):
        during = [a for s, a in _series(curve, j, key) if start <= s <= end][:beta + 1]
        per_task.append(np.mean(during))
    return float(np.mean(per_task))


def anytime_accuracy(curve: dict, key: str = "accuracy") -> float:
    """A_AUC (Koh et al. 2022, i-Blurry): the mean, over the periodic points (step a positive multiple of
    `every`), of the accuracy on the examples of every task seen by then (tasks started before that step),
    pooled; nan without a periodic point."""
    every, sizes = curve["every"], curve["sizes"]
    starts = [0] + list(curve["boundaries"][:-1])
    values = []
    for p in curve["points"]:
        s = p["step"]
        if s == 0 or s % every:
            continue
        seen = [j for j, start in enumerate(starts) if start < s]
        values.append(sum(p[key][j] * sizes[j] for j in seen) / sum(sizes[j] for j in seen))
    return float(np.mean(values)) if values else float("nan")


def continual_summary(curve: dict) -> Dict[str, float]:
    """The continual-evaluation metrics of a run, as results.json's "metrics" holds them; one undefined for this
    curve (min-ACC of one task, A_AUC without a periodic point) is left out, so that tables and paired tests skip
    it rather than carry a NaN."""
    out = {"min_acc": min_acc(curve), "wc_acc": wc_acc(curve), f"wf{WINDOW}": windowed_forgetting(curve),
           f"wp{WINDOW}": windowed_plasticity(curve), f"lca{WINDOW}": learning_curve_area(curve),
           "a_auc": anytime_accuracy(curve)}
    return {k: v for k, v in out.items() if v == v}
