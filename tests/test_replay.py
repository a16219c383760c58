"""Replay's memory: reservoir sampling keeps every seen example with equal probability (chi-square, fixed seed), the
vectorized draw equals the sequential algorithm, class-balanced shares, and minibatches joined by memory samples."""
import pytest
import torch
from conformance.harness import make_model, make_stream
from scipy.stats import chisquare
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from clframework import make_strategy, mlp
from clframework.plugin import Batch
from clframework.strategies.memory import ReplayMemory, reservoir_slots
from clframework.trainer import Trainer


def _stream_into(memory, n, batch):
    for i in range(0, n, batch):
        ids = torch.arange(i, min(i + batch, n))
        memory.add(ids.float().unsqueeze(1), ids, torch.zeros_like(ids))


def test_reservoir_keeps_each_seen_example_with_equal_probability():
    n, capacity, trials = 60, 12, 3000
    counts = torch.zeros(n)
    for trial in range(trials):
        memory = ReplayMemory(capacity, "reservoir", seed=trial)
        _stream_into(memory, n, batch=7)  # batches straddle the moment the memory fills
        kept = memory.contents()[1]
        assert len(kept) == capacity and len(set(kept.tolist())) == capacity
        counts[kept] += 1
    expected = trials * capacity / n
    assert chisquare(counts.numpy(), [expected] * n).pvalue > 0.01
    assert abs(counts[:capacity].mean() - counts[capacity:].mean()) < 0.05 * expected  # first ones not favoured


def test_vectorized_reservoir_equals_algorithm_r_step_by_step():
    gen = torch.Generator().manual_seed(3)
    seen, capacity, incoming = 20, 8, 15
    state = gen.get_state()
    slots, index = reservoir_slots(seen, incoming, capacity, gen)
    gen.set_state(state)
    draws = torch.rand(incoming, generator=gen, dtype=torch.float64)
    memory = {}
    for i in range(incoming):  # Algorithm R, one example at a time
        j = int(draws[i] * (seen + i + 1))
        if j < capacity:
            memory[j] = i
    assert dict(zip(slots.tolist(), index.tolist())) == memory


def test_a_huge_reservoir_allocates_nothing_of_its_size_and_keeps_algorithm_r():
    """Issue 30, item 5: memory_size=10^9 grew to 8.2 GB in 4 minutes, as every minibatch allocated a tensor of the
    memory's size; 10^12 (8 TB) now costs what 200 does, and 10^30 (beyond int64) no overflow."""
    for capacity in (10 ** 12, 10 ** 30):
        gen = torch.Generator().manual_seed(1)
        state = gen.get_state()
        slots, index = reservoir_slots(10 ** 6, 32, capacity, gen)
        gen.set_state(state)
        draws = torch.rand(32, generator=gen, dtype=torch.float64)
        memory = {}
        for i in range(32):  # Algorithm R: the memory is not full, so example i takes slot seen + i
            j = 10 ** 6 + i if 10 ** 6 + i < capacity else int(draws[i] * (10 ** 6 + i + 1))
            if j < capacity:
                memory[j] = i
        assert dict(zip(slots.tolist(), index.tolist())) == memory
    memory = ReplayMemory(10 ** 12, "reservoir", seed=0)
    _stream_into(memory, 50, batch=7)
    assert len(memory) == 50 and sorted(memory.contents()[1].tolist()) == list(range(50))


class _LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operator returns while it is active (what RSS cannot tell apart:
    one capacity-sized tensor allocated per step)."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.most = max([self.most] + [t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)])
        return out


REHEARSAL = ("er", "der", "derpp", "er_ace", "agem", "replay", "mir", "gdumb", "icarl")


@pytest.mark.parametrize("name", REHEARSAL)
def test_a_memory_of_10_to_the_12_costs_what_one_of_the_datas_size_does(name):
    """Issue 30, item 5, for every rehearsal method through the Trainer: with memory_size=10^12 no tensor is larger
    than with a memory that holds exactly the stream's training examples, and the run is the same (every example is
    stored either way: the classes are balanced, so no per-class share is below a class's examples)."""
    stream = make_stream("class", n_tasks=2)  # 2 tasks of 2 classes, 8 training examples each
    total = sum(t.n("train") for t in stream.tasks)
    runs = []
    for size in (total, 10 ** 12):
        largest, model = _LargestTensor(), make_model("mlp", stream)  # seeds the memory's generator too
        strategy = make_strategy(name, memory_size=size, **({"fit_epochs": 2} if name == "gdumb" else {}))
        trainer = Trainer(model, strategy, epochs=1, batch_size=4, lr=0.1, optimizer="sgd",
                          device="cpu", seed=0, quiet=True)
        with largest:
            result = trainer.fit(stream)
        runs.append((largest.most, result.accuracy_matrix, [p.detach() for p in trainer.model.parameters()]))
    (most, matrix, params), (huge_most, huge_matrix, huge_params) = runs
    assert huge_most == most <= 64 * total  # a few copies of the data's rows (10 features) at most
    assert huge_matrix == matrix and all(torch.equal(a, b) for a, b in zip(params, huge_params))


