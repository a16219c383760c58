"""Registry: creation by name, up-front hyperparameter checks, decorator, --plugin and entry-point registration."""
import textwrap

import pytest

from clframework import RegistryError, Strategy, available_strategies, make_strategy, register_strategy
from clframework.apps.cli import main


def test_builtins_are_registered_with_paper_defaults():
    assert {"naive", "ewc", "si"} <= set(available_strategies())
    si = make_strategy("si")
    assert (si.c, si.xi, si.clamp, si.omega_from_total_loss) == (1.0, 1e-3, True, False)
    assert make_strategy("ewc").fisher_kind == "exact"


def test_unknown_name_lists_registered_names():
    with pytest.raises(RegistryError, match=r"unknown strategy .sii.*registered: agem, cumulative, der, derpp, er, "
                                            r"er_ace, ewc, gdumb, icarl, joint, lwf, mas, mir, naive, replay, si"):
        make_strategy("sii")


@pytest.mark.parametrize("hparams, message", [
    ({"c": -1}, r"'c' = -1.0 is invalid; accepted: a number >= 0"),
    ({"xi": 0}, r"'xi' = 0.0 is invalid; accepted: a number > 0"),
    ({"c": "abc"}, r"'c' must be a number"),
    ({"lamda": 1}, r"no hyperparameter 'lamda'; accepted: c \(default 1.0\)"),
    ({"clamp": "maybe"}, r"'clamp' must be a boolean"),
])
def test_invalid_hyperparameters_name_the_parameter(hparams, message):
    with pytest.raises(RegistryError, match=message):
        make_strategy("si", **hparams)


def test_strings_from_the_command_line_are_converted():
    si = make_strategy("si", c="0.5", clamp="false")
    assert si.c == 0.5 and si.clamp is False
    with pytest.raises(RegistryError, match="'fisher' = 'sampled' is invalid; accepted: 'exact' or 'empirical'"):
        make_strategy("ewc", fisher="sampled")


def test_decorator_registers_a_custom_strategy(scratch_registry):
    @register_strategy("test-anchor", checks={"k": (lambda v: v > 0, "a number > 0")})
    class Anchor(Strategy):
        def __init__(self, k: float = 2.0):
            self.k = k

    assert "test-anchor" in available_strategies()
    assert make_strategy("test-anchor", k=3).k == 3.0
    with pytest.raises(RegistryError, match="'k' = -1.0 is invalid"):
        make_strategy("test-anchor", k=-1)
    with pytest.raises(TypeError, match="subclass of clframework.Strategy"):
        register_strategy("bad")(object)


def test_bad_cli_input_fails_before_training(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["run", "--strategy", "si", "--set", "xi=-2", "--out", str(out), "--quiet"]) == 2
    assert "hyperparameter 'xi'" in capsys.readouterr().err
    assert main(["run", "--strategy", "nope", "--out", str(out), "--quiet"]) == 2
    assert main(["compare", "--strategies", "naive,si", "--set", "fisher=exact", "--out", str(out)]) == 2
    assert "none of ['naive', 'si'] has a hyperparameter 'fisher'" in capsys.readouterr().err
    assert main(["run", "--strategy", "si", "--plugin", "no_such_module_xyz", "--out", str(out)]) == 2
    assert "cannot import plugin 'no_such_module_xyz'" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


PLUGIN = textwrap.dedent('''
    from clframework import Strategy, register_strategy

    @register_strategy("ep-strategy")
    class EntryPointStrategy(Strategy):
        def __init__(self, weight: float = 1.0):
            self.weight = weight
''')


def test_entry_point_group_registers_third_party_strategies(tmp_path, python):
    (tmp_path / "thirdparty_cl.py").write_text(PLUGIN)
    dist = tmp_path / "thirdparty_cl-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-cl\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[clframework.strategies]\nep = thirdparty_cl\n")
    code = "from clframework import make_strategy; print(make_strategy('ep-strategy', weight='2').weight)"
    proc = python.run(["-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2.0"
