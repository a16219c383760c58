"""A-GEM's projection (Eq. 11) against its defining optimisation problem, solved by a generic QP solver."""
import copy

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
        applied = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        assert applied @ r >= -1e-5 * r.norm() * applied.norm()
        conflicts += int(g @ r < 0)
        expected = g if g @ r >= 0 else g - (g @ r) / (r @ r) * r
        assert torch.allclose(applied, expected, atol=1e-6)
        checked += 1
        with torch.no_grad():
            for p in params:
                if p.grad is not None:  # None: neither the minibatch nor the memory reached it
                    p -= 0.5 * p.grad
                p.grad = None
    assert checked == 10 and conflicts >= 1


def _closed_form(g, r):
    """Eq. 11 in float64 from the float32 inputs."""
    g64, r64 = g.double(), r.double()
    dot = g64 @ r64
    return g64 - dot / (r64 @ r64) * r64 if dot < 0 else g64


def test_projection_of_a_denormal_reference_gradient_matches_float64():
    """A learned memory gives cross-entropy gradients ~1e-40 (float32 denormals, most entries 0): the ratio
    g . g_ref / g_ref . g_ref is then beyond float32's range even in float64, and inf * 0 was NaN (the 10-epoch
    split Fashion-MNIST run diverged so). The projection must stay the float64 closed form."""
    gen = torch.Generator().manual_seed(0)
    n = 4000
    r = torch.randn(n, generator=gen, dtype=torch.float64) * 1e-41
    r[torch.rand(n, generator=gen) < 0.75] = 0  # flushed to zero, as in the diverged run (203,443 of 267,780)
    r = r.float()
    g = torch.randn(n, generator=gen) * 0.02 - (1e40 * r.double()).float()  # |g| ~ 3 and g . g_ref < 0
    assert 0 < r.abs().max() < torch.finfo(torch.float32).tiny  # denormal
    g64, r64 = g.double(), r.double()
    assert g64 @ r64 < 0 and abs((g64 @ r64) / (r64 @ r64)) > torch.finfo(torch.float32).max
    p = agem_project(g, r)
    expected = _closed_form(g, r)
    assert torch.isfinite(p).all()
    assert torch.allclose(p.double(), expected, rtol=1e-5, atol=1e-6 * g64.norm().item())
    assert abs(p.double() @ r64) <= 1e-5 * p.double().norm() * r64.norm()  # no conflict left


