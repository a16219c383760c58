"""Metrics against matrices computed by hand (values worked out in the comments), with the edge cases."""
import numpy as np
import pytest
import torch

from clframework.evaluation import metrics as M

# R[i][j]: accuracy on task j after training tasks 0..i; b: the untrained model's accuracies.
R = [[0.9, 0.1, 0.2],
     [0.6, 0.8, 0.3],
     [0.5, 0.7, 0.95]]
B = [0.1, 0.2, 0.25]


def test_hand_computed_three_tasks():
    assert M.acc(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert M.bwt(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)            # -0.25
    assert M.fwt(R, B) == pytest.approx(((0.1 - 0.2) + (0.3 - 0.25)) / 2)         # -0.025
    assert M.forgetting(R) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)      # 0.25
    assert M.average_seen(R) == pytest.approx([0.9, (0.6 + 0.8) / 2, (0.5 + 0.7 + 0.95) / 3])
    s = M.summary(R, B)
    assert s == {"acc": M.acc(R), "bwt": M.bwt(R), "forgetting": M.forgetting(R), "fwt": M.fwt(R, B)}
    assert "fwt" not in M.summary(R)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    # task 0 improves while task 1 trains (0.5 -> 0.9), then drops to 0.7: BWT sees +0.2, forgetting sees 0.2
    R2 = [[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.7, 0.8, 1.0]]
    assert M.bwt(R2) == pytest.approx(((0.7 - 0.5) + (0.8 - 0.8)) / 2)
    assert M.forgetting(R2) == pytest.approx(((0.9 - 0.7) + (0.8 - 0.8)) / 2)


def test_one_task():
    assert M.acc([[0.8]]) == 0.8
    assert M.bwt([[0.8]]) == 0.0 and M.fwt([[0.8]], [0.5]) == 0.0 and M.forgetting([[0.8]]) == 0.0
    assert M.average_seen([[0.8]]) == [0.8]


def test_perfect_retention():
    T = 4
    Rp = np.tril(np.ones((T, T))) + np.triu(np.full((T, T), 0.5), 1)  # 1 on seen tasks, chance 0.5 on unseen
    assert M.acc(Rp) == 1.0 and M.bwt(Rp) == 0.0 and M.forgetting(Rp) == 0.0
    assert M.average_seen(Rp) == [1.0] * T
    assert M.fwt(Rp, [0.5] * T) == 0.0


def test_total_forgetting():
    T = 3
    Rf = np.eye(T)  # each task perfect right after training it, zero once the next one is trained
    assert M.acc(Rf) == pytest.approx(1 / T)
    assert M.bwt(Rf) == -1.0 and M.forgetting(Rf) == 1.0
    assert M.average_seen(Rf) == pytest.approx([1.0, 0.5, 1 / 3])


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="square"):
        M.acc([[0.1, 0.2]])
    with pytest.raises(ValueError, match="one accuracy per task"):
        M.fwt(R, [0.5, 0.5])


def test_omega_correlations_per_layer():
    a = torch.tensor([[1.0, 2.0], [0.0, 5.0]])
    history = [
        {"w": a, "bias": torch.tensor([1.0, 2.0]), "head0": torch.ones(2, 2) + torch.eye(2)},
        {"w": 2 * a + 1, "bias": torch.tensor([3.0, 1.0]), "head0": torch.zeros(2, 2)},  # head idle: left out
        {"w": -a, "bias": torch.tensor([0.0, 1.0]), "head0": torch.zeros(2, 2)},
    ]
    C = M.omega_correlations(history)
    assert list(C) == ["w"]  # 1-D biases and a head with no omega on some task are not layers here
    # a linear map with positive slope correlates +1, a negation -1
    assert np.allclose(C["w"], [[1, 1, -1], [1, 1, -1], [-1, -1, 1]])
    assert M.omega_correlations([]) == {}
