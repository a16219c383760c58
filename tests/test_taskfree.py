"""Task-free streams (benchmarks/taskfree.py): i-Blurry, the Gaussian schedule and MNIST-360 built as their
definitions say (counted independently), trained in stream order with no boundary shown to the strategy, and the
strategies that need boundaries refused before training with one line naming what they need."""
import copy
import math

import numpy as np
import pytest
import torch

from clframework import RunConfig, Trainer, compare, make_strategy, mlp, run
from clframework.benchmarks import from_tensors, gaussian_schedule, iblurry, make_benchmark, rotating_pairs
from clframework.apps.tune import tune
from clframework.benchmarks.taskfree import gaussian_order, rotate
from clframework.plugin import Strategy
from clframework.registry import RegistryError

BOUNDARY_STRATEGIES = ("ewc", "si", "mas", "lwf", "icarl", "agem", "gdumb", "joint", "cumulative", "replay")
TASK_FREE_STRATEGIES = ("naive", "er", "der", "derpp", "er_ace", "mir")


def _data(n_classes=10, per_class=30, test_per_class=5, seed=0):
    """Synthetic images (uint8 would need decode: floats in [0, 1]), labels in blocks per class."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    ty = torch.arange(n_classes).repeat_interleave(test_per_class)
    x = torch.rand(len(y), 1, 6, 6, generator=gen) + y.view(-1, 1, 1, 1) * 0.1
    tx = torch.rand(len(ty), 1, 6, 6, generator=gen) + ty.view(-1, 1, 1, 1) * 0.1
    return from_tensors(x, y, tx, ty, name="synthetic")


def _stretch_labels(stream):
    return [t.train_y for t in stream.tasks]


# ---- i-Blurry ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("disjoint,blurry", [(50, 10), (0, 30), (100, 0), (50, 0), (0, 100)])
def test_iblurry_has_the_disjoint_and_blurry_shares_it_is_given(disjoint, blurry):
    data = _data(per_class=40)
    s = iblurry(data, n_tasks=5, disjoint=disjoint, blurry=blurry, seed=3)
    info = s.info["iblurry"]
    assert s.task_free and s.setting == "class" and s.head_sizes == [10]
    n_disjoint = sum(len(c) for c in info["disjoint_classes"])
    assert n_disjoint == 10 * disjoint // 100
    # every training example exactly once
    rows = torch.cat([t.examples("train").rows for t in s.tasks])
    assert sorted(rows.tolist()) == list(range(400))
    labels = _stretch_labels(s)
    for t in range(5):
        for c in info["disjoint_classes"][t]:  # a disjoint class: all its 40 examples in its task, none elsewhere
            assert [int((y == c).sum()) for y in labels] == [40 if k == t else 0 for k in range(5)]
        # a task's blurry classes: M% of their examples (floor), drawn at random, dealt out over all tasks
        mine = info["blurry_classes"][t]
        n_t = 40 * len(mine)
        moved = n_t * blurry // 100
        assert sum(int(torch.isin(y, torch.tensor(mine or [-1])).sum()) for y in labels) == n_t
        assert int(torch.isin(labels[t], torch.tensor(mine or [-1])).sum()) >= n_t - moved
        assert sorted(s.tasks[t].classes) == sorted(info["disjoint_classes"][t] + info["blurry_classes"][t])
        assert set(s.tasks[t].test_y.tolist()) == set(s.tasks[t].classes)
    if blurry and disjoint < 100:  # moved examples reach other tasks
        assert sum(int(torch.isin(labels[k], torch.tensor(info["blurry_classes"][t])).sum())
                   for t in range(5) for k in range(5) if k != t) > 0


def test_iblurry_is_seeded():
    data = _data()
    a, b, c = (iblurry(data, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(x.examples("train").rows, y.examples("train").rows) for x, y in zip(a.tasks, b.tasks))
    assert not all(torch.equal(x.examples("train").rows, y.examples("train").rows) for x, y in zip(a.tasks, c.tasks))


@pytest.mark.parametrize("option,value", [("blurry", 150), ("blurry", -1), ("disjoint", 101), ("disjoint", -0.5)])
def test_blurry_shares_outside_0_100_are_refused_with_one_line(option, value):
    with pytest.raises(ValueError, match=r"must be a percentage in \[0, 100\]") as err:
        iblurry(_data(), **{option: value})
    assert "\n" not in str(err.value)
    with pytest.raises(RegistryError, match=rf"option '{option}' = .* accepted: a percentage in \[0, 100\]"):
        RunConfig("er", "iblurry", benchmark_options={option: value}).resolved()


def test_a_disjoint_share_the_tasks_cannot_divide_says_which_ones_fit():
    with pytest.raises(ValueError, match=r"choose disjoint among \[0.0, 50.0, 100.0\]"):
        iblurry(_data(), n_tasks=5, disjoint=30)


# ---- the Gaussian schedule ---------------------------------------------------------------------------------------

def _normal_cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_the_gaussian_schedule_mixes_tasks_as_the_gaussians_say():
    """T tasks of n examples, times k + sigma z: the share of task k among the examples of stretch j (the j-th n of
    the sorted stream) is computed independently from the normal CDF: the stream's time quantiles are found by
    bisection on the mixture's CDF, then each task's mass between them."""
    T, n, sigma = 4, 20000, 0.4
    task_of = torch.arange(T).repeat_interleave(n)
    order = gaussian_order(task_of, sigma, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(T * n))
    mixture = lambda t: sum(_normal_cdf((t - k) / sigma) for k in range(T)) / T  # noqa: E731

    def quantile(q):
        lo, hi = -10.0, T + 10.0
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mixture(mid) < q else (lo, mid)
        return lo

    edges = [-math.inf] + [quantile(j / T) for j in range(1, T)] + [math.inf]
    for j in range(T):
        seen = task_of[order[j * n:(j + 1) * n]]
        for k in range(T):
            expected = _normal_cdf((edges[j + 1] - k) / sigma) - _normal_cdf((edges[j] - k) / sigma)
            assert float((seen == k).float().mean()) == pytest.approx(expected, abs=0.01)


def test_a_gaussian_schedule_of_width_zero_is_the_split_stream():
    s = gaussian_schedule(_data(), classes_per_task=2, sigma=0.0)
    assert [sorted(set(y.tolist())) for y in _stretch_labels(s)] == [[2 * k, 2 * k + 1] for k in range(5)]
    assert s.task_free and [t.classes for t in s.tasks] == [(2 * k, 2 * k + 1) for k in range(5)]
    with pytest.raises(ValueError, match="sigma"):
        gaussian_schedule(_data(), sigma=-1)


# ---- MNIST-360 ---------------------------------------------------------------------------------------------------

def test_rotate_equals_torchvision_and_pil_on_real_digits():
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    from clframework.benchmarks.embedded import mnist_5k

    x = mnist_5k().train.raw()[:12]
    angles = torch.tensor([0, 1, 12.3, 45, 60, 89, 91, 137.5, 180, 250, 300, 359], dtype=torch.float64)
    ours = rotate(x, angles)
    for i, a in enumerate(angles.tolist()):
        assert torch.equal(ours[i], TF.rotate(x[i], a, interpolation=InterpolationMode.NEAREST))
        pil = torch.from_numpy(np.array(Image.fromarray(x[i, 0].numpy()).rotate(a))).unsqueeze(0)  # Mammoth's path
        assert torch.equal(ours[i], pil)


def test_mnist_360_visits_rotating_pairs_in_order():
    """The stream is 27 visits of the pairs (0,1), (1,2), ..., (8,0), three rounds; every training example of
    digits 0-8 once; class j's examples rotate from (j - 1) * 60 degrees through 360 in stream order."""
    data = _data(per_class=60)
    s = rotating_pairs(data, rounds=3, n_classes=9)
    y = torch.cat(_stretch_labels(s))
    assert torch.bincount(y).tolist() == [60] * 9
    # the pairs in order: split the label sequence where the pair changes
    pairs, seen = [], set()
    for label in y.tolist():
        seen.add(label)
        if len(seen) > 2 or not pairs:
            pairs.append(set())
            seen = {label}
        pairs[-1].add(label)
    expected = [{a, (a + 1) % 9} for a in range(9)] * 3
    assert pairs == expected
    assert [t.classes for t in s.tasks] == [(k,) for k in range(9)] and s.head_sizes == [9]
    # the first training example of class 2 in stream order is rotated by 60 degrees: its image is the rotation
    # of one of class 2's originals by exactly that angle
    train = s.tasks[0].examples("train")
    first = int((train.y == 2).nonzero()[0])
    originals = data.train.raw()[data.train.y == 2]
    rotated = rotate(originals, torch.full((len(originals),), 60.0, dtype=torch.float64))
    assert any(torch.equal(train.raw()[first], r) for r in rotated)


