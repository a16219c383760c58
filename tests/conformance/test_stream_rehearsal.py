"""ER, DER, DER++ and ER-ACE against reference steps written from their reference code, through our Trainer, on the
MLP (no BatchNorm: our joined forward pass) and the BatchNorm ResNet (our separate passes), class- and task-IL.

References read (aimagelab/mammoth, models/ and utils/buffer.py): er.py, der.py, derpp.py at the DER paper's commit
7ab9db97e3b5df6e1d9974468c7958f5c07696e1 (unchanged in what they compute at HEAD e75a491c69fd729edeb01431afb753d9157d9a81);
er_ace.py at HEAD e75a491 (the X-DER commit 0d727a7 differs only in a corner case of the mask, docs/fidelity.md) and
the authors' pclucas14/AML methods/er_ace.py at 7c92936. Each reference below is our own code of their step.
"""
import pytest
import torch
import torch.nn.functional as F

from clframework import make_strategy
from clframework.plugin import Batch

from .harness import RefBuffer, Reference, check, make_model, make_stream, outputs

MEMORY, MINIBATCH = 10, 3


class _Replaying(Reference):
    def __init__(self, lr, memory=MEMORY, minibatch=MINIBATCH):
        super().__init__(lr)
        self.buffer, self.k = RefBuffer(memory, self.draws), minibatch

    def memory(self):
        return self.buffer.contents()

    @staticmethod
    def heads(head, n):
        return torch.full((n,), head, dtype=torch.long)


class ERReference(_Replaying):
    """Mammoth er.py observe(): the memory sample concatenated to the inputs, one forward pass, one mean; the incoming
    examples offered to the buffer after the step."""

    def observe(self, model, x, y, head):
        heads, n = self.heads(head, len(y)), len(y)
        if len(self.buffer):
            s = self.buffer.sample(self.k)
            x, y, heads = torch.cat([x, s["x"]]), torch.cat([y, s["y"]]), torch.cat([heads, s["head"]])
        self.sgd(model, F.cross_entropy(outputs(model, x, heads), y))
        self.buffer.add(x=x[:n], y=y[:n], head=heads[:n])


class DERReference(_Replaying):
    """Mammoth der.py / derpp.py observe(): net(inputs) alone; then per memory sample its own forward pass: alpha *
    mse(net(buf_inputs), buf_logits), and for DER++ a second, independent sample's beta * CE; the buffer stores the
    incoming pass's outputs (before the step)."""

    def __init__(self, lr, alpha, beta=0.0):
        super().__init__(lr)
        self.alpha, self.beta = alpha, beta

    def observe(self, model, x, y, head):
        out = outputs(model, x, head)
        loss = F.cross_entropy(out, y)
        if len(self.buffer):
            s = self.buffer.sample(self.k)
            loss = loss + self.alpha * F.mse_loss(outputs(model, s["x"], s["head"]), s["logits"])
            if self.beta:
                s = self.buffer.sample(self.k)
                loss = loss + self.beta * F.cross_entropy(outputs(model, s["x"], s["head"]), s["y"])
        self.sgd(model, loss)
        self.buffer.add(x=x, y=y, head=self.heads(head, len(y)), logits=out.detach())


class ERACEReference(_Replaying):
    """Mammoth er_ace.py observe() (AML methods/er_ace.py process_inc the same): seen_so_far grows by the labels
    present; the incoming logits keep the present classes and every output from seen_so_far.max() on (masked with
    -1e9), from the second task on or task-free; the replay CE on a sample's unmasked logits, from the second task on
    or task-free."""

    def __init__(self, lr, task_free=False):
        super().__init__(lr)
        self.task_free, self.seen = task_free, torch.zeros(0, dtype=torch.long)

    def observe(self, model, x, y, head):
        present = y.unique()
        self.seen = torch.cat([self.seen, present]).unique()
        logits = outputs(model, x, head)
        mask = torch.zeros_like(logits)
        mask[:, present] = 1
        mask[:, self.seen.max():] = 1
        asymmetric = self.task > 0 or self.task_free
        if asymmetric:
            logits = logits.masked_fill(mask == 0, -1e9)
        loss = F.cross_entropy(logits, y)
        if len(self.buffer) and asymmetric:
            s = self.buffer.sample(self.k)
            loss = loss + F.cross_entropy(outputs(model, s["x"], s["head"]), s["y"])
        self.sgd(model, loss)
        self.buffer.add(x=x, y=y, head=self.heads(head, len(y)))


CASES = {
    "er": (lambda: make_strategy("er", memory_size=MEMORY, minibatch_size=MINIBATCH), ERReference),
    "der": (lambda: make_strategy("der", memory_size=MEMORY, minibatch_size=MINIBATCH, alpha=0.3),
            lambda lr: DERReference(lr, 0.3)),
    "derpp": (lambda: make_strategy("derpp", memory_size=MEMORY, minibatch_size=MINIBATCH, alpha=0.3, beta=0.5),
              lambda lr: DERReference(lr, 0.3, 0.5)),
    "er_ace": (lambda: make_strategy("er_ace", memory_size=MEMORY, minibatch_size=MINIBATCH), ERACEReference),
    "er_ace task-free": (lambda: make_strategy("er_ace", memory_size=MEMORY, minibatch_size=MINIBATCH,
                                               task_free=True), lambda lr: ERACEReference(lr, task_free=True)),
}


@pytest.mark.parametrize("model", ["mlp", "resnet"])
@pytest.mark.parametrize("setting", ["class", "task"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_conforms(name, model, setting):
    ours, ref = check(*CASES[name], model, setting)
    stored = ours.snapshots[-1].memory
    assert len(stored["y"]) == MEMORY and ref.snapshots[0].memory["x"].shape[0] == MEMORY  # replacement happened
    if name.startswith("der"):
        assert "logits" in ref.snapshots[-1].memory


def test_the_joined_pass_is_taken_only_without_batchnorm():
    """The fast path is decided once per task from the model: BatchNorm -> separate passes."""
    for kind, separate in (("mlp", False), ("resnet", True)):
        stream = make_stream("class", image=kind != "mlp")
        model, der = make_model(kind, stream), make_strategy("der", memory_size=MEMORY, minibatch_size=MINIBATCH)
        der.on_task_start(model, 0)
        task = stream.tasks[0]
        for _ in range(2):
            batch = der.on_before_forward(model, Batch(task.train_x[:4], task.train_y[:4], 0))
            batch.out = der.forward(model, batch)
            der.offer["logits"] = batch.out[:4].detach()
            der.on_after_step(model)
        assert der._separate is separate and len(der.rows) == 2


@pytest.mark.slow
def test_derpp_conforms_on_reduced_resnet18():
    """The protocol's reduced ResNet-18 itself (20 base filters, 16 px; about 0.2 s a step in float64 on one thread,
    so two tasks of 8 examples): DER++ has the most forward passes per step (3 under BatchNorm)."""
    check(*CASES["derpp"], "reduced_resnet18", "class", train_per_class=4, n_tasks=2)
