"""LwF: its distillation loss against a hand computation on fixed logits, and which outputs it distills per setting."""
import math

import pytest
import torch
import torch.nn.functional as F

from clframework import mlp
from clframework.models import forward_head
from clframework.plugin import Batch
from clframework.strategies.lwf import LwF, distillation_loss


def test_distillation_loss_by_hand():
    new = [[1.0, -0.5, 2.0], [0.3, 0.3, -1.2]]
    old = [[0.5, 0.0, 1.0], [-2.0, 1.5, 0.25]]
    T = 2.0

    def softmax(z):
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    kls = []
    for z, zo in zip(new, old):
        p, q = softmax(z), softmax(zo)  # student, frozen teacher
        kls.append(sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q)))
    expected = sum(kls) / len(kls)
    got = distillation_loss(torch.tensor(new, dtype=torch.float64), torch.tensor(old, dtype=torch.float64), T)
    assert abs(got.item() - expected) < 1e-12
    same = torch.tensor(old)
    assert distillation_loss(same, same, T).abs().item() < 1e-7  # no distance from itself


def test_distillation_gradient_is_softmax_difference_and_exactly_zero_at_the_teacher():
    """d KL / d logits = (softmax(z / T) - softmax(z_old / T)) / (N T), against that formula in float64; in float32
    exactly 0 where the logits are the teacher's (a task's first step): round-off there would be a gradient of its own,
    which Adam (dividing by the gradient's size) turns into a step of ~lr / 10 set by the rows' summation order."""
    g = torch.Generator().manual_seed(0)
    new, old = (3 * torch.randn(6, 2, 5, generator=g, dtype=torch.float64) for _ in range(2))
    T = 2.0
    z = new.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(distillation_loss(z, old, T), z)
    expected = (torch.softmax(new / T, -1) - torch.softmax(old / T, -1)) / (6 * T)
    assert torch.allclose(got, expected, rtol=0, atol=1e-15)
    for _ in range(20):  # random float32 teachers, the student equal to each
        teacher = 4 * torch.randn(200, 2, 10, generator=g)
        z = teacher.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(distillation_loss(z, teacher, T), z)
        assert not grad.any()
    log_p, log_q = F.log_softmax(z / T, -1), F.log_softmax(teacher / T, -1)  # the textbook form: there, round-off
    assert torch.autograd.grad((log_q.exp() * (log_q - log_p)).sum() / 200, z)[0].any()


def _after_task(model, lwf, head, labels):
    x = torch.randn(len(labels), 6)
    lwf.on_task_end(model, (x, torch.tensor(labels)), head)


def test_multi_head_distills_every_earlier_head_from_a_frozen_copy():
    torch.manual_seed(0)
    model = mlp(6, [2, 2, 2], hidden=(5,))
    lwf = LwF(alpha=0.7, temperature=2.0)
    _after_task(model, lwf, 0, [0, 1, 1])
    frozen = [forward_head(model, torch.eye(6), h).detach() for h in range(3)]
    _after_task(model, lwf, 1, [1, 0])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 6)
    batch = Batch(x, torch.zeros(4, dtype=torch.long), 2, forward_head(model, x, 2))
    got = lwf.loss_term(model, batch)
    snap = lwf._frozen(model)  # the copy taken after task 2, unchanged by training
    expected = 0.7 * sum(distillation_loss(forward_head(model, x, h), forward_head(snap, x, h), 2.0) for h in (0, 1))
    assert torch.allclose(got, expected)
    assert not torch.allclose(forward_head(model, torch.eye(6), 0), frozen[0])
    assert torch.allclose(forward_head(snap, torch.eye(6), 0), frozen[0])  # the copy keeps the end-of-task weights
    assert got.requires_grad and all(not p.requires_grad for p in snap.parameters())


