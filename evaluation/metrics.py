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
