"""iCaRL's herding against a brute-force greedy search, its nearest-mean classifier against float64, its targets, its
evaluation without side effect on the model, its flip-averaged class means; GDumb's memory invariants (never over
capacity, classes balanced, small classes kept whole), its schedule against torch's SGDR driven as the authors do,
its cutmix, its recipe's range checks, its memory of stored examples fitted through the training augmentation; the
seq-MNIST protocol's Xavier-initialized MLP; both train end to end and resume bit-exact from a mid-task checkpoint.
The step-for-step comparisons with the reference code are in tests/conformance/test_icarl_gdumb.py."""
import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clframework import Trainer, make_strategy, mlp
from clframework.apps.bench import shrink
from clframework.augment import CropFlip
from clframework.benchmarks import make_benchmark
from clframework.benchmarks.registry import benchmark_protocol
from clframework import RunConfig
from clframework.models import MultiHeadNet, build_model, penultimate, reduced_resnet18
from clframework.registry import RegistryError
from clframework.strategies.gdumb import cutmix, greedy_balanced, sgdr_lr
from clframework.strategies.icarl import class_means, herding, icarl_targets, nme_scores


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


def _bn_mlp(head_sizes):
    """An MLP with BatchNorm1d: its train-mode forward on one example raises, and moves running statistics."""
    trunk = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU())
    return MultiHeadNet(trunk, 16, head_sizes)


@pytest.mark.parametrize("kind", ["reduced_resnet18_8px", "batchnorm1d_mlp"])
def test_icarl_evaluation_leaves_the_model_untouched(kind):
    """Scoring (eval_model, then the scorer's forward passes as the evaluator runs them) leaves every parameter and
    BatchNorm statistic bit-identical and the model's mode as it was; 8 px images give 1x1 final feature maps."""
    torch.manual_seed(0)
    if kind == "batchnorm1d_mlp":
        model, x = _bn_mlp([4]), torch.randn(12, 1, 28, 28)
    else:
        model, x = reduced_resnet18((3, 8, 8), [4]), torch.randn(12, 3, 8, 8)
    y = torch.arange(4).repeat(3)
    model.train()
    for _ in range(3):  # statistics away from their initial values
        F.cross_entropy(model(x, 0), y).backward()
    strategy = make_strategy("icarl", memory_size=8)
    strategy.exemplars = {c: x[y == c][:2] for c in range(4)}
    strategy.n_seen = 4
    before = copy.deepcopy(model.state_dict())
    scorer = strategy.eval_model(model)
    scores = evaluate_stream_like(scorer, x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k],
                                                                                                      after[k])]
    assert model.training  # the mode it was in
    model.eval()
    with torch.no_grad():  # the scores are the nearest normalized class mean's, from eval-mode features
        f = F.normalize(penultimate(model, x).double(), dim=1)
        means = torch.stack([F.normalize(penultimate(model, x[y == c][:2]).double(), dim=1).mean(0)
                             for c in range(4)])
        dist = torch.cdist(f, F.normalize(means, dim=1))
    assert torch.equal(scores.argmax(1), dist.argmin(1))


def evaluate_stream_like(scorer, x):
    """What evaluation does with a scorer: eval mode, forward passes without gradient, the mode restored."""
    was = scorer.training
    scorer.eval()
    with torch.no_grad():
        out = scorer(x, 0)
    scorer.train(was)
    return out


def test_icarl_flip_means_averages_each_exemplar_with_its_mirror_image():
    feats = lambda x: F.normalize(x.flatten(1)[:, :3], dim=1)  # noqa: E731  (features reading the first 3 pixels)
    x = torch.arange(2 * 1 * 1 * 4, dtype=torch.float64).reshape(2, 1, 1, 4) + 1
    means = class_means(feats, {0: x}, 1, flip=True)
    expected = (feats(x).mean(0) + feats(x[..., [3, 2, 1, 0]]).mean(0)) / 2
    assert torch.allclose(means[0], expected) and not torch.allclose(means[0], feats(x).mean(0))


