"""W&B with the real wandb package, offline: what the run files hold equals results.json; failures never stop a run."""
import json
import warnings
from dataclasses import replace

import pytest

from clframework.apps.cli import main
from clframework import RunConfig, run
from clframework.evaluation.wandb_logger import WandbLogger, check_mode, read_offline_run
from test_runs import CtrlC

pytestmark = pytest.mark.slow  # real wandb runs (offline)


def _offline_runs(folder):
    """What each offline run under `folder` logged, once wandb's service has written everything (its writes may
    still be in flight when `run.finish()` returns)."""
    import wandb

    wandb.teardown()
    return [read_offline_run(d) for d in sorted(folder.glob("offline-run-*"))]


def _check_run_against_results(logged: dict, res: dict, group: str) -> None:
    from clframework.evaluation.names import display

    assert logged["run"]["group"] == group and logged["run"]["job_type"] == display(res["strategy"])
    cfg = logged["config"]
    assert (cfg["strategy"], cfg["benchmark"], cfg["seed"]) == (res["strategy"], res["benchmark"], res["seed"])
    assert cfg["hparams"] == res["hparams"]
    assert all(res["config"][k] == v for k, v in cfg["train"].items())
    assert set(cfg["versions"]) >= {"torch", "wandb", "clframework", "python"}
    # per-task accuracy against tasks_trained: the untrained row, then one row per task trained
    T = len(res["tasks"])
    task_rows = sorted((h for h in logged["history"] if "tasks_trained" in h), key=lambda h: h["tasks_trained"])
    assert [h["tasks_trained"] for h in task_rows] == list(range(T + 1))
    logged_matrix = [[h[f"accuracy/task{j + 1}"] for j in range(T)] for h in task_rows]
    assert logged_matrix == [res["initial_accuracy"]] + res["accuracy_matrix"]
    assert [h["accuracy/average_seen"] for h in task_rows[1:]] == pytest.approx(res["average_seen"])
    # per-epoch training curves, and the training loss every k steps against train_steps
    epoch_rows = [h for h in logged["history"] if "epochs_trained" in h]
    assert [(h["epoch/loss"], h["epoch/accuracy"]) for h in epoch_rows] == [(c["loss"], c["accuracy"])
                                                                            for c in res["curves"]]
    loss_rows = [h for h in logged["history"] if "train/loss" in h]
    assert [(h["train_steps"], h["train/loss"]) for h in loss_rows] == [(p["step"], p["loss"]) for p in res["losses"]]
    assert {p["task"] for p in res["losses"]} == set(range(T))  # every task has its points (trainer.LOSS_POINTS)
    for m in ("acc", "bwt", "fwt", "forgetting", "task_il_acc"):
        assert logged["summary"][m] == res["metrics"][m]
    assert logged["summary"]["accuracy_matrix._type"] == "table-file"
    assert logged["summary"]["task_il_accuracy_matrix._type"] == "table-file"
    assert logged["summary"]["accuracy_matrix_heatmap._type"] == "image-file"
    results_artifact = [a for a in logged["artifacts"] if a["type"] == "results"]
    assert len(results_artifact) == 1
    assert {"results.json", "matrix.csv", "matrix.png"} <= set(results_artifact[0]["files"])


