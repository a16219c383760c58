"""Trainer: determinism for a seed, optimizer reset or kept, multi- and single-head settings."""
import torch

from clframework.benchmarks import make_benchmark
from clframework import Trainer, make_strategy, mlp
from clframework.trainer import select_device


def _fit(stream, seed, **kw):
    torch.manual_seed(seed)
    model = mlp(784, stream.head_sizes, hidden=(32,))
    trainer = Trainer(model, make_strategy("si"), epochs=1, seed=seed, quiet=True, **kw)
    return trainer, trainer.fit(stream)


def test_same_seed_same_result_other_seed_other_result(mnist_stream):
    _, a = _fit(mnist_stream, 0)
    _, b = _fit(mnist_stream, 0)
    _, c = _fit(mnist_stream, 1)
    assert a.accuracy_matrix == b.accuracy_matrix and a.curves == b.curves
    assert a.curves != c.curves
    assert len(a.initial_accuracy) == 2 and len(a.curves) == 2


def test_optimizer_reset_or_kept(mnist_stream):
    steps = [-(-len(task.train_y) // 64) for task in mnist_stream]  # minibatches per task (ceil)
    kept, _ = _fit(mnist_stream, 0, reset_optimizer=False)
    state = kept.optimizer.state[next(iter(kept.model.trunk.parameters()))]
    assert int(state["step"]) == steps[0] + steps[1]
    reset, _ = _fit(mnist_stream, 0, reset_optimizer=True)
    state = reset.optimizer.state[next(iter(reset.model.trunk.parameters()))]
    assert int(state["step"]) == steps[1]


def test_single_head_domain_setting_trains_one_head():
    stream = make_benchmark("permuted-mnist-5k", n_tasks=2)
    assert stream.head_sizes == [10] and [t.head for t in stream] == [0, 0]
    _, res = _fit(stream, 0)
    assert res.accuracy_matrix[0][0] > 0.5  # ten-way accuracy well above chance (0.1) after one epoch


def test_device_selection():
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device("cpu").type == "cpu"


def test_cpu_seconds_count_this_process_working_not_waiting(mnist_stream, tmp_path):
    """train_cpu_seconds is the process's CPU time in training: a callback that sleeps (as a process waiting for
    the cores of a loaded machine does) adds to the wall seconds, not to the CPU seconds. Both reach results.json
    with the machine's load average."""
    import json
    import time

    from clframework import TrainerCallback
    from clframework import RunConfig, run

    class Sleeper(TrainerCallback):
        def on_epoch_end(self, *args):
            time.sleep(0.5)

    res = run(RunConfig("naive", "split-mnist-5k", epochs=2, hidden=[16]), tmp_path / "r", quiet=True,
              callbacks=[Sleeper()], stream=mnist_stream)
    assert res.train_seconds >= 2.0  # 2 tasks x 2 epochs x 0.5 s asleep
    assert 0 < res.train_cpu_seconds < res.train_seconds - 1.5
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["train_cpu_seconds"] == res.train_cpu_seconds
    load = saved["provenance"]["load_average"]
    assert len(load["started"]) == 3 and len(load["finished"]) == 3 and saved["provenance"]["cpu_count"] >= 1
