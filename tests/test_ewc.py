"""EWC's Fisher against a brute-force float64 loop over samples and labels; its penalty gradient against autograd."""
import pytest
import torch

from clframework import Trainer, make_strategy, mlp
from clframework.plugin import subset_rows
from penalty_check import assert_hook_adds_autograd_penalty_gradient
from clframework.strategies.ewc import EWC, ewc_penalty, ewc_penalty_grad, fisher_diagonal, weighted_anchor


def _brute_force_fisher(model, x, y, head, kind):
    params = list(model.parameters())
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    model.eval()
    for i in range(len(x)):
        logp = torch.log_softmax(model(x[i:i + 1], head), dim=-1)[0]
        labels = range(len(logp)) if kind == "exact" else [int(y[i])]
        for label in labels:
            grads = torch.autograd.grad(logp[label], params, retain_graph=True, allow_unused=True)
            weight = logp[label].exp().item() if kind == "exact" else 1.0
            for (n, _), g in zip(model.named_parameters(), grads):
                if g is not None:
                    out[n] += weight * g.pow(2)
    return {n: f / len(x) for n, f in out.items()}


@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_fisher_equals_brute_force_float64(kind):
    torch.manual_seed(0)
    model = mlp(10, [3, 4], hidden=(7, 5), dropout=0.5).double()  # dropout must be off: eval mode
    x, y = torch.randn(37, 10, dtype=torch.float64), torch.randint(0, 4, (37,))
    expected = _brute_force_fisher(model, x, y, 1, kind)
    model.train()
    # tiny memory budget: forces several chunks, so chunking is exercised too
    got = fisher_diagonal(model, [(x[:20], y[:20]), (x[20:], y[20:])], head=1, kind=kind, memory_mb=0)
    assert model.training  # restored
    for n, e in expected.items():
        assert torch.allclose(got[n], e, rtol=1e-6, atol=1e-12), n
    assert got["heads.0.weight"].abs().sum() == 0  # another task's head gets no Fisher


def test_exact_and_empirical_fisher_differ():
    torch.manual_seed(1)
    model = mlp(5, [3], hidden=(4,)).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    exact, emp = fisher_diagonal(model, [(x, y)], kind="exact"), fisher_diagonal(model, [(x, y)], kind="empirical")
    assert not torch.allclose(exact["heads.0.weight"], emp["heads.0.weight"])


def _set_two_past_tasks(ewc, model, online=False):
    for _ in range(2):
        for p in model.parameters():
            p.data += 0.3 * torch.randn_like(p)
        ewc.fishers.append({n: torch.rand_like(p) for n, p in model.named_parameters()})
        ewc.anchors.append({n: p.detach().clone() for n, p in model.named_parameters()})
    ewc._rebuild_sums()
    for p in model.parameters():
        p.data += 0.3 * torch.randn_like(p)


def test_penalty_gradient_equals_autograd():
    torch.manual_seed(2)
    model = mlp(6, [3], hidden=(5,)).double()
    ewc = EWC(ewc_lambda=3.5)
    _set_two_past_tasks(ewc, model)
    penalty = ewc.penalty_value(model)
    by_hand = sum(ewc_penalty(p, [a[n] for a in ewc.anchors], [f[n] for f in ewc.fishers], 3.5)
                  for n, p in model.named_parameters())
    assert torch.allclose(penalty, by_hand)
    assert_hook_adds_autograd_penalty_gradient(ewc, model)


def test_penalty_gradient_about_the_weighted_anchor_equals_autograd_over_tasks():
    """sum_t F_t (theta - theta*_t) = (sum_t F_t)(theta - weighted anchor), in float64, with Fisher zeros (one
    task's, every task's) where the penalty is flat."""
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(50, dtype=torch.float64, generator=gen, requires_grad=True)
    fishers = [torch.rand(50, dtype=torch.float64, generator=gen) for _ in range(3)]
    anchors = [torch.randn(50, dtype=torch.float64, generator=gen) for _ in range(3)]
    fishers[0][:10] = 0
    for f in fishers:
        f[40:] = 0
    (auto,) = torch.autograd.grad(ewc_penalty(theta, anchors, fishers, 2.5), theta)
    total = sum(fishers)
    centre = weighted_anchor(fishers, anchors, total)
    closed = ewc_penalty_grad(theta.detach(), total, centre, 2.5)
    assert torch.allclose(closed, auto, rtol=1e-12, atol=1e-14) and torch.equal(closed[40:], torch.zeros(10))


