"""Conformance of the regularization family and the bounds (naive, EWC, SI, MAS, LwF, cumulative, joint): each
strategy runs through our Trainer side by side with a reference step written here from the paper and the authors'
code (tests/conformance/harness.py: same initial weights, same minibatches), over three tasks, in float64, on the
MLP, the tiny BatchNorm ResNet and (slow) reduced_resnet18 at 16 px, class- and task-incremental. Asserted equal to
1e-6: every parameter and BatchNorm running statistic after every task, the accuracy matrices (class-IL and task-IL)
scored after every task, and each method's importance tensors (Fisher, Omega, path integrals, anchors).

The reference steps share nothing with the strategies but the model's modules: a hand-written SGD step, penalties
written as losses and differentiated by autograd (ours add closed-form gradients in place), importances computed
example by example with explicit loops (ours: per-layer closed forms or torch.func), distillation targets recorded
once per task from the frozen network (ours: the teacher's forward on each minibatch).

References read (each reference step below names its own):
- SI: ganguli-lab/pathint @ 86c5e07 (pathint/protocols.py PATH_INT_PROTOCOL, pathint/optimizers.py, regularizers.py).
- EWC: Kirkpatrick et al. 2017 (no authors' code): the Fisher information's definition, penalty (lambda/2) F d^2.
- MAS: rahafaljundi/MAS-Memory-Aware-Synapses @ c3e6a855 (MAS_utils/MAS_based_Training.py compute_importance_l2,
  MAS_Omega_update, Weight_Regularized_SGD; MAS.py update_weights_params with b1=True, one example per update).
- LwF: lizhitwo/LearningWithoutForgetting @ 795176d4 (vl_nnsoftmaxdiff.m, mode 'MI', multiclass); for the class-
  incremental single head, the old classes' columns as Mammoth's models/lwf.py (aimagelab/mammoth @ 7ab9db97).
- naive, joint: Mammoth models/sgd.py and models/joint.py @ 7ab9db97; cumulative: its definition.
"""
from __future__ import annotations

import copy
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F

from clframework import make_strategy

from .harness import Reference, check, outputs

LRS = {"sgd": 0.1, "adam": 0.05}  # Adam: the SI paper's optimizer (pathint's runs: optadam)
TOL = dict(rtol=1e-6, atol=1e-6)
BATCH = 6  # 16 training rows a task: a short last minibatch every epoch
# (model, setting): the MLP and the tiny BatchNorm ResNet in both settings; the real reduced_resnet18 (16 px) in the
# task setting, slow (a few seconds a test on one CPU thread in float64)
CASES = [("mlp", "class"), ("mlp", "task"), ("resnet", "class"), ("resnet", "task"), ("reduced_resnet18", "task")]


def cases(extra=(), where=lambda case: True):
    return [pytest.param(*c, *extra, marks=[pytest.mark.slow] if c[0] == "reduced_resnet18" else [])
            for c in CASES if where(c)]


def params_of(model) -> Dict[str, torch.Tensor]:
    return dict(model.named_parameters())


class Step(Reference):
    """Fine-tuning (Mammoth models/sgd.py @ 7ab9db97: forward, cross-entropy, backward, step); the methods below add
    their terms. The step is written out: plain SGD (p <- p - lr g), or Adam (Kingma & Ba 2015, Algorithm 1, torch's
    defaults beta = (0.9, 0.999), eps = 1e-8 added to sqrt(v_hat)) with one optimizer per task; a parameter without
    a gradient (another task's head) is not stepped."""

    wants_task_grads = False

    def __init__(self, lr, optimizer="sgd"):
        super().__init__(lr)
        self.optimizer, self.adam = optimizer, {}

    def begin_task(self, model, t, task):
        super().begin_task(model, t, task)
        self.adam = {}  # parameter -> (step, m, v)

    def forward(self, model, x, head):
        return outputs(model, x, head)

    def extra_loss(self, model, x, out, head) -> torch.Tensor:
        return out.new_zeros(())

    def after_step(self, model, grads_task, before) -> None:
        pass

    def observe(self, model, x, y, head):
        params = list(model.parameters())
        out = self.forward(model, x, head)
        task_loss = F.cross_entropy(out, y)
        total = task_loss + self.extra_loss(model, x, out, head)
        # the task loss's own gradient (SI's path integral uses it: pathint's 'unreg_grads')
        grads_task = torch.autograd.grad(task_loss, params, allow_unused=True, retain_graph=True) \
            if self.wants_task_grads else None
        grads = torch.autograd.grad(total, params, allow_unused=True)
        before = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, gr in zip(params, grads):
                if gr is None:
                    continue
                if self.optimizer == "sgd":
                    p -= self.lr * gr
                    continue
                t, m, v = self.adam.get(p, (0, torch.zeros_like(p), torch.zeros_like(p)))
                t, m, v = t + 1, 0.9 * m + 0.1 * gr, 0.999 * v + 0.001 * gr ** 2
                self.adam[p] = (t, m, v)
                p -= self.lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
        self.after_step(model, grads_task, before)