def test_gdumb_schedule_equals_the_authors_warm_up_and_sgdr():
    """Epoch 0 at maxlr / 10, epoch 1 at maxlr, then torch's CosineAnnealingWarmRestarts(T_0=1, T_mult=2) stepped
    once per epoch, as drimpossible/GDumb src/main.py (4f412d7) drives it."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, eta_min=5e-4)
    for epoch in range(70):
        if epoch == 0:
            opt.param_groups[0]["lr"] = 0.005
        elif epoch == 1:
            opt.param_groups[0]["lr"] = 0.05
        else:
            scheduler.step()
        assert sgdr_lr(epoch, 0.05, 5e-4) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), epoch
    assert sgdr_lr(3, 0.05, 5e-4) == pytest.approx((0.05 + 5e-4) / 2)  # half-way down the 2-epoch period


def test_cutmix_pastes_one_box_from_the_partner():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 9, 7, generator=gen, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    for lam, cy, cx in [(0.3, 4, 3), (0.7, 0, 6), (0.05, 8, 0), (0.999, 4, 3)]:
        mixed, kept = cutmix(x, lam, perm, cy, cx)
        own = (mixed == x).all(1)  # [rows, height, width]: the pixel is the row's own
        assert (own | (mixed == x[perm]).all(1)).all()  # else its partner's
        assert (own == own[0]).all()  # the same box in every row
        assert kept == pytest.approx(own[0].double().mean().item())  # the labels' weight: the unpasted share
        rows, cols = (~own[0]).nonzero(as_tuple=True)
        assert len(rows) or lam > 0.99
        if len(rows):  # one box, around the centre
            assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert rows.min() <= cy <= rows.max() and cols.min() <= cx <= cols.max()


@pytest.mark.parametrize("bad", [{"fit_clip": -1.0}, {"fit_momentum": 1.0}, {"cutmix_prob": 1.5},
                                 {"cutmix_alpha": 0.0}, {"fit_min_lr": -1e-3}, {"fit_weight_decay": -1.0},
                                 {"fit_after": "sometimes"}, {"fit_epochs": 0}])
def test_gdumb_recipe_values_out_of_range_are_refused_before_training(bad):
    name = next(iter(bad))
    with pytest.raises(RegistryError, match=f"'{name}'"):
        RunConfig("gdumb", "split-mnist-5k", hparams={k: str(v) for k, v in bad.items()}).resolved()


def test_icarl_flip_means_needs_images():
    stream = shrink(make_benchmark("split-mnist-5k", setting="class"), tasks=2, max_train=20)
    flat = type(stream)(stream.name, [t.with_splits() for t in stream.tasks], stream.head_sizes, "class", (784,))
    with pytest.raises(ValueError, match="flip_means"):
        make_strategy("icarl", flip_means=True).task_data(flat, 0)
    with pytest.raises(RegistryError, match="'wd_reg'"):
        make_strategy("icarl", wd_reg=-1.0)


def test_gdumb_memory_keeps_the_stored_form_and_fits_through_the_training_augmentation():
    stream = shrink(make_benchmark("split-mnist-5k", setting="class"), tasks=2, max_train=60)
    strategy = make_strategy("gdumb", memory_size=20, fit_epochs=2)
    augment = CropFlip(stream.input_shape, seed=0)
    calls = []
    strategy.on_prepare = lambda prepare: setattr(strategy, "prepare", lambda raw: calls.append(len(raw)) or
                                                  prepare(raw))
    torch.manual_seed(0)
    Trainer(mlp(784, stream.head_sizes, hidden=(8,)), strategy, epochs=1, quiet=True, augment=augment).fit(stream)
    assert strategy.raw.dtype == torch.uint8 and len(strategy.raw) == 20
    assert calls == [20, 20, 20, 20]  # two tasks, two epochs each: the whole memory through decode and augment


def test_seq_mnist_protocol_initializes_its_mlp_as_mammoths_mnistmlp():
    """Mammoth's MNISTMLP (backbone/__init__.py `xavier`, 7ab9db97): weights U(-a, a), a = sqrt(6 / (fan_in +
    fan_out)), biases 0, every linear layer; a reset (GDumb's fresh network) draws the same way."""
    assert benchmark_protocol("seq-mnist").model == benchmark_protocol("seq-fashion-mnist").model == "xavier_mlp"
    torch.manual_seed(0)
    model = build_model("xavier_mlp", (1, 28, 28), [10], hidden=(100, 100))
    for _ in range(2):
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert [tuple(m.weight.shape) for m in linears] == [(100, 784), (100, 100), (10, 100)]
        for m in linears:
            a = (6.0 / sum(m.weight.shape)) ** 0.5
            w = m.weight.detach().double()
            assert torch.equal(m.bias, torch.zeros_like(m.bias)) and w.abs().max() <= a
            assert w.var().item() == pytest.approx(a * a / 3, rel=0.1)  # the variance of U(-a, a)
        for m in linears:
            m.reset_parameters()
