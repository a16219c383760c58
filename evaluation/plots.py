"""Figures of runs and comparisons (matplotlib, no display needed): each function returns a Figure, `save` writes
it as PNG (SVG on request). Figures are built with `matplotlib.figure.Figure` (Agg rendering), not pyplot, so no
global state. `Figures` says which figures a command writes: a run's own, the study's, in which formats.

- `matrix_heatmap`: one run's accuracy matrix, cells annotated.
- `training_curves`: one run's per-epoch training loss and current-task accuracy.
- `per_task_figure`: the paper's Fig. 3 layout (one panel per task, mean ± SEM over seeds, last panel the average).
- `average_figure`: the paper's Fig. 4 layout (average accuracy over the tasks seen against the number of tasks).
- `omega_figure`: the paper's Fig. 5 layout (correlation of per-task omega across tasks, one panel per layer).
- `continual_figure`: each task's accuracy against optimizer steps (--eval-every), task boundaries marked, one line
  per strategy (De Lange et al. 2023, Fig. 1-2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .aggregate import cellwise  # noqa: E402
from .figures import FORMATS, SCOPES, Figures, check_formats  # noqa: E402,F401 (where they were)
from .names import SETTING_NAMES, display  # noqa: E402
from .results import write_atomic  # noqa: E402

PANELS_PER_ROW = 3  # a figure a paper's column or page can take as it is
NOT_OPTIONS = ("setting", "data_root")  # benchmark options a title names otherwise, or not at all

COLORS = ["tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]


def chance_levels(result: dict) -> List[float]:
    """Accuracy of guessing on each task: 1 / the size of the head the task is scored on."""
    cfg, T = result["config"], len(result["tasks"])
    sizes = cfg["head_sizes"]
    return [1.0 / sizes[j] if cfg.get("setting", "task") == "task" and len(sizes) == T else 1.0 / sizes[0]
            for j in range(T)]


def protocol_title(runs_by_strategy: Dict[str, Sequence[dict]]) -> str:
    """What ran, for a figure's title: benchmark, setting, tasks, options, epochs, batch and buffer(s), e.g.
    `seq-mnist, class-incremental, 5 tasks, 1 epoch/task, batch 10, buffer 200`."""
    first = next(iter(runs_by_strategy.values()))[0]
    cfg = first.get("config", {})
    parts = [first["benchmark"]]
    if cfg.get("setting"):
        parts.append(SETTING_NAMES.get(cfg["setting"], cfg["setting"]))
    parts.append(f"{len(first['tasks'])} tasks")
    parts += [f"{k}={v}" for k, v in (cfg.get("benchmark_options") or {}).items() if k not in NOT_OPTIONS]
    if cfg.get("epochs"):
        parts.append(f"{cfg['epochs']} epoch{'s' if cfg['epochs'] != 1 else ''}/task")
    if cfg.get("batch_size"):
        parts.append(f"batch {cfg['batch_size']}")
    buffers = sorted({(runs[0].get("hparams") or {}).get("memory_size") for runs in runs_by_strategy.values()}
                     - {None})
    if buffers:
        parts.append("buffer " + "/".join(map(str, buffers)))
    return ", ".join(parts)


def _legend_outside(fig: Figure, ax, columns: int = 4) -> None:
    """One legend for the figure, below its panels (constrained layout keeps it off the data and on the canvas)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(columns, len(labels)), fontsize=8)


def _suptitle(fig: Figure, text: str) -> None:
    """The figure's title, each line wrapped to the figure's width (10 pt: about 11 characters an inch), so that a
    long protocol line is never clipped."""
    import textwrap

    width = max(20, int(fig.get_figwidth() * 11))
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")), fontsize=10)


def save(fig: Figure, stem: Path, formats: Sequence[str] = ("png",)) -> List[Path]:
    """Write `stem`.png (and/or .pdf, .svg; parents created, each file atomically); returns the paths.

    The layout is computed once (constrained layout, then frozen) and each format drawn once: `bbox_inches="tight"`
    and a live layout engine would lay the figure out again for every draw, twice per file."""
    check_formats(formats)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
        fig.set_layout_engine("none")
    paths = [stem.with_suffix(f".{fmt}") for fmt in formats]
    for path, fmt in zip(paths, formats):
        write_atomic(path, lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=120))
    return paths


NOT_TRAINED = "#d9d9d9"  # the cells of tasks not yet trained: their accuracy is chance, not a result


