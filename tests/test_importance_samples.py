"""EWC's fisher_samples and MAS's importance_samples: a seeded uniform random subset of the task, never its first
examples (the embedded MNIST tasks are stored sorted by digit, so the first 300 are one class)."""
import pytest
import torch

from clframework import make_benchmark, make_strategy, mlp
from clframework.plugin import iter_task_batches, subset_rows
from clframework.strategies.ewc import fisher_diagonal
from clframework.strategies.mas import mas_importance

SAMPLES = 300


def _hypergeometric_ok(chosen: torch.Tensor, labels: torch.Tensor, k: int) -> None:
    """Every class's count among k rows drawn without replacement within 4 standard deviations of its expectation."""
    n = len(labels)
    for c in labels.unique():
        p = (labels == c).double().mean().item()
        sd = (k * p * (1 - p) * (n - k) / (n - 1)) ** 0.5
        count = (chosen == c).sum().item()
        assert abs(count - k * p) <= 4 * sd, f"class {c.item()}: {count} of {k} chosen, {k * p:.0f} expected"


def test_subset_rows_is_uniform_and_seeded():
    counts = torch.zeros(10, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        rows = subset_rows(10, 3, g)
        assert rows.tolist() == sorted(set(rows.tolist())) and len(rows) == 3
        counts += torch.bincount(rows, minlength=10)
    # each row is chosen with probability 3/10: 600 of 2000 draws, sd = sqrt(2000 * 0.3 * 0.7) ~ 20.5
    assert (counts - 600).abs().max() <= 4 * 20.5, counts
    assert subset_rows(10, 0, g) is None and subset_rows(10, 10, g) is None
    a, b = (subset_rows(100, 5, torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name, option", [("ewc", "fisher_samples"), ("mas", "importance_samples")])
def test_importance_uses_a_random_subset_with_the_tasks_class_histogram(name, option):
    task = make_benchmark("split-mnist-5k").tasks[0]
    assert torch.equal(task.train_y[:SAMPLES], task.train_y[:1].expand(SAMPLES)), "the data are no longer sorted"
    torch.manual_seed(3)
    model, strategy = mlp(784, [2]), make_strategy(name, **{option: SAMPLES})
    generator = torch.Generator().manual_seed(3)  # the run's seed, as the strategy seeds its own generator
    rows = subset_rows(len(task.train_y), SAMPLES, generator)
    _hypergeometric_ok(task.train_y[rows], task.train_y, SAMPLES)

    strategy.on_task_start(model, 0)
    strategy.on_task_end(model, task, task.head)
    subset = [(task.train_x[rows], task.train_y[rows])]
    expected = fisher_diagonal(model, subset) if name == "ewc" else mas_importance(model, subset)
    got = strategy.fishers[0] if name == "ewc" else strategy.omega
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-5, atol=1e-7)


def test_subset_of_batches_matches_the_subset_of_the_tensors():
    x, y = torch.arange(50.).reshape(50, 1), torch.arange(50) // 25
    as_pair = list(iter_task_batches((x, y), 8, torch.device("cpu"), 20, torch.Generator().manual_seed(1)))
    as_batches = list(iter_task_batches(zip(x.split(7), y.split(7)), 8, torch.device("cpu"), 20,
                                        torch.Generator().manual_seed(1)))
    assert [len(b[0]) for b in as_pair] == [8, 8, 4]
    for (xa, ya), (xb, yb) in zip(as_pair, as_batches):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("name, option", [("ewc", "fisher_samples"), ("mas", "importance_samples")])
def test_the_subset_generator_is_in_the_strategy_state(name, option):
    """A resumed strategy draws the same next subset as the original (the generator's state is checkpointed)."""
    stream = make_benchmark("split-mnist-5k")
    task = stream.tasks[1]
    torch.manual_seed(0)
    model, a = mlp(784, stream.head_sizes), make_strategy(name, **{option: 64})
    a.on_task_start(model, 0)
    a.on_task_end(model, task, task.head)
    torch.manual_seed(99)  # a resumed process starts from another global seed
    b = make_strategy(name, **{option: 64})
    b.load_state_dict(a.state_dict())
    assert torch.equal(subset_rows(1000, 64, a.generator), subset_rows(1000, 64, b.generator))
