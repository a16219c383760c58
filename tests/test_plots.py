"""Plots: files written and non-empty; panels, lines and values read back from the figure objects."""
import json

import matplotlib
import numpy as np
import pytest

from clframework.evaluation import plots as P

TASKS = ["0-1", "2-3", "4-5"]


def _result(strategy, seed, shift=0.0, omega=False):
    rng = np.random.default_rng(seed)
    R = np.clip(np.tril(np.full((3, 3), 0.9 - shift)) + np.triu(np.full((3, 3), 0.5), 1)
                + rng.uniform(-0.05, 0.05, (3, 3)), 0, 1).tolist()
    res = {"strategy": strategy, "benchmark": "toy", "seed": seed, "tasks": TASKS,
           "config": {"setting": "task", "head_sizes": [2, 2, 2]}, "accuracy_matrix": R,
           "initial_accuracy": [0.5, 0.5, 0.5], "average_seen": [float(np.mean(R[i][:i + 1])) for i in range(3)],
           "curves": [{"task": t, "epoch": e, "loss": 1.0 / (e + t + 1), "accuracy": 0.8 + 0.05 * e}
                      for t in range(3) for e in (1, 2)]}
    if omega:
        res["omega_correlation"] = {"trunk.1.weight": np.eye(3).tolist(), "trunk.3.weight": np.ones((3, 3)).tolist()}
    return res


RUNS = {"si": [_result("si", s, omega=True) for s in range(3)], "naive": [_result("naive", s, 0.3) for s in range(3)]}


def _data_lines(ax):
    return [line for line in ax.get_lines() if line.get_label() != "chance"]


def test_fig3_one_panel_per_task_plus_average_with_mean_lines_and_sem_bands():
    fig = P.per_task_figure(RUNS)
    axes = [ax for ax in fig.get_axes() if ax.axison]
    assert len(axes) == len(TASKS) + 1
    assert [ax.get_title() for ax in axes] == ["task 1 (0-1)", "task 2 (2-3)", "task 3 (4-5)", "average over tasks seen"]
    for j, ax in enumerate(axes):
        lines = _data_lines(ax)
        assert [line.get_label() for line in lines] == ["SI", "Fine-tuning"]  # display names
        assert len(ax.collections) == 2  # one SEM band per strategy
        chance = [line for line in ax.get_lines() if line.get_label() == "chance"]
        assert len(chance) == 1 and chance[0].get_ydata()[0] == 0.5
    # task 2's panel: mean over seeds of R[i][1] for i >= 1, plotted against tasks trained 2, 3
    si_task2 = _data_lines(axes[1])[0]
    expected = np.mean([np.asarray(r["accuracy_matrix"])[1:, 1] for r in RUNS["si"]], axis=0)
    assert list(si_task2.get_xdata()) == [2, 3] and np.allclose(si_task2.get_ydata(), expected)
    assert axes[0].get_ylabel() == "test accuracy" and axes[3].get_xlabel() == "tasks trained"
    assert [len(ax.get_subplotspec().rowspan) for ax in axes] == [1] * 4  # 2 rows of at most 3 panels
    assert {ax.get_subplotspec().colspan.start for ax in axes} == {0, 1, 2}


def test_fig4_one_line_per_strategy():
    fig = P.average_figure(RUNS)
    (ax,) = fig.get_axes()
    lines = _data_lines(ax)
    assert [line.get_label() for line in lines] == ["SI", "Fine-tuning"]
    assert np.allclose(lines[1].get_ydata(), np.mean([r["average_seen"] for r in RUNS["naive"]], axis=0))
    assert ax.get_legend() is None and len(fig.legends) == 1 and ax.get_xlabel() == "number of tasks trained"


def test_fig5_one_panel_per_layer_and_label():
    corr = {"SI": RUNS["si"][0]["omega_correlation"], "fine-tuning (SI, c=0)": RUNS["si"][1]["omega_correlation"]}
    fig = P.omega_figure(corr)
    images = [ax for ax in fig.get_axes() if ax.get_images()]
    assert len(images) == 4  # 2 labels x 2 layers (the colorbar axis carries no image)
    assert images[0].get_title().startswith("SI: layer 1") and "fine-tuning" in images[2].get_title()
    assert np.array_equal(images[0].get_images()[0].get_array(), np.eye(3))
    with pytest.raises(ValueError, match="c=0"):
        P.omega_figure({"naive": None})


