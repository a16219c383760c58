"""The paper's experiments: configurations against PROTOCOLS.md (table-driven), and quick runs end to end."""
import json

import pytest

from clframework.apps.cli import main
from clframework.apps.reproduce import EXPERIMENTS, plan

# (experiment, dataset) -> the paper's settings, as written in ../shared/reference/PROTOCOLS.md
PAPER = {
    ("split-mnist", "mnist"): dict(model="mlp", hidden=[256, 256], batch_size=64, epochs=10, lr=1e-3,
                                   reset_optimizer=True, seeds=10, spread="sem", figures=(3,),
                                   si={"c": 1.0, "xi": 1e-3}, setting="task", n_tasks=5),
    ("permuted-mnist", "mnist"): dict(model="mlp", hidden=[2000, 2000], batch_size=256, epochs=20, lr=1e-3,
                                      reset_optimizer=False, spread="sem", figures=(4, 5),
                                      si={"c": 0.1, "xi": 0.1}, setting="domain", n_tasks=10),
    ("split-cifar", "cifar"): dict(model="cnn", batch_size=256, epochs=60, lr=1e-3, reset_optimizer=True, seeds=5,
                                   spread="sd", figures=(6,), si={"c": 0.1, "xi": 1e-3}, setting="task", n_tasks=6),
}


@pytest.mark.parametrize("key", sorted(PAPER))
def test_experiment_configuration_matches_the_paper(key):
    name, dataset = key
    expected = PAPER[key]
    p = plan(name, dataset)
    exp = EXPERIMENTS[name]
    assert exp.spread == expected["spread"] and exp.figures == expected["figures"]
    if "seeds" in expected:
        assert p["seeds"] == expected["seeds"]
    si_arms = [c for label, c in p["configs"].items() if c.strategy == "si" and c.hparams["c"] > 0]
    assert len(si_arms) == 1 and si_arms[0].hparams == expected["si"]
    fine_tuning = [c for c in p["configs"].values() if c.strategy == "si" and c.hparams["c"] == 0]
    assert fine_tuning, "every experiment has the c = 0 baseline"
    for cfg in p["configs"].values():
        train = cfg.resolved()["train"]
        for field in ("model", "hidden", "batch_size", "epochs", "lr", "reset_optimizer"):
            if field in expected:
                assert train[field] == expected[field], (cfg.strategy, field)
        assert train["optimizer"] == "adam"
    if name == "permuted-mnist":
        dropouts = sorted(c.resolved()["train"]["dropout"] for c in p["configs"].values())
        assert dropouts == [0.0, 0.0, 0.0, 0.5]  # SGD with dropout 0.5 on hidden layers


def test_quick_mode_prints_what_it_scaled():
    p = plan("permuted-mnist", "mnist", quick=True)
    assert p["scaled"] == ["epochs 20 -> 2", "hidden (2000, 2000) -> (256, 256)", "n_tasks 10 -> 5", "seeds 3 -> 2"]
    assert all(c.resolved()["train"]["hidden"] == [256, 256] for c in p["configs"].values())
    assert plan("permuted-mnist", "mnist-5k", quick=True)["scaled"] == ["epochs 10 -> 2", "n_tasks 10 -> 5", "seeds 3 -> 2"]


@pytest.mark.slow
def test_reproduce_quick_end_to_end_on_embedded_data(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["reproduce", "split-mnist", "--dataset", "mnist-5k", "--quick", "--seeds", "1", "--epochs", "1",
                 "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # --seeds and --epochs override what --quick chose, and the printed scaling is the one applied
    assert "scaled from the paper's protocol: seeds 10 -> 1 (--seeds); epochs 10 -> 1 (--epochs)" in printed
    result = json.loads((out / "reproduction.json").read_text())
    assert set(result["arms"]) == {"fine-tuning (c=0)", "SI (c=1)", "EWC (exact Fisher)"}
    for arm in result["arms"].values():
        assert len(arm["final_per_task_mean"]) == 5
    run = json.loads((out / "si-c-1-seed0" / "results.json").read_text())
    assert run["config"]["epochs"] == 1 and run["hparams"]["c"] == 1.0
    assert {"fig3_per_task.png", "fig4_average.png", "fig5_omega_correlation.png"} <= set(result["figures"])
    assert (out / "reproduction.md").read_text().count("| SI (c=1) |") == 1


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [False, True])
def test_each_finished_run_is_reported_once(tmp_path, capsys, quiet):
    """A finished run's line appears once: from the progress view, or (--quiet) as the numbered log line."""
    assert main(["reproduce", "split-mnist", "--dataset", "mnist-5k", "--quick", "--seeds", "1", "--epochs", "1",
                 "--arms", "si", "--out", str(tmp_path / "rep")] + (["--quiet"] if quiet else [])) == 0
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).replace("\r", "\n").splitlines()
             if "SI (c=1) seed 0" in line and "ACC" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("[1/1]") == quiet


@pytest.mark.slow
def test_tune_picks_the_best_validation_value_and_reports_its_test_accuracy(tmp_path):
    out = tmp_path / "tune"
    assert main(["tune", "--strategy", "si", "--grid", "c=0,1000", "--benchmark", "split-mnist-5k", "--epochs", "1",
                 "--quiet", "--out", str(out)]) == 0
    res = json.loads((out / "tune.json").read_text())
    valid = {r["point"]["c"]: r["valid_acc_mean"] for r in res["results"]}
    assert set(valid) == {0.0, 1000.0}
    assert res["chosen"]["c"] == max(valid, key=valid.get)
    assert 0.5 < res["test_acc_mean"] <= 1.0 and len(res["test_accs"]) == 1


@pytest.mark.slow
def test_reproduce_split_cifar_quick_on_generated_files(tmp_path, capsys):
    """The CIFAR protocol end to end (CNN, from-scratch control, Fig. 6) on small files in the real CIFAR format."""
    from fake_datasets import cifar_arrays, write_cifar10, write_cifar100

    write_cifar10(tmp_path / "data", cifar_arrays(10, 40, 20))
    write_cifar100(tmp_path / "data", cifar_arrays(100, 400, 200, seed=1))
    out = tmp_path / "cifar"
    assert main(["reproduce", "split-cifar", "--quick", "--seeds", "2", "--epochs", "1", "--quiet",
                 "--data-root", str(tmp_path / "data"), "--out", str(out), "--plot-format", "png,svg"]) == 0
    assert "cifar100_tasks 5 -> 2" in capsys.readouterr().out
    result = json.loads((out / "reproduction.json").read_text())
    assert result["spread"] == "sd" and len(result["tasks"]) == 3
    scratch = result["controls"]["scratch"]
    assert len(scratch["per_seed"]) == 2 and len(scratch["per_task_mean"]) == 3
    assert "fig6_final_per_task.png" in result["figures"] and (out / "fig6_final_per_task.svg").stat().st_size > 0
    run = json.loads((out / "si-c-0-1-seed1" / "results.json").read_text())
    assert run["config"]["model"] == "cnn" and run["config"]["head_sizes"] == [10, 10, 10]