class CumulativeRef(Step):
    """Each task trains on the training data of every task so far, in stream order."""

    def train_data(self, stream, t):
        return (torch.cat([task.train_x for task in stream.tasks[:t + 1]]),
                torch.cat([task.train_y for task in stream.tasks[:t + 1]]))


class JointRef(Step):
    """Mammoth models/joint.py @ 7ab9db97: nothing trained until the last task, then one training on all tasks' data
    (Mammoth re-initializes the backbone there; ours keeps the untouched initial weights: the same start)."""

    def train_data(self, stream, t):
        if t < len(stream.tasks) - 1:
            return None
        return torch.cat([task.train_x for task in stream.tasks]), torch.cat([task.train_y for task in stream.tasks])


class EWCRef(Step):
    """Kirkpatrick et al. 2017: loss + sum_t (lambda/2) sum_k F_t,k (theta_k - theta*_t,k)^2, F_t the Fisher
    information's diagonal at theta*_t: mean over the task's inputs of E_{y ~ p(y|x)} (d log p(y|x) / d theta)^2,
    written here as an explicit loop over examples and labels (eval mode). fisher='empirical': y the true label."""

    def __init__(self, lr, ewc_lambda, fisher="exact"):
        super().__init__(lr)
        self.lam, self.kind = ewc_lambda, fisher
        self.fishers: List[Dict[str, torch.Tensor]] = []
        self.anchors: List[Dict[str, torch.Tensor]] = []

    def extra_loss(self, model, x, out, head):
        total = out.new_zeros(())
        for f, a in zip(self.fishers, self.anchors):
            for n, p in params_of(model).items():
                total = total + self.lam / 2 * (f[n] * (p - a[n]) ** 2).sum()
        return total

    def end_task(self, model, task):
        names, params = zip(*params_of(model).items())
        fisher = {n: torch.zeros_like(p) for n, p in zip(names, params)}
        model.eval()
        for x, y in zip(task.train_x, task.train_y):
            logp = F.log_softmax(outputs(model, x[None], task.head), -1)[0]
            labels = range(len(logp)) if self.kind == "exact" else [int(y)]
            for c in labels:
                weight = logp[c].exp().detach() if self.kind == "exact" else 1.0
                grads = torch.autograd.grad(logp[c], params, retain_graph=True, allow_unused=True)
                for n, gr in zip(names, grads):
                    if gr is not None:
                        fisher[n] += weight * gr ** 2
        model.train()
        self.fishers.append({n: f / len(task.train_y) for n, f in fisher.items()})
        self.anchors.append({n: p.detach().clone() for n, p in zip(names, params)})


class SIRef(Step):
    """Zenke et al. 2017 as in ganguli-lab/pathint @ 86c5e07: per step omega += -unreg_grad * delta (the task loss's
    gradient, the update of the regularized loss); per task Omega = relu(Omega + omega / ((theta - cweights)^2 + xi)),
    cweights <- theta, omega <- 0 (PATH_INT_PROTOCOL, omega_decay='sum'); loss + c * sum Omega (theta - cweights)^2
    (quadratic_regularizer, no 1/2; lam = c). cweights start at the initial weights."""

    wants_task_grads = True

    def __init__(self, lr, optimizer, c, xi):
        super().__init__(lr, optimizer)
        self.c, self.xi = c, xi
        self.cweights: Dict[str, torch.Tensor] = {}
        self.Omega: Dict[str, torch.Tensor] = {}
        self.omega: Dict[str, torch.Tensor] = {}
        self.omega_history: List[Dict[str, torch.Tensor]] = []

    def begin_task(self, model, t, task):
        super().begin_task(model, t, task)
        if t == 0:
            self.cweights = {n: p.detach().clone() for n, p in params_of(model).items()}
            self.Omega = {n: torch.zeros_like(p) for n, p in params_of(model).items()}
            self.omega = {n: torch.zeros_like(p) for n, p in params_of(model).items()}

    def extra_loss(self, model, x, out, head):
        return self.c * sum((self.Omega[n] * (p - self.cweights[n]) ** 2).sum() for n, p in params_of(model).items())

    def after_step(self, model, grads_task, before):
        for (n, p), gr, b in zip(params_of(model).items(), grads_task, before):
            if gr is not None:
                self.omega[n] += -gr * (p.detach() - b)

    def end_task(self, model, task):
        self.omega_history.append({n: w.clone() for n, w in self.omega.items()})
        for n, p in params_of(model).items():
            theta = p.detach()
            self.Omega[n] = torch.relu(self.Omega[n] + self.omega[n] / ((self.cweights[n] - theta) ** 2 + self.xi))
            self.cweights[n] = theta.clone()
            self.omega[n] = torch.zeros_like(theta)


