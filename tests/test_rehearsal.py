"""The DER family (er, der, derpp, er_ace) and the bounds (joint, cumulative): each loss against an independent
float64 computation, the memory updated after every minibatch with the logits of the forward pass, and resume
through the Trainer's checkpoints equal to the uninterrupted run bit for bit."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from clframework import Trainer, make_strategy, mlp
from clframework.apps.bench import shrink
from clframework.benchmarks import make_benchmark
from clframework.plugin import Batch
from clframework.strategies.der import der_loss, logit_loss
from clframework.strategies.er_ace import ace_mask, masked_cross_entropy


def _ce64(out, y, allowed=None):
    """Cross-entropy by hand in float64: -log(exp(o_y) / sum over allowed classes of exp(o_c)), averaged."""
    total = 0.0
    for row, label in zip(out.double().tolist(), y.tolist()):
        classes = [c for c in range(len(row)) if allowed is None or allowed[c]]
        total += -row[label] + math.log(sum(math.exp(row[c]) for c in classes))
    return total / len(y)


def test_logit_loss_is_the_mean_squared_error_over_the_stored_entries():
    gen = torch.Generator().manual_seed(0)
    out, z = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    brute = sum((o - t) ** 2 for ro, rz in zip(out.double().tolist(), z.double().tolist())
                for o, t in zip(ro, rz)) / 30
    assert logit_loss(out, z).item() == pytest.approx(brute, rel=1e-6)
    z[:3, 3:] = float("nan")  # examples of a narrower head: no stored logit there
    brute = sum((o - t) ** 2 for ro, rz in zip(out.double().tolist(), z.double().tolist())
                for o, t in zip(ro, rz) if not math.isnan(t)) / 24
    assert logit_loss(out, z).item() == pytest.approx(brute, rel=1e-6)


def test_der_and_derpp_loss_against_a_hand_computation():
    gen = torch.Generator().manual_seed(1)
    out, y = torch.randn(12, 4, generator=gen), torch.randint(0, 4, (12,), generator=gen)
    z = torch.randn(4, 4, generator=gen)
    rows = [(0, 5), (5, 9), (9, 12)]
    mse = sum((o - t) ** 2 for ro, rz in zip(out[5:9].double().tolist(), z.double().tolist())
              for o, t in zip(ro, rz)) / 16
    expected = _ce64(out[:5], y[:5]) + 0.3 * mse + 0.7 * _ce64(out[9:], y[9:])
    assert der_loss(out, y, rows, z, 0.3, 0.7).item() == pytest.approx(expected, rel=1e-5)
    assert der_loss(out, y, rows[:2], z, 0.3).item() == pytest.approx(_ce64(out[:5], y[:5]) + 0.3 * mse, rel=1e-5)


def test_masked_cross_entropy_against_brute_force():
    gen = torch.Generator().manual_seed(2)
    out, y = torch.randn(7, 6, generator=gen), torch.tensor([1, 3, 3, 1, 4, 1, 3])
    allowed = torch.zeros(6, dtype=torch.bool)
    allowed[[1, 3, 4]] = True
    assert masked_cross_entropy(out, y, allowed).item() == pytest.approx(_ce64(out, y, allowed.tolist()), rel=1e-6)


def test_ace_mask_keeps_the_present_classes_and_every_output_from_the_highest_seen_on():
    for now, seen in (([0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]), ([0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]),
                      ([0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1])):
        top = max(c for c in range(6) if seen[c])
        expected = [bool(now[c]) or c >= top for c in range(6)]
        assert ace_mask(torch.tensor(now, dtype=torch.bool), torch.tensor(seen, dtype=torch.bool)).tolist() == expected


def _step(model, strategy, x, y, head=0, lr=0.05):
    """One step as the Trainer takes it (task_loss replaces the cross-entropy)."""
    batch = strategy.on_before_forward(model, Batch(x, y, head))
    batch.out = strategy.forward(model, batch)
    loss = strategy.task_loss(model, batch)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
            p.grad = None
    strategy.on_after_step(model)
    return batch, loss


@pytest.mark.parametrize("task_free", [False, True])
def test_er_ace_masks_the_incoming_batch_to_present_and_unseen_classes_and_replays_over_all(task_free):
    """As Mammoth's er_ace.py: the first task plain CE, no replay (unless task-free); then the incoming softmax over
    the present classes and every output from the highest seen on, the replay CE over all outputs."""
    torch.manual_seed(0)
    model = mlp(4, [6], hidden=(8,))
    ace = make_strategy("er_ace", memory_size=50, minibatch_size=5, task_free=task_free)
    ace.on_task_start(model, 0)
    x0, y0 = torch.randn(10, 4), torch.tensor([0, 1] * 5)
    _step(model, ace, x0, y0)
    batch = ace.on_before_forward(model, Batch(x0, torch.tensor([1] * 10), 0))
    batch.out = ace.forward(model, batch)
    loss = ace.task_loss(model, batch)
    if task_free:  # classes 1 (present) and 1..5 (from the highest seen on)
        expected = _ce64(batch.out[:10], batch.y[:10], [c >= 1 for c in range(6)]) + _ce64(batch.out[10:],
                                                                                             batch.y[10:])
        assert len(batch) == 15 and loss.item() == pytest.approx(expected, rel=1e-5)
    else:
        assert len(batch) == 10 and loss.item() == pytest.approx(_ce64(batch.out, batch.y), rel=1e-5)
    ace.on_task_start(model, 1)
    x1, y1 = torch.randn(10, 4), torch.tensor([2] * 10)
    batch = ace.on_before_forward(model, Batch(x1, y1, 0))
    batch.out = ace.forward(model, batch)
    loss = ace.task_loss(model, batch)
    assert len(batch) == 15 and set(batch.y[10:].tolist()) <= {0, 1}
    expected = _ce64(batch.out[:10], y1, [c >= 2 for c in range(6)]) + _ce64(batch.out[10:], batch.y[10:])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["er", "der", "derpp"])
def test_memory_is_offered_every_minibatch_with_the_logits_of_its_forward_pass(name):
    torch.manual_seed(0)
    model = mlp(4, [3], hidden=(8,))
    strategy = make_strategy(name, memory_size=1000, minibatch_size=4)
    strategy.on_task_start(model, 0)
    seen = []
    for step in range(3):
        x, y = torch.randn(6, 4) + step, torch.randint(0, 3, (6,))
        batch, _ = _step(model, strategy, x, y)
        seen.append((x, batch.out[:6].detach().clone()))
        assert len(strategy.memory) == 6 * (step + 1)  # the current task is in memory right away
        sizes = {"er": 4, "der": 4, "derpp": 8}[name] if step else 0
        assert len(batch) == 6 + sizes
    stored = strategy.memory.stored()
    x_all = torch.cat([x for x, _ in seen])
    assert torch.equal(stored["x"], x_all) and stored["task"].tolist() == [0] * 18
    if name != "er":
        assert torch.equal(stored["logits"], torch.cat([o for _, o in seen]))  # before the step that followed


NAMES = ["er", "der", "derpp", "er_ace", "joint", "cumulative"]


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_a_mid_task_checkpoint_is_bit_exact(name):
    stream = shrink(make_benchmark("split-mnist-5k", setting="class"), tasks=2, max_train=120)
    hp = {"memory_size": 30, "minibatch_size": 8} if name not in ("joint", "cumulative") else {}

    def trainer(states=None):
        torch.manual_seed(0)
        model = mlp(784, stream.head_sizes, hidden=(16,))
        return Trainer(model, make_strategy(name, **hp), epochs=2, batch_size=16, lr=0.05, optimizer="sgd",
                       quiet=True, checkpoint_every=11 if states is not None else 0,
                       on_checkpoint=(lambda s: states.append(copy.deepcopy(s))) if states is not None else None)

    states = []
    full = trainer(states).fit(stream)
    middle = [s for s in states if s["epoch_in_flight"] is not None]
    assert middle  # a checkpoint inside an epoch, memory and generator in flight
    state = middle[len(middle) // 2]
    resumed_trainer = trainer()
    resumed = resumed_trainer.fit(stream, resume=state)
    assert resumed.accuracy_matrix == full.accuracy_matrix and resumed.task_il_matrix == full.task_il_matrix


def test_joint_and_cumulative_train_on_the_union_of_tasks():
    stream = shrink(make_benchmark("split-mnist-5k", setting="class"), tasks=3, max_train=60)
    joint, cumulative = make_strategy("joint"), make_strategy("cumulative")
    assert [joint.task_data(stream, i) is None for i in range(3)] == [True, True, False]
    for i in range(3):
        data = cumulative.task_data(stream, i)
        assert torch.equal(data.train_x, torch.cat([t.train_x for t in stream.tasks[:i + 1]]))
        assert torch.equal(data.train_y, torch.cat([t.train_y for t in stream.tasks[:i + 1]]))
    assert torch.equal(joint.task_data(stream, 2).train_y, cumulative.task_data(stream, 2).train_y)
    with pytest.raises(ValueError, match="single-head"):
        cumulative.task_data(shrink(make_benchmark("split-mnist-5k"), tasks=2, max_train=20), 1)


def test_task_il_accuracy_masks_other_tasks_classes():
    stream = shrink(make_benchmark("split-mnist-5k", setting="class"), tasks=2, max_train=200)
    torch.manual_seed(0)
    trainer = Trainer(mlp(784, stream.head_sizes, hidden=(32,)), make_strategy("naive"), epochs=2, quiet=True)
    result = trainer.fit(stream)
    with torch.no_grad():
        for j, task in enumerate(stream.tasks):  # by hand: argmax over the task's own two outputs (2j, 2j+1)
            out = trainer.model.eval()(task.test_x, 0).double()
            til = ((out[:, 2 * j:2 * j + 2].argmax(1) + 2 * j) == task.test_y).double().mean().item()
            cil = (out.argmax(1) == task.test_y).double().mean().item()
            assert result.task_il_matrix[-1][j] == pytest.approx(til) and result.accuracy_matrix[-1][j] == cil
    assert result.accuracy_matrix[1][0] + 0.3 < result.task_il_matrix[1][0]  # class-IL forgets; told the task, less


@pytest.mark.parametrize("name", ["der", "derpp"])
def test_heads_of_unequal_width_store_no_padding_as_logits(name):
    """Task 2's head is narrower than task 1's: its rows joined with task-1 memory rows are padded with -inf, which
    must be stored as "no logit" (NaN), not as a target (the logit loss became inf)."""
    from clframework.benchmarks.stream import Stream, Task

    g = torch.Generator().manual_seed(0)

    def task(i, k, n=40):
        y = torch.arange(k).repeat(n // k + 1)[:n]
        x = torch.randn(n, 5, generator=g) + y[:, None]
        return Task(f"t{i}", x, y, x, y, list(range(k)), head=i)

    stream = Stream("unequal", [task(0, 3), task(1, 2)], [3, 2], "task")
    torch.manual_seed(0)
    strategy = make_strategy(name, memory_size=20, minibatch_size=5)
    result = Trainer(mlp(5, [3, 2], hidden=(8,)), strategy, epochs=1, batch_size=5, quiet=True, optimizer="sgd",
                     lr=0.05).fit(stream)
    stored = strategy.memory.stored()
    narrow = stored["head"] == 1
    assert bool(narrow.any()) and all(math.isfinite(c["loss"]) for c in result.curves)  # it diverged (inf)
    assert bool(stored["logits"][narrow, 2].isnan().all()) and bool(stored["logits"][narrow, :2].isfinite().all())
    assert bool(stored["logits"][~narrow].isfinite().all())
