"""MAS against a float64 brute-force loop over examples, and its penalty gradient against autograd."""
import torch
from torch import nn

from clframework import make_strategy, mlp
from clframework.strategies.mas import MAS, mas_importance, mas_penalty, mas_penalty_grad
from penalty_check import assert_hook_adds_autograd_penalty_gradient


def brute_force_importance(model, x, head):
    """mean_n |d ||f(x_n)||^2 / d theta|, one example at a time."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for xi in x:
        out = model(xi.unsqueeze(0), head)
        grads = torch.autograd.grad(out.pow(2).sum(), params, allow_unused=True)
        for t, g in zip(total, grads):
            if g is not None:
                t += g.abs()
    return {n: t / len(x) for (n, _), t in zip(model.named_parameters(), total)}


class TiedNet(nn.Module):
    """One weight used twice per forward: the nn.Linear closed form does not apply, per-sample gradients do."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4, dtype=torch.float64) * 0.5)

    def forward(self, x, head=0):
        return torch.tanh(x @ self.w) @ self.w


def test_importance_matches_brute_force_loop_both_methods():
    torch.manual_seed(0)
    model = mlp(6, [3, 2], hidden=(5, 4)).double()
    x = torch.randn(13, 6, dtype=torch.float64)
    expected = brute_force_importance(model, x, head=1)
    for method in ("auto", "per-sample"):
        got = mas_importance(model, [(x[:8], None), (x[8:], None)], head=1, method=method)
        for n in expected:
            assert torch.allclose(got[n], expected[n], rtol=1e-10, atol=1e-12), (method, n)
    assert not got["heads.0.weight"].any()  # a head the task did not use has no importance
    tied = TiedNet()
    expected = brute_force_importance(tied, x[:, :4], head=0)
    got = mas_importance(tied, [(x[:, :4], None)])
    assert torch.allclose(got["w"], expected["w"], rtol=1e-10)


def test_importance_accumulates_over_tasks_and_anchors_last_weights():
    torch.manual_seed(0)
    model = mlp(6, [3, 2], hidden=(5,)).double()
    mas = MAS(mas_lambda=0.5)
    xs = [torch.randn(9, 6, dtype=torch.float64) for _ in range(2)]
    parts = []
    for head, x in enumerate(xs):
        parts.append(brute_force_importance(model, x, head))
        mas.on_task_end(model, (x, torch.zeros(len(x), dtype=torch.long)), head)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
    for n in parts[0]:
        assert torch.allclose(mas.omega[n], parts[0][n] + parts[1][n], rtol=1e-10)
        assert torch.allclose(mas.anchor[n], dict(model.named_parameters())[n] - 0.1)


def test_penalty_closed_form_and_hook_gradient():
    theta = torch.randn(7, dtype=torch.float64, requires_grad=True)
    anchor, omega = torch.randn(7, dtype=torch.float64), torch.rand(7, dtype=torch.float64)
    assert torch.allclose(mas_penalty(theta, anchor, omega, 0.3), 0.3 * (omega * (theta - anchor) ** 2).sum())
    (auto,) = torch.autograd.grad(mas_penalty(theta, anchor, omega, 0.3), theta)
    assert torch.allclose(auto, mas_penalty_grad(theta.detach(), anchor, omega, 0.3), rtol=1e-12)
    torch.manual_seed(1)
    model = mlp(6, [3, 2], hidden=(5,)).double()
    mas = make_strategy("mas", mas_lambda=0.7)
    mas.on_task_end(model, (torch.randn(5, 6, dtype=torch.float64), torch.zeros(5, dtype=torch.long)), 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    mas.on_task_start(model, 1)
    assert_hook_adds_autograd_penalty_gradient(mas, model)


def test_per_example_path_in_memory_chunks_equals_one_pass():
    """The torch.func path cut into chunks that fit its memory budget (here one example each) sums the same."""
    from clframework.strategies.mas import _per_example_batch

    torch.manual_seed(5)
    model = mlp(6, [3], hidden=(4,)).double()
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.randn(9, 6, dtype=torch.float64)
    whole, chunked = (_per_example_batch(model, params, x, None, 0, memory_mb=mb) for mb in (256, 0))
    assert all(torch.allclose(whole[n], chunked[n], rtol=1e-12, atol=0) and whole[n].abs().sum() > 0 for n in whole)