def test_heatmap_annotates_every_cell():
    R = RUNS["si"][0]["accuracy_matrix"]
    fig = P.matrix_heatmap(R, TASKS)
    ax = fig.get_axes()[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts == [f"{v:.2f}" for row in R for v in row]
    assert ax.get_xlabel() == "evaluated on task"


def test_heatmap_greys_out_tasks_not_yet_trained():
    """After task i, tasks j > i are untrained (chance accuracy): masked to the grey 'bad' colour, not coloured as
    results; every trained cell keeps its colour."""
    R = RUNS["si"][0]["accuracy_matrix"]
    ax = P.matrix_heatmap(R, TASKS).get_axes()[0]
    image = ax.get_images()[0]
    data = image.get_array()
    expected = np.triu(np.ones_like(np.asarray(R), dtype=bool), k=1)
    assert np.array_equal(np.ma.getmaskarray(data), expected)
    rgba = image.to_rgba(data)
    grey = matplotlib.colors.to_rgba(P.NOT_TRAINED)
    assert all(tuple(rgba[i, j]) == grey for i, j in zip(*np.nonzero(expected)))
    assert not any(tuple(rgba[i, j]) == grey for i, j in zip(*np.nonzero(~expected)))


def test_training_curves_one_line_per_task_in_each_panel():
    fig = P.training_curves(RUNS["si"][0]["curves"], TASKS)
    loss_ax, acc_ax = fig.get_axes()
    assert len(loss_ax.get_lines()) == 3 and len(acc_ax.get_lines()) == 3
    assert list(loss_ax.get_lines()[1].get_xdata()) == [3, 4]  # task 2's epochs, counted across tasks


def test_files_written_png_and_svg(tmp_path):
    run_files = P.write_run_plots(RUNS["si"][0], tmp_path / "run", formats=("png", "svg"))
    cmp_files = P.write_compare_plots(RUNS, tmp_path / "cmp", formats=("png", "svg"))
    names = sorted(f.name for f in run_files)
    assert names == sorted(f"{s}.{e}" for s in ("matrix", "training", "omega_correlation") for e in ("png", "svg"))
    assert sorted(f.name for f in cmp_files) == sorted(
        f"{s}.{e}" for s in ("fig3_per_task", "fig4_average", "fig5_omega_correlation") for e in ("png", "svg"))
    for f in run_files + cmp_files:
        data = f.read_bytes()
        assert len(data) > 1000
        assert data[:8] == b"\x89PNG\r\n\x1a\n" if f.suffix == ".png" else b"<svg" in data[:500]


def test_png_by_default_and_the_layout_frozen_once(tmp_path):
    fig = P.per_task_figure(RUNS)
    assert fig.get_layout_engine() is not None
    files = P.save(fig, tmp_path / "f")
    assert [f.name for f in files] == ["f.png"] and not (tmp_path / "f.svg").exists()
    # laid out once by the constrained engine, then frozen: a second save draws the same positions
    positions = [ax.get_position().bounds for ax in fig.get_axes()]
    assert type(fig.get_layout_engine()).__name__ in ("NoneType", "PlaceHolderLayoutEngine")
    P.save(fig, tmp_path / "g", ("svg",))
    assert [ax.get_position().bounds for ax in fig.get_axes()] == positions
    assert (tmp_path / "g.svg").read_bytes().find(b"<svg") >= 0
    with pytest.raises(ValueError, match="subset of png, pdf, svg"):
        P.save(fig, tmp_path / "h", ("jpg",))
    assert not (tmp_path / "h.jpg").exists()


def _figure_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in (".png", ".svg"))


