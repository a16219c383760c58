"""The harness itself: fine-tuning (naive) against plain SGD by hand conforms on both models and settings, and a
reference that differs in one thing (the learning rate, one memory draw) is caught."""
import pytest
import torch
import torch.nn.functional as F

from clframework import make_strategy

from .harness import RefBuffer, Reference, check, outputs


class NaiveReference(Reference):
    """Fine-tuning: cross-entropy on the incoming minibatch, one SGD step (Mammoth models/sgd.py, 7ab9db97)."""

    def observe(self, model, x, y, head):
        self.sgd(model, F.cross_entropy(outputs(model, x, head), y))


@pytest.mark.parametrize("model", ["mlp", "resnet"])
@pytest.mark.parametrize("setting", ["class", "task"])
def test_naive_conforms(model, setting):
    ours, ref = check(lambda: make_strategy("naive"), NaiveReference, model, setting)
    assert len(ours.snapshots) == 3 and ours.accuracy[0][0] >= 0.5  # it learned something (chance: 1/6 or 1/2)
    if model == "resnet":
        assert any("running_mean" in name for name in ours.snapshots[0].buffers)


def test_a_different_step_is_caught():
    with pytest.raises(AssertionError, match="parameter"):
        check(lambda: make_strategy("naive"), lambda lr: NaiveReference(lr * 1.001), "mlp")


def test_ref_buffer_is_algorithm_r_with_the_shared_draws():
    """The reference buffer against ours (strategies/memory.py) fed the same draws: the same slots, every step."""
    from clframework.strategies.memory import ReplayMemory

    ours, ref = ReplayMemory(5, seed=3), RefBuffer(5, torch.Generator().manual_seed(3))
    for step in range(6):
        x = torch.arange(4.0) + 4 * step
        ours.add(x, x.long(), torch.zeros(4, dtype=torch.long))
        ref.add(x=x, y=x.long())
        assert torch.equal(ours.stored()["x"], ref.contents()["x"])
        assert torch.equal(ours.draw_rows(3), ref.sample_rows(3))
