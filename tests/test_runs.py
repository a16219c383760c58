"""`clframework runs` on folders made by real tiny runs: finished, diverged (a huge learning rate), failed (a
strategy that raises), interrupted (Ctrl-C in training), running (a live lock) and a partial `reproduce`."""
import json

import pytest

from clframework.apps.cli import main
from clframework.apps.runs import find
from clframework.checkpoint import OutputFolder
from clframework import RunConfig, run
from clframework.plugin import Strategy, register_strategy
from clframework.trainer import TrainerCallback, TrainingDiverged, TrainingFailed

TINY = dict(epochs=1, hidden=[16], tasks=2)


class CtrlC(TrainerCallback):
    """Presses Ctrl-C (raises KeyboardInterrupt, as SIGINT does) at the end of the `at`-th epoch it sees."""

    def __init__(self, at: int):
        self.at, self.seen = at, 0

    def on_epoch_end(self, *args):
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt


def _rows(folder):
    return {r["label"]: r for r in find(folder)}


def test_run_statuses_with_tasks_epochs_and_seeds(tmp_path, scratch_registry, capsys):
    runs = tmp_path / "runs"
    finished = run(RunConfig("naive", "split-mnist-5k", **TINY), runs / "ok", quiet=True)
    with pytest.raises(TrainingDiverged):
        run(RunConfig("naive", "split-mnist-5k", lr=1e30, **TINY), runs / "diverged", quiet=True)

    bug = {"there": True}

    @register_strategy("boom", description="raises on task 2 while the bug is there")
    class Boom(Strategy):
        def on_task_start(self, model, task_index):
            if task_index == 1 and bug["there"]:
                raise ZeroDivisionError("a bug in the user's strategy")

    with pytest.raises(TrainingFailed):
        run(RunConfig("boom", "split-mnist-5k", **TINY), runs / "failed", quiet=True)
    with pytest.raises(KeyboardInterrupt):
        run(RunConfig("naive", "split-mnist-5k", epochs=2, hidden=[16], tasks=2), runs / "stopped", quiet=True,
            callbacks=[CtrlC(at=3)])

    rows = _rows(runs)
    assert rows["ok"]["status"] == "finished" and rows["ok"]["acc"] == f"{finished.metrics['acc']:.4f}"
    diverged = json.loads((runs / "diverged" / "results.json").read_text())
    where = diverged["diverged_at"]
    assert rows["diverged"]["status"] == f"diverged (task {where['task'] + 1}, epoch {where['epoch']})"
    assert rows["diverged"]["acc"] == "-"
    failed = json.loads((runs / "failed" / "failed.json").read_text())
    assert failed["failed_at"]["task"] == 1 and "ZeroDivisionError" in failed["error"]
    assert rows["failed"]["status"] == "failed (task 2, epoch 0)"
    assert rows["stopped"]["status"] == "interrupted" and (runs / "stopped" / "checkpoint.pt").is_file()
    for label, epochs in (("ok", "1"), ("diverged", "1"), ("failed", "1"), ("stopped", "2")):
        assert (rows[label]["kind"], rows[label]["tasks"], rows[label]["epochs"], rows[label]["seeds"]) == \
            ("run", "2", epochs, "1"), label
    with OutputFolder(runs / "stopped", resume=True):  # this (live) process holds its lock: it is running
        assert _rows(runs)["stopped"]["status"] == "running"

    # resumed, the interrupted and the failed run (its bug fixed) finish; the failed run's record goes
    bug["there"] = False
    run(RunConfig("naive", "split-mnist-5k", epochs=2, hidden=[16], tasks=2), runs / "stopped", quiet=True,
        resume=True)
    run(RunConfig("boom", "split-mnist-5k", **TINY), runs / "failed", quiet=True, resume=True)
    assert not (runs / "failed" / "failed.json").exists()
    rows = _rows(runs)
    assert rows["stopped"]["status"] == rows["failed"]["status"] == "finished"

    capsys.readouterr()
    assert main(["runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["date", "(UTC)", "label", "kind", "benchmark", "status", "tasks", "epochs", "seeds",
                                "ACC"]
    assert len(lines) == 5 and not any("unreadable" in line or "KeyError" in line for line in lines)


@pytest.mark.slow
def test_partial_reproduce_and_interrupted_compare_are_not_finished(tmp_path):
    from clframework.apps.reproduce import reproduce
    from clframework import compare

    out = tmp_path / "runs" / "repro"
    starts = []

    class StopSecondRun(TrainerCallback):
        def on_run_start(self):
            starts.append(1)
            if len(starts) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reproduce("split-mnist", out, dataset="mnist-5k", seeds=2, epochs=1, arms=["si"], quiet=True,
                  log=lambda line: None, callbacks_for=lambda cfg: [StopSecondRun()])
    saved = json.loads((out / "reproduction.json").read_text())
    assert saved["partial"] == "1 of 2 runs"
    with pytest.raises(KeyboardInterrupt):
        compare(["naive", "si"], "split-mnist-5k", seeds=1, out_dir=tmp_path / "runs" / "cmp", quiet=True,
                base=RunConfig("naive", "split-mnist-5k", **TINY),
                callbacks_for=lambda name, seed: [CtrlC(at=2)] if name == "si" else [])
    rows = _rows(tmp_path / "runs")
    assert set(rows) == {"repro", "cmp"}  # the studies' own runs are not listed separately
    repro = rows["repro"]
    assert (repro["kind"], repro["status"], repro["tasks"], repro["epochs"], repro["seeds"]) == \
        ("reproduce", "partial 1/2", "5", "1", "2")
    assert repro["acc"] == f"SI (c=1) {saved['arms']['SI (c=1)']['acc_mean']:.4f}"
    cmp = rows["cmp"]
    assert (cmp["kind"], cmp["status"], cmp["tasks"], cmp["epochs"], cmp["seeds"], cmp["acc"]) == \
        ("compare", "partial 1/2", "2", "1", "1", "-")
