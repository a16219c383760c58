"""Scenario builders: partitions, permutations, the three settings, hold-out, split CIFAR-10/100, custom data, and the
registered full-data benchmarks built from small files in the real formats."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset
from torchvision.datasets import FakeData

from clframework.benchmarks import (BENCHMARKS, LabeledData, benchmark_protocol, from_dataset, from_task_data, from_tensors,
                        holdout, make_benchmark, permutations, permuted, split, split_cifar10_100)
from clframework import RunConfig, run
from fake_datasets import cifar_arrays, mnist_arrays, write_cifar10, write_cifar100, write_idx_set


def indexed(n_classes: int, per_class: int = 3, test_per_class: int = 2, name: str = "toy") -> LabeledData:
    """Every example's single feature is its own index (negated for test), so tasks can be traced back."""
    n, m = n_classes * per_class, n_classes * test_per_class
    return LabeledData(name, torch.arange(n, dtype=torch.float32).reshape(n, 1), torch.arange(n) % n_classes,
                       -1.0 - torch.arange(m, dtype=torch.float32).reshape(m, 1), torch.arange(m) % n_classes)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), cpt=st.sampled_from([1, 2, 3, 6]), setting=st.sampled_from(["task", "domain", "class"]))
def test_split_partitions_and_maps_labels(data, cpt, setting):
    toy = indexed(6)
    order = data.draw(st.permutations(list(range(6))))
    stream = split(toy, cpt, class_order=order, setting=setting)
    blocks = [order[i:i + cpt] for i in range(0, 6, cpt)]
    assert [list(t.classes) for t in stream] == blocks
    seen = torch.cat([t.train_x.flatten() for t in stream]).long()
    assert sorted(seen.tolist()) == list(range(len(toy.train_y)))  # every training example in exactly one task
    for i, (task, block) in enumerate(zip(stream, blocks)):
        orig = toy.train_y[task.train_x.flatten().long()]
        assert set(orig.tolist()) == set(block)
        local = torch.tensor([block.index(c) for c in orig.tolist()])
        expected = local + (i * cpt if setting == "class" else 0)
        assert torch.equal(task.train_y, expected)
        assert task.head == (i if setting == "task" else 0)
        test_orig = toy.test_y[(-1 - task.test_x.flatten()).long()]
        assert set(test_orig.tolist()) == set(block) and len(task.test_y) == len(block) * 2
    assert stream.head_sizes == {"task": [cpt] * len(blocks), "domain": [cpt], "class": [6]}[setting]


@pytest.mark.parametrize("kwargs,message", [
    ({"classes_per_task": 4}, "cannot be divided"),
    ({"class_order": [0, 1, 2, 3, 4, 9]}, "does not have"),
    ({"class_order": [0, 0, 1, 2, 3, 4]}, "repeats"),
    ({"n_tasks": 4}, "between 1 and 3"),
    ({"setting": "online"}, "unknown setting"),
])
def test_split_rejects_impossible_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split(indexed(6), **kwargs)


@settings(max_examples=20, deadline=None)
@given(n_tasks=st.integers(1, 5), seed=st.integers(0, 2**31 - 1), keep_first=st.booleans())
def test_permutations_are_stable_bijections(n_tasks, seed, keep_first):
    perms = permutations(n_tasks, 50, seed, keep_first)
    assert all(torch.equal(p.sort().values, torch.arange(50)) for p in perms)
    assert all(torch.equal(a, b) for a, b in zip(perms, permutations(n_tasks, 50, seed, keep_first)))
    if keep_first:
        assert torch.equal(perms[0], torch.arange(50))
    assert len({tuple(p.tolist()) for p in perms}) == n_tasks  # 50! makes a repeat essentially impossible


