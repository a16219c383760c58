"""W&B with the real wandb package, offline: what the run files hold equals results.json; failures never stop a run."""
import json
import warnings

import pytest

from clframework.apps.cli import main
from clframework.experiment import RunConfig, run
from clframework.evaluation.wandb_logger import WandbLogger, check_mode, read_offline_run


def _check_run_against_results(logged: dict, res: dict, group: str) -> None:
    assert logged["run"]["group"] == group and logged["run"]["job_type"] == res["strategy"]
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
    # per-epoch training curves
    epoch_rows = [h for h in logged["history"] if "epochs_trained" in h]
    assert [(h["train/loss"], h["train/accuracy"]) for h in epoch_rows] == [(c["loss"], c["accuracy"])
                                                                            for c in res["curves"]]
    for m in ("acc", "bwt", "fwt", "forgetting"):
        assert logged["summary"][m] == res["metrics"][m]
    assert logged["summary"]["accuracy_matrix._type"] == "table-file"
    assert logged["summary"]["accuracy_matrix_heatmap._type"] == "image-file"
    results_artifact = [a for a in logged["artifacts"] if a["type"] == "results"]
    assert len(results_artifact) == 1
    assert {"results.json", "matrix.csv", "matrix.png"} <= set(results_artifact[0]["files"])


def test_cli_compare_offline_one_wandb_run_per_strategy_and_seed(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--strategies", "naive,si", "--seeds", "1", "--epochs", "1", "--hidden", "32",
                 "--out", str(out), "--quiet", "--wandb", "--wandb-mode", "offline", "--wandb-project", "t"]) == 0
    run_dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 2
    logged = {d["run"]["job_type"]: d for d in map(read_offline_run, run_dirs)}
    assert set(logged) == {"naive", "si"} and all(d["run"]["project"] == "t" for d in logged.values())
    for name in ("naive", "si"):
        res = json.loads((out / f"{name}-seed0" / "results.json").read_text())
        _check_run_against_results(logged[name], res, group="cmp")
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
        res = run(cfg, tmp_path / "run", quiet=True, callbacks=[logger], stream=mnist_stream)
    assert logger.failed and logger.run is None
    assert any("W&B initialisation failed" in str(w.message) for w in caught)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["accuracy_matrix"] == res["accuracy_matrix"] and len(saved["accuracy_matrix"]) == 2
    assert (tmp_path / "run" / "matrix.csv").read_text().splitlines()[0] == "after_task," + ",".join(res["tasks"])


def test_bad_mode_is_an_error_before_training(capsys):
    with pytest.raises(ValueError, match="online' or 'offline"):
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
        assert argv[0] == "clframework"
        args = build_parser().parse_args(argv[1:])
        assert args.command == "run" and args.strategy == "si" and args.wandb
        assert _parse_sets(args.set) == {k: str(v) for k, v in params.items()}


def test_docs_examples_run(tmp_path):
    """docs/wandb.md (offline compare, reading the runs back) and docs/results-schema.md (Fig. 5 with fine-tuning)."""
    from pathlib import Path

    from test_docs import run_document

    docs = Path(__file__).resolve().parents[1] / "docs"
    run_document(docs / "wandb.md", tmp_path)
    assert len(list((tmp_path / "cmp" / "wandb").glob("offline-run-*"))) == 2
    run_document(docs / "results-schema.md", tmp_path)
    assert (tmp_path / "fig5.png").stat().st_size > 0 and (tmp_path / "fig5.svg").stat().st_size > 0
