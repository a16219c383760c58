"""The optimizer recipe: optimizers, schedules (against torch's own schedulers), gradient clipping (against the
update it allows), exact resume mid-schedule, and every value checked up front and recorded in results.json."""
import copy
import json
import math

from dataclasses import replace

import pytest
import torch

from clframework import Strategy, Trainer, TrainerCallback, make_strategy, mlp
from clframework import RunConfig, run
from clframework.evaluation.plots import Figures
from clframework.recipe import RECIPE_FIELDS, Recipe, cosine_lr, step_lr


def test_step_schedule_matches_torch_steplr():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    for epoch in range(10):
        assert step_lr(0.3, epoch, 3, 0.5) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_cosine_schedule_matches_torch_cosine_annealing():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=17, eta_min=0.001)
    for step in range(17):
        assert cosine_lr(0.1, 0.001, step, 17) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        opt.step()
        sched.step()
    assert cosine_lr(0.1, 0.001, 17, 17) == pytest.approx(0.001)


class _Watch(Strategy):
    """Records, per optimizer step, the learning rate used, the gradient norm the hooks left and the update's norm."""

    def __init__(self):
        self.trainer, self.lrs, self.grad_norms, self.step_norms = None, [], [], []

    def on_before_step(self, model):
        self._before = [p.detach().clone() for p in model.parameters()]
        self.grad_norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()
                                             if p.grad is not None)))

    def on_after_step(self, model):
        self.lrs.append(self.trainer.optimizer.param_groups[0]["lr"])
        self.step_norms.append(math.sqrt(sum(float((p.detach() - b).double().pow(2).sum())
                                             for p, b in zip(model.parameters(), self._before))))


def _train(stream, **recipe):
    torch.manual_seed(0)
    watch = _Watch()
    trainer = Trainer(mlp(784, stream.head_sizes, hidden=(16,)), watch, epochs=2, batch_size=128, quiet=True,
                      device="cpu", **recipe)
    watch.trainer = trainer
    trainer.fit(stream)
    return trainer, watch


@pytest.mark.parametrize("reset", [True, False])
def test_schedules_restart_with_every_task(mnist_stream, reset):
    steps = [math.ceil(len(t.train_y) / 128) for t in mnist_stream.tasks]
    for recipe in (dict(lr_schedule="cosine", lr=0.01, lr_min=0.001),
                   dict(lr_schedule="step", lr=0.01, lr_step_epochs=1, lr_gamma=0.5)):
        trainer, watch = _train(mnist_stream, optimizer="sgd", reset_optimizer=reset, **recipe)
        r = Recipe("sgd", **recipe).resolved()
        expected = [r.lr_at(e, s, n, 2) for n in steps for e in range(2) for s in range(n)]
        assert watch.lrs == pytest.approx(expected, rel=1e-12)
        assert watch.lrs[0] == 0.01 and watch.lrs[2 * steps[0]] == 0.01  # restarted


def test_grad_clip_bounds_each_update_to_the_clipped_gradient(mnist_stream):
    _, watch = _train(mnist_stream, optimizer="sgd", lr=1.0, grad_clip=0.5)
    # plain SGD with lr 1: the update is the clipped gradient, of norm min(||g||, 0.5)
    assert watch.step_norms == pytest.approx([min(g, 0.5) for g in watch.grad_norms], rel=1e-4)
    assert sum(g > 0.5 for g in watch.grad_norms) > 5  # clipping happened


def test_optimizers_get_their_recipe(mnist_stream):
    model = mlp(784, mnist_stream.head_sizes, hidden=(16,))
    for recipe, cls, group in ((dict(optimizer="sgd", momentum=0.9, weight_decay=5e-4), torch.optim.SGD,
                                {"momentum": 0.9, "weight_decay": 5e-4}),
                               (dict(optimizer="adamw"), torch.optim.AdamW, {"weight_decay": 0.01}),
                               (dict(optimizer="adam", weight_decay=1e-4), torch.optim.Adam, {"weight_decay": 1e-4})):
        opt = Trainer(model, make_strategy("naive"), quiet=True, **recipe).make_optimizer(model.parameters())
        assert type(opt) is cls and {k: opt.param_groups[0][k] for k in group} == group