def test_cli_compare_offline_one_wandb_run_per_strategy_and_seed(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--strategies", "naive,si", "--seeds", "1", "--epochs", "1", "--hidden", "32",
                 "--out", str(out), "--quiet", "--wandb", "--wandb-mode", "offline", "--wandb-project", "t",
                 "--plots", "all", "--plot-format", "png,svg"]) == 0
    runs = _offline_runs(out / "wandb")
    assert len(runs) == 3  # one per (strategy, seed), and the group's summary run
    logged = {d["config"].get("strategy", d["run"]["job_type"]): d for d in runs}  # job type: the display name
    assert set(logged) == {"naive", "si", "summary"} and all(d["run"]["project"] == "t" for d in logged.values())
    for name in ("naive", "si"):
        res = json.loads((out / f"{name}-seed0" / "results.json").read_text())
        _check_run_against_results(logged[name], res, group="cmp")
        assert logged[name]["run"]["name"] == f"{name}-seed0"
        assert logged[name]["run"]["tags"] == ["split-mnist-5k", "task-il"]  # benchmark and setting, no buffer
        cfg = logged[name]["config"]
        assert (cfg["setting"], cfg["head_sizes"], cfg["device"]) == ("task", [2] * 5, res["config"]["device"])
        assert cfg["provenance"]["command"] == res["provenance"]["command"]
        assert res["provenance"]["command"].startswith("clframework compare --strategies naive,si")
    # the summary run: the head-to-head table and the paired tests of summary.json, in the same group
    summary, logged_summary = json.loads((out / "summary.json").read_text()), logged["summary"]
    assert logged_summary["run"]["group"] == "cmp" and logged_summary["run"]["name"] == "cmp-summary"
    assert logged_summary["summary"]["head_to_head._type"] == "table-file"
    assert logged_summary["summary"]["paired._type"] == "table-file"
    for name in ("naive", "si"):
        assert logged_summary["summary"][f"{name}/acc_mean"] == summary["strategies"][name]["acc_mean"]
    figures = sorted(f.stem for f in out.glob("fig*.png"))  # the study's figures, beside its tables
    assert figures and all(logged_summary["summary"][f"plots/{f}._type"] == "image-file" for f in figures)
    for f in ("summary.json", "table.md", "table.csv", "fig3_per_task.png", "fig4_average.svg",
              "fig5_omega_correlation.png"):
        assert (out / f).stat().st_size > 0
    assert "W&B: project t, offline" in capsys.readouterr().out