def test_single_head_distills_the_old_classes_only():
    torch.manual_seed(0)
    model = mlp(6, [6], hidden=(5,))  # class-incremental: one head over all classes
    lwf = LwF(alpha=1.0, temperature=2.0)
    _after_task(model, lwf, 0, [0, 1, 0])
    _after_task(model, lwf, 0, [3, 2])
    assert lwf.old_outputs == {0: [0, 1, 2, 3]}
    old = lwf._frozen(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, 6)
    out = forward_head(model, x, 0)
    got = lwf.loss_term(model, Batch(x, torch.full((5,), 4), 0, out))
    expected = distillation_loss(out[:, :4], forward_head(old, x, 0)[:, :4], 2.0)
    assert torch.allclose(got, expected)
    # at a task's end the model is its own teacher: no loss, no gradient
    _after_task(model, lwf, 0, [4, 5])
    got = lwf.loss_term(model, Batch(x, torch.full((5,), 4), 0, forward_head(model, x, 0)))
    assert got.abs().item() < 1e-6


def test_stacked_heads_distillation_equals_the_per_head_sum_in_float64():
    g = torch.Generator().manual_seed(0)
    new, old = (torch.randn(7, 4, 3, generator=g, dtype=torch.float64) for _ in range(2))
    per_head = sum(distillation_loss(new[:, h], old[:, h], 2.0) for h in range(4))
    assert abs(distillation_loss(new, old, 2.0).item() - per_head.item()) < 1e-12


def _plain_lwf_loss(model, frozen, x, heads, alpha, temperature):
    """LwF's objective written plainly: each earlier head through a full forward pass of each model."""
    return alpha * sum(distillation_loss(forward_head(model, x, h), forward_head(frozen, x, h).detach(), temperature)
                       for h in heads)


@pytest.mark.parametrize("head_sizes", [[2, 2, 2, 2], [2, 3, 2, 2]])  # stacked heads; heads one by one
def test_the_one_pass_path_equals_the_plain_per_head_computation_in_float64(head_sizes):
    """Every earlier head stacked into one layer (where all have one width) and the trunk's output taken from the
    forward pass just run: the same loss and the same gradients as each head through its own full forward pass, and
    no second trunk pass."""
    torch.manual_seed(0)
    model = mlp(6, head_sizes, hidden=(5, 4)).double()
    lwf = LwF(alpha=0.7, temperature=2.0)
    for h in range(3):
        labels = torch.arange(4) % head_sizes[h]  # every output of the head trained
        lwf.on_task_end(model, (torch.randn(4, 6, dtype=torch.float64), labels), h)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    frozen = lwf._frozen(model)
    trunk_calls = []
    counter = model.trunk.register_forward_hook(lambda *a: trunk_calls.append(1))
    y = torch.tensor([0, 1, 1, 0, 1])
    for tapped in (True, True, False):  # the protocol's hooks; loss_term alone (a second trunk pass)
        x = torch.randn(5, 6, dtype=torch.float64)
        batch = lwf.on_before_forward(model, Batch(x, y, 3)) if tapped else Batch(x, y, 3)
        batch.out = forward_head(model, x, 3)
        before = len(trunk_calls)
        seen = batch if tapped else Batch(x.clone(), y, 3, batch.out)  # not the tensor the trunk saw
        got = F.cross_entropy(batch.out, y) + lwf.loss_term(model, seen)
        assert len(trunk_calls) - before == (0 if tapped else 1)
        got_grads = torch.autograd.grad(got, list(model.parameters()))
        expected = F.cross_entropy(forward_head(model, x, 3), y) + \
            _plain_lwf_loss(model, frozen, x, [0, 1, 2], 0.7, 2.0)
        want_grads = torch.autograd.grad(expected, list(model.parameters()))
        assert abs(got.item() - expected.item()) < 1e-12
        assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(got_grads, want_grads))
    assert bool(lwf._stack) == (len(set(head_sizes[:3])) == 1)
    counter.remove()
    lwf.on_task_end(model, (x, y), 3)  # the tap leaves the model with the task; the frozen copy has none
    assert not model.trunk._forward_hooks and not lwf._frozen(model).trunk._forward_hooks