@pytest.mark.slow
def test_compare_writes_the_study_figures_only_unless_asked(tmp_path, capsys):
    """`--plots study` (compare's default): Figs. 3-5 as PNG and no per-run figures; `--plots all` adds each run's,
    `--plot-format png,svg` both formats; `--plots none` no figure. The tables are the same in every case."""
    from clframework.apps.cli import main

    common = ["compare", "--strategies", "naive,si", "--seeds", "1", "--epochs", "1", "--hidden", "16", "--tasks",
              "2", "--quiet"]
    assert main(common + ["--out", str(tmp_path / "study")]) == 0
    assert _figure_files(tmp_path / "study") == ["fig3_per_task.png", "fig4_average.png", "fig5_omega_correlation.png"]
    assert main(common + ["--out", str(tmp_path / "all"), "--plots", "all", "--plot-format", "png,svg"]) == 0
    runs = [f"{r}/{n}" for r, names in (("naive-seed0", ("matrix", "training")),
                                        ("si-seed0", ("matrix", "omega_correlation", "training"))) for n in names]
    assert _figure_files(tmp_path / "all") == sorted(
        f"{s}.{e}" for s in ["fig3_per_task", "fig4_average", "fig5_omega_correlation"] + runs for e in ("png", "svg"))
    assert main(common + ["--out", str(tmp_path / "none"), "--plots", "none"]) == 0
    assert _figure_files(tmp_path / "none") == []
    tables = [(tmp_path / d / "table.md").read_text() for d in ("study", "all", "none")]
    matrices = [{n: [r["accuracy_matrix"] for r in s["runs"]] for n, s in
                 json.loads((tmp_path / d / "summary.json").read_text())["strategies"].items()}
                for d in ("study", "all", "none")]
    assert matrices[0] == matrices[1] == matrices[2] and len(tables[0]) > 0
    assert main(["run", "--strategy", "naive", "--tasks", "2", "--epochs", "1", "--hidden", "16", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
    assert _figure_files(tmp_path / "run") == ["matrix.png", "training.png"]  # a run's own figures, as PNG
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "bad"), "--plot-format", "jpg"]) == 2
    assert "subset of png, pdf, svg" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def _inside_and_off_the_data(fig, tmp_path):
    """Every visible text (titles, labels, ticks, legend) lies inside the canvas as saved, and every legend lies off
    every panel's data area."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    P.save(fig, tmp_path / "f")  # lays the figure out and freezes it, as every written figure is
    canvas_agg = FigureCanvasAgg(fig)
    canvas_agg.draw()
    renderer = canvas_agg.get_renderer()
    canvas = fig.bbox
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    drawn = [ax.get_tightbbox(renderer) for ax in fig.get_axes() if ax.axison]  # what each panel draws, ticks too
    drawn += [legend.get_window_extent(renderer) for legend in fig.legends]
    drawn += [t.get_window_extent(renderer) for t in (fig._suptitle,) if t is not None]
    assert texts and drawn
    for box in drawn:
        assert (box.x0 >= canvas.x0 - 0.5 and box.y0 >= canvas.y0 - 0.5 and box.x1 <= canvas.x1 + 0.5
                and box.y1 <= canvas.y1 + 0.5), (box, canvas)
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.get_axes():
            if ax.axison:
                assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    return texts


RUN_WITH_PROTOCOL = {**RUNS["si"][0], "benchmark": "seq-fashion-mnist", "hparams": {"memory_size": 200},
                     "config": {"setting": "class", "head_sizes": [6], "epochs": 1, "batch_size": 10,
                                "benchmark_options": {"train_per_class": 300, "setting": "class"}}}


@pytest.mark.parametrize("tasks", [2, 3, 5, 10])
def test_study_figures_keep_everything_on_the_canvas_and_legends_off_the_data(tasks, tmp_path):
    """At most three panels a row, for any number of tasks; titles name the protocol and the buffer."""
    def runs(name, shift):
        out = []
        for seed in range(2):
            R = np.tril(np.full((tasks, tasks), 0.8 - shift)) + np.triu(np.full((tasks, tasks), 0.1), 1)
            out.append({**RUN_WITH_PROTOCOL, "strategy": name, "seed": seed, "tasks": [f"{2 * t}-{2 * t + 1}"
                        for t in range(tasks)], "accuracy_matrix": R.tolist(),
                        "average_seen": [float(R[i, :i + 1].mean()) for i in range(tasks)]})
        return out

    study = {"derpp": runs("derpp", 0.0), "er_ace": runs("er_ace", 0.1), "icarl": runs("icarl", 0.2),
             "gdumb": runs("gdumb", 0.3), "agem": runs("agem", 0.4), "joint": runs("joint", -0.1)}
    for fig in (P.per_task_figure(study), P.average_figure(study)):
        texts = [t.get_text() for t in _inside_and_off_the_data(fig, tmp_path)]
        assert {"DER++", "ER-ACE", "iCaRL", "GDumb", "A-GEM", "Joint"} <= set(texts)
        assert any("seq-fashion-mnist, class-incremental" in t and "train_per_class=300" in t and "buffer 200" in t
                   for t in texts)
        columns = {ax.get_subplotspec().colspan.start for ax in fig.get_axes()}
        assert max(columns) < 3


def test_run_figures_keep_everything_on_the_canvas(tmp_path):
    result = {**RUN_WITH_PROTOCOL, "strategy": "er_ace"}
    for fig in (P.training_curves(result["curves"], TASKS, "Training curves: ER-ACE"),
                P.matrix_heatmap(result["accuracy_matrix"], TASKS, "Accuracy matrix: ER-ACE, seed 0\nseq-mnist"),
                P.final_accuracy_figure({"DER++": {"mean": [0.5] * 3, "err": None}, "ER": {"mean": [0.4] * 3}},
                                        TASKS)):
        _inside_and_off_the_data(fig, tmp_path)


def test_chance_levels_follow_the_heads():
    r = RUNS["si"][0]
    assert P.chance_levels(r) == [0.5, 0.5, 0.5]
    assert P.chance_levels({**r, "config": {"setting": "class", "head_sizes": [6]}}) == [1 / 6] * 3


def test_si_with_c0_trains_like_naive(mnist_stream):
    """Fig. 5's fine-tuning row comes from SI with c=0: same training as naive, plus the recorded omega."""
    from clframework import RunConfig, run

    def go(strategy, hparams):
        cfg = RunConfig(strategy=strategy, benchmark="split-mnist-5k", hparams=hparams, epochs=1, hidden=[16], seed=5)
        return run(cfg, quiet=True, stream=mnist_stream)

    naive, ft = go("naive", {}), go("si", {"c": 0})
    assert ft.accuracy_matrix == naive.accuracy_matrix and ft.curves == naive.curves
    assert naive.omega_correlation is None and "omega_correlation" not in naive.to_json()
    assert list(ft.omega_correlation) == ["trunk.1.weight"]


