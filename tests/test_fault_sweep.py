"""The weak and bad cases of the fault sweep rerun (scripts/fault_sweep.py, docs/reliability.md "Fault sweep rerun"),
each fixed with a test that failed on the code before: bad input refused in one line before the run's folder holds
anything, errors that name the file, the factory or the hyperparameters, recipes that would train nothing."""
import json
import os
import re
import textwrap
from pathlib import Path

import pytest

BASE = ["--epochs", "1", "--tasks", "2", "--quiet", "--device", "cpu", "--threads", "1", "--plots", "none"]
TINY = [*BASE, "--hidden", "16"]

OWN_MODELS = textwrap.dedent('''
    from torch import nn


    def flat(input_shape, head_sizes):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, max(head_sizes)))


    def narrow(input_shape, head_sizes):
        """One output where each task's head needs two."""
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 1))


    class Fixed(nn.Module):
        def forward(self, x, head=0):
            return x.flatten(1)[:, :2] * 0


    def no_parameters(input_shape, head_sizes):
        return Fixed()


    def no_arguments():
        return narrow(None, None)


    def raises(input_shape, head_sizes):
        raise RuntimeError("the factory's own bug")
''')


@pytest.fixture
def own_models(tmp_path, monkeypatch):
    """A module of models of one's own, importable as `sweep_fix_models` (a name no other test imports)."""
    (tmp_path / "sweep_fix_models.py").write_text(OWN_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "sweep_fix_models", raising=False)
    return "sweep_fix_models"


@pytest.mark.parametrize("args,message", [
    (["--strategy", "naive", "--model", "sweep_fix_models:narrow"],
     "model sweep_fix_models:narrow and stream do not fit: task '0-1' needs 2 outputs on head 0, the model gives 1"),
    (["--strategy", "naive", "--model", "sweep_fix_models:no_parameters"],
     "model sweep_fix_models:no_parameters has no trainable parameters: there is nothing to train; give a model "
     "with parameters that require gradients"),
    (["--strategy", "icarl", "--benchmark", "permuted-mnist-5k", "--option", "n_tasks=2"],
     "strategy 'icarl' needs the class-incremental setting (one head over every class: --setting class); the stream "
     "is domain-incremental"),
])
def test_run_refuses_a_model_or_a_need_before_its_folder_is_made(tmp_path, cli, own_models, args, message):
    """Sweep cases m06, m08, r28 (and issue 30 item 7's no-head model with `run`, fixed on main meanwhile): a model
    that does not fit the stream was found only once the run's folder held config.json; a model without parameters
    crashed in the optimizer (a traceback, exit 1)."""
    out = tmp_path / "r"
    proc = cli("run", *args, "--out", out, *BASE)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"clframework: error: {message}"]
    assert not out.exists()


def test_hidden_for_a_model_that_takes_none_is_warned_of(tmp_path, cli, own_models):
    """Sweep case m13: --hidden given with a model whose factory takes no hidden sizes (cnn, one's own) was dropped
    silently."""
    with pytest.warns(UserWarning, match=r"^--hidden given, but model sweep_fix_models:flat takes no hidden: ignored "
                                         r"\(they shape the mlp\)$"):
        proc = cli("run", "--strategy", "naive", "--model", "sweep_fix_models:flat", "--out", tmp_path / "r", *TINY)
    assert proc.returncode == 0, proc.stderr


def test_compare_refuses_a_model_that_does_not_fit_before_its_first_run(tmp_path, cli, own_models):
    out = tmp_path / "cmp"
    proc = cli("compare", "--strategies", "naive,si", "--seeds", "1", "--model", "sweep_fix_models:narrow", "--out",
               out, *BASE)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "clframework: error: model sweep_fix_models:narrow and stream do not fit")
    assert not list(out.glob("*/config.json"))


def test_a_model_factory_that_raises_or_has_the_wrong_signature_is_named(own_models):
    """Sweep cases m04, m09: a factory's RuntimeError came out as its bare message (naming no factory); a factory
    of the wrong signature was not told the one it needs."""
    from clframework.models import build_model

    with pytest.raises(ValueError, match=r"^model sweep_fix_models:raises could not be built for inputs of shape "
                                         r"\(1, 28, 28\) and heads \[2, 2\]: RuntimeError: the factory's own bug$"):
        build_model("sweep_fix_models:raises", (1, 28, 28), [2, 2])
    with pytest.raises(ValueError, match=r"TypeError: no_arguments\(\) takes 0 positional arguments but 2 were "
                                         r"given \(a model factory is called as factory\(input_shape, head_sizes\)\)$"):
        build_model("sweep_fix_models:no_arguments", (1, 28, 28), [2, 2])


def test_set_of_an_unknown_hyperparameter_lists_the_strategys_own(tmp_path, cli):
    """Sweep case r15: `--set foo=1` named foo but not what er accepts."""
    proc = cli("run", "--strategy", "er", "--set", "foo=1", "--out", tmp_path / "r", *TINY)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "clframework: error: --set foo: none of ['er'] has a hyperparameter 'foo'; er has memory_size, minibatch_size"]
    proc = cli("compare", "--strategies", "naive,si", "--set", "foo=1", "--out", tmp_path / "c", *TINY)
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "none of ['naive', 'si'] has a hyperparameter 'foo'; naive has none, si has c, xi, clamp, "
        "omega_from_total_loss")


