"""The Trainer's hot loop equals the hook protocol written out literally (clframework.plugin's docstring), bit for
bit: whatever the Trainer skips for speed (hooks a strategy does not override, Batch objects nothing joins, host
syncs) must not change a single number of the accuracy matrix or the per-epoch losses."""
import pytest
import torch

from clframework import Trainer, make_strategy, mlp
from clframework.apps.bench import shrink
from clframework.evaluation.evaluator import evaluate_stream
from clframework.plugin import STRATEGIES, Batch

CORE = ["naive", "si", "ewc", "mas", "lwf", "replay", "agem"]
MORE = [n for n in ("er", "der", "derpp", "er_ace", "icarl", "gdumb", "joint", "cumulative")
        if n in STRATEGIES.names()]  # where registered


def literal_fit(model, strategy, stream, epochs, batch_size, seed):
    """The protocol as plugin.py documents it: every hook (task_data, task_loss and eval_model included, whose
    defaults change nothing), every step, a fresh Adam per task, the batch order of a generator seeded like the
    Trainer's, the per-epoch mean task loss and accuracy on the task's own rows."""
    gen = torch.Generator().manual_seed(seed)
    rows, curves = [], []
    evaluate_stream(model, stream, torch.device("cpu"))
    for t, own in enumerate(stream.tasks):
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.999))
        task = strategy.task_data(stream, t)
        strategy.on_task_start(model, t)
        if task is None:
            strategy.on_task_end(model, own, own.head)
            rows.append(evaluate_stream(strategy.eval_model(model), stream, torch.device("cpu")))
            continue
        x, y, n = task.train_x, task.train_y, len(task.train_y)
        model.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                batch = strategy.on_before_forward(model, Batch(x[idx], y[idx], task.head))
                batch.out = strategy.forward(model, batch)
                loss = strategy.task_loss(model, batch)
                extra = strategy.loss_term(model, batch)
                (loss + extra if isinstance(extra, torch.Tensor) else loss).backward()
                strategy.on_before_step(model)
                opt.step()
                strategy.on_after_step(model)
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    loss_sum.add_(loss, alpha=len(idx))
                    correct += (batch.out[:len(idx)].argmax(-1) == y[idx]).sum()
            curves.append((loss_sum.item() / n, correct.item() / n))
        strategy.on_task_end(model, task, task.head)
        rows.append(evaluate_stream(strategy.eval_model(model), stream, torch.device("cpu")))
    return rows, curves


CLASS_IL = {"icarl", "joint", "cumulative", "gdumb"}  # one head over every class


@pytest.fixture(scope="module")
def streams():
    from clframework.benchmarks import make_benchmark

    return {setting: shrink(make_benchmark("split-mnist-5k", setting=setting), 3, 192) for setting in ("task", "class")}


@pytest.mark.parametrize("name", CORE + [pytest.param(n, marks=pytest.mark.slow) for n in MORE])
def test_trainer_equals_the_literal_protocol_bit_for_bit(name, streams):
    small_stream = streams["class" if name in CLASS_IL else "task"]
    hparams = {"ewc": {"ewc_lambda": 1000.0}, "si": {"c": 1.0}, "gdumb": {"fit_epochs": 4}}.get(name, {})
    results = []
    for fit in ("trainer", "literal"):
        torch.manual_seed(3)
        model = mlp(784, small_stream.head_sizes, hidden=(16,))
        strategy = make_strategy(name, **hparams)
        torch.manual_seed(7)  # strategies that draw from the global generator (replay's reservoir) draw alike
        if fit == "trainer":
            r = Trainer(model, strategy, epochs=2, batch_size=32, quiet=True, device="cpu", seed=5).fit(small_stream)
            results.append((r.accuracy_matrix, [(c["loss"], c["accuracy"]) for c in r.curves]))
        else:
            results.append(literal_fit(model, strategy, small_stream, 2, 32, 5))
    assert results[0][0] == results[1][0]  # every cell, exactly
    assert results[0][1] == results[1][1]  # every epoch's loss and accuracy, exactly
