"""iCaRL's herding against a brute-force greedy search, its nearest-mean classifier against float64, its targets;
GDumb's memory invariants (never over capacity, classes balanced, small classes kept whole); both train end to end
and resume bit-exact from a mid-task checkpoint."""
import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clframework import Trainer, make_strategy, mlp
from clframework.apps.bench import shrink
from clframework.benchmarks import make_benchmark
from clframework.strategies.gdumb import greedy_balanced
from clframework.strategies.icarl import herding, icarl_targets, nme_scores


def _brute_herding(f: np.ndarray, m: int):
    """Greedy by exhaustive search: at each step try every unchosen row, keep the one whose inclusion puts the
    chosen rows' mean nearest the class mean."""
    mu, chosen = f.mean(0), []
    for _ in range(m):
        best = min((i for i in range(len(f)) if i not in chosen),
                   key=lambda i: np.linalg.norm(mu - f[chosen + [i]].mean(0)))
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_equals_brute_force_greedy(seed):
    gen = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(25, 6, generator=gen, dtype=torch.float64), dim=1)
    assert herding(f, 9).tolist() == _brute_herding(f.numpy(), 9)
    assert herding(f, 4).tolist() == herding(f, 9).tolist()[:4]  # iCaRL's reduction keeps a prefix
    assert herding(f, 40).sort().values.tolist() == list(range(25))  # asking more than there are: all, once


def test_nearest_mean_scores_against_float64():
    gen = torch.Generator().manual_seed(0)
    feats, means = torch.randn(8, 5, generator=gen), torch.randn(3, 5, generator=gen)
    f = feats.double().numpy()
    mu = means.double().numpy()
    expected = -np.array([[np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)) for b in mu] for a in f])
    assert np.allclose(nme_scores(feats, means).numpy(), expected, atol=1e-5)
    assert (nme_scores(feats, means).argmax(1).numpy() == expected.argmax(1)).all()


def test_icarl_targets_distil_old_classes_and_one_hot_new_ones():
    y, old = torch.tensor([3, 1]), torch.randn(2, 6)
    t = icarl_targets(y, 4, 2, old)
    assert t.shape == (2, 4) and torch.equal(t[:, :2], torch.sigmoid(old[:, :2]))
    assert t[:, 2:].tolist() == [[0.0, 1.0], [0.0, 0.0]]  # example of old class 1: no one-hot among new classes


def test_greedy_balanced_memory_invariants():
    gen = torch.Generator().manual_seed(0)
    seen, memory = set(), []
    for task in range(5):  # 5 tasks of 2 classes, 100 examples each; class 9 has only 3
        labels = [2 * task] * 100 + [2 * task + 1] * (3 if task == 4 else 100)
        labels = [labels[i] for i in torch.randperm(len(labels), generator=gen).tolist()]
        slots = greedy_balanced(memory, labels, 50, seen, gen)
        memory = [labels[i] if new else memory[i] for new, i in slots]
        assert len(memory) <= 50
        counts = [memory.count(c) for c in sorted(seen)]
        full = [n for c, n in zip(sorted(seen), counts) if c != 9]
        assert max(full) - min(full) <= 1, (task, counts)
    assert memory.count(9) == 3 and len(memory) == 50  # a small class is kept whole, the rest share the room


@pytest.mark.slow
@pytest.mark.parametrize("name", ["icarl", "gdumb"])
def test_trains_end_to_end_and_resumes_bit_exact(name):
    stream = shrink(make_benchmark("split-mnist-5k", setting="class"), tasks=2, max_train=150)
    hp = {"memory_size": 40} if name == "icarl" else {"memory_size": 40, "fit_epochs": 8}

    def trainer(states=None):
        torch.manual_seed(0)
        return Trainer(mlp(784, stream.head_sizes, hidden=(32,)), make_strategy(name, **hp), epochs=2, batch_size=16,
                       lr=0.05, optimizer="sgd", quiet=True, checkpoint_every=7 if states is not None else 0,
                       on_checkpoint=(lambda s: states.append(copy.deepcopy(s))) if states is not None else None)

    states = []
    full = trainer(states).fit(stream)
    assert full.accuracy_matrix[-1][0] > 0.5 and full.accuracy_matrix[-1][1] > 0.5, full.accuracy_matrix
    state = next((s for s in states if s["epoch_in_flight"] is not None), states[0])
    assert trainer().fit(stream, resume=state).accuracy_matrix == full.accuracy_matrix


def test_icarl_needs_the_class_setting():
    stream = shrink(make_benchmark("split-mnist-5k"), tasks=2, max_train=40)
    with pytest.raises(Exception, match="class-incremental"):
        Trainer(mlp(784, stream.head_sizes, hidden=(8,)), make_strategy("icarl"), epochs=1, quiet=True).fit(stream)