def test_class_balanced_shares_and_uniform_within_a_class():
    memory = ReplayMemory(10, "class-balanced", seed=0)
    memory.add(torch.arange(30.).unsqueeze(1), torch.tensor([0] * 20 + [1] * 10), torch.zeros(30, dtype=torch.long))
    assert sorted(memory.contents()[1].tolist()) == [0] * 5 + [1] * 5
    memory.add(torch.arange(30., 40.).unsqueeze(1), torch.full((10,), 2), torch.zeros(10, dtype=torch.long))
    assert sorted(memory.contents()[1].tolist()) == [0] * 4 + [1] * 3 + [2] * 3
    memory.add(torch.arange(40., 42.).unsqueeze(1), torch.full((2,), 0), torch.ones(2, dtype=torch.long))
    assert len(memory) == 10 and memory.contents()[2].tolist().count(1) == 2  # (head 1, label 0) is its own class
    counts = torch.zeros(20)
    for trial in range(2000):
        m = ReplayMemory(8, "class-balanced", seed=trial)
        m.add(torch.arange(20.).unsqueeze(1), torch.tensor([0] * 20), torch.zeros(20, dtype=torch.long))
        m.add(torch.arange(20., 25.).unsqueeze(1), torch.tensor([1] * 5), torch.zeros(5, dtype=torch.long))
        x, y, _ = m.contents()
        counts[x[y == 0].squeeze(1).long()] += 1
    assert chisquare(counts.numpy(), [2000 * 4 / 20] * 20).pvalue > 0.01


def test_minibatch_joined_by_equal_size_memory_sample_of_earlier_tasks(mnist_stream):
    torch.manual_seed(0)
    model = mlp(784, mnist_stream.head_sizes, hidden=(16,))
    replay = make_strategy("replay", memory_size=30)
    first, second = mnist_stream
    replay.on_task_start(model, 0)
    batch = Batch(first.train_x[:16], first.train_y[:16], 0, raw=first.examples("train").raw(slice(0, 16)),
                  prepare=first.decode)
    assert replay.on_before_forward(model, batch) is batch  # nothing stored yet
    replay.on_task_end(model, first, 0)
    replay.on_task_start(model, 1)
    # as the trainer builds it: the stored (uint8) minibatch and the function that decodes it
    raw = second.examples("train").raw(slice(0, 16))
    joined = replay.on_before_forward(model, Batch(second.train_x[:16], second.train_y[:16], 1, raw=raw,
                                                   prepare=second.decode))
    assert len(joined) == 32 and torch.equal(joined.x[:16], second.train_x[:16])
    assert joined.heads().tolist() == [1] * 16 + [0] * 16  # stored examples keep their task's head
    assert replay.memory.contents()[0].dtype == torch.uint8 and joined.raw.dtype == torch.uint8  # stored compact
    stored = {tuple(r.tolist()) for r in first.train_x.flatten(1)}
    assert all(tuple(r.tolist()) in stored for r in joined.x[16:].flatten(1))  # decoded like the minibatch
    assert torch.equal(joined.x[16:], second.decode(joined.raw[16:]))
    small = replay.on_before_forward(model, Batch(second.train_x[:50], second.train_y[:50], 1,
                                                  raw=second.examples("train").raw(slice(0, 50)),
                                                  prepare=second.decode))
    assert len(small) == 80  # never more than the memory holds


def test_a_plain_loops_memory_holds_model_inputs(mnist_stream):
    """Minibatches without `prepare` (a loop of your own feeding model inputs): the memory filled from the Task keeps
    model inputs as well, so joined rows are never raw pixels."""
    model = mlp(784, mnist_stream.head_sizes, hidden=(16,))
    replay = make_strategy("replay", memory_size=30)
    first, second = mnist_stream
    replay.on_before_forward(model, Batch(first.train_x[:16], first.train_y[:16], 0))
    replay.on_task_end(model, first, 0)
    joined = replay.on_before_forward(model, Batch(second.train_x[:16], second.train_y[:16], 1))
    assert joined.x.dtype == torch.float32 and float(joined.x.max()) <= 1.0
    stored = {tuple(r.tolist()) for r in first.train_x.flatten(1)}
    assert all(tuple(r.tolist()) in stored for r in joined.x[16:].flatten(1))