def test_wandb_failure_warns_and_local_results_are_complete(tmp_path, mnist_stream):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("W&B cannot create its run folder under a file")
    cfg = RunConfig(strategy="naive", benchmark="split-mnist-5k", epochs=1, hidden=[16])
    logger = WandbLogger(cfg.resolved(), mode="offline", wandb_dir=blocker / "wandb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run(cfg, tmp_path / "run", quiet=True, callbacks=[logger], stream=mnist_stream).to_json()
    assert logger.failed and logger.run is None
    assert any("W&B initialisation failed" in str(w.message) for w in caught)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["accuracy_matrix"] == res["accuracy_matrix"] and len(saved["accuracy_matrix"]) == 2
    assert (tmp_path / "run" / "matrix.csv").read_text().splitlines()[0] == "after_task," + ",".join(res["tasks"])


def test_bad_mode_is_an_error_before_training(capsys):
    with pytest.raises(ValueError, match="online, offline, disabled"):
        check_mode("sometimes")
    with pytest.raises(SystemExit):  # argparse rejects it with the allowed choices
        main(["run", "--strategy", "si", "--wandb", "--wandb-mode", "sometimes"])
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_sweep_file_command_maps_to_cli_sets():
    """docs/sweep-si-c.yaml's command, expanded by wandb's own sweep code, parses as `run --strategy si --set c=...`."""
    from pathlib import Path

    import yaml
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    from clframework.apps.cli import _parse_sets, build_parser

    sweep = yaml.safe_load((Path(__file__).resolve().parents[1] / "docs" / "sweep-si-c.yaml").read_text())
    assert sweep["metric"]["name"] == "acc" and 0.0 in sweep["parameters"]["c"]["values"]
    for params in ({"c": 0.1}, {"c": 10.0, "xi": 0.01}):
        macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
        macros["env"] = []
        argv = [w for c in create_sweep_command(sweep["command"])
                for w in (macros[c[2:-1]] if c.startswith("${") else [c])]
        assert argv[0] == sweep["program"] == "clframework"
        args = build_parser().parse_args(argv[1:])
        assert args.command == "run" and args.strategy == "si" and args.wandb and args.epochs == 10
        assert _parse_sets(args.set) == {k: str(v) for k, v in params.items()}


def test_docs_examples_run(tmp_path, docs_python):
    """docs/wandb.md (offline compare, reading the runs back) and docs/results-schema.md (Fig. 5 with fine-tuning)."""
    from pathlib import Path

    from test_docs import run_document

    docs = Path(__file__).resolve().parents[1] / "docs"
    run_document(docs / "wandb.md", tmp_path, docs_python)
    assert len(list((tmp_path / "cmp" / "wandb").glob("offline-run-*"))) == 3  # 2 runs and the summary run
    run_document(docs / "results-schema.md", tmp_path, docs_python)
    assert (tmp_path / "fig5.png").stat().st_size > 0 and (tmp_path / "fig5.svg").stat().st_size > 0


def _tiny(tmp_path, *extra):
    return ["run", "--strategy", "naive", "--epochs", "1", "--hidden", "16", "--tasks", "2", "--quiet",
            "--out", str(tmp_path / "run"), *extra]


def test_wandb_settings_from_environment_and_flags(tmp_path, python):
    """$WANDB_PROJECT/ENTITY/TAGS/NAME are honoured; the flags win over them. (A process each: wandb reads its
    environment once per process.)"""
    env = {"WANDB_PROJECT": "env-project", "WANDB_ENTITY": "env-team", "WANDB_TAGS": "a,b",
           "WANDB_NAME": "env-name", "WANDB_MODE": "offline"}
    auto = ["split-mnist-5k", "task-il"]  # the benchmark and setting, beside the user's tags (naive has no buffer)
    cases = {"env": ([], ("env-project", "env-team", ["a", "b"] + auto, "env-name")),
             "flags": (["--wandb-project", "p", "--wandb-entity", "e", "--wandb-tags", "x,y", "--wandb-name", "mine"],
                       ("p", "e", ["x", "y"] + auto, "mine"))}
    for label, (flags, expected) in cases.items():
        argv = _tiny(tmp_path / label, "--wandb", *flags)
        proc = python.run(["-m", "clframework", *argv], env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (run_dir,) = (tmp_path / label / "run" / "wandb").glob("offline-run-*")
        logged = read_offline_run(run_dir)["run"]
        assert (logged["project"], logged["entity"], logged["tags"], logged["name"]) == expected, label
        assert f"upload with `wandb sync {run_dir}`" in proc.stdout


def test_run_names_differ_by_changed_hyperparameters_and_seed():
    from clframework.evaluation.wandb_logger import run_name

    def name(**hparams):
        cfg = RunConfig("si", "split-mnist-5k", hparams=hparams, seed=hparams.pop("seed", 0))
        return run_name(cfg.resolved())

    assert name() == "si-seed0"  # the benchmark's preset equals SI's defaults
    assert name(c=0.1) == "si-c0.1-seed0" and name(c=0.1, xi=0.01, seed=2) == "si-c0.1-xi0.01-seed2"
    assert len({name(c=c) for c in (0.0, 0.01, 0.1, 1.0, 10.0)}) == 5  # the sweep's five trials
    assert run_name(RunConfig("si", "split-mnist-5k", hparams={"c": 0.5}).resolved(), "study") == "study-si-c0.5-seed0"


def test_names_carry_what_the_user_set_and_tags_the_benchmark_setting_and_buffer():
    """Issue 31: seq-mnist's preset (DER++: minibatch_size 128 at buffer 200) is in the config, not the name; a memory
    size other than the default is, and picks its own preset row (buffer 500: minibatch_size 10, alpha 1.0)."""
    from clframework.evaluation.wandb_logger import default_tags, run_name

    def named(**hparams):
        resolved = RunConfig("derpp", "seq-mnist", hparams=hparams).resolved()
        return run_name(resolved), default_tags(resolved), resolved["hparams"]

    name, tags, hparams = named()
    assert name == "derpp-seed0" and hparams["minibatch_size"] == 128 and tags == ["seq-mnist", "class-il", "buffer200"]
    name, tags, hparams = named(memory_size=500)
    assert name == "derpp-memory_size500-seed0" and hparams["minibatch_size"] == 10 and tags[-1] == "buffer500"
    assert named(memory_size=500, alpha=0.3)[0] == "derpp-memory_size500-alpha0.3-seed0"
    logger = WandbLogger(RunConfig("er_ace", "split-mnist-5k", benchmark_options={"setting": "class"}).resolved(),
                         mode="disabled", tags=["mine"])
    assert logger.tags == ["mine", "split-mnist-5k", "class-il", "buffer200"] and logger.job_type == "ER-ACE"


def test_inside_a_users_active_run_logs_to_a_new_run_and_leaves_theirs_open(tmp_path, mnist_stream):
    import wandb

    theirs = wandb.init(project="user", mode="offline", dir=str(tmp_path))  # as in a user's own script
    try:
        cfg = RunConfig(strategy="naive", benchmark="split-mnist-5k", epochs=1, hidden=[16])
        logger = WandbLogger(cfg.resolved(), mode="offline", wandb_dir=tmp_path / "ours")
        run(cfg, None, quiet=True, callbacks=[logger], stream=mnist_stream)
        assert wandb.run is theirs  # not replaced, and still open: they can go on logging
        theirs.log({"their_metric": 1.0})
    finally:
        theirs.finish()
    (ours,) = _offline_runs(tmp_path / "ours" / "wandb")
    assert ours["run"]["name"] == "naive-seed0"
    (logged,) = _offline_runs(tmp_path / "wandb")
    assert logged["run"]["project"] == "user" and [h["their_metric"] for h in logged["history"]] == [1.0]
    assert not any("accuracy/task1" in h for h in logged["history"])


def test_failed_online_start_switches_the_process_to_offline_once(tmp_path, monkeypatch, mnist_stream):
    """An online start that fails although the server answered the run's request (e.g. a bad API key; here the
    request is stubbed and the server is not there): one warning, the first run falls back to offline, later runs
    start offline at once, and the W&B start-up is not counted in the run's seconds."""
    import time

    from clframework.evaluation import wandb_logger

    monkeypatch.setattr(wandb_logger, "_offline_after_failure", False)
    monkeypatch.setattr(wandb_logger, "server_unreachable", lambda timeout: None)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    cfg = RunConfig(strategy="naive", benchmark="split-mnist-5k", epochs=1, hidden=[16])
    timings = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(2):
            logger = WandbLogger(cfg.resolved(), mode="online", wandb_dir=tmp_path, init_timeout=3)
            start = time.perf_counter()
            res = run(replace(cfg, seed=seed), None, quiet=True, callbacks=[logger], stream=mnist_stream)
            timings.append((time.perf_counter() - start, res.wall_seconds))
    fallbacks = [w for w in caught if "online start failed" in str(w.message)]
    assert len(fallbacks) == 1 and "every later run of this process log offline" in str(fallbacks[0].message)
    (first_total, first_wall), (second_total, second_wall) = timings
    assert first_total - first_wall >= 3  # the failed online start (>= its 3 s timeout) is outside the run's seconds
    assert second_total - second_wall < 2  # the second run did not wait for the network again (its training's
    # seconds, which vary with the machine's load, are left out of the comparison)
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2


def test_unwritable_wandb_dir_is_an_error_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(_tiny(tmp_path, "--wandb", "--wandb-mode", "offline", "--wandb-dir", str(blocker / "w"))) == 2
    err = capsys.readouterr().err
    assert "--wandb-dir" in err and "not a writable folder" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "results.json").exists()


def test_wandb_mode_disabled_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(_tiny(tmp_path, "--wandb")) == 0
    assert (tmp_path / "run" / "results.json").is_file()
    assert not list((tmp_path / "run" / "wandb").glob("*run-*"))


def test_tune_with_wandb_names_every_trial(tmp_path):
    out = tmp_path / "tune"
    assert main(["tune", "--strategy", "si", "--grid", "c=0,10", "--epochs", "1", "--hidden", "16", "--tasks", "2",
                 "--quiet", "--out", str(out), "--wandb", "--wandb-mode", "offline"]) == 0
    names = sorted(d["run"]["name"] for d in _offline_runs(out / "wandb"))
    chosen = json.loads((out / "tune.json").read_text())["chosen"]["c"]
    assert names == sorted(["si-c0-seed0-valid", "si-c10-seed0-valid", f"si-c{chosen:g}-seed0"])


def test_resumed_run_continues_its_offline_wandb_run(tmp_path, mnist_stream):
    """Interrupted in task 2 (its checkpoint: after task 1), then resumed: one offline folder, the same run id, W&B's
    step and our epoch and task counters continuing, and the history equal to results.json, as if never stopped
    (the epoch trained after the checkpoint and again on resume is logged once)."""
    import wandb

    cfg = RunConfig(strategy="naive", benchmark="split-mnist-5k", epochs=2, hidden=[16])
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out, quiet=True, stream=mnist_stream, callbacks=[
            WandbLogger(cfg.resolved(), mode="offline", wandb_dir=out, group="g"), CtrlC(at=3)])
    wandb.teardown()
    (first,) = (out / "wandb").glob("offline-run-*")
    assert max(h.get("epochs_trained", 0) for h in read_offline_run(first)["history"]) == 3
    run(cfg, out, quiet=True, stream=mnist_stream, resume=True,
        callbacks=[WandbLogger(cfg.resolved(), mode="offline", wandb_dir=out, group="g")])
    (logged,) = _offline_runs(out / "wandb")
    res = json.loads((out / "results.json").read_text())
    assert res["resumed_from"]["task"] == 1 and logged["run"]["id"] == first.name.rsplit("-", 1)[1]
    _check_run_against_results(logged, res, group="g")
    assert [h["epochs_trained"] for h in logged["history"] if "epochs_trained" in h] == [1, 2, 3, 4]
    assert [h["_step"] for h in logged["history"]] == list(range(len(logged["history"])))


