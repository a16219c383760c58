"""An Avalanche benchmark built from tensors becomes a clframework stream with the same data, and our SI runs on it."""
import pytest
import torch
from torch.utils.data import TensorDataset

avalanche_generators = pytest.importorskip("avalanche.benchmarks.scenarios.deprecated.generators",
                                           reason="avalanche-lib (optional extra) is not installed")

from clframework.benchmarks.avalanche_interop import from_avalanche, infer_setting  # noqa: E402
from clframework import RunConfig, run  # noqa: E402

pytestmark = pytest.mark.slow  # imports Avalanche and trains through it


def tensor_sets(n_classes=6, per_class=8, test_per_class=3):
    gen = torch.Generator().manual_seed(0)
    n, m = n_classes * per_class, n_classes * test_per_class
    x, tx = torch.rand(n, 1, 4, 4, generator=gen), torch.rand(m, 1, 4, 4, generator=gen)
    y, ty = torch.arange(n) % n_classes, torch.arange(m) % n_classes
    train, test = TensorDataset(x, y), TensorDataset(tx, ty)
    train.targets, test.targets = y, ty  # Avalanche reads class ids from `targets`
    return (x, y, tx, ty), train, test


def rows_of(x_all, x_task):
    """Indices in x_all of each row of x_task (rows are distinct random vectors)."""
    flat, sub = x_all.reshape(len(x_all), -1), x_task.reshape(len(x_task), -1)
    return (sub[:, None, :] == flat[None, :, :]).all(-1).float().argmax(1)


@pytest.mark.parametrize("task_labels,setting", [(True, "task"), (False, "class")])
def test_nc_benchmark_becomes_stream(task_labels, setting):
    (x, y, tx, ty), train, test = tensor_sets()
    order = [4, 1, 0, 5, 2, 3]
    bm = avalanche_generators.nc_benchmark(train, test, n_experiences=3, task_labels=task_labels,
                                           fixed_class_order=order)
    stream = from_avalanche(bm)
    assert stream.setting == setting and len(stream) == 3
    assert stream.head_sizes == ([2, 2, 2] if setting == "task" else [6])
    for i, task in enumerate(stream):
        classes = sorted(order[2 * i:2 * i + 2])
        assert list(task.classes) == classes
        idx = rows_of(x, task.train_x)
        assert sorted(idx.tolist()) == sorted(torch.nonzero(torch.isin(y, torch.tensor(classes))).flatten().tolist())
        expected = torch.tensor([classes.index(c) for c in y[idx].tolist()]) + (2 * i if setting == "class" else 0)
        assert torch.equal(task.train_y, expected)
        assert task.head == (i if setting == "task" else 0)
        in_task = torch.isin(ty, torch.tensor(classes))
        assert sorted(ty[rows_of(tx, task.test_x)].tolist()) == sorted(ty[in_task].tolist())
    assert stream.info["avalanche_task_labels"] == ([0, 1, 2] if task_labels else [0, 0, 0])


def test_shared_classes_default_to_domain_and_refuse_class_setting():
    assert infer_setting([0, 0], [[0, 1], [0, 1]]) == "domain"
    (x, y, tx, ty), train, test = tensor_sets()
    bm = avalanche_generators.ni_benchmark(train, test, n_experiences=2, seed=0)
    stream = from_avalanche(bm)
    assert stream.setting == "domain" and stream.head_sizes == [6]
    assert sum(len(t.train_y) for t in stream) == len(y)  # instances split across experiences, none lost
    assert all(len(t.test_y) == len(ty) for t in stream)  # one test experience: each task tests on all its classes
    with pytest.raises(ValueError, match="setting='domain'"):
        from_avalanche(bm, setting="class")


def test_si_runs_on_avalanche_benchmark():
    _, train, test = tensor_sets()
    bm = avalanche_generators.nc_benchmark(train, test, n_experiences=3, task_labels=True, seed=1)
    stream = from_avalanche(bm)
    res = run(RunConfig("si", "split-mnist-5k", epochs=2, batch_size=8), quiet=True, stream=stream)
    R = res.accuracy_matrix
    assert len(R) == 3 and all(0.0 <= v <= 1.0 for row in R for v in row)
    assert res.config["head_sizes"] == [2, 2, 2]
    trunk_importance = res.trained_strategy.Omega["trunk.1.weight"]
    assert trunk_importance.shape == (256, 16) and bool((trunk_importance > 0).any())  # SI consolidated the trunk