def test_hook_adds_exactly_zero_at_the_anchor_in_float32():
    """One term (one task, online EWC): the centre is theta* itself, so at theta = theta* the hook leaves every
    gradient as it is (Adam would turn any round-off into a full-size step on a weight with no gradient)."""
    torch.manual_seed(4)
    model = mlp(6, [3], hidden=(5,))
    ewc = EWC(ewc_lambda=123.0)
    ewc.fishers.append({n: torch.rand_like(p) * 10.0 ** torch.randint(-30, 3, p.shape) for n, p in
                        model.named_parameters()})
    ewc.anchors.append({n: p.detach().clone() for n, p in model.named_parameters()})
    ewc._rebuild_sums()
    assert all(torch.equal(ewc.centre[n], a) for n, a in ewc.anchors[0].items())
    grads = [torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    ewc.on_before_step(model)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_hook_adds_exactly_zero_on_weights_no_later_task_moved():
    """Three tasks; some weights have a Fisher only from the first (their inputs black in the later tasks' data) and
    stayed at its anchor: the centre is that anchor bit for bit there, and the hook adds exactly 0 to their
    gradients, although F theta* / F misses theta* on some of them in float32."""
    gen = torch.Generator().manual_seed(8)
    n = 20000
    moved = torch.rand(n, generator=gen) < 0.5
    fishers = [torch.rand(n, generator=gen) * 10.0 ** torch.randint(-20, 3, (n,), generator=gen) for _ in range(3)]
    anchors = [torch.randn(n, generator=gen)]
    for t in (1, 2):
        fishers[t][~moved] = 0
        anchors.append(torch.where(moved, torch.randn(n, generator=gen), anchors[0]))
    assert ((fishers[0] * anchors[0]) / fishers[0] != anchors[0])[~moved].any()  # the quotient form would miss
    ewc = EWC(ewc_lambda=50.0)
    ewc.fishers = [{"w": f} for f in fishers]
    ewc.anchors = [{"w": a} for a in anchors]
    ewc._rebuild_sums()
    assert torch.equal(ewc.centre["w"][~moved], anchors[0][~moved])
    weight = torch.nn.Parameter(anchors[2].clone())
    weight.grad = torch.randn(n, generator=gen)
    grad = weight.grad.clone()
    ewc._params = {"w": weight}
    ewc.on_before_step(None)
    assert torch.equal(weight.grad[~moved], grad[~moved]) and not torch.equal(weight.grad[moved], grad[moved])


def _copy(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


def test_online_ewc_keeps_one_decayed_term(mnist_stream):
    torch.manual_seed(0)
    model = mlp(784, mnist_stream.head_sizes, hidden=(32,))
    ewc = make_strategy("ewc", online=True, gamma=0.5, fisher_samples=64)
    trainer = Trainer(model, ewc, epochs=1, quiet=True)
    trainer.train_task(mnist_stream[0], 0)
    first = {n: f.clone() for n, f in ewc.fishers[0].items()}
    rows = subset_rows(len(mnist_stream[1].train_y), 64, _copy(ewc.generator))  # the subset EWC will draw
    trainer.train_task(mnist_stream[1], 1)
    assert len(ewc.fishers) == 1 and len(ewc.anchors) == 1
    new = fisher_diagonal(model, [(mnist_stream[1].train_x[rows], mnist_stream[1].train_y[rows])], head=1)
    for n in first:
        assert torch.allclose(ewc.fishers[0][n], new[n] + 0.5 * first[n], rtol=1e-5, atol=1e-9)


def test_fisher_samples_caps_inputs(mnist_stream):
    model = mlp(784, mnist_stream.head_sizes, hidden=(16,))
    ewc = make_strategy("ewc", fisher_samples=10)
    rows = subset_rows(len(mnist_stream[0].train_y), 10, _copy(ewc.generator))
    ewc.on_task_end(model, mnist_stream[0], head=0)
    assert len(rows) == 10
    direct = fisher_diagonal(model, [(mnist_stream[0].train_x[rows], mnist_stream[0].train_y[rows])], head=0)
    for n, f in direct.items():
        assert torch.allclose(ewc.fishers[0][n], f, rtol=1e-5, atol=1e-10)
