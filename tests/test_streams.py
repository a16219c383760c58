"""Compact task storage: uint8 data shared by the tasks cut from it, lazy permutations equal to the eager ones, the
trainer's one raw -> model input function, and memories that keep the stored form."""
import pytest
import torch

from clframework import Trainer, make_strategy
from clframework.benchmarks import LabeledData, Task, make_benchmark, permutations, permuted, split
from clframework.benchmarks.embedded import mnist_5k
from clframework.benchmarks.stream import Normalize, Stream, TensorExamples
from clframework.models import build_model
from clframework.plugin import Strategy


def _uint8_data(n=40, m=20, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return LabeledData("u8", torch.randint(0, 256, (n, 1, 5, 5), dtype=torch.uint8, generator=gen),
                       torch.arange(n) % classes, torch.randint(0, 256, (m, 1, 5, 5), dtype=torch.uint8,
                                                                generator=gen),
                       torch.arange(m) % classes, decode=Normalize(255.0))


def test_permuted_tasks_share_the_stored_images_and_decode_to_the_eager_permutation():
    data = _uint8_data()
    stream = permuted(data, n_tasks=3, seed=5)
    base = data.train.x
    for task, perm in zip(stream, permutations(3, 25, 5)):
        ex = task.examples("train")
        assert ex.x.data_ptr() == base.data_ptr() and ex.x.dtype == torch.uint8  # one copy, no per-task images
        eager = (base.to(torch.float32) / 255.0).reshape(40, 25)[:, perm].reshape(40, 1, 5, 5)  # independent
        assert torch.equal(task.train_x, eager)
        eager_test = (data.test.x.to(torch.float32) / 255.0).reshape(20, 25)[:, perm].reshape(20, 1, 5, 5)
        assert torch.equal(task.test_x, eager_test)


def test_split_tasks_select_rows_of_one_uint8_copy():
    stream = make_benchmark("split-mnist-5k")
    ptrs = {t.examples(s).x.data_ptr() for t in stream for s in ("train", "test")}
    assert len(ptrs) == 2 and all(t.examples("train").x.dtype == torch.uint8 for t in stream)
    assert stream[0].train_x.dtype == torch.float32 and float(stream[0].train_x.max()) <= 1.0
    assert stream.input_shape == (1, 28, 28)


def test_a_benchmark_asked_for_three_tasks_builds_three():
    stream = make_benchmark("permuted-mnist-5k", n_tasks=3)
    assert len(stream) == 3 and len({t.examples("train").x.data_ptr() for t in stream}) == 1


def _eager(stream: Stream) -> Stream:
    """The same stream with every task's inputs decoded into float tensors up front (today's eager storage)."""
    tasks = [Task(t.name, t.train_x, t.train_y, t.test_x, t.test_y, t.classes, t.head) for t in stream]
    return Stream(stream.name, tasks, stream.head_sizes, stream.setting)


@pytest.mark.parametrize("strategy", ["naive", "replay"])
def test_lazy_uint8_stream_trains_bit_for_bit_like_the_eager_float_one(strategy):
    full = mnist_5k()
    keep = torch.arange(0, len(full.train_y), 5)  # a fifth, to keep the test short
    small = full.with_examples(full.train.take(keep), full.test)
    lazy = permuted(small, n_tasks=2, seed=3)
    eager = _eager(lazy)
    assert lazy[1].examples("train").x.dtype == torch.uint8 and eager[1].examples("train").x.dtype == torch.float32
    results = []
    for stream in (lazy, eager):
        torch.manual_seed(0)
        model = build_model("mlp", stream.input_shape, stream.head_sizes, (16,))
        trainer = Trainer(model, make_strategy(strategy), epochs=1, batch_size=32, reset_optimizer=False,
                          device="cpu", quiet=True)
        results.append((trainer.fit(stream).accuracy_matrix, trainer.model.state_dict()))
    (lazy_R, lazy_w), (eager_R, eager_w) = results
    assert lazy_R == eager_R
    assert all(torch.equal(lazy_w[k], eager_w[k]) for k in lazy_w)


class Recorder(Strategy):
    def __init__(self):
        self.batches = []

    def on_before_forward(self, model, batch):
        self.batches.append(batch)
        return batch


def test_hooks_see_the_raw_minibatch_and_the_one_function_that_prepares_it():
    data = _uint8_data()
    stream = split(data, 2)
    calls = []

    def augment(x):  # a stand-in for a device augmentation: flips every image, counts its calls
        calls.append(x.dtype)
        return x.flip(-1)

    torch.manual_seed(0)
    model = build_model("mlp", stream.input_shape, stream.head_sizes, (8,))
    recorder = Recorder()
    Trainer(model, recorder, epochs=1, batch_size=8, device="cpu", quiet=True, augment=augment).fit(stream)
    batch = recorder.batches[0]
    assert batch.raw.dtype == torch.uint8 and batch.x.dtype == torch.float32
    assert torch.equal(batch.x, (batch.raw.float() / 255.0).flip(-1))  # decode, then augment
    assert torch.equal(batch.inputs(batch.raw), batch.x)  # what a memory gets for stored examples
    trained = sum(len(b) for b in recorder.batches)
    assert trained == sum(t.n("train") for t in stream) and len(calls) == 1 + len(recorder.batches)
    # evaluation is not augmented: of the calls, one came from batch.inputs above, none from scoring


def test_whole_task_readers_get_decoded_inputs_and_memories_the_stored_form():
    stream = split(_uint8_data(), 2)
    task = stream[0]
    (x, y), = task.batches("train", 100, "cpu")
    assert x.dtype == torch.float32 and torch.equal(x, task.train_x) and torch.equal(y, task.train_y)
    (raw, _), = task.batches("train", 100, "cpu", raw=True)
    assert raw.dtype == torch.uint8 and torch.equal(task.decode(raw), x)
    assert sum(len(b) for b, _ in task.batches("train", 7, "cpu", limit=10)) == 10


def test_different_decodings_in_one_stream_are_decoded_up_front():
    a, b = _uint8_data(seed=1), _uint8_data(seed=2)
    b.decode = Normalize(255.0, (0.5,), (0.25,))
    from clframework.benchmarks import from_task_data

    stream = from_task_data([a, b])
    assert all(t.decode is None and t.examples("train").x.dtype == torch.float32 for t in stream)
    assert torch.equal(stream[1].train_x, (b.train.x.float() / 255.0 - 0.5) / 0.25)


def test_tensor_examples_check_lengths():
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        TensorExamples(torch.zeros(3, 2), torch.zeros(2))


def test_the_file_jobs_workers_map_holds_one_uint8_copy(tmp_path):
    """Spawned --jobs workers: the stream saved once, every worker memory-maps it; ten permuted tasks, one copy."""
    stream = make_benchmark("permuted-mnist-5k")
    base = stream[0].examples("train").x.nbytes + stream[0].examples("test").x.nbytes
    torch.save(stream, tmp_path / "shared.pt")
    assert (tmp_path / "shared.pt").stat().st_size < 1.5 * base  # one uint8 copy plus labels and permutations
    mapped = torch.load(tmp_path / "shared.pt", mmap=True, weights_only=False)
    assert mapped[3].examples("train").x.data_ptr() == mapped[7].examples("train").x.data_ptr()
    assert torch.equal(mapped[3].train_x, stream[3].train_x)


def test_minibatches_and_batches_equal_raw_for_selected_rows_and_permuted_features():
    """The trainer's and the end-of-task passes' fast fetch (`index_select`) gives what `raw` (tensor indexing)
    gives: rows chosen from a larger store, features permuted, a random order and a last short batch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 1, 3, 4), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 5, (50,), generator=gen)
    for ex in (TensorExamples(x, y), TensorExamples(x, y[10:40], rows=torch.arange(10, 40).flip(0)),
               TensorExamples(x, y, features=torch.randperm(12, generator=gen))):
        order = torch.randperm(len(ex), generator=gen)
        got = list(ex.minibatches(order, 1, 7, torch.device("cpu")))
        want = order.split(7)[1:]
        assert len(got) == len(want)
        for (raw, labels), idx in zip(got, want):
            assert torch.equal(raw, ex.raw(idx)) and torch.equal(labels, ex.y[idx])
        for (raw, labels), start in zip(ex.batches(8, "cpu"), range(0, len(ex), 8)):
            part = slice(start, start + 8)
            assert torch.equal(raw, ex.raw(part)) and torch.equal(labels, ex.y[part])