def _with_curve(result, drop):
    """`result` with a continual-evaluation curve: 3 tasks of 4 steps, every 2 steps; old tasks drop by `drop`
    at each boundary (the seed shifts every value by 0.01 * seed)."""
    s = 0.01 * result["seed"]
    points = [{"step": 0, "task": 0, "accuracy": [0.5 + s]}, {"step": 2, "task": 0, "accuracy": [0.8 + s]},
              {"step": 4, "task": 1, "accuracy": [0.9 + s, 0.5]}, {"step": 6, "task": 1, "accuracy": [0.9 - drop, 0.8]},
              {"step": 8, "task": 2, "accuracy": [0.85 - drop, 0.9, 0.5]},
              {"step": 10, "task": 2, "accuracy": [0.8 - drop, 0.9 - drop, 0.8]},
              {"step": 12, "task": 2, "accuracy": [0.8 - drop, 0.85 - drop, 0.9]}]
    return {**result, "continual_eval": {"every": 2, "sizes": [10, 10, 10], "boundaries": [4, 8, 12],
                                         "points": points}}


def test_continual_figure_one_panel_per_task_one_line_per_strategy_boundaries_marked(tmp_path):
    runs = {"er": [_with_curve(r, 0.1) for r in RUNS["si"]], "naive": [_with_curve(r, 0.4) for r in RUNS["naive"]]}
    fig = P.continual_figure(runs)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["task 1 (0-1)", "task 2 (2-3)", "task 3 (4-5)"]
    for j, ax in enumerate(axes):
        lines = [line for line in ax.get_lines() if line.get_label() not in ("_boundary", "chance")]
        assert [line.get_label() for line in lines] == ["ER", "Fine-tuning"]  # display names
        assert len(ax.collections) == 2  # SEM bands over the three seeds
        bounds = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_label() == "_boundary")
        assert bounds == [4, 8]  # the last boundary is the run's end
    naive_task1 = [line for line in axes[0].get_lines() if line.get_label() == "Fine-tuning"][0]
    assert list(naive_task1.get_xdata()) == [0, 2, 4, 6, 8, 10, 12]
    expected = np.mean([[p["accuracy"][0] for p in r["continual_eval"]["points"]] for r in runs["naive"]], axis=0)
    assert np.allclose(naive_task1.get_ydata(), expected)
    er_task3 = [line for line in axes[2].get_lines() if line.get_label() == "ER"][0]
    assert list(er_task3.get_xdata()) == [8, 10, 12]  # from the point that first scored task 3
    files = P.write_run_plots(runs["er"][0], tmp_path)
    assert tmp_path / "continual.png" in files and (tmp_path / "continual.png").stat().st_size > 0
    assert tmp_path / "study" / "fig_continual.png" in P.write_compare_plots(runs, tmp_path / "study")
    _inside_and_off_the_data(fig, tmp_path)


def test_the_training_loss_every_k_steps_averages_to_the_epochs_loss(mnist_stream, tmp_path):
    """800 examples a task in minibatches of 64: 13 steps, under trainer.LOSS_POINTS, so a point every step; the
    points weighted by their rows (12 x 64, then 32) average to the epoch's loss. The training figure draws them
    against the step: a curve for a one-epoch task, not a dot."""
    from clframework import RunConfig, run

    result = run(RunConfig("naive", "split-mnist-5k", epochs=1, hidden=[16], batch_size=64), quiet=True,
                 stream=mnist_stream)
    rows = [64] * 12 + [32]
    for t in range(2):
        points = [p for p in result.losses if p["task"] == t]
        assert [p["step"] for p in points] == list(range(13 * t + 1, 13 * t + 14))
        weighted = sum(p["loss"] * r for p, r in zip(points, rows)) / 800
        assert weighted == pytest.approx(result.curves[t]["loss"], rel=1e-6)
    fig = P.training_curves(result.curves, result.tasks, "t", result.losses)
    loss_ax = fig.get_axes()[0]
    assert [list(line.get_xdata()) for line in loss_ax.get_lines()] == [list(range(1, 14)), list(range(14, 27))]
    assert loss_ax.get_xlabel() == "optimizer step (counted across tasks)"
    _inside_and_off_the_data(fig, tmp_path)