def test_drop_last_that_would_drop_every_minibatch_of_a_task_is_refused(tmp_path, cli, mnist_stream):
    """Sweep case p24: --drop-last with a minibatch larger than a task trained no step at all, silently."""
    out, n = tmp_path / "r", len(mnist_stream[0].train_y)
    proc = cli("run", "--strategy", "naive", "--drop-last", "--batch-size", "5000", "--out", out, *TINY)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"clframework: error: --drop-last with batch size 5000: task '0-1' has {n} training examples, less than one "
        "minibatch, so it would train no step; lower --batch-size or drop --drop-last"]
    assert not out.exists()


@pytest.mark.parametrize("flags,line", [
    (["--lr-schedule", "multistep", "--lr-milestones", "1,5"], "--lr-milestones 1, 5: a task trains 1 epoch (epochs "
     "0..0 of the schedule), so the learning rate never decays there; lower them below --epochs"),
    (["--lr-schedule", "step", "--lr-step-epochs", "1"], "--lr-step-epochs 1: a task trains 1 epoch (epochs 0..0 of "
     "the schedule), so the learning rate never decays there; lower them below --epochs"),
])
def test_a_schedule_a_task_never_reaches_is_warned_of(tmp_path, cli, flags, line):
    """Sweep case p25: --lr-milestones 5 with 1 epoch a task never decays the learning rate, and said nothing."""
    with pytest.warns(UserWarning, match=f"^{re.escape(line)}$"):
        proc = cli("run", "--strategy", "naive", "--optimizer", "sgd", *flags, "--out", tmp_path / "r", *TINY)
    assert proc.returncode == 0, proc.stderr


def test_a_schedule_that_decays_within_the_epochs_is_not_warned_of(tmp_path, cli, recwarn):
    proc = cli("run", "--strategy", "naive", "--optimizer", "sgd", "--lr-schedule", "multistep", "--lr-milestones",
               "1", "--out", tmp_path / "r", *TINY, "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert not [str(w.message) for w in recwarn if "never decays" in str(w.message)]


def _finished_naive(tmp_path, cli, *extra):
    out = tmp_path / "r"
    proc = cli("run", "--strategy", "naive", *extra, "--out", out, *TINY)
    return out, proc


def test_load_names_a_damaged_model_file(tmp_path, cli):
    """Sweep case l06: torch's zip-reader error alone, naming no file."""
    from clframework import load

    out, proc = _finished_naive(tmp_path, cli)
    assert proc.returncode == 0, proc.stderr
    (out / "model.pt").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(ValueError, match=rf"^cannot read {out / 'model.pt'} \(RuntimeError: .*\); it is damaged: run "
                                         rf"the command that wrote it again"):
        load(out)


def test_load_of_a_diverged_run_says_it_diverged(tmp_path, cli):
    """Sweep case l11: a diverged run (results.json, no model.pt) was called unfinished, to be finished with
    --resume, which only reports the divergence again."""
    from clframework import load

    out, proc = _finished_naive(tmp_path, cli, "--lr", "1e30")
    assert proc.returncode == 3, proc.stderr
    where = json.loads((out / "results.json").read_text())["diverged_at"]
    with pytest.raises(ValueError, match=rf"^{out} holds a run that diverged \(task {where['task'] + 1}"):
        load(out)


def test_load_of_a_run_whose_model_module_is_gone_names_the_way_out(tmp_path, cli, own_models, monkeypatch):
    """Sweep case l13: the run's module:factory no longer importable named the module only, not load(model=...)."""
    import sys

    from clframework import load

    out = tmp_path / "r"
    proc = cli("run", "--strategy", "naive", "--model", "sweep_fix_models:flat", "--out", out, *BASE)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "sweep_fix_models.py").unlink()
    monkeypatch.delitem(sys.modules, "sweep_fix_models")
    with pytest.raises(ValueError, match=r"cannot import module 'sweep_fix_models'.*; or pass the factory itself: "
                                         rf"load\('{re.escape(str(out))}', model=factory\)$"):
        load(out)


def test_load_of_a_study_folder_names_its_runs(tmp_path, cli):
    from clframework import load

    out = tmp_path / "cmp"
    proc = cli("compare", "--strategies", "naive", "--seeds", "1", "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(FileNotFoundError, match=rf"^{out} is a study's folder \(summary.json\); load one of its runs: "
                                                rf"{out / 'naive-seed0'}$"):
        load(out)