def test_per_parameter_lists_equal_the_flat_projection():
    """g and g_ref given per parameter, None for a parameter one of them did not reach (zeros), as the strategy
    passes them: the same vectors as the flat closed form, None only where both are None."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (4,), (2, 3), (5,)]
    for trial in range(20):
        g = [torch.randn(s, generator=gen) for s in shapes]
        r = [torch.randn(s, generator=gen) * (1e-41 if trial % 2 else 1.0) for s in shapes]
        g[2], r[3] = None, None  # the minibatch missed parameter 2, the memory parameter 3
        flat_g = torch.cat([(t if t is not None else torch.zeros(s)).reshape(-1) for t, s in zip(g, shapes)])
        flat_r = torch.cat([(t if t is not None else torch.zeros(s)).reshape(-1) for t, s in zip(r, shapes)])
        out = agem_project(g, r)
        assert out[3] is g[3] and out[2] is not None and [t.shape for t in out] == [torch.Size(s) for s in shapes]
        assert torch.allclose(torch.cat([t.reshape(-1) for t in out]).double(), _closed_form(flat_g, flat_r),
                              rtol=1e-5, atol=1e-6)
    assert agem_project([None, torch.ones(2)], [None, None])[0] is None


def test_step_stays_finite_when_the_memory_is_learned(mnist_stream):
    """The divergence at step level: one head, its weights 0 and biases +-50, so every stored example (class 0) has
    probability 1 - e^-100 and the memory's float32 gradient is denormal (~1e-45: in float32 it loses its direction);
    the minibatch (class 1) conflicts with it. The applied gradient is finite and the closed form of the float64
    gradients."""
    torch.manual_seed(0)
    model = mlp(784, [2], hidden=(16,))
    with torch.no_grad():
        model.heads[0].weight.zero_()
        model.heads[0].bias.copy_(torch.tensor([50.0, -50.0]))
    x = mnist_stream[0].train_x[:40]
    mem_y, batch_y = torch.zeros(32, dtype=torch.long), torch.ones(8, dtype=torch.long)
    agem = make_strategy("agem", memory_size=32, sample_size=64)
    agem.on_task_end(model, (x[:32], mem_y), 0)
    twin = copy.deepcopy(model).double()  # the independent computation, in float64
    g64 = torch.cat([t.flatten() for t in torch.autograd.grad(F.cross_entropy(twin(x[32:].double(), 0), batch_y),
                                                              list(twin.parameters()))])
    r64 = torch.cat([t.flatten() for t in torch.autograd.grad(F.cross_entropy(twin(x[:32].double(), 0), mem_y),
                                                              list(twin.parameters()))])
    r32 = torch.cat([t.flatten() for t in torch.autograd.grad(F.cross_entropy(model(x[:32], 0), mem_y),
                                                              list(model.parameters()))])
    assert r32.abs().max() < torch.finfo(torch.float32).tiny and g64 @ r64 < 0  # denormal, and a conflict
    F.cross_entropy(model(x[32:], 0), batch_y).backward()
    agem.on_before_step(model)
    applied = torch.cat([p.grad.flatten() for p in model.parameters()])
    expected = g64 - (g64 @ r64) / (r64 @ r64) * r64
    assert torch.isfinite(applied).all()
    assert torch.allclose(applied.double(), expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def test_reference_gradient_of_a_multi_head_memory_decoded_once_per_task(mnist_stream):
    """The whole memory (sample_size >= its size) over two earlier heads, stored as uint8 and decoded by the task's
    decode: the applied gradient is the closed form of the memory's mean loss through each row's own head
    (forward_heads, float64), and the decoding runs once per task, not per step; an augmentation (any other
    `prepare`) still runs per step."""
    from clframework.benchmarks.stream import Normalize, Task
    from clframework.plugin import Batch

    calls = []

    class Counted(Normalize):
        def __call__(self, raw):
            calls.append(len(raw))
            return super().__call__(raw)

    decode = Counted()
    pixels = [(t.train_x[:60] * 255).round().to(torch.uint8) for t in mnist_stream]
    tasks = [Task(f"t{h}", px[:30], t.train_y[:30], px[30:], t.train_y[30:60], t.classes, h, decode=decode)
             for h, (px, t) in enumerate(zip(pixels, mnist_stream))]
    torch.manual_seed(0)
    model = mlp(784, [2, 2, 2], hidden=(16,))
    for augment in (None, lambda x: x.flip(-1)):
        prepare = decode if augment is None else (lambda raw: augment(decode(raw)))
        agem = make_strategy("agem", memory_size=40, sample_size=256)
        for h, task in enumerate(tasks):
            agem.on_before_forward(model, Batch(decode(task.examples("train").raw()[:8]), task.train_y[:8], h,
                                                prepare=prepare))
            agem.on_task_end(model, task, h)
        mx, my, mh = agem.memory.contents()
        assert len(my) == 40 and set(mh.tolist()) == {0, 1}
        batch_x, batch_y = tasks[1].train_x, tasks[1].train_y
        calls.clear()
        for step in range(3):
            params = list(model.parameters())
            for p in params:
                p.grad = None
            x, y = batch_x[8 * step:8 * step + 8], batch_y[8 * step:8 * step + 8]
            F.cross_entropy(model(x, 2), y).backward()
            g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
            agem.on_before_step(model)
            twin = copy.deepcopy(model).double()
            inputs = prepare(mx).double()
            ref = torch.autograd.grad(F.cross_entropy(forward_heads(twin, inputs, mh), my), list(twin.parameters()),
                                      allow_unused=True)
            r = torch.cat([(t if t is not None else torch.zeros_like(p)).flatten() for t, p in zip(ref, params)])
            applied = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
            g64 = g.double()
            expected = g64 - min(g64 @ r, 0) / (r @ r) * r
            assert torch.allclose(applied.double(), expected, rtol=1e-4, atol=1e-6)
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= 0.5 * p.grad
        memory_decodes = len(calls) - 3  # less the three of the independent computation above
        assert memory_decodes == (1 if augment is None else 3), calls


def test_without_a_conflict_g_stands_and_a_parameter_only_the_memory_reached_gets_zeros():
    """g . g_ref >= 0 (on the CPU the projection is skipped then): g unchanged, zeros (not None) where only g_ref
    reached, so Adam steps those parameters as it would on the projection's zeros."""
    g = [torch.tensor([1.0, -2.0]), None, torch.tensor([0.5])]
    r = [torch.tensor([3.0, 1.0]), torch.tensor([4.0, 5.0]), None]
    out = agem_project(g, r)
    assert torch.equal(out[0], g[0]) and torch.equal(out[1], torch.zeros(2)) and out[2] is g[2]
    conflict = agem_project([torch.tensor([-1.0, 0.0])], [torch.tensor([1.0, 0.0])])
    assert torch.equal(conflict[0], torch.zeros(2))  # g - (g . r / r . r) r