def test_permuted_tasks_apply_one_permutation_to_train_and_test():
    gen = torch.Generator().manual_seed(0)
    data = LabeledData("img", torch.rand(12, 1, 4, 4, generator=gen), torch.arange(12) % 3,
                       torch.rand(6, 1, 4, 4, generator=gen), torch.arange(6) % 3)
    stream = permuted(data, n_tasks=3, seed=7)
    perms = permutations(3, 16, 7)
    for task, perm in zip(stream, perms):
        assert torch.equal(task.train_x.reshape(12, 16), data.train_x.reshape(12, 16)[:, perm])
        assert torch.equal(task.test_x.reshape(6, 16), data.test_x.reshape(6, 16)[:, perm])
        assert torch.equal(task.train_y, data.train_y) and task.head == 0
    assert not torch.equal(stream[0].train_x, stream[1].train_x)
    assert stream.head_sizes == [3]
    assert permuted(data, 3, seed=7, setting="class")[2].train_y.tolist() == (data.train_y + 6).tolist()


@settings(max_examples=20, deadline=None)
@given(fraction=st.floats(0.05, 0.9), seed=st.integers(0, 1000))
def test_holdout_is_disjoint_from_training(fraction, seed):
    stream = holdout(split(indexed(4, per_class=10), 2), fraction, seed)
    originals = split(indexed(4, per_class=10), 2)
    for task, orig in zip(stream, originals):
        train, valid = set(task.train_x.flatten().tolist()), set(task.valid_x.flatten().tolist())
        assert not train & valid and train | valid == set(orig.train_x.flatten().tolist())
        assert len(valid) == max(1, round(fraction * len(orig.train_y)))
        assert torch.equal(task.test_x, orig.test_x)


def test_split_cifar10_100_layout_and_settings():
    c10, c100 = indexed(10, name="cifar10"), indexed(100, per_class=2, test_per_class=1, name="cifar100")
    stream = split_cifar10_100(c10, c100)
    assert stream.task_names == ["cifar10"] + [f"cifar100[{b}-{b + 9}]" for b in range(0, 50, 10)]
    assert stream.head_sizes == [10] * 6 and [t.head for t in stream] == list(range(6))
    assert torch.equal(stream[0].train_x, c10.train_x) and torch.equal(stream[0].train_y, c10.train_y)
    block2 = stream[2].train_x.flatten().long()
    assert torch.equal(c100.train_y[block2], stream[2].train_y + 10)  # CIFAR-100 classes 10..19 -> outputs 0..9
    cls = split_cifar10_100(c10, c100, cifar100_tasks=2, setting="class")
    assert cls.head_sizes == [30] and cls[2].train_y.min() == 20 and cls[2].train_y.max() == 29
    with pytest.raises(ValueError, match="between 1 and 10"):
        split_cifar10_100(c10, c100, cifar100_tasks=11)
    with pytest.raises(ValueError, match="cannot be divided"):
        split_cifar10_100(c10, c100, classes_per_task=7)


def test_custom_tensors_and_datasets_give_the_same_stream():
    gen = torch.Generator().manual_seed(1)
    x, y, tx, ty = torch.rand(40, 3, generator=gen), torch.arange(40) % 4, torch.rand(8, 3), torch.arange(8) % 4
    a = split(from_tensors(x, y, tx, ty), 2)
    b = split(from_dataset(TensorDataset(x, y), TensorDataset(tx, ty), batch_size=7), 2)
    for ta, tb in zip(a, b):
        assert torch.equal(ta.train_x, tb.train_x) and torch.equal(ta.train_y, tb.train_y)
        assert torch.equal(ta.test_x, tb.test_x)
    pre_split = from_task_data([from_tensors(x[y < 2], y[y < 2] + 5, tx[ty < 2], ty[ty < 2] + 5),
                                from_tensors(x[y >= 2], y[y >= 2], tx[ty >= 2], ty[ty >= 2])], setting="domain")
    assert [t.classes for t in pre_split] == [(5, 6), (2, 3)] and pre_split.head_sizes == [2]
    assert torch.equal(pre_split[0].train_y, y[y < 2])


@pytest.mark.parametrize("args,message", [
    ((torch.zeros(4, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)), "floating point"),
    ((torch.zeros(4, 2), torch.zeros(4)), "integer class ids"),
    ((torch.zeros(4, 2), torch.zeros(3, dtype=torch.long)), "4 inputs and 3 labels"),
    ((torch.zeros(4, 2), -torch.ones(4, dtype=torch.long)), "non-negative"),
])
def test_custom_tensors_rejected_with_reasons(args, message):
    with pytest.raises(ValueError, match=message):
        from_tensors(*args, torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))


