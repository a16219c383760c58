"""MIR's mathematics (strategies/mir.py) against a brute-force float64 computation: the virtual SGD step, the
interference score (loss after the virtual step minus before) and the top-k retrieval, on a softmax regression whose
gradient is written out by hand. Its training step against the authors' code: tests/conformance/test_mir.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from clframework import make_strategy
from clframework.strategies.mir import interference, most_interfered, virtual_step


def _softmax_ce(W, b, x, label):
    """-log softmax(W x + b)[label], in plain Python floats."""
    z = [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(W, b)]
    m = max(z)
    return -(z[label] - m - math.log(sum(math.exp(v - m) for v in z)))


def _grad_by_hand(W, b, xs, ys):
    """d mean_n CE / dW = mean_n (p_n - e_{y_n}) x_n^T, d / db = mean_n (p_n - e_{y_n})."""
    C, D, n = len(W), len(W[0]), len(xs)
    gW, gb = [[0.0] * D for _ in range(C)], [0.0] * C
    for x, y in zip(xs, ys):
        z = [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(W, b)]
        m = max(z)
        e = [math.exp(v - m) for v in z]
        p = [v / sum(e) for v in e]
        for c in range(C):
            d = p[c] - (1.0 if c == y else 0.0)
            gb[c] += d / n
            for j in range(D):
                gW[c][j] += d * x[j] / n
    return gW, gb


def test_virtual_step_interference_and_retrieval_match_brute_force():
    g = torch.Generator().manual_seed(0)
    C, D, lr, k = 4, 5, 0.7, 3
    W, b = torch.randn(C, D, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    x, y = torch.randn(6, D, generator=g, dtype=torch.float64), torch.randint(0, C, (6,), generator=g)
    cx, cy = torch.randn(9, D, generator=g, dtype=torch.float64), torch.randint(0, C, (9,), generator=g)
    # ours: autograd's gradient, the virtual step, losses before and after, scores, top-k
    Wr, br = W.clone().requires_grad_(), b.clone().requires_grad_()
    F.cross_entropy(x @ Wr.T + br, y).backward()
    W2, b2 = virtual_step([W, b], [Wr.grad, br.grad], lr)
    pre = F.cross_entropy(cx @ W.T + b, cy, reduction="none")
    post = F.cross_entropy(cx @ W2.T + b2, cy, reduction="none")
    scores = interference(pre, post)
    picked = most_interfered(scores, k)
    # brute force
    Wl, bl = W.tolist(), b.tolist()
    gW, gb = _grad_by_hand(Wl, bl, x.tolist(), y.tolist())
    Wv = [[w - lr * d for w, d in zip(row, drow)] for row, drow in zip(Wl, gW)]
    bv = [v - lr * d for v, d in zip(bl, gb)]
    assert W2.flatten().tolist() == pytest.approx([v for row in Wv for v in row], abs=1e-12)
    assert b2.tolist() == pytest.approx(bv, abs=1e-12)
    brute = [_softmax_ce(Wv, bv, xi, yi) - _softmax_ce(Wl, bl, xi, yi) for xi, yi in zip(cx.tolist(), cy.tolist())]
    assert scores.tolist() == pytest.approx(brute, abs=1e-12)
    assert picked.tolist() == sorted(range(9), key=lambda i: -brute[i])[:k]


def test_a_parameter_without_gradient_stays_and_k_beyond_the_candidates_takes_them_all():
    p, q = torch.ones(3), torch.zeros(2)
    moved = virtual_step([p, q], [torch.full((3,), 2.0), None], 0.5)
    assert moved[0].tolist() == [0.0, 0.0, 0.0] and moved[1] is q
    assert most_interfered(torch.tensor([0.1, 0.3, 0.2]), 10).tolist() == [1, 2, 0]


def test_mir_takes_the_runs_learning_rate_unless_given(tmp_path):
    from clframework import RunConfig

    assert RunConfig("mir", "split-mnist-5k", lr=0.03).resolved()["hparams"]["virtual_lr"] == 0.03
    assert RunConfig("mir", "split-mnist-5k", hparams={"virtual_lr": 0.2}).resolved()["hparams"]["virtual_lr"] == 0.2
    assert make_strategy("mir").virtual_lr == 0.1  # a loop of one's own: the authors' lr unless given
