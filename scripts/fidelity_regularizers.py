"""Measures, for docs/fidelity.md, how far the importance tensors of other codes' EWC and MAS are from ours on one
trained model: a float64 MLP (10-16-2) trained one epoch (SGD, lr 0.1, batch 10) on one task of the conformance
stream's kind (Gaussian clusters, 2 classes, 200 training rows; tests/conformance/harness.py), then each variant
computed on that task's training inputs. Prints each variant's total (sum over all parameters) relative to ours and its cosine
with ours.

    python scripts/fidelity_regularizers.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "conformance"))
from harness import make_model, make_stream  # noqa: E402  (the conformance suite's data and model)

from clframework import Trainer, make_strategy  # noqa: E402
from clframework.strategies.ewc import fisher_diagonal  # noqa: E402
from clframework.strategies.mas import mas_importance  # noqa: E402


def flat(d):
    return torch.cat([t.flatten() for t in d.values()])


def compare(name, variant, ours):
    v, o = flat(variant), flat(ours)
    print(f"{name:62s} total / ours {float(v.sum() / o.sum()):7.3f}   cosine {float(F.cosine_similarity(v, o, 0)):.3f}")


def main():
    torch.set_num_threads(1)
    stream = make_stream("class", n_tasks=1, train_per_class=100)  # one task of 200 rows, 2 classes
    model = make_model("mlp", stream)
    Trainer(model, make_strategy("naive"), epochs=1, batch_size=10, lr=0.1, optimizer="sgd", device="cpu",
            quiet=True).fit(stream)
    task = stream.tasks[0]
    x, y = task.train_x, task.train_y
    names, params = zip(*model.named_parameters())
    model.eval()

    ours = fisher_diagonal(model, [(x, y)], 0, "exact")
    variants = {n: {k: torch.zeros_like(p) for k, p in zip(names, params)} for n in ("mammoth", "pathint")}
    for xi, yi in zip(x, y):
        logp = F.log_softmax(model(xi[None], 0), -1)[0]
        for c in range(len(logp)):
            grads = torch.autograd.grad(logp[c], params, retain_graph=True)
            for k, g in zip(names, grads):
                variants["pathint"][k] += g ** 2 / len(y)  # keras_utils.compute_fishers: every label, unweighted
                if c == int(yi):  # ewc_on.end_task: exp(log p_y) * (d log p_y)^2 for the true label y
                    variants["mammoth"][k] += logp[c].exp().detach() * g ** 2 / len(y)
    print("EWC Fisher on task 0 (200 examples), ours: exact, sum_y p_y (d log p_y)^2:")
    compare("empirical (ours, fisher=empirical): (d log p_true)^2", fisher_diagonal(model, [(x, y)], 0, "empirical"),
            ours)
    compare("Mammoth ewc_on (7ab9db97, e75a491): p_true (d log p_true)^2", variants["mammoth"], ours)
    compare("pathint compute_fishers (86c5e07): sum_y (d log p_y)^2", variants["pathint"], ours)

    mas_ours = mas_importance(model, [(x, y)], 0)
    print("MAS Omega on task 0, ours: mean over examples of |d ||f||^2 / d theta| (the authors' b1=True):")
    for b in (10, 200):  # MAS.py: update_batch_size = batch_size (200) unless b1
        omega = {k: torch.zeros_like(p) for k, p in zip(names, params)}
        for i, start in enumerate(range(0, len(y), b)):
            out = model(x[start:start + b], 0)
            grads = torch.autograd.grad(out.pow(2).sum(), params)
            for k, g in zip(names, grads):  # MAS_Omega_update.step: a running mean of |batch gradient| / batch size
                omega[k] = (omega[k] * (i * b) + g.abs()) / ((i + 1) * b)
        compare(f"authors' b1=False, importance batches of {b}: |sum_batch grad| / b", omega, mas_ours)


if __name__ == "__main__":
    main()