class MASRef(Step):
    """Aljundi et al. 2018 as in rahafaljundi/MAS-Memory-Aware-Synapses @ c3e6a855, b1=True (one example per
    importance update): model.eval(); per example the gradient of sum(out^2) (MSELoss(size_average=False) against
    zeros); omega <- (omega * n + |grad|) / (n + 1), a running mean (MAS_Omega_update); omegas of earlier tasks added
    (accumelate_reg_params); training adds 2 lambda Omega (theta - theta_init) to the gradient
    (Weight_Regularized_SGD), the gradient of lambda * sum Omega (theta - theta_init)^2."""

    def __init__(self, lr, mas_lambda):
        super().__init__(lr)
        self.lam = mas_lambda
        self.Omega: Dict[str, torch.Tensor] = {}
        self.init_val: Dict[str, torch.Tensor] = {}

    def extra_loss(self, model, x, out, head):
        return self.lam * sum((self.Omega[n] * (p - self.init_val[n]) ** 2).sum() for n, p in
                              params_of(model).items() if n in self.Omega)

    def end_task(self, model, task):
        names, params = zip(*params_of(model).items())
        omega = {n: torch.zeros_like(p) for n, p in zip(names, params)}
        model.eval()
        for k, x in enumerate(task.train_x):
            out = outputs(model, x[None], task.head)
            grads = torch.autograd.grad((out ** 2).sum(), params, allow_unused=True)
            for n, gr in zip(names, grads):
                g_abs = torch.zeros_like(omega[n]) if gr is None else gr.abs()
                omega[n] = (omega[n] * k + g_abs) / (k + 1)
        model.train()
        for n in names:
            self.Omega[n] = self.Omega.get(n, 0) + omega[n]
        self.init_val = {n: p.detach().clone() for n, p in zip(names, params)}


class LwFRef(Step):
    """Li & Hoiem 2016 as in lizhitwo/LearningWithoutForgetting @ 795176d4: before a new task, the old network's
    responses on the new task's images are recorded (test mode); while training, for each old task, the loss
    lambda_o * CE(c_T, softmax(z / T)) with c_T = c^(1/T) / sum c^(1/T), c = softmax(z_old) (vl_nnsoftmaxdiff 'MI'
    'multiclass': gradient (softmax(z / T) - c_T) / T), averaged over the minibatch; one forward pass of the shared
    trunk feeds every head. Class-incremental (one head): the old classes' columns (Mammoth models/lwf.py)."""

    def __init__(self, lr, alpha, temperature):
        super().__init__(lr)
        self.alpha, self.T = alpha, temperature
        self.old_columns: Dict[int, List[int]] = {}  # head -> outputs earlier tasks trained
        self.recorded: Dict[int, torch.Tensor] = {}  # head -> c (softmax of the old network) on this task's rows
        self.task_x = None

    def begin_task(self, model, t, task):
        super().begin_task(model, t, task)
        self.task_x, self.recorded = task.train_x, {}
        if self.old_columns:
            old = copy.deepcopy(model).eval()
            with torch.no_grad():
                feats = old.trunk(self.task_x)
                self.recorded = {h: F.softmax(old.heads[h](feats)[:, cols], -1)
                                 for h, cols in self.old_columns.items()}

    def forward(self, model, x, head):
        self.features = model.trunk(x)  # the one trunk pass of this step
        return model.heads[head](self.features)

    def extra_loss(self, model, x, out, head):
        if not self.recorded:
            return out.new_zeros(())
        rows = (x[:, None] == self.task_x[None]).flatten(2).all(-1).double().argmax(1)  # the minibatch's task rows
        total = out.new_zeros(())
        for h, cols in self.old_columns.items():
            c = self.recorded[h][rows] ** (1 / self.T)
            c_T = c / c.sum(-1, keepdim=True)
            z = model.heads[h](self.features)[:, cols] / self.T
            total = total + (-(c_T * F.log_softmax(z, -1)).sum(-1)).mean()
        return self.alpha * total

    def end_task(self, model, task):
        cols = sorted(set(self.old_columns.get(task.head, [])) | set(task.train_y.tolist()))
        self.old_columns[task.head] = cols


