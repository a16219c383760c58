"""README.md: its tables are whole (no row cut off by a paragraph) and the dependency table names every package that
setup.cfg installs."""
import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_table_row_follows_a_paragraph():
    lines = (ROOT / "README.md").read_text().splitlines()
    for i, line in enumerate(lines[1:], start=1):
        if line.startswith("|"):
            before = lines[i - 1]
            assert before.startswith("|") or (before == "" and i + 1 < len(lines) and
                                              re.match(r"\|[-| ]+\|$", lines[i + 1])), \
                f"README.md line {i + 1} is a table row cut off from its table by text: {line!r}"


def test_dependency_table_names_every_installed_package():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    options = cfg["options"]["install_requires"].split() + \
        [r for extra in cfg["options.extras_require"].values() for r in extra.split()]
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in options if r and r[0].isalpha()}
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Why each dependency is there"):]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| ")]
    listed = {w.lower() for row in rows for w in re.findall(r"[A-Za-z0-9_.-]+", row)}
    assert names <= listed, f"packages setup.cfg installs that README's table leaves out: {sorted(names - listed)}"


def test_the_cpu_install_pins_are_satisfiable_by_torchs_cpu_wheels():
    """README's CPU-only install takes torch and torchvision from torch's CPU index, whose versions carry `+cpu`:
    setup.cfg's pins must accept them, or the second `pip install -e .` would replace them with the CUDA build."""
    from packaging.requirements import Requirement

    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if "download.pytorch.org/whl/cpu" in line and "pip" in line)
    pinned = dict(re.findall(r"\b(torch|torchvision)==([\w.]+)", line))
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requires = {Requirement(r).name: Requirement(r) for r in cfg["options"]["install_requires"].split("\n") if r}
    assert set(pinned) == {"torch", "torchvision"}
    for name, version in pinned.items():
        assert requires[name].specifier.contains(f"{version}+cpu"), (name, version, requires[name])