def matrix_heatmap(R, tasks: Sequence[str], title: str = "Accuracy matrix") -> Figure:
    """R[i, j]: accuracy on task j after training task i. Cells j > i (task j not trained yet) are grey, their
    value printed in grey, so that the colour scale shows results only."""
    R = np.asarray(R, dtype=float)
    T = len(tasks)
    rows, cols = np.indices(R.shape)
    fig = Figure(figsize=(1.1 * T + 2.5, 0.9 * T + 1.6), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=NOT_TRAINED)
    im = ax.imshow(np.ma.masked_where(cols > rows, R), vmin=0, vmax=1, cmap=cmap)
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            color = "dimgray" if j > i else "black" if R[i, j] > 0.6 else "white"
            ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=9, color=color)
    ax.set_xticks(range(T), tasks)
    ax.set_yticks(range(R.shape[0]), [f"{i + 1}: {t}" for i, t in enumerate(tasks[:R.shape[0]])])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="test accuracy")
    return fig


def training_curves(curves: Sequence[dict], tasks: Sequence[str], title: str = "Training curves",
                    losses: Optional[Sequence[dict]] = None) -> Figure:
    """Training loss and current-task training accuracy, one colour per task: the loss every k optimizer steps
    (`losses`, results.json's; a curve even when an epoch is the whole task), else per epoch; the accuracy per
    epoch, epochs counted across tasks."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for t, name in enumerate(tasks):
        color, label = COLORS[t % len(COLORS)], f"task {t + 1} ({name})"
        pts = [(k + 1, c) for k, c in enumerate(curves) if c["task"] == t]
        if losses:
            steps = [p for p in losses if p["task"] == t]
            axes[0].plot([p["step"] for p in steps], [p["loss"] for p in steps], color=color, label=label)
        elif pts:
            axes[0].plot([k for k, _ in pts], [c["loss"] for _, c in pts], marker=".", color=color, label=label)
        if pts:
            axes[1].plot([k for k, _ in pts], [c["accuracy"] for _, c in pts], marker=".", color=color, label=label)
    for ax, what in zip(axes, ("training loss (task loss)", "training accuracy (current task)")):
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("epoch (counted across tasks)")
    axes[0].set_xlabel("optimizer step (counted across tasks)" if losses else "epoch (counted across tasks)")
    if not losses:
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_outside(fig, axes[1] if not axes[0].get_lines() else axes[0])
    _suptitle(fig, title)
    return fig


def _band(ax, x, stat: dict, color: str, label: str) -> None:
    mean = np.asarray(stat["mean"], dtype=float)
    ax.plot(x, mean, marker="o", markersize=3, color=color, label=label)
    if stat["sem"] is not None:
        sem = np.asarray(stat["sem"], dtype=float)
        ax.fill_between(x, mean - sem, mean + sem, color=color, alpha=0.25, linewidth=0)


def per_task_figure(runs_by_strategy: Dict[str, Sequence[dict]], title: Optional[str] = None) -> Figure:
    """The paper's Fig. 3: panel j is task j's test accuracy after each task from j on; the last panel the
    average over the tasks seen so far. Lines are mean over seeds, bands ± SEM; dashed grey is chance."""
    first = next(iter(runs_by_strategy.values()))[0]
    tasks, chance = first["tasks"], chance_levels(first)
    T = len(tasks)
    cols = min(PANELS_PER_ROW, T + 1)
    rows = -(-(T + 1) // cols)
    fig = Figure(figsize=(3.0 * cols + 0.6, 2.6 * rows + 1.2), layout="constrained")
    grid = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    axes = grid[:T + 1]
    for ax in grid[T + 1:]:
        ax.set_axis_off()
    x_all = np.arange(1, T + 1)
    for k, (name, runs) in enumerate(runs_by_strategy.items()):
        color = COLORS[k % len(COLORS)]
        matrix = cellwise([r["accuracy_matrix"] for r in runs])
        for j in range(T):
            col = {key: None if matrix[key] is None else np.asarray(matrix[key])[j:, j]
                   for key in ("mean", "sem")}
            _band(axes[j], x_all[j:], col, color, display(name))
        _band(axes[T], x_all, cellwise([r["average_seen"] for r in runs]), color, display(name))
    for j, ax in enumerate(axes):
        ax.axhline(chance[j] if j < T else float(np.mean(chance)), color="grey", linestyle="--", linewidth=1,
                   label="chance")
        ax.set_title(f"task {j + 1} ({tasks[j]})" if j < T else "average over tasks seen", fontsize=10)
        ax.set_xticks(x_all)
        ax.set_xlim(0.7, T + 0.3)
        ax.grid(alpha=0.3)
        if j % cols == 0:
            ax.set_ylabel("test accuracy")
        if j + cols > T:  # the lowest panel of its column
            ax.set_xlabel("tasks trained")
    _legend_outside(fig, axes[-1])
    n = len(next(iter(runs_by_strategy.values())))
    _suptitle(fig, title or f"{protocol_title(runs_by_strategy)}\naccuracy on each task as tasks are added "
                            f"(mean ± SEM, {n} seed(s))")
    return fig


def average_figure(runs_by_strategy: Dict[str, Sequence[dict]], title: Optional[str] = None) -> Figure:
    """The paper's Fig. 4: average test accuracy over the tasks seen so far against the number of tasks."""
    first = next(iter(runs_by_strategy.values()))[0]
    T, chance = len(first["tasks"]), chance_levels(first)
    fig = Figure(figsize=(5.5, 4.6), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(1, T + 1)
    for k, (name, runs) in enumerate(runs_by_strategy.items()):
        _band(ax, x, cellwise([r["average_seen"] for r in runs]), COLORS[k % len(COLORS)], display(name))
    ax.axhline(float(np.mean(chance)), color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(x)
    ax.set_xlabel("number of tasks trained")
    ax.set_ylabel("average test accuracy over tasks seen")
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax, columns=3)
    n = len(next(iter(runs_by_strategy.values())))
    _suptitle(fig, title or f"{protocol_title(runs_by_strategy)}\naverage accuracy (mean ± SEM, {n} seed(s))")
    return fig


def omega_figure(correlations: Dict[str, Dict[str, Sequence[Sequence[float]]]], title: Optional[str] = None) -> Figure:
    """The paper's Fig. 5: one row per label (e.g. SI, fine-tuning), one panel per layer, each the correlation
    matrix across tasks of the per-task omega (`metrics.omega_correlations`)."""
    labels = [k for k, v in correlations.items() if v]
    if not labels:
        raise ValueError("no omega correlations to plot: only strategies that record omega (si; si with c=0 for "
                         "fine-tuning) have them")
    layers = max(len(correlations[k]) for k in labels)
    fig = Figure(figsize=(3.3 * layers + 1, 3.0 * len(labels) + 0.6), layout="constrained")
    axes = fig.subplots(len(labels), layers, squeeze=False)
    im = None
    for r, label in enumerate(labels):
        for c in range(layers):
            ax = axes[r][c]
            items = list(correlations[label].items())
            if c >= len(items):
                ax.set_axis_off()
                continue
            layer, C = items[c]
            C = np.asarray(C, dtype=float)
            im = ax.imshow(C, vmin=-1, vmax=1, cmap="RdBu_r")
            ticks = range(len(C))
            ax.set_xticks(ticks, [str(t + 1) for t in ticks])
            ax.set_yticks(ticks, [str(t + 1) for t in ticks])
            ax.set_xlabel("task")
            ax.set_ylabel("task")
            ax.set_title(f"{label}: layer {c + 1}\n({layer})", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="correlation of per-task omega")
    fig.suptitle(title or "Correlation of per-task parameter importance (omega) across tasks")
    return fig


def continual_figure(runs_by_strategy: Dict[str, Sequence[dict]], title: Optional[str] = None) -> Figure:
    """Panel j: task j's accuracy (class-IL, the curve's fixed subset) against the optimizer steps, from the first
    point that scored it; one line per strategy, the mean over its seeds (band ± SEM) where the seeds share their
    steps, else seed 0's; dotted vertical lines at the task boundaries, dashed grey chance."""
    first = next(iter(runs_by_strategy.values()))[0]
    tasks, chance = first["tasks"], chance_levels(first)
    T = len(tasks)
    cols = min(PANELS_PER_ROW, T)
    rows = -(-T // cols)
    fig = Figure(figsize=(3.2 * cols + 0.6, 2.6 * rows + 1.2), layout="constrained")
    grid = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    axes = grid[:T]
    for ax in grid[T:]:
        ax.set_axis_off()
    boundaries = []
    for k, (name, runs) in enumerate(runs_by_strategy.items()):
        curves = [r["continual_eval"] for r in runs if r.get("continual_eval")]
        if not curves:
            continue
        color = COLORS[k % len(COLORS)]
        for j in range(T):
            series = [[(p["step"], p["accuracy"][j]) for p in c["points"] if len(p["accuracy"]) > j] for c in curves]
            steps = [s for s, _ in series[0]]
            same = all([s for s, _ in other] == steps for other in series)
            stat = cellwise([[[a] for _, a in other] for other in series]) if same else \
                {"mean": [[a] for _, a in series[0]], "sem": None}
            mean = np.asarray(stat["mean"], dtype=float)[:, 0]
            axes[j].plot(steps, mean, color=color, linewidth=1.2, label=display(name))
            if stat["sem"] is not None:
                sem = np.asarray(stat["sem"], dtype=float)[:, 0]
                axes[j].fill_between(steps, mean - sem, mean + sem, color=color, alpha=0.2, linewidth=0)
        boundaries = boundaries or curves[0]["boundaries"][:-1]  # the first strategy's (the runs share a stream)
    for j, ax in enumerate(axes):
        for b in boundaries:
            ax.axvline(b, color="black", linestyle=":", linewidth=0.8, label="_boundary")
        ax.axhline(chance[j], color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_title(f"task {j + 1} ({tasks[j]})", fontsize=10)
        ax.grid(alpha=0.3)
        if j % cols == 0:
            ax.set_ylabel("test accuracy (fixed subset)")
        if j + cols >= T:  # the lowest panel of its column
            ax.set_xlabel("optimizer steps")
    _legend_outside(fig, axes[0])
    n = len(next(iter(runs_by_strategy.values())))
    _suptitle(fig, title or f"{protocol_title(runs_by_strategy)}\naccuracy during training, task boundaries dotted "
                            f"({n} seed(s))")
    return fig


def write_run_plots(result: dict, out_dir: Path, formats: Sequence[str] = ("png", "pdf")) -> List[Path]:
    """A run's figures: accuracy matrix, training curves and, when omega was recorded, its Fig. 5 row."""
    out_dir = Path(out_dir)
    name = f"{display(result['strategy'])}, seed {result['seed']}\n{protocol_title({result['strategy']: [result]})}"
    files = save(matrix_heatmap(result["accuracy_matrix"], result["tasks"], f"Accuracy matrix: {name}"),
                 out_dir / "matrix", formats)
    if result.get("curves"):
        files += save(training_curves(result["curves"], result["tasks"], f"Training curves: {name}",
                                      result.get("losses")),
                      out_dir / "training", formats)
    if result.get("omega_correlation"):
        files += save(omega_figure({display(result["strategy"]): result["omega_correlation"]}),
                      out_dir / "omega_correlation",
                      formats)
    if result.get("continual_eval"):
        files += save(continual_figure({result["strategy"]: [result]}, f"Accuracy during training: {name}"),
                      out_dir / "continual", formats)
    return files


def write_compare_plots(runs_by_strategy: Dict[str, Sequence[dict]], out_dir: Path,
                        formats: Sequence[str] = ("png", "pdf")) -> List[Path]:
    """A comparison's figures: Fig. 3 and Fig. 4 layouts, Fig. 5 for the strategies that recorded omega (seed 0 of
    each), and the accuracy during training when the runs evaluated it (--eval-every)."""
    out_dir = Path(out_dir)
    files = save(per_task_figure(runs_by_strategy), out_dir / "fig3_per_task", formats)
    files += save(average_figure(runs_by_strategy), out_dir / "fig4_average", formats)
    omegas = {display(name): runs[0].get("omega_correlation") for name, runs in runs_by_strategy.items()}
    if any(omegas.values()):
        files += save(omega_figure(omegas), out_dir / "fig5_omega_correlation", formats)
    if any(r.get("continual_eval") for runs in runs_by_strategy.values() for r in runs):
        files += save(continual_figure(runs_by_strategy), out_dir / "fig_continual", formats)
    return files


def final_accuracy_figure(bars: Dict[str, dict], tasks: Sequence[str], error: str = "sd",
                          title: Optional[str] = None) -> Figure:
    """The paper's Fig. 6: each task's accuracy after all tasks, one bar per arm and task, error bars over seeds.

    `bars` maps a label to {"mean": [per task], "err": [per task] or None}.
    """
    T = len(tasks)
    fig = Figure(figsize=(max(5.5, 1.3 * T + 2), 3.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(bars))
    x = np.arange(T)
    for k, (label, b) in enumerate(bars.items()):
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, b["mean"], width, yerr=b.get("err"), capsize=3,
               color=COLORS[k % len(COLORS)], label=label)
    ax.set_xticks(x, [f"task {j + 1}\n{t}" for j, t in enumerate(tasks)], fontsize=8)
    ax.set_ylabel("test accuracy after all tasks")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(fig, ax, columns=3)
    _suptitle(fig, title or f"Accuracy per task after training on all tasks (error bars: {error.upper()})")
    return fig
