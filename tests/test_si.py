"""SI against closed forms: the paper's Sec. 4 quadratic, the loss-drop identity, autograd, and fine-tuning."""
import pytest
import torch
from torch import nn

from clframework import Trainer, make_strategy, mlp
from penalty_check import assert_hook_adds_autograd_penalty_gradient
from clframework.strategies.si import SI, importance, path_integral_step, surrogate_penalty, surrogate_penalty_grad


class Quadratic(nn.Module):
    """E(theta) = 1/2 (theta - theta*)^T H (theta - theta*) with diagonal H."""

    def __init__(self, start, target, h):
        super().__init__()
        self.theta = nn.Parameter(start.clone())
        self.target, self.h = target, h

    def loss(self):
        return 0.5 * (self.h * (self.theta - self.target) ** 2).sum()


def _descend(model, strategy, lr=0.01, steps=3000):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    strategy.on_task_start(model, 0)
    start_loss = model.loss().item()
    for _ in range(steps):
        model.loss().backward()
        strategy.on_before_step(model)
        opt.step()
        strategy.on_after_step(model)
        opt.zero_grad()
    return start_loss, model.loss().item()


def test_quadratic_importance_is_half_the_hessian():
    gen = torch.Generator().manual_seed(0)
    d = 20
    h = torch.linspace(0.5, 4.0, d, dtype=torch.float64)
    target = torch.randn(d, generator=gen, dtype=torch.float64)
    start = target + torch.randn(d, generator=gen, dtype=torch.float64) * 2
    model = Quadratic(start, target, h)
    si = SI(c=1.0, xi=0.0)
    start_loss, end_loss = _descend(model, si)
    omega_sum = sum(w.sum().item() for w in si.omega.values())
    # loss-drop identity: the path integral of -g . dtheta equals the decrease of the task loss
    assert abs(omega_sum - (start_loss - end_loss)) / (start_loss - end_loss) < 0.02
    si.on_task_end(model)
    Omega = si.Omega["theta"]
    assert torch.all((Omega - h / 2).abs() / (h / 2) < 0.05), (Omega, h / 2)
    # with c = 1 the surrogate equals the quadratic loss itself around the reached minimum
    for _ in range(5):
        probe = target + torch.randn(d, generator=gen, dtype=torch.float64)
        exact = 0.5 * (h * (probe - target) ** 2).sum()
        surrogate = surrogate_penalty(probe, si.reference["theta"], Omega, c=1.0)
        assert abs(surrogate - exact) / exact < 0.05


def test_pure_functions_closed_forms():
    g, before, after = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.0])
    assert torch.equal(path_integral_step(g, before, after), torch.tensor([-0.5, -2.0]))
    assert torch.allclose(importance(torch.tensor([2.0]), torch.tensor([1.0]), 1.0), torch.tensor([1.0]))
    theta = torch.randn(7, dtype=torch.float64, requires_grad=True)
    ref, strength = torch.randn(7, dtype=torch.float64), torch.rand(7, dtype=torch.float64)
    (auto,) = torch.autograd.grad(surrogate_penalty(theta, ref, strength, 0.3), theta)
    assert torch.allclose(auto, surrogate_penalty_grad(theta.detach(), ref, strength, 0.3), rtol=1e-12)


def test_strategy_adds_the_autograd_gradient_of_its_penalty():
    torch.manual_seed(1)
    model = mlp(6, [3, 2], hidden=(5,)).double()
    si = SI(c=0.7, xi=1e-3)
    si.on_task_start(model, 0)
    for name, p in model.named_parameters():  # a consolidated state with non-trivial strengths and references
        si.Omega[name] = torch.rand_like(p)
        si.reference[name] = p.detach() + torch.randn_like(p)
    si.on_task_start(model, 1)
    assert_hook_adds_autograd_penalty_gradient(si, model)


def _trainer(stream, strategy, seed=3):
    torch.manual_seed(seed)
    model = mlp(784, stream.head_sizes, hidden=(64, 64))
    return Trainer(model, strategy, epochs=1, batch_size=64, seed=seed, quiet=True)


def test_si_equals_naive_in_task_one_and_differs_after(mnist_stream):
    naive, si = _trainer(mnist_stream, make_strategy("naive")), _trainer(mnist_stream, make_strategy("si"))
    naive.train_task(mnist_stream[0], 0)
    si.train_task(mnist_stream[0], 0)
    for a, b in zip(naive.model.parameters(), si.model.parameters()):
        assert torch.equal(a, b)  # bit for bit
    assert sum(w.abs().sum().item() for w in si.strategy.omega_history[0].values()) > 0
    assert len(si.strategy.omega_history) == 1
    naive.train_task(mnist_stream[1], 1)
    si.train_task(mnist_stream[1], 1)
    trunk = [(a, b) for (n, a), (_, b) in zip(naive.model.named_parameters(), si.model.named_parameters())
             if n.startswith("trunk")]
    assert any(not torch.equal(a, b) for a, b in trunk)