def test_resume_mid_schedule_is_exact(mnist_stream):
    recipe = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, lr_schedule="cosine", grad_clip=1.0)
    states = []

    def trainer(**kw):
        torch.manual_seed(0)
        return Trainer(mlp(784, mnist_stream.head_sizes, hidden=(16,)), make_strategy("si"), epochs=2, quiet=True,
                       device="cpu", **recipe, **kw)

    whole = trainer(checkpoint_every=7, on_checkpoint=lambda s: states.append(copy.deepcopy(s)))
    result = whole.fit(mnist_stream)
    mid = states[1]  # after 14 steps: within task 1's second epoch, in the middle of the schedule
    assert mid["epoch_in_flight"] is not None and mid["position"]["task"] == 0 and mid["position"]["epoch"] == 2
    resumed = trainer()
    again = resumed.fit(mnist_stream, resume=mid)
    assert again.accuracy_matrix == result.accuracy_matrix and again.curves == result.curves
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("recipe, message", [
    (dict(momentum=0.9), "momentum applies to the sgd optimizer only"),
    (dict(optimizer="rmsprop"), "optimizer must be one of adam, adamw, sgd, got 'rmsprop'"),
    (dict(lr_schedule="step"), "the step schedule needs lr_step_epochs"),
    (dict(lr_schedule="cosine", lr_step_epochs=2), "lr_step_epochs applies to the step schedule only"),
    (dict(lr_schedule="linear"), "lr schedule must be one of constant, step, multistep, cosine"),
    (dict(optimizer="sgd", momentum=-0.1), "momentum must be a finite number >= 0"),
    (dict(weight_decay=float("nan")), "weight decay must be a finite number >= 0"),
    (dict(grad_clip=-1.0), "grad clip must be a finite number >= 0"),
    (dict(lr_schedule="cosine", lr_min=0.5), r"lr_min must be a finite number >= 0 and <= 0.001"),
    (dict(lr_schedule="step", lr_step_epochs=1, lr_gamma=0.0), "lr_gamma must be a finite number > 0"),
])
def test_bad_recipes_fail_in_resolved(recipe, message):
    with pytest.raises(ValueError, match=message):
        RunConfig("naive", "split-mnist-5k", **recipe).resolved()


def test_recipe_recorded_in_results(tmp_path, mnist_stream):
    cfg = RunConfig("naive", "split-mnist-5k", epochs=1, optimizer="adamw", lr_schedule="step", lr_step_epochs=1)
    train = run(cfg, tmp_path / "r", quiet=True, stream=mnist_stream).config
    assert {k: train[k] for k in ("optimizer", "momentum", "weight_decay", "lr_schedule", "lr_step_epochs",
                                  "lr_gamma", "lr_min", "grad_clip")} == {
        "optimizer": "adamw", "momentum": None, "weight_decay": 0.01, "lr_schedule": "step", "lr_step_epochs": 1,
        "lr_gamma": 0.1, "lr_min": None, "grad_clip": 0.0}


@pytest.mark.slow
def test_cli_recipe_flags_reach_results_json_and_bad_ones_stop_before_training(tmp_path, python):
    cli = ["-m", "clframework", "run", "--strategy", "naive", "--tasks", "1", "--epochs", "2",
           "--quiet"]
    proc = python.run(cli + ["--out", str(tmp_path / "ok"), "--optimizer", "sgd", "--lr", "0.05",
                             "--momentum", "0.9", "--weight-decay", "0.0005", "--lr-schedule", "cosine",
                             "--lr-min", "0.001", "--grad-clip", "2"])
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "ok/results.json").read_text())["config"]
    assert {k: config[k] for k in ("optimizer", "lr", "momentum", "weight_decay", "lr_schedule", "lr_min",
                                   "grad_clip")} == {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                                                     "weight_decay": 0.0005, "lr_schedule": "cosine", "lr_min": 0.001,
                                                     "grad_clip": 2.0}
    proc = python.run(cli + ["--out", str(tmp_path / "bad"), "--momentum", "0.9"])
    assert proc.returncode == 2 and "momentum applies to the sgd optimizer only" in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_every_recipe_field_is_a_protocol_field_a_runconfig_keyword_and_a_flag_of_each_command():
    """Recipe declares the fields once: each reaches a benchmark's protocol, RunConfig and the CLI."""
    import argparse

    from clframework.apps.cli import build_parser
    from clframework.benchmarks import Protocol

    chosen = dict(optimizer="sgd", lr=0.25, momentum=0.5, weight_decay=0.125, lr_schedule="multistep",
                  lr_gamma=0.5, lr_milestones=[2, 3], grad_clip=4.0, drop_last=True)
    assert set(chosen) | {"lr_step_epochs", "lr_min"} == set(RECIPE_FIELDS)
    expected = dict(chosen, lr_step_epochs=None, lr_min=None, lr_milestones=(2, 3))
    assert Protocol(**chosen).resolved().as_dict().items() >= expected.items()
    train = RunConfig("naive", "split-mnist-5k", **chosen).resolved()["train"]
    assert {k: train[k] for k in RECIPE_FIELDS} == expected
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("run", "compare", "tune", "reproduce"):
        flags = {o for a in sub.choices[command]._actions for o in a.option_strings}
        keys = set(RECIPE_FIELDS) - ({"lr"} if command == "reproduce" else set())  # the paper's arms set the lr
        assert {"--" + k.replace("_", "-") for k in keys} <= flags, command


@pytest.mark.parametrize("command", [["run", "--strategy", "si"], ["compare"], ["tune", "--strategy", "si"]])
def test_every_study_command_takes_the_recipe_flags(command):
    from clframework.apps.cli import _base_config, build_parser

    args = build_parser().parse_args(command + ["--optimizer", "sgd", "--momentum", "0.9", "--lr-schedule", "step",
                                                "--lr-step-epochs", "3", "--lr-gamma", "0.2", "--grad-clip", "1"])
    train = _base_config(args, "si").resolved()["train"]
    assert (train["optimizer"], train["momentum"], train["lr_step_epochs"], train["lr_gamma"], train["grad_clip"]) \
        == ("sgd", 0.9, 3, 0.2, 1.0)