def test_both_ways_of_the_projection_give_the_float64_closed_form():
    """On the CPU the projection comes from g . g_ref and g_ref . g_ref as they are; the scaled way (g_ref divided
    by its largest |element|, a GPU's and the fallback) must give the same vectors, both the float64 closed form."""
    from clframework.strategies.agem import _project_scaled, _project_unscaled

    gen = torch.Generator().manual_seed(5)
    shapes = [(30, 20), (30,), (2, 30), (2,)]
    conflicts = 0
    for trial in range(40):
        g = [torch.randn(s, generator=gen) for s in shapes[:2]] + [None, None]
        r = [torch.randn(s, generator=gen) * 1e14 for s in shapes]  # REF_SCALE-sized, as the strategy gives
        both = [0, 1]
        unscaled, scaled = _project_unscaled(g, r, both), _project_scaled(g, r, both)
        flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])
        flat_g = flat([t if t is not None else torch.zeros(s) for t, s in zip(g, shapes)])
        expected = _closed_form(flat_g, flat(r))
        conflicts += int(flat_g.double() @ flat(r).double() < 0)
        for out in (unscaled, scaled):
            assert torch.allclose(flat(out).double(), expected, rtol=1e-5, atol=1e-6 * flat_g.abs().max().item())
    assert 5 < conflicts < 35


def test_a_reference_gradient_whose_squared_norm_overflows_float32_takes_the_scaled_way():
    """|g_ref| ~ 1e20 (g_ref . g_ref = inf in float32): the unscaled way declines, and the result is still the
    float64 closed form."""
    from clframework.strategies.agem import _project_unscaled

    gen = torch.Generator().manual_seed(6)
    g, r = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen) * 1e20
    g = g - 2 * (g @ r) / (r @ r) * r if g @ r > 0 else g  # a conflict
    assert torch.isinf(r @ r) and torch.isfinite(g @ r) and g @ r < 0
    assert _project_unscaled([g], [r], [0]) is None
    p = agem_project(g, r)
    assert torch.allclose(p.double(), _closed_form(g, r), rtol=1e-5, atol=1e-6)


def test_grouped_loss_gives_the_gradient_of_the_parts_losses_bit_for_bit():
    """Heads of one width: one cross-entropy over the concatenated outputs, whose gradient must equal, bit for bit,
    that of the sum of each part's summed cross-entropy (the trunk run once on all rows, as both do); heads of other
    widths: that sum itself. Both equal the mean loss of `forward_heads` (-inf padding) to rounding."""
    from clframework.strategies.agem import grouped_loss

    torch.manual_seed(7)
    model = mlp(12, [2, 2, 3], hidden=(9,))
    params = list(model.parameters())
    x, y = torch.randn(20, 12), torch.randint(0, 2, (20,))
    for groups in ([(0, 0, 8), (1, 8, 20)], [(0, 0, 8), (2, 8, 20)]):
        got = torch.autograd.grad(grouped_loss(model, x, y, groups), params, allow_unused=True)
        features = model.trunk(x)
        parts = [F.cross_entropy(model.heads[h](features[a:b]), y[a:b], reduction="sum") for h, a, b in groups]
        want = torch.autograd.grad((parts[0] + parts[1]) / len(y), params, allow_unused=True)
        heads = torch.cat([torch.full((b - a,), h) for h, a, b in groups])
        padded = torch.autograd.grad(F.cross_entropy(forward_heads(model, x, heads), y), params, allow_unused=True)
        for g, w, p in zip(got, want, padded):
            assert (g is None) == (w is None) == (p is None)
            if g is not None:
                assert torch.equal(g, w)
                assert torch.allclose(g, p, rtol=1e-5, atol=1e-7)


def test_a_ratio_beyond_float32_takes_the_scaled_way():
    """g . g_ref / g_ref . g_ref = -1e39 (a huge g, a small g_ref): not a float32, so the unscaled way declines and
    the projection (here g's whole component along g_ref removed) stays finite."""
    g, r = torch.tensor([-1e36, 3.0]), torch.tensor([1e-3, 0.0])
    p = agem_project(g, r)
    assert torch.isfinite(p).all() and torch.allclose(p.double(), _closed_form(g, r), rtol=1e-6)
