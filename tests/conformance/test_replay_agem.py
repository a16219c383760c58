"""replay (memory of earlier tasks filled at task ends, joined by an equal-size sample) and A-GEM against reference
steps, through our Trainer, on the MLP and the BatchNorm ResNet, class- and task-IL.

A-GEM's reference is Mammoth's models/agem.py (aimagelab/mammoth 7ab9db97e3b5df6e1d9974468c7958f5c07696e1; the same
step at HEAD e75a491): the incoming gradient g, then the gradient g_ref of a memory sample's loss (its own forward
pass, BatchNorm in train mode), g replaced by g - (g.g_ref / g_ref.g_ref) g_ref when g.g_ref < 0; its memory is one
random batch of memory_size // n_tasks examples per finished task (our per_task option), ours by default every
example of each task offered to a reservoir. replay has no reference code of its own: its step is ER's loss layout
(Mammoth's er.py: one mean over the minibatch joined by a memory sample, one forward pass) with the episodic memory
of A-GEM's (filled at task ends), the sample as large as the minibatch.
"""
import pytest
import torch
import torch.nn.functional as F

from clframework import make_strategy

from .harness import RefBuffer, Reference, check, outputs

MEMORY = 10


def _heads(head, n):
    return torch.full((n,), head, dtype=torch.long)


class _Episodic(Reference):
    """A buffer offered each finished task's training examples (all, or `per_task` uniformly drawn, kept in order)."""

    def __init__(self, lr, memory=MEMORY, per_task=0):
        super().__init__(lr)
        self.buffer, self.per_task = RefBuffer(memory, self.draws), per_task

    def end_task(self, model, task):
        x, y = task.train_x, task.train_y
        if 0 < self.per_task < len(y):
            rows = torch.randperm(len(y), generator=self.draws)[:self.per_task].sort().values
            x, y = x[rows], y[rows]
        self.buffer.add(x=x, y=y, head=_heads(task.head, len(y)))

    def memory(self):
        return self.buffer.contents()


class ReplayReference(_Episodic):
    def observe(self, model, x, y, head):
        heads = _heads(head, len(y))
        if len(self.buffer):
            s = self.buffer.sample(len(y))
            x, y, heads = torch.cat([x, s["x"]]), torch.cat([y, s["y"]]), torch.cat([heads, s["head"]])
        self.sgd(model, F.cross_entropy(outputs(model, x, heads), y))


class AGEMReference(_Episodic):
    def __init__(self, lr, sample_size, per_task=0):
        super().__init__(lr, per_task=per_task)
        self.sample_size, self.projections, self.steps = sample_size, 0, 0

    def observe(self, model, x, y, head):
        params = list(model.parameters())
        F.cross_entropy(outputs(model, x, head), y).backward()
        if len(self.buffer):
            self.steps += 1
            flat = lambda: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                      for p in params])
            g = flat()
            memory = self.buffer.contents()
            if self.sample_size < len(self.buffer):  # else the whole memory (no draw, as ours)
                rows = self.buffer.sample_rows(self.sample_size)
                memory = {k: v[rows] for k, v in memory.items()}
            for p in params:
                p.grad = None
            F.cross_entropy(outputs(model, memory["x"], memory["head"]), memory["y"]).backward()
            g_ref = flat()
            dot = torch.dot(g, g_ref)
            if dot < 0:
                g = g - dot / torch.dot(g_ref, g_ref) * g_ref
                self.projections += 1
            start = 0
            for p in params:
                p.grad = g[start:start + p.numel()].view_as(p).clone()
                start += p.numel()
        self.sgd(model)


CASES = {
    "replay": (lambda: make_strategy("replay", memory_size=MEMORY), ReplayReference),
    "agem": (lambda: make_strategy("agem", memory_size=MEMORY, sample_size=4), lambda lr: AGEMReference(lr, 4)),
    "agem whole memory": (lambda: make_strategy("agem", memory_size=MEMORY, sample_size=64),
                          lambda lr: AGEMReference(lr, 64)),
    "agem per task": (lambda: make_strategy("agem", memory_size=MEMORY, sample_size=4, per_task=3),
                      lambda lr: AGEMReference(lr, 4, per_task=3)),
}


@pytest.mark.parametrize("model", ["mlp", "resnet"])
@pytest.mark.parametrize("setting", ["class", "task"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_conforms(name, model, setting):
    make_ours, make_reference = CASES[name]
    made = []
    ours, ref = check(make_ours, lambda lr: made.append(make_reference(lr)) or made[0], model, setting, epochs=2)
    sizes = [len(s.memory["y"]) for s in ref.snapshots]
    assert sizes == ([3, 6, 9] if name == "agem per task" else [MEMORY] * 3)
    if name.startswith("agem"):  # the test could tell a wrong projection: there were conflicts to project
        assert made[0].projections > 0