# ---- the tests ---------------------------------------------------------------------------------------------------

def run(name, hparams, reference, model, setting, optimizer="sgd"):
    """check() our strategy against `reference(lr)`; returns (our strategy, the reference) for further asserts."""
    made = {}

    def ours():
        made["ours"] = make_strategy(name, **hparams)
        return made["ours"]

    def ref(lr):
        made["ref"] = reference(lr)
        return made["ref"]

    runs = check(ours, ref, model, setting, lr=LRS[optimizer], optimizer=optimizer, batch_size=BATCH)
    first, last = runs[1].snapshots[0].params, runs[1].snapshots[-1].params
    assert max((last[n] - first[n]).abs().max().item() for n in first) > 0.01  # the tasks after the first trained
    return made["ours"], made["ref"]


def assert_same_tensors(ours: Dict[str, torch.Tensor], ref: Dict[str, torch.Tensor], what: str):
    assert set(ours) == set(ref), what
    for n in ref:
        torch.testing.assert_close(ours[n], ref[n], **TOL, msg=lambda m: f"{what} {n}: {m}")


@pytest.mark.parametrize("model,setting", cases())
def test_naive(model, setting):
    run("naive", {}, Step, model, setting)


@pytest.mark.parametrize("model,setting", cases(where=lambda c: c[1] == "class"))
def test_cumulative(model, setting):
    run("cumulative", {}, CumulativeRef, model, setting)


@pytest.mark.parametrize("model,setting", cases(where=lambda c: c[1] == "class"))
def test_joint(model, setting):
    run("joint", {}, JointRef, model, setting)


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("model,setting", cases())
def test_ewc(model, setting, fisher):
    lam = 50.0
    ours, ref = run("ewc", {"ewc_lambda": lam, "fisher": fisher}, lambda lr: EWCRef(lr, lam, fisher), model, setting)
    assert len(ours.fishers) == len(ref.fishers) == 3
    for t, (f, a, rf, ra) in enumerate(zip(ours.fishers, ours.anchors, ref.fishers, ref.anchors)):
        assert_same_tensors(f, rf, f"Fisher of task {t}")
        assert_same_tensors(a, ra, f"anchor of task {t}")


@pytest.mark.parametrize("model,setting,optimizer", cases(("sgd",)) + cases(("adam",), where=lambda c: c[0] == "mlp"))
def test_si(model, setting, optimizer):
    # with Adam at this c the penalty's pull opposes the task gradient enough for some of the new path integrals
    # to bring Omega below zero: the clamp (the relu of pathint's task update) matters
    c, xi = {"sgd": 0.5, "adam": 2.0}[optimizer], 1e-3
    ours, ref = run("si", {"c": c, "xi": xi}, lambda lr: SIRef(lr, optimizer, c, xi), model, setting, optimizer)
    assert_same_tensors(ours.Omega, ref.Omega, "Omega")
    assert len(ours.omega_history) == len(ref.omega_history) == 3
    for t, (w, rw) in enumerate(zip(ours.omega_history, ref.omega_history)):
        assert_same_tensors(w, rw, f"path integral omega of task {t}")
    assert_same_tensors(ours.reference, ref.cweights, "reference weights")


@pytest.mark.parametrize("model,setting", cases())
def test_mas(model, setting):
    lam = 1.0
    ours, ref = run("mas", {"mas_lambda": lam}, lambda lr: MASRef(lr, lam), model, setting)
    assert_same_tensors(ours.omega, ref.Omega, "Omega")
    assert_same_tensors(ours.anchor, ref.init_val, "anchor")


@pytest.mark.parametrize("model,setting", cases())
def test_lwf(model, setting):
    alpha, temperature = 1.0, 2.0
    ours, ref = run("lwf", {"alpha": alpha, "temperature": temperature}, lambda lr: LwFRef(lr, alpha, temperature),
                    model, setting)
    assert ours.old_outputs == ref.old_columns
