"""The installed project: the ``spectral-lightning`` command runs the CLI of ``python cli.py`` from any folder, and
requirements.txt asks for what pyproject.toml declares.

These tests need the project installed (``pip install -e .``, which the README's ``pip install -r
requirements.txt`` does).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from pathlib import Path

import pytest
from helpers import REPO, make_text
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import spectral_lightning

NOT_INSTALLED = "spectral-lightning is not installed here: run `pip install -e .` in the repository root"


def console_script() -> EntryPoint:
    """The ``spectral-lightning`` console-script entry point of the installed distribution."""
    found = list(entry_points(group="console_scripts", name="spectral-lightning"))
    if not found:
        pytest.fail(NOT_INSTALLED)
    (entry,) = found
    return entry


def test_installed_version_is_the_package_version() -> None:
    try:
        installed = version("spectral-lightning")
    except PackageNotFoundError:
        pytest.fail(NOT_INSTALLED)
    assert installed == spectral_lightning.__version__, "reinstall (`pip install -e .`) after changing __version__"


def test_console_script_runs_the_cli_and_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's wrapper calls ``sys.exit(entry())``: after a successful run ``entry()`` must return None or 0.
    ``cli_main`` itself returns the CLI object, which ``sys.exit`` would print and turn into status 1."""
    entry = console_script()
    assert entry.value == "spectral_lightning.__main__:main"
    (tmp_path / "tiny.txt").write_text(make_text(2_000), encoding="utf-8")
    argv = [
        "spectral-lightning", "fit", "--seed_everything=0",
        "--data.path=tiny.txt", "--data.block_size=8", "--data.batch_size=2", "--data.batches_per_epoch=2",
        "--model.n_layer=1", "--model.n_head=1", "--model.n_embd=8",
        "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", argv)
    status = entry.load()()
    assert status in (None, 0)
    assert [path.name for path in tmp_path.rglob("*.ckpt")] == ["epoch=0-step=2.ckpt"]  # it trained, to the end


def test_console_script_help_lists_the_subcommands(tmp_path: Path) -> None:
    """The command is on the environment's PATH and imports the installed package from a folder outside the
    repository, with no PYTHONPATH."""
    console_script()
    command = Path(sysconfig.get_path("scripts")) / "spectral-lightning"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(command), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    usage = re.search(r"^usage: spectral-lightning .*\{([a-z,]+)\}", result.stdout, flags=re.M)
    assert usage is not None, result.stdout
    assert usage.group(1).split(",") == ["fit", "validate", "test", "predict"]


def requirements_txt() -> tuple[list[str], dict[str, Requirement]]:
    """The ``-e`` lines and the named requirements of requirements.txt (comments dropped)."""
    editable, named = [], {}
    for raw in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-e "):
            editable.append(line.removeprefix("-e ").strip())
        elif line:
            requirement = Requirement(line)
            named[requirement.name.lower()] = requirement
    return editable, named


def test_requirements_txt_installs_the_project_with_the_bounds_of_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    declared = [Requirement(r) for r in project["dependencies"] + [r for group in extras.values() for r in group]]

    editable, named = requirements_txt()
    (project_line,) = editable  # the project itself, editable, with every extra
    with_extras = re.fullmatch(r"\.\[([\w,-]+)\]", project_line)
    assert with_extras is not None, project_line
    assert sorted(with_extras.group(1).split(",")) == sorted(extras)
    assert sorted(named) == sorted({r.name.lower() for r in declared})  # once each, even if two extras name it
    for requirement in declared:
        listed = named[requirement.name.lower()]
        assert (listed.specifier, listed.extras) == (requirement.specifier, requirement.extras), requirement.name
    assert named["jsonargparse"].specifier == SpecifierSet(">=4.53,<4.54")  # the releases parse_errors.py is tested on