def test_resumed_run_names_its_wandb_run_online_and_offline():
    """What wandb.init is given for a resumed run in either mode: the saved id, with W&B's resume="allow"."""
    cfg = RunConfig(strategy="naive", benchmark="split-mnist-5k").resolved()
    fresh = WandbLogger(cfg, mode="online")
    assert "id" not in fresh.init_arguments("online") and "resume" not in fresh.init_arguments("online")
    logger = WandbLogger(cfg, mode="online")
    logger.on_resume({"run_id": "abc123", "epochs_trained": 7, "tasks_evaluated": 3})
    for mode in ("online", "offline"):
        args = logger.init_arguments(mode)
        assert (args["id"], args["resume"], args["mode"]) == ("abc123", "allow", mode)
    assert logger.epochs_trained == 7


def test_continual_eval_step_indexed_charts_survive_a_resume(tmp_path, mnist_stream):
    """--eval-every: one history row per evaluation point against `train_steps`, equal to results.json's curve,
    each point once although the run was interrupted in task 2 and resumed from its checkpoint after task 1; the
    continual-evaluation metrics in the run's summary."""
    import wandb

    cfg = RunConfig(strategy="naive", benchmark="split-mnist-5k", epochs=2, hidden=[16], eval_every=4, eval_subset=50)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out, quiet=True, stream=mnist_stream, callbacks=[
            WandbLogger(cfg.resolved(), mode="offline", wandb_dir=out, group="g"), CtrlC(at=3)])
    wandb.teardown()
    run(cfg, out, quiet=True, stream=mnist_stream, resume=True,
        callbacks=[WandbLogger(cfg.resolved(), mode="offline", wandb_dir=out, group="g")])
    (logged,) = _offline_runs(out / "wandb")
    res = json.loads((out / "results.json").read_text())
    assert res["resumed_from"]["task"] == 1
    rows = [h for h in logged["history"] if "continual/average_seen" in h]  # (train/loss rows share the axis)
    points = res["continual_eval"]["points"]
    assert [h["train_steps"] for h in rows] == [p["step"] for p in points]
    for h, p in zip(rows, points):
        assert [h[f"continual/task{j + 1}"] for j in range(len(p["accuracy"]))] == p["accuracy"]
        assert [h[f"continual_task_il/task{j + 1}"] for j in range(len(p["accuracy"]))] == p["task_il_accuracy"]
        assert h["continual/average_seen"] == pytest.approx(sum(p["accuracy"]) / len(p["accuracy"]))
    for m in ("min_acc", "wc_acc", "wf10", "wp10", "lca10", "a_auc"):
        assert logged["summary"][m] == res["metrics"][m]
