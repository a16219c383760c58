"""A-GEM's projection (Eq. 11) against its defining optimisation problem, solved by a generic QP solver."""
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from clframework import make_strategy, mlp
from clframework.models import forward_heads
from clframework.strategies.agem import agem_project


def nearest_non_conflicting(g, r):
    """argmin_p ||p - g||^2 subject to p . r >= 0, by SLSQP (no closed form used)."""
    res = minimize(lambda p: ((p - g) ** 2).sum(), g.copy(), jac=lambda p: 2 * (p - g), method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda p: p @ r, "jac": lambda p: r}],
                   options={"ftol": 1e-14, "maxiter": 200})
    assert res.success, res.message
    return res.x


def test_projection_is_the_nearest_vector_with_non_negative_dot():
    gen = np.random.default_rng(0)
    conflicts = 0
    for _ in range(30):
        g, r = gen.normal(size=12), gen.normal(size=12)
        p = agem_project(torch.tensor(g), torch.tensor(r)).numpy()
        if g @ r >= 0:
            assert np.array_equal(p, g)  # no conflict: the gradient is kept
            continue
        conflicts += 1
        assert p @ r >= -1e-12
        assert np.allclose(p, nearest_non_conflicting(g, r), atol=1e-6)
    assert conflicts > 5


def test_projection_stays_finite_when_the_reference_gradient_is_tiny():
    """float32 g_ref . g_ref underflows to 0 for |g_ref| ~ 1e-25 (a well-learned memory): no inf or nan."""
    g = torch.tensor([1.0, -2.0, 0.5])
    r = torch.tensor([-3e-25, 1e-25, 2e-25])
    assert torch.dot(r, r) == 0 and torch.dot(g, r) < 0
    p = agem_project(g, r)
    g64, r64 = g.double(), r.double()
    expected = g64 - (g64 @ r64) / (r64 @ r64) * r64
    assert torch.isfinite(p).all() and torch.allclose(p.double(), expected, rtol=1e-6)


def test_step_applies_a_gradient_that_does_not_conflict_with_the_memory(mnist_stream):
    torch.manual_seed(0)
    model = mlp(784, mnist_stream.head_sizes, hidden=(16,))
    agem = make_strategy("agem", memory_size=50, sample_size=32)
    agem.on_task_end(model, mnist_stream[0].train, 0)
    agem.on_task_start(model, 1)
    task, params = mnist_stream[1], list(model.parameters())
    checked = conflicts = 0
    for i in range(0, 640, 64):
        x, y = task.train_x[i:i + 64], task.train_y[i:i + 64]
        F.cross_entropy(model(x, 1), y).backward()
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        state = agem.memory.generator.get_state()
        agem.on_before_step(model)
        agem.memory.generator.set_state(state)  # the same memory sample again, for an independent reference
        mx, my, mh = agem.memory.sample(32)
        ref = torch.autograd.grad(F.cross_entropy(forward_heads(model, mx, mh), my), params, allow_unused=True)
        r = torch.cat([(t if t is not None else torch.zeros_like(p)).flatten() for t, p in zip(ref, params)])
        applied = torch.cat([p.grad.flatten() for p in params])
        assert applied @ r >= -1e-5 * r.norm() * applied.norm()
        conflicts += int(g @ r < 0)
        expected = g if g @ r >= 0 else g - (g @ r) / (r @ r) * r
        assert torch.allclose(applied, expected, atol=1e-6)
        checked += 1
        with torch.no_grad():
            for p in params:
                p -= 0.5 * p.grad
                p.grad = None
    assert checked == 10 and conflicts >= 1
