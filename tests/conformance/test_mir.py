"""MIR's training step against a reference written from the authors' code, through the conformance harness (float64,
same weights, minibatches and memory draws; MLP and a BatchNorm ResNet; class- and task-incremental)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from clframework import make_strategy

from .harness import RefBuffer, Reference, check, outputs


class MIRReference(Reference):
    """ER-MIR's step as written in optimass/Maximally_Interfered_Retrieval, mir.py `retrieve_replay_update` with
    er_main.py's loop (commit 35eda78bcdd35025b16b0b1039a926d34aad4851; `get_future_step_parameters` and
    `get_grad_vector` in utils.py): the incoming cross-entropy (sum / n) is back-propagated; a deep copy of the model
    takes p - lr * grad; `subsample` buffer examples are scored, both forward passes in training mode under no_grad,
    by CE after minus CE before (reduction none); the `buffer_batch_size` highest (sort, descending) are replayed in a
    forward pass of their own, their mean CE back-propagated onto the same gradients; one optimizer step; then the
    incoming minibatch is offered to the reservoir. Task-free form: replay whenever the buffer holds examples (theirs
    waits for task 1 and excludes the current task's examples, which needs task labels)."""

    highest = True  # replay the highest scores (False: the lowest, to show the comparison sees the retrieval)

    def __init__(self, lr, memory_size, minibatch_size, subsample):
        super().__init__(lr)
        self.buffer = RefBuffer(memory_size, self.draws)
        self.k, self.subsample = minibatch_size, subsample
        self.retrievals = 0

    def observe(self, model, x, y, head):
        logits = outputs(model, x, head)
        loss_a = F.cross_entropy(logits, y, reduction="none")
        for p in model.parameters():
            p.grad = None
        (loss_a.sum() / loss_a.size(0)).backward()
        if len(self.buffer):
            rows = self.buffer.sample_rows(self.subsample)
            bx, by, bh = (self.buffer.fields[k][rows] for k in ("x", "y", "head"))
            heads = head if bool((bh == head).all()) and self.single else bh
            temp = copy.deepcopy(model)
            with torch.no_grad():
                for q, p in zip(temp.parameters(), model.parameters()):
                    if p.grad is not None:
                        q.data = q.data - self.lr * p.grad.data
                pre = F.cross_entropy(outputs(model, bx, heads), by, reduction="none")
                post = F.cross_entropy(outputs(temp, bx, heads), by, reduction="none")
                big = (post - pre).sort(descending=self.highest)[1][:self.k]
            F.cross_entropy(outputs(model, bx[big], heads if isinstance(heads, int) else heads[big]),
                            by[big]).backward()
            self.retrievals += 1
        self.sgd(model)
        self.buffer.add(x=x, y=y, head=torch.full_like(y, head))

    def begin_task(self, model, t, task):
        super().begin_task(model, t, task)
        self.heads = getattr(self, "heads", set()) | {task.head}
        self.single = len(self.heads) == 1

    def memory(self):
        return self.buffer.contents()


HP = {"memory_size": 10, "minibatch_size": 3, "subsample": 6}


@pytest.mark.parametrize("model", ["mlp", "resnet"])
@pytest.mark.parametrize("setting", ["class", "task"])
def test_mir_conforms(model, setting):
    ref_holder = {}

    def reference(lr):
        ref_holder["ref"] = MIRReference(lr, **HP)
        return ref_holder["ref"]

    ours, ref = check(lambda: make_strategy("mir", **HP), reference, model, setting)
    assert ref_holder["ref"].retrievals > 10  # the retrieval ran (and candidates outnumbered the replayed ones)


def test_a_retrieval_of_the_least_interfered_is_caught():
    """The same reference picking the lowest scores instead differs: the comparison sees the retrieval."""

    class Lowest(MIRReference):
        highest = False

    with pytest.raises(AssertionError):
        check(lambda: make_strategy("mir", **HP), lambda lr: Lowest(lr, **HP), "mlp")