def test_reproduce_takes_the_recipe_and_lists_it_with_what_was_changed():
    from clframework.apps.cli import _recipe, build_parser
    from clframework.apps.reproduce import plan

    args = build_parser().parse_args(["reproduce", "split-mnist", "--optimizer", "sgd", "--lr-schedule", "cosine"])
    p = plan("split-mnist", "mnist-5k", quick=True, recipe=_recipe(args))
    assert "optimizer adam -> sgd (--optimizer)" in p["scaled"] and "lr_schedule constant -> cosine (--lr-schedule)" \
        in p["scaled"]
    assert all(c.resolved()["train"]["lr_schedule"] == "cosine" for c in p["configs"].values())
    with pytest.raises(ValueError, match="momentum applies to the sgd optimizer only"):
        plan("split-mnist", "mnist-5k", recipe={"momentum": 0.5})


# ---- run folders of versions from before the recipe's fields ----------------------------------------------------

NO_FIGURES = Figures(runs=False, study=False)


class _StopInTask2(TrainerCallback):
    """Ctrl-C once task 1 is done and checkpointed."""

    def on_epoch_end(self, task_index, epoch, loss, accuracy):
        if task_index == 1:
            raise KeyboardInterrupt


def _as_before_the_recipe(folder):
    """The folder as a version before the recipe's fields (and before task-IL scores) wrote it: its configurations
    hold optimizer and lr only, its checkpoint no task-IL rows (as folders made by git b21b0e8^ are)."""
    new = [k for k in RECIPE_FIELDS if k not in ("optimizer", "lr")]
    for name in ("config.json", "results.json"):
        path = folder / name
        if path.exists():
            data = json.loads(path.read_text())
            train = data["train"] if name == "config.json" else data["config"]
            assert set(new) <= set(train)
            for key in new:
                del train[key]
            path.write_text(json.dumps(data))
    if (folder / "checkpoint.pt").exists():
        state = torch.load(folder / "checkpoint.pt", weights_only=True)
        for key in new:
            del state["config"]["train"][key]
        del state["trainer"]["progress"]["task_il_matrix"]
        torch.save(state, folder / "checkpoint.pt")


def test_folders_from_before_the_recipe_fields_resume_with_the_defaults_then_in_force(tmp_path, mnist_stream):
    cfg = RunConfig("naive", "split-mnist-5k", epochs=1, hidden=[16], device="cpu", optimizer="sgd", lr=0.05)
    whole = run(cfg, tmp_path / "done", quiet=True, stream=mnist_stream, figures=NO_FIGURES)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "cut", quiet=True, stream=mnist_stream, callbacks=[_StopInTask2()], figures=NO_FIGURES)
    for name in ("done", "cut"):
        _as_before_the_recipe(tmp_path / name)
    done = run(cfg, tmp_path / "done", quiet=True, stream=mnist_stream, resume=True)
    assert done.accuracy_matrix == whole.accuracy_matrix
    cut = run(cfg, tmp_path / "cut", quiet=True, stream=mnist_stream, resume=True, figures=NO_FIGURES)
    assert (cut.accuracy_matrix, cut.task_il_accuracy_matrix, cut.curves) == (
        whole.accuracy_matrix, whole.task_il_accuracy_matrix, whole.curves)


def test_a_folder_from_before_the_recipe_fields_is_still_refused_for_another_recipe(tmp_path, mnist_stream):
    cfg = RunConfig("naive", "split-mnist-5k", epochs=1, hidden=[16], device="cpu", optimizer="sgd", tasks=1)
    run(cfg, tmp_path / "r", quiet=True, stream=mnist_stream, figures=NO_FIGURES)
    _as_before_the_recipe(tmp_path / "r")
    with pytest.raises(ValueError, match=r"another configuration \(train.momentum: 0.0 in the folder, 0.9 now\)"):
        run(replace(cfg, momentum=0.9), tmp_path / "r", quiet=True, stream=mnist_stream, resume=True)


def test_a_checkpoint_without_task_il_rows_is_refused_on_a_class_incremental_stream(mnist_stream):
    from clframework.benchmarks import split
    from clframework.benchmarks.scenarios import from_tensors

    g = torch.Generator().manual_seed(0)
    data = from_tensors(torch.randn(80, 5, generator=g), torch.arange(80) % 4, torch.randn(20, 5, generator=g),
                        torch.arange(20) % 4)
    stream = split(data, 2, setting="class")
    states = []
    Trainer(mlp(5, stream.head_sizes, hidden=(8,)), make_strategy("naive"), epochs=1, quiet=True, device="cpu",
            on_checkpoint=states.append).fit(stream)
    state = copy.deepcopy(states[0])
    del state["progress"]["task_il_matrix"]
    with pytest.raises(ValueError, match="kept no task-IL scores, which a class-incremental stream cannot recover"):
        Trainer(mlp(5, stream.head_sizes, hidden=(8,)), make_strategy("naive"), epochs=1, quiet=True,
                device="cpu").fit(stream, resume=state)