# ---- training without boundaries ---------------------------------------------------------------------------------

class _Recorder(Strategy):
    def __init__(self):
        self.starts, self.ends, self.labels = [], [], []

    def on_task_start(self, model, task_index):
        self.starts.append(task_index)

    def on_before_forward(self, model, batch):
        self.labels.append(batch.y.clone())
        return batch

    def on_task_end(self, model, data, head=0):
        self.ends.append(data.name)


def test_the_trainer_hides_the_boundaries_and_keeps_the_stream_order():
    s = iblurry(_data(), seed=0)
    rec = _Recorder()
    trainer = Trainer(mlp(36, s.head_sizes, hidden=(8,)), rec, epochs=1, batch_size=7, lr=0.1,
                      optimizer="sgd", device="cpu", quiet=True)
    optimizers = []
    trainer.callbacks.append(type("C", (), {"on_task_evaluated": lambda self, i, row: optimizers.append(
        trainer.optimizer), "on_epoch_end": lambda *a: None})())
    trainer.fit(s)
    assert rec.starts == [0] and rec.ends == [s.tasks[-1].name]
    assert torch.equal(torch.cat(rec.labels), torch.cat(_stretch_labels(s)))
    assert len({id(o) for o in optimizers[1:]}) == 1  # one optimizer from the first stretch to the last


