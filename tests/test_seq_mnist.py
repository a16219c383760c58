"""The DER paper's MNIST protocol: seq-mnist read from small IDX files the test writes (full MNIST is not on this
machine), class-incremental 5 x 2 classes; each method's published settings chosen by its memory size, the user's
values winning; and a full run through the CLI records both matrices and every setting."""
import json

import pytest

from clframework.apps.cli import main
from clframework.benchmarks import make_benchmark
from clframework import RunConfig
from fake_datasets import mnist_arrays, write_idx_set


def test_seq_mnist_reads_idx_files_into_five_class_incremental_tasks(tmp_path):
    write_idx_set(tmp_path, mnist_arrays(n_train=100, n_test=40, seed=3))
    small = make_benchmark("seq-mnist", data_root=str(tmp_path), train_per_class=4)
    assert [sorted(t.train_y.tolist()) for t in small.tasks][1] == [2] * 4 + [3] * 4  # a fixed per-class draw
    assert small.tasks[1].train_y.tolist() == make_benchmark("seq-mnist", data_root=str(tmp_path),
                                                              train_per_class=4).tasks[1].train_y.tolist()
    stream = make_benchmark("seq-mnist", data_root=str(tmp_path))
    assert stream.setting == "class" and stream.head_sizes == [10] and len(stream) == 5
    for t, task in enumerate(stream.tasks):
        assert task.classes == (2 * t, 2 * t + 1) and set(task.train_y.tolist()) == {2 * t, 2 * t + 1}
        assert len(task.train_y) == 20 and task.train_x.shape[1:] == (1, 28, 28)


@pytest.mark.parametrize("strategy,size,lr,hparams", [
    ("er", 200, 0.01, {"minibatch_size": 10}), ("er", 500, 0.1, {"minibatch_size": 10}),
    ("der", 200, 0.03, {"minibatch_size": 10, "alpha": 0.2}), ("der", 500, 0.03, {"minibatch_size": 128, "alpha": 1.0}),
    ("derpp", 200, 0.03, {"minibatch_size": 128, "alpha": 0.2, "beta": 1.0}),
    ("derpp", 500, 0.03, {"minibatch_size": 10, "alpha": 1.0, "beta": 0.5}),
    ("agem", 500, 0.1, {"sample_size": 128}), ("si", None, 0.1, {"c": 1.0, "xi": 0.9}), ("naive", None, 0.03, {}),
    ("er", 300, 0.03, {"minibatch_size": 10})])  # a size best_args does not list: base lr, strategy defaults
def test_per_method_settings_follow_the_memory_size(strategy, size, lr, hparams):
    cfg = RunConfig(strategy, "seq-fashion-mnist", hparams={} if size is None else {"memory_size": str(size)})
    resolved = cfg.resolved()
    train = resolved["train"]
    assert (train["epochs"], train["batch_size"], train["optimizer"], train["hidden"]) == (1, 10, "sgd", [100, 100])
    assert train["lr"] == lr and {k: resolved["hparams"][k] for k in hparams} == hparams
    assert RunConfig(strategy, "seq-fashion-mnist", lr=0.5).resolved()["train"]["lr"] == 0.5  # the user's wins


def test_a_seq_fashion_mnist_run_records_class_and_task_il_matrices(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--strategy", "der", "--benchmark", "seq-fashion-mnist", "--tasks", "2", "--quiet",
                 "--set", "memory_size=500", "--option", "train_per_class=150", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["benchmark_options"]["train_per_class"] == 150
    assert res["config"]["lr"] == 0.03 and res["hparams"]["alpha"] == 1.0 and res["hparams"]["memory_size"] == 500
    R, T = res["accuracy_matrix"], res["task_il_accuracy_matrix"]
    assert len(R) == len(T) == 2 and all(t >= r for rr, tt in zip(R, T) for r, t in zip(rr, tt))
    assert res["metrics"]["task_il_acc"] == pytest.approx(sum(T[-1]) / 2)
