"""MAS, LwF, replay and A-GEM: state_dict round-trips mid-task (a resumed copy takes the very same next step),
bad state keys fail clearly, and every new strategy trains in all three settings from the Trainer."""
import copy

import pytest
import torch
import torch.nn.functional as F

from clframework import Trainer, make_strategy, mlp
from clframework.apps.bench import shrink
from clframework.benchmarks import make_benchmark
from clframework.models import forward_heads
from clframework.plugin import Batch

NEW = ("mas", "lwf", "replay", "agem")


def _step(model, strategy, x, y, head):
    batch = strategy.on_before_forward(model, Batch(x, y, head))
    batch.out = forward_heads(model, batch.x, batch.head)
    extra = strategy.loss_term(model, batch)
    (F.cross_entropy(batch.out, batch.y) + extra).backward()
    strategy.on_before_step(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad
    strategy.on_after_step(model)
    for p in model.parameters():
        p.grad = None


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", NEW)
def test_state_dict_round_trips_mid_task(name, mnist_stream):
    torch.manual_seed(0)
    model = mlp(784, mnist_stream.head_sizes, hidden=(16,))
    strategy = make_strategy(name, **({"memory_size": 20} if name in ("replay", "agem") else {}))
    first, second = mnist_stream
    strategy.on_task_start(model, 0)
    _step(model, strategy, first.train_x[:32], first.train_y[:32], 0)
    strategy.on_task_end(model, (first.train_x[:200], first.train_y[:200]), 0)
    strategy.on_task_start(model, 1)
    _step(model, strategy, second.train_x[:32], second.train_y[:32], 1)  # mid-task
    state = strategy.state_dict()
    resumed = make_strategy(name, **strategy.hparams)
    resumed.load_state_dict(copy.deepcopy(state))
    assert _equal(resumed.state_dict(), state)
    twin = copy.deepcopy(model)  # resuming mid-task: no on_task_start, as the Trainer resumes
    for s, m in ((strategy, model), (resumed, twin)):
        _step(m, s, second.train_x[32:64], second.train_y[32:64], 1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    with pytest.raises(ValueError, match="missing keys"):
        make_strategy(name).load_state_dict({})


@pytest.mark.parametrize("setting", ["task", "domain", "class"])
def test_every_new_strategy_trains_in_each_setting(setting):
    stream = shrink(make_benchmark("split-mnist-5k", setting=setting), tasks=2, max_train=400)
    for name in NEW:
        torch.manual_seed(0)
        model = mlp(784, stream.head_sizes, hidden=(16,))
        result = Trainer(model, make_strategy(name), epochs=3, quiet=True).fit(stream)
        assert len(result.accuracy_matrix) == 2 and result.accuracy_matrix[1][1] > 0.5, (name, result.accuracy_matrix)
