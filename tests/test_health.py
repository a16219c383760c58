"""The learning-health check: the pure rule on closed-form cases, the predicted-class counts against a brute-force
count, and real runs: one that learns nothing (learning rate 1e-9) warns, records it and `runs` shows it; one that
learns stays silent."""
import json
import warnings

import numpy as np
import pytest
import torch

from clframework.evaluation import health as H
from clframework import RunConfig, run


def test_a_learned_task_passes_and_each_failure_names_task_accuracy_and_two_things_to_try():
    assert H.check(0, "0-1", 0.97, 2, [480, 520]) is None
    assert H.check(3, "6-7", 0.91, 2, [0, 0, 0, 0, 0, 0, 500, 480, 20, 0]) is None  # class-IL: a 10-output head
    at_chance = H.check(1, "2-3", 0.52, 2, [510, 490])  # within 0.05 of chance 1/2, answers spread
    assert at_chance["chance"] == 0.5 and at_chance["top_share"] == 0.51
    assert at_chance["warning"].startswith("task 2 (2-3) learned nothing: accuracy 0.52, not above chance (0.50);")
    one_class = H.check(1, "2-3", 0.5, 2, [0, 0, 1000, 0])  # class-IL: one output for every test example
    assert (one_class["top_class"], one_class["top_share"]) == (2, 1.0)
    assert "predicts class 2 for 100% of its test data" in one_class["warning"]
    mostly = H.check(0, "a-b-c", 0.6, 3, [920, 50, 30])  # above chance 1/3, but one class for 92%
    assert mostly is not None and "accuracy 0.60, the model predicts class 0 for 92%" in mostly["warning"]
    for w in (at_chance, one_class, mostly):
        assert "--lr" in w["warning"] and "--epochs" in w["warning"] and "\n" not in w["warning"]
    assert H.check(0, "a", 0.99, 1, [100]) is None  # a one-class task cannot be judged by its answers


def test_predicted_counts_match_a_brute_force_count(mnist_stream):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    task = mnist_stream.tasks[1]
    counts = H.predicted_counts(model, task, "test", torch.device("cpu"), batch_size=37)
    x = torch.cat([xb for xb, _ in task.batches("test", 10_000, torch.device("cpu"))])
    with torch.no_grad():
        want = np.bincount(model(x).argmax(-1).numpy(), minlength=len(counts))
    assert counts == want.tolist()[:len(counts)] and sum(counts) == task.n("test")
    among = H.predicted_counts(model, task, "test", torch.device("cpu"), classes=(2, 4))  # class-IL: task-IL view
    with torch.no_grad():
        want = np.bincount(model(x)[:, 2:4].argmax(-1).numpy() + 2, minlength=4)
    assert among == want.tolist()[:len(among)] and sum(among) == task.n("test")


def test_a_run_that_learns_nothing_warns_records_it_and_runs_shows_it(mnist_stream, tmp_path):
    from clframework.apps.runs import list_runs

    cfg = RunConfig("naive", "split-mnist-5k", lr=1e-9, epochs=1, hidden=[16], benchmark_options={"setting": "class"})
    with pytest.warns(H.LearningHealthWarning) as caught:
        result = run(cfg, tmp_path / "dead", quiet=True, stream=None)
    saved = json.loads((tmp_path / "dead" / "results.json").read_text())
    assert saved["health"] and saved["health"] == result.health
    first = saved["health"][0]
    assert first["accuracy"] == saved["task_il_accuracy_matrix"][first["task"]][first["task"]]  # told the task
    assert [str(w.message) for w in caught] == [h["warning"] for h in saved["health"]]
    assert "learned nothing: task " + ", ".join(str(h["task"] + 1) for h in saved["health"]) in list_runs(tmp_path)


def test_a_run_that_learns_is_silent(mnist_stream):
    with warnings.catch_warnings():
        warnings.simplefilter("error", H.LearningHealthWarning)
        result = run(RunConfig("naive", "split-mnist-5k", epochs=1, hidden=[16]), quiet=True, stream=mnist_stream)
    assert result.health == [] and min(result.accuracy_matrix[i][i] for i in range(2)) > 0.8


def test_the_custom_strategy_guides_strong_penalty_prints_the_warning_it_shows(mnist_stream, scratch_registry):
    """docs/custom-strategy.md: its L2 anchor at strength 10 leaves task 2 at chance, with the warning line shown."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "custom-strategy.md").read_text()
    exec(re.search(r"```python file=my_l2.py\n(.*?)```", doc, re.S).group(1), {})
    shown = re.search(r"```text\nclframework: warning: (.*?)\n```", doc, re.S).group(1)
    with pytest.warns(H.LearningHealthWarning) as caught:
        run(RunConfig("l2", "split-mnist-5k", hparams={"strength": 10.0}, epochs=1), quiet=True, stream=mnist_stream)
    assert [str(w.message) for w in caught] == [shown]