def test_a_scorer_trained_by_the_strategy_is_health_checked(tmp_path, cli):
    """Sweep case i3 (issue 30, item 3): GDumb with --set fit_lr=100 retrains a network whose ReLUs all die (finite
    weights, so the divergence guard passes it) and answers one class: exit 0, chance accuracy, no word. The health
    check skipped every task GDumb's stream network does not train on, though its scorer trained on the memory."""
    from clframework.evaluation.health import LearningHealthWarning

    out = tmp_path / "r"
    with pytest.warns(LearningHealthWarning) as warned:
        proc = cli("run", "--strategy", "gdumb", "--set", "fit_lr=100", "fit_epochs=4", "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr
    health = json.loads((out / "results.json").read_text())["health"]
    assert [h["task"] for h in health] == [0, 1]
    lines = [str(w.message) for w in warned if issubclass(w.category, LearningHealthWarning)]
    assert len(lines) == 2 and all("learned nothing" in w and "the strategy's own training (eval_model: e.g. "
                                   "GDumb's fit_lr, fit_epochs)" in w for w in lines), lines


def test_report_refuses_studies_of_different_protocols(tmp_path, cli):
    """Sweep case rp07: studies of 1 and 2 epochs a task made one table whose rows read alike (two `ER 200`) under a
    caption that ran both protocols together, exit 0."""
    for epochs in ("1", "2"):
        proc = cli("compare", "--strategies", "naive", "--seeds", "1", "--setting", "class", "--out",
                   tmp_path / f"e{epochs}", *TINY, "--epochs", epochs)
        assert proc.returncode == 0, proc.stderr
    proc = cli("report", tmp_path / "e1", tmp_path / "e2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "clframework: error: report: studies e1 and e2 were run under different "
        "protocols (split-mnist-5k, class-incremental, 2 tasks, 1 epoch(s) per task, batch 64 vs split-mnist-5k, "
        "class-incremental, 2 tasks, 2 epoch(s) per task, batch 64); one table compares studies of one protocol: "
        "report them apart"]


def test_more_workers_than_cores_are_capped_with_a_warning(mnist_stream):
    """Sweep case d03: --workers 1000 started 1000 DataLoader processes (no answer in 90 s)."""
    from clframework.models import build_model
    from clframework.parallel import cores
    from clframework.plugin import make_strategy
    from clframework.trainer import Trainer

    model = build_model("mlp", mnist_stream.input_shape, mnist_stream.head_sizes, [8])
    with pytest.warns(UserWarning, match=rf"^--workers 1000 is more than the {cores()} cores this process may use: "
                                         rf"{cores()} DataLoader workers are started$"):
        trainer = Trainer(model, make_strategy("naive"), workers=1000, device="cpu", quiet=True)
    assert trainer.workers == cores()


KILLS_ITS_LOADER = textwrap.dedent('''
    import os
    import signal
    from pathlib import Path

    from clframework import register_strategy
    from clframework.strategies.naive import Naive


    @register_strategy("kills-its-loader")
    class KillsItsLoader(Naive):
        """At its second step, once (a flag file), kills one of its process's DataLoader workers with SIGKILL."""

        steps = 0

        def on_after_step(self, model):
            self.steps += 1
            flag = Path(os.environ["FLAG"])
            if self.steps == 2 and not flag.exists():
                flag.touch()
                me = str(os.getpid())
                kids = [int(p) for p in os.listdir("/proc") if p.isdigit()
                        and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == me]
                os.kill(kids[0], signal.SIGKILL)
''')


@pytest.mark.slow
def test_a_killed_dataloader_worker_is_one_line_naming_resume(tmp_path):
    """Sweep case k06: a DataLoader worker killed (kill -9, the out-of-memory killer) read as an error in a strategy
    or model, with a traceback; --resume then finishes the run."""
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import fake_folders

    tree = fake_folders.image_folder(tmp_path / "tree", n_classes=4, per_class=10, size=8)
    (tmp_path / "kills_its_loader.py").write_text(KILLS_ITS_LOADER)
    args = [sys.executable, "-m", "clframework", "run", "--strategy", "kills-its-loader", "--benchmark",
            "split-imagefolder", "--data-root", str(tree), "--batch-size", "2", "--workers", "2",
            "--checkpoint-every", "1", "--plugin", "kills_its_loader", "--out", str(tmp_path / "r"), *TINY]
    env = {**os.environ, "FLAG": str(tmp_path / "killed"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert (tmp_path / "killed").exists()
    assert proc.returncode == 2 and "error in a strategy or model" not in proc.stderr, proc.stderr
    # no traceback of ours; multiprocessing's resource-sharer thread may print its own when the worker dies mid-send
    assert all("multiprocessing" in block for block in proc.stderr.split("Traceback")[1:]), proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("clframework: error: a DataLoader worker process died") and line.endswith(
        "kill -9 or the out-of-memory killer (fewer --workers use less memory); the checkpoints are kept: continue "
        "with the same command plus --resume"), line
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr


def test_icarl_with_fewer_exemplars_than_classes_is_refused_before_training(tmp_path, cli):
    """Sweep case r26: memory_size 2 on 4 classes was refused when task 2 started, its folder holding config.json
    and a checkpoint of the task 1 that trained."""
    out = tmp_path / "r"
    proc = cli("run", "--strategy", "icarl", "--setting", "class", "--set", "memory_size=2", "--out", out, *TINY)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "clframework: error: strategy 'icarl' needs at least one exemplar per class: memory_size (2) must be >= the "
        "stream's 4 classes (--set memory_size=4 or more)"]
    assert not out.exists()
