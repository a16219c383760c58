"""The extended hook interface: strategies see the minibatch and its outputs, may join examples of their own, and a
strategy written to the original hooks (penalty(model) only) still runs unchanged."""
import torch
import torch.nn.functional as F

from clframework import Strategy, Trainer, mlp
from clframework.models import forward_head, forward_heads
from clframework.plugin import Batch, join


class OldStyle(Strategy):
    """Written before `on_before_forward`/`loss_term` existed: overrides only the original hooks."""

    def __init__(self):
        self.calls = {"start": 0, "penalty": 0, "before": 0, "after": 0, "end": 0}
        self.anchor = None

    def on_task_start(self, model, task_index):
        self.calls["start"] += 1

    def penalty(self, model):
        self.calls["penalty"] += 1
        if self.anchor is None:
            return 0.0
        return 1e3 * sum(((p - a) ** 2).sum() for p, a in zip(model.trunk.parameters(), self.anchor))

    def on_before_step(self, model):
        self.calls["before"] += 1

    def on_after_step(self, model):
        self.calls["after"] += 1

    def on_task_end(self, model, data, head=0):
        self.calls["end"] += 1
        self.anchor = [p.detach().clone() for p in model.trunk.parameters()]


def test_old_style_strategy_runs_unchanged(mnist_stream):
    torch.manual_seed(0)
    model, strategy = mlp(784, mnist_stream.head_sizes, hidden=(16,)), OldStyle()
    trainer = Trainer(model, strategy, epochs=1, quiet=True)
    trainer.train_task(mnist_stream[0], 0)
    anchor = [p.detach().clone() for p in model.trunk.parameters()]
    trainer.train_task(mnist_stream[1], 1)
    steps = sum(-(-len(t.train_y) // 64) for t in mnist_stream)
    assert strategy.calls == {"start": 2, "penalty": steps, "before": steps, "after": steps, "end": 2}
    moved = max((p - a).abs().max().item() for p, a in zip(model.trunk.parameters(), anchor))
    assert moved < 0.05  # its penalty (a strong pull to the anchor) reached the gradient


class Recorder(Strategy):
    """Joins two fixed examples of another head and records what `loss_term` sees."""

    def __init__(self, extra_x, extra_y, extra_head):
        self.extra, self.seen = (extra_x, extra_y, extra_head), []

    def on_before_forward(self, model, batch):
        return join(batch, *self.extra)

    def loss_term(self, model, batch):
        self.seen.append(batch)
        return 0.0


def test_loss_term_sees_the_joined_minibatch_and_its_outputs():
    torch.manual_seed(0)
    model = mlp(4, [3, 2], hidden=(5,))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    extra_x, extra_y = torch.randn(2, 4), torch.tensor([1, 0])
    strategy = Recorder(extra_x, extra_y, 1)
    batch = strategy.on_before_forward(model, Batch(x, y, 0))
    batch.out = forward_heads(model, batch.x, batch.head)
    strategy.loss_term(model, batch)
    seen = strategy.seen[0]
    assert torch.equal(seen.x[:6], x) and torch.equal(seen.y, torch.cat([y, extra_y]))
    assert seen.heads().tolist() == [0] * 6 + [1] * 2
    # outputs: each row through its own head, the narrower head padded with -inf
    assert torch.allclose(seen.out[:6], forward_head(model, x, 0))
    assert torch.allclose(seen.out[6:, :2], forward_head(model, extra_x, 1))
    assert torch.isinf(seen.out[6:, 2]).all()
    # cross-entropy over the joined rows = the mean of each row's loss through its own head
    loss = F.cross_entropy(seen.out, seen.y)
    rows = torch.cat([F.cross_entropy(forward_head(model, x, 0), y, reduction="none"),
                      F.cross_entropy(forward_head(model, extra_x, 1), extra_y, reduction="none")])
    assert torch.allclose(loss, rows.mean())
    g_joined = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    g_rows = torch.autograd.grad(rows.mean(), list(model.parameters()), allow_unused=True)
    assert all(torch.allclose(a, b) for a, b in zip(g_joined, g_rows))


def test_trainer_trains_the_joined_rows(mnist_stream):
    """A strategy's extra rows reach the loss in the Trainer: training only on them moves their head."""
    torch.manual_seed(0)
    model = mlp(784, mnist_stream.head_sizes, hidden=(16,))
    task = mnist_stream[0]
    strategy = Recorder(task.train_x[:8], task.train_y[:8], 1)
    before = model.heads[1].weight.detach().clone()
    Trainer(model, strategy, epochs=1, quiet=True).train_task(task, 0)
    assert not torch.equal(before, model.heads[1].weight)
    assert all(b.out is not None and len(b) == len(b.out) for b in strategy.seen)
