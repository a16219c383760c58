"""The per-layer closed-form exact Fisher (nn.Linear: sum_y p_y delta_y^2 times a^2, one matmul) equals the general
torch.func per-sample path, and models it does not cover fall back to that path."""
import pytest
import torch
from torch import nn

from clframework import mlp
from clframework.strategies.ewc import _closed_form_applies, _linear_owners, fisher_diagonal, fisher_seeds


class TiedTwice(nn.Module):
    """One Linear applied twice in a forward: its per-sample gradient is a sum of two outer products."""

    def __init__(self):
        super().__init__()
        self.inner, self.out = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x, head=0):
        return self.out(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


def batches(x, y, size=13):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_closed_form_equals_per_sample_on_multi_head_mlp(kind):
    torch.manual_seed(0)
    model = mlp(10, [3, 5], hidden=(8, 7), dropout=0.3).double()
    x, y = torch.randn(40, 10, dtype=torch.float64), torch.randint(0, 5, (40,))
    assert _closed_form_applies(model, {m for m, _ in _linear_owners(model, dict(model.named_parameters())).values()},
                                x, head=1)
    fast = fisher_diagonal(model, batches(x, y), head=1, kind=kind)
    slow = fisher_diagonal(model, batches(x, y), head=1, kind=kind, method="per-sample")
    assert_same(fast, slow)
    assert fast["heads.1.weight"].abs().sum() > 0 and fast["heads.0.weight"].abs().sum() == 0


@pytest.mark.parametrize("classes", [1, 2, 3, 7])
def test_fisher_seeds_factor_the_logit_gradient_covariance(classes):
    """sum_k v_k v_k^T equals sum_y p_y (e_y - p)(e_y - p)^T, written out label by label (float64)."""
    prob = torch.softmax(torch.randn(6, classes, dtype=torch.float64) * 3, dim=-1)
    seeds = fisher_seeds(prob)
    assert seeds.shape[1:] == (6, classes) and len(seeds) == (1 if classes == 2 else classes)
    for n in range(6):
        want = sum(prob[n, y] * torch.outer(torch.eye(classes, dtype=torch.float64)[y] - prob[n],
                                            torch.eye(classes, dtype=torch.float64)[y] - prob[n])
                   for y in range(classes))
        torch.testing.assert_close(sum(torch.outer(v[n], v[n]) for v in seeds), want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("head", [0, 1])  # two classes (one backward pass), three (one batched backward)
def test_closed_form_equals_per_sample_on_two_and_three_class_heads(head):
    torch.manual_seed(4)
    model = mlp(10, [2, 3], hidden=(8, 7)).double()
    x, y = torch.randn(30, 10, dtype=torch.float64), torch.randint(0, 2, (30,))
    assert_same(fisher_diagonal(model, batches(x, y), head=head),
                fisher_diagonal(model, batches(x, y), head=head, method="per-sample"))


def test_closed_form_respects_frozen_parameters():
    torch.manual_seed(1)
    model = mlp(10, [4], hidden=(6,)).double()
    model.trunk[1].weight.requires_grad_(False)
    x, y = torch.randn(20, 10, dtype=torch.float64), torch.randint(0, 4, (20,))
    fast = fisher_diagonal(model, batches(x, y))
    assert "trunk.1.weight" not in fast
    assert_same(fast, fisher_diagonal(model, batches(x, y), method="per-sample"))


def test_shared_layer_falls_back_to_per_sample():
    torch.manual_seed(2)
    model = TiedTwice().double()
    x, y = torch.randn(25, 6, dtype=torch.float64), torch.randint(0, 3, (25,))
    owners = _linear_owners(model, dict(model.named_parameters()))
    assert not _closed_form_applies(model, {m for m, _ in owners.values()}, x, 0)
    assert_same(fisher_diagonal(model, batches(x, y)), fisher_diagonal(model, batches(x, y), method="per-sample"))


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="per-sample"):
        fisher_diagonal(mlp(4, [2], hidden=(3,)), [(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))],
                        method="fast")



def test_strategy_option_selects_the_method_and_rejects_unknown_ones():
    from clframework import make_strategy

    with pytest.raises(ValueError, match="fisher_method"):
        make_strategy("ewc", fisher_method="fast")
    torch.manual_seed(3)
    model = mlp(10, [4], hidden=(6,)).double()
    x, y = torch.randn(30, 10, dtype=torch.float64), torch.randint(0, 4, (30,))
    fishers = []
    for method in ("auto", "per-sample"):
        ewc = make_strategy("ewc", fisher_method=method, fisher_batch_size=8)
        ewc.on_task_end(model, (x, y), head=0)
        fishers.append(ewc.fishers[0])
    assert_same(*fishers)
    assert all(f.abs().sum() > 0 for f in fishers[0].values())
