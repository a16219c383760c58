"""One installed name: the wheel holds only `clframework`, a user's own top-level folders do not collide with ours,
and every module imports on its own in any order (no import cycle, nothing depending on import order)."""
import random
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and starts interpreters

ROOT = Path(__file__).resolve().parents[1]


def _modules():
    """Every module of the installed package, by its `clframework.*` name."""
    mapping = {"clframework": ROOT / "clframework", "clframework.strategies": ROOT / "strategies",
               "clframework.benchmarks": ROOT / "benchmarks", "clframework.evaluation": ROOT / "evaluation"}
    names = []
    for pkg, folder in mapping.items():
        for f in sorted(folder.rglob("*.py")):
            if "__pycache__" in f.parts or f.name == "__main__.py":
                continue
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            names.append(".".join([pkg, *parts]))
    return names


def test_wheel_has_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob("clframework-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"clframework"}
    for sub in ("strategies/si.py", "benchmarks/embedded.py", "evaluation/evaluator.py", "apps/cli.py"):
        assert f"clframework/{sub}" in names


def test_user_project_with_same_folder_names(tmp_path):
    """A research repository with its own evaluation/, benchmarks/, strategies/ imports clframework, trains a stream,
    and uses --plugin from that directory."""
    for pkg in ("evaluation", "benchmarks", "strategies"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(f"MINE = {pkg!r}\n")
    (tmp_path / "myplugin.py").write_text(textwrap.dedent("""
        from clframework import Strategy, register_strategy

        @register_strategy("my-finetune")
        class MyFinetune(Strategy):
            pass
    """))
    script = textwrap.dedent("""
        import evaluation, benchmarks, strategies
        assert (evaluation.MINE, benchmarks.MINE, strategies.MINE) == ("evaluation", "benchmarks", "strategies")
        from clframework import Trainer, make_benchmark, make_strategy, mlp
        stream = make_benchmark("split-mnist-5k").subset([0, 1])
        model = mlp(784, stream.head_sizes, hidden=(16,))
        result = Trainer(model, make_strategy("si"), epochs=1, device="cpu", quiet=True).fit(stream)
        assert len(result.accuracy_matrix) == 2
        print("OK", evaluation.MINE)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "OK evaluation" in out.stdout
    out = subprocess.run([sys.executable, "-m", "clframework", "list", "--plugin", "myplugin"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "my-finetune" in out.stdout and "split-mnist-5k" in out.stdout


@pytest.fixture(scope="module")
def third_party_imported():
    """Processes forked from one that has imported torch and Avalanche (2 and 5 of the 8 s that importing every
    module takes) and none of clframework: our own modules' imports, their order and cycles are what is tested."""
    from forkserver import ForkServer

    with ForkServer(["torch", "avalanche"], cwd=ROOT / "tests") as server:
        yield server


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffled"])
def test_every_module_imports_in_any_order(order, third_party_imported):
    names = _modules()
    if order == "reverse":
        names = names[::-1]
    elif order.startswith("shuffled"):
        random.Random(0).shuffle(names)
    code = ("import importlib, sys\nassert not [m for m in sys.modules if m.startswith('clframework')]\n"
            "for n in %r:\n    importlib.import_module(n)\n" % names)
    out = third_party_imported.run(["-c", code])
    assert out.returncode == 0, out.stderr



def test_wandb_logger_sits_below_the_trainer():
    """The callback interface lives below both (clframework.callbacks): the W&B logger imports no trainer, and the
    interface's old home still gives the same class."""
    code = ("import sys\nimport clframework.evaluation.wandb_logger\n"
            "assert 'clframework.trainer' not in sys.modules, 'the W&B logger imported the trainer'\n"
            "from clframework.callbacks import TrainerCallback\nfrom clframework.trainer import TrainerCallback as T\n"
            "import clframework\nassert T is TrainerCallback is clframework.TrainerCallback\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests")
    assert out.returncode == 0, out.stderr