def test_omega_from_task_loss_differs_from_total_loss_option(mnist_stream):
    runs = {}
    for total in (False, True):
        t = _trainer(mnist_stream, make_strategy("si", c=1.0, omega_from_total_loss=total))
        t.fit(mnist_stream)
        runs[total] = t.strategy.omega_history[1]["trunk.1.weight"]
    assert not torch.allclose(runs[False], runs[True])


def test_new_head_parameters_are_handled():
    torch.manual_seed(0)
    model = mlp(4, [2], hidden=(8,))
    si = SI(c=1.0)
    opt_data = [(torch.randn(32, 4), torch.randint(0, 2, (32,)))]

    def train(head):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        si.on_task_start(model, head)
        for x, y in opt_data * 5:
            nn.functional.cross_entropy(model(x, head), y).backward()
            si.on_before_step(model)
            opt.step()
            si.on_after_step(model)
            opt.zero_grad()
        si.on_task_end(model, opt_data, head)

    train(0)
    new = model.add_head(2)
    train(new)
    assert si.Omega[f"heads.{new}.weight"].abs().sum() > 0
    assert torch.all(si.Omega["heads.0.weight"] >= 0)  # clamped at zero, as in the paper's code


def test_state_dict_round_trip(mnist_stream):
    t = _trainer(mnist_stream, make_strategy("si"))
    t.train_task(mnist_stream[0], 0)
    state = t.strategy.state_dict()
    fresh = make_strategy("si")
    fresh.load_state_dict(state)
    for key in ("Omega", "reference"):
        for name, value in state[key].items():
            assert torch.equal(getattr(fresh, key)[name], value)
    assert len(fresh.omega_history) == 1


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("total", [False, True])
def test_one_penalized_step_adds_minus_gradient_times_update_to_omega(set_to_none, total):
    """During task 2 (penalty on): omega gains -g * delta with g the task loss's gradient (or, with the option, the
    total loss's), computed here independently by autograd on the explicit penalty, whatever zero_grad does."""
    torch.manual_seed(0)
    model = mlp(5, [3], hidden=(4,)).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    si = SI(c=0.7, omega_from_total_loss=total)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for task in range(2):
        si.on_task_start(model, task)
        for _ in range(3):
            opt.zero_grad(set_to_none=set_to_none)
            nn.functional.cross_entropy(model(x + task, 0), y).backward()
            si.on_before_step(model)
            opt.step()
            si.on_after_step(model)
        if task == 0:
            si.on_task_end(model, None, 0)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    omega_before = {n: w.clone() for n, w in si.omega.items()}
    opt.zero_grad(set_to_none=set_to_none)
    task_loss = nn.functional.cross_entropy(model(x + 1, 0), y)
    loss = task_loss + si.penalty_value(model) if total else task_loss
    expected_grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), retain_graph=True)))
    task_loss.backward()
    si.on_before_step(model)
    opt.step()
    si.on_after_step(model)
    for n, p in params.items():
        expected = omega_before[n] - expected_grads[n] * (p.detach() - before[n])
        torch.testing.assert_close(si.omega[n], expected, rtol=1e-10, atol=1e-12, msg=n)
    assert any(bool(si.Omega[n].any()) for n in params)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_bookkeeping_equals_the_pure_functions_per_tensor(dtype, tol, seed):
    """The fused step (penalty gradient from Omega * theta_ref, omega from the snapshot) against the plain per-tensor
    formulas on random weights, references, strengths, gradients and updates; one head's parameters unpenalized."""
    gen = torch.Generator().manual_seed(seed)
    model = mlp(6, [3, 3], hidden=(5, 4)).to(dtype)
    c = float(torch.rand((), generator=gen)) * 3
    si = SI(c=c)
    si.on_task_start(model, 0)
    si.on_task_end(model, None, 0)
    params = dict(model.named_parameters())
    for n, p in params.items():
        strength = torch.rand(p.shape, generator=gen, dtype=dtype)
        si.Omega[n] = strength if not n.startswith("heads.1") else torch.zeros_like(p)
        si.reference[n] = torch.randn(p.shape, generator=gen, dtype=dtype)
    si.on_task_start(model, 1)
    task_grads = {n: torch.randn(p.shape, generator=gen, dtype=dtype) for n, p in params.items()}
    for n, p in params.items():
        p.grad = task_grads[n].clone()
    si.on_before_step(model)
    for n, p in params.items():
        expected = task_grads[n] + surrogate_penalty_grad(p.detach(), si.reference[n], si.Omega[n], c)
        torch.testing.assert_close(p.grad, expected, rtol=tol, atol=tol, msg=n)
    before = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for p in params.values():  # an optimizer's update
            p.add_(torch.randn(p.shape, generator=gen, dtype=dtype) * 1e-2)
    si.on_after_step(model)
    for n, p in params.items():
        expected = path_integral_step(task_grads[n], before[n], p.detach())
        torch.testing.assert_close(si.omega[n], expected, rtol=tol, atol=tol, msg=n)