@pytest.mark.parametrize("name", BOUNDARY_STRATEGIES)
def test_a_strategy_that_needs_boundaries_refuses_a_task_free_stream_before_training(name, tmp_path):
    s = iblurry(_data(), seed=0)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        run(RunConfig(name, device="cpu"), out, quiet=True, stream=s)
    message = str(err.value)
    assert f"strategy '{name}' needs task boundaries (" in message and "task-free stream" in message
    assert "er, der, derpp, er_ace with task_free=true, mir" in message and "\n" not in message
    assert not out.exists()
    with pytest.raises(ValueError, match=f"strategy '{name}' needs task boundaries"):  # the Python API too
        Trainer(mlp(36, s.head_sizes), make_strategy(name), epochs=1, device="cpu", quiet=True).fit(s)


def test_er_ace_runs_task_free_only_in_its_task_free_form(tmp_path):
    """Mammoth's ER-ACE tells the first task apart (no mask, no replay there): on a task-free stream, where the first
    task never ends, it would train as naive; it refuses, naming task_free=true."""
    with pytest.raises(ValueError, match=r"strategy 'er_ace' needs task boundaries \(its first task told apart.*set "
                                         r"task_free=true"):
        run(RunConfig("er_ace", device="cpu"), tmp_path / "r", quiet=True, stream=iblurry(_data()))
    assert not (tmp_path / "r").exists()