def test_dataset_of_images_without_transform_is_rejected():
    pil = FakeData(size=4, image_size=(1, 4, 4), num_classes=2)
    with pytest.raises(ValueError, match="ToTensor"):
        from_dataset(pil, pil)


def test_task_data_with_unseen_test_class_rejected():
    with pytest.raises(ValueError, match="never occur"):
        from_task_data([from_tensors(torch.zeros(2, 1), torch.tensor([0, 1]), torch.zeros(1, 1), torch.tensor([2]))])


def test_registered_benchmarks_build_from_files_on_disk(tmp_path):
    write_idx_set(tmp_path, mnist_arrays(n_train=100, n_test=30))
    write_cifar10(tmp_path, cifar_arrays(10, 40, 20))
    write_cifar100(tmp_path, cifar_arrays(100, 200, 100))
    root = str(tmp_path)
    for name in ("split-mnist", "permuted-mnist", "split-cifar10-100", "split-cifar100"):
        assert BENCHMARKS.get(name).extra["available"](root)
    s = make_benchmark("split-mnist", data_root=root, validation=0.2)
    assert s.head_sizes == [2] * 5 and len(s[0].valid_y) == 4 and len(s[0].train_y) == 16
    p = make_benchmark("permuted-mnist", data_root=root, n_tasks=3, permutation_seed=4)
    assert len(p) == 3 and p.setting == "domain" and p.info["permutation_seed"] == 4
    c = make_benchmark("split-cifar10-100", data_root=root)
    assert c.input_shape == (3, 32, 32) and c.head_sizes == [10] * 6
    assert len(make_benchmark("split-cifar100", data_root=root, classes_per_task=20)) == 5
    assert not BENCHMARKS.get("split-cifar100").extra["available"](str(tmp_path / "nowhere"))


def test_paper_protocols():
    """PROTOCOLS.md, from the paper's Sec. 5.1-5.3."""
    split_p, perm_p, cifar_p = (benchmark_protocol(n) for n in ("split-fashion-mnist", "permuted-mnist",
                                                                 "split-cifar10-100"))
    assert (split_p.hidden, split_p.batch_size, split_p.epochs, split_p.reset_optimizer) == ((256, 256), 64, 10, True)
    assert split_p.strategy_hparams["si"] == {"c": 1.0, "xi": 1e-3}
    assert (perm_p.hidden, perm_p.batch_size, perm_p.epochs, perm_p.reset_optimizer) == ((2000, 2000), 256, 20, False)
    assert perm_p.strategy_hparams["si"] == {"c": 0.1, "xi": 0.1}
    assert (cifar_p.model, cifar_p.batch_size, cifar_p.epochs, cifar_p.reset_optimizer) == ("cnn", 256, 60, True)
    assert cifar_p.strategy_hparams["si"] == {"c": 0.1, "xi": 1e-3}
    assert benchmark_protocol("split-cifar100") == cifar_p and benchmark_protocol("split-mnist") == split_p


def test_bad_benchmark_option_stops_before_training():
    with pytest.raises(ValueError, match="n_taks"):
        RunConfig("naive", "split-fashion-mnist", benchmark_options={"n_taks": 3}).resolved()


def test_cnn_trains_on_split_cifar10_100_from_files(tmp_path):
    write_cifar10(tmp_path, cifar_arrays(10, 20, 10, seed=3))
    write_cifar100(tmp_path, cifar_arrays(100, 100, 100, seed=4))
    res = run(RunConfig("si", "split-cifar10-100", epochs=1, benchmark_options={"data_root": str(tmp_path),
                                                                               "cifar100_tasks": 1}), quiet=True)
    assert res.config["head_sizes"] == [10, 10] and len(res.accuracy_matrix) == 2
    assert res.config["model"] == "cnn" and res.hparams["c"] == 0.1 and res.config["batch_size"] == 256
