"""drop_last (Mammoth's --drop_last): an epoch's short final minibatch skipped, the run's random stream unchanged; and
the warning before training when BatchNorm would train on a final minibatch of a few examples (docs/fidelity.md)."""
import warnings

import pytest
import torch
from torch import nn

from clframework import Strategy, Trainer
from clframework.benchmarks.stream import Stream, Task
from clframework.recipe import Recipe
from clframework.trainer import TINY_LAST


def _stream(n_train=(10, 7)):
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t, n in enumerate(n_train):
        y = torch.arange(n) % 2 + 2 * t
        tasks.append(Task(f"t{t}", torch.randn(n, 6, generator=g), y, torch.randn(4, 6, generator=g),
                          torch.arange(4) % 2 + 2 * t, [2 * t, 2 * t + 1]))
    return Stream("tiny", tasks, [2 * len(n_train)], "class")


class Seen(Strategy):
    """Records the rows each step trains on (the loop's own minibatches)."""

    def __init__(self):
        self.rows = []

    def on_before_forward(self, model, batch):
        self.rows.append(batch.x.clone())
        return batch


def _net(bn: bool):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), *([nn.BatchNorm1d(8)] if bn else []), nn.ReLU(), nn.Linear(8, 4))


def _fit(drop_last, bn=False, epochs=2):
    seen = Seen()
    trainer = Trainer(_net(bn), seen, epochs=epochs, batch_size=4, optimizer="sgd", lr=0.1, quiet=True,
                      drop_last=drop_last, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = trainer.fit(_stream())
    return seen.rows, result, [str(w.message) for w in caught]


def test_drop_last_skips_only_the_short_final_minibatch_and_draws_the_same_orders():
    kept, _, _ = _fit(False)
    dropped, result, _ = _fit(True)
    # task 0: 10 examples -> 4+4+2 kept, 4+4 dropped; task 1: 7 -> 4+3 and 4; two epochs each
    assert [len(r) for r in kept] == [4, 4, 2, 4, 4, 2, 4, 3, 4, 3]
    assert [len(r) for r in dropped] == [4, 4, 4, 4, 4, 4]
    # the same permutations (the generator is consumed alike), the full minibatches identical in the first epoch
    assert torch.equal(torch.cat(kept[:2]), torch.cat(dropped[:2]))
    # the epoch's loss and accuracy are over the examples it trained on
    assert 0.0 <= result.curves[0]["accuracy"] <= 1.0 and result.curves[0]["accuracy"] * 8 == round(
        result.curves[0]["accuracy"] * 8)


def test_a_task_smaller_than_one_minibatch_keeps_it():
    seen = Seen()
    Trainer(_net(False), seen, epochs=1, batch_size=16, optimizer="sgd", lr=0.1, quiet=True, drop_last=True,
            device="cpu").fit(_stream())
    assert [len(r) for r in seen.rows] == [10, 7]


def test_warned_before_training_only_for_batchnorm_and_tiny_final_minibatches():
    _, _, messages = _fit(False, bn=True, epochs=1)
    warned = [m for m in messages if "--drop-last" in m]
    assert len(warned) == 1 and "'t0' (2)" in warned[0] and "'t1' (3)" in warned[0] and str(TINY_LAST) in warned[0]
    assert not [m for m in _fit(False, bn=False, epochs=1)[2] if "--drop-last" in m]  # no BatchNorm: no warning
    assert not [m for m in _fit(True, bn=True, epochs=1)[2] if "--drop-last" in m]  # already dropped


def test_drop_last_must_be_a_bool():
    with pytest.raises(ValueError, match="drop_last must be true or false"):
        Recipe(drop_last="yes").resolved()
    assert Recipe(drop_last=True).resolved().drop_last is True