def test_compare_refuses_before_its_first_run(tmp_path):
    s = iblurry(_data(), seed=0)
    out = tmp_path / "study"
    with pytest.raises(ValueError, match="strategy 'lwf' needs task boundaries"):
        compare({"er": RunConfig("er", device="cpu"), "lwf": RunConfig("lwf", device="cpu")}, seeds=1, out_dir=out,
                stream=s, quiet=True)
    assert not out.exists()


def test_tune_refuses_a_grid_point_that_needs_boundaries_before_its_first_run(tmp_path):
    """ER-ACE needs task boundaries by its setting (task_free): a search over it on a task-free stream is refused
    before any run, naming that point's need (before: tune checked no boundaries, so the task_free=true runs trained
    and the other point's run failed)."""
    out = tmp_path / "search"
    with pytest.raises(ValueError, match=r"^strategy 'er_ace' needs task boundaries \(its first task told apart"):
        tune(RunConfig("er_ace", device="cpu", hparams={"memory_size": 20}), {"task_free": ["true", "false"]},
             out_dir=out, quiet=True, stream=iblurry(_data()))
    assert not out.exists()


def test_a_task_free_stream_is_trained_once(tmp_path):
    with pytest.raises(ValueError, match="seen once .*epochs must be 1, got 3"):
        run(RunConfig("er", device="cpu", epochs=3), tmp_path / "r", quiet=True, stream=iblurry(_data()))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name,build", [(n, ("iblurry", "gaussian", "rotating")[i % 3])
                                        for i, n in enumerate(TASK_FREE_STRATEGIES)])
def test_the_task_free_strategies_run_on_the_task_free_streams(name, build):
    data = _data(per_class=60)  # MNIST-360 cuts each class into 6 chunks of N // 6 + 1: the last holds N / 6 - 5
    s = {"iblurry": lambda: iblurry(data), "gaussian": lambda: gaussian_schedule(data, sigma=0.5),
         "rotating": lambda: rotating_pairs(data)}[build]()
    hparams = {} if name == "naive" else {"memory_size": 20, **({"task_free": True} if name == "er_ace" else {})}
    res = run(RunConfig(name, device="cpu", batch_size=10, lr=0.05, hparams=hparams), stream=s, quiet=True)
    assert len(res.accuracy_matrix) == len(s.tasks) and all(0 <= a <= 1 for a in res.accuracy_matrix[-1])
    assert res.config["epochs"] == 1 and not res.config["reset_optimizer"]  # the stream's online protocol


def test_the_registered_task_free_benchmarks_build_from_the_embedded_mnist():
    for name, n in (("iblurry", 5), ("gaussian-schedule", 5), ("mnist-360", 9)):
        s = make_benchmark(name)
        s.validate()
        assert s.task_free and len(s.tasks) == n


def test_a_task_free_run_resumed_mid_stretch_ends_as_the_uninterrupted_one():
    """A checkpoint taken in the middle of a stretch (MIR: its memory and generator in the strategy's state) and
    resumed gives the weights and accuracy matrix of the run never interrupted, bit for bit on CPU."""
    s = gaussian_schedule(_data(per_class=20), sigma=0.5)

    def trainer(states=None):
        torch.manual_seed(0)
        model = mlp(36, s.head_sizes, hidden=(8,))
        save = (lambda st: states.append(copy.deepcopy(st))) if states is not None else None
        return Trainer(model, make_strategy("mir", memory_size=30, subsample=12, minibatch_size=4), epochs=1,
                       batch_size=7, lr=0.1, optimizer="sgd", device="cpu", quiet=True, checkpoint_every=9 if save
                       else 0, on_checkpoint=save)

    states = []
    whole = trainer(states)
    full = whole.fit(s)
    mid = next(st for st in states if st["epoch_in_flight"] is not None and st["position"]["task"] == 2)
    resumed = trainer()
    part = resumed.fit(s, resume=mid)
    assert part.accuracy_matrix == full.accuracy_matrix
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
