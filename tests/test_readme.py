"""The README's commands, run in miniature: the quick start trains, the generate command samples from what it
wrote, and the test command is the one CI runs."""

from __future__ import annotations

import functools
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, exit_output, make_text

from spectral_lightning.cli import cli_main

README = (REPO / "README.md").read_text(encoding="utf-8")
# The README is the front page; the guide holds the longer sections (generate, export, conversion, ...).
DOCS = README + "".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "docs").glob("*.md")))
DEBUG = [
    "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32",
    "--data.block_size", "16", "--data.batch_size", "8", "--data.batches_per_epoch", "5",
    "--trainer.max_steps", "10", "--model.warmup_steps", "2",
]  # fmt: skip


def section(title: str) -> str:
    """The text of the section headed ``## title`` in the README or a page of docs/."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |^# |\Z)", DOCS, flags=re.S | re.M)
    assert match, f"README and docs/ have no section '## {title}'"
    return match.group(1)


def bash_lines(text: str) -> list[str]:
    """Command lines of the ```bash blocks in ``text`` (continuations joined, comments dropped)."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the package comes from the install, not from PYTHONPATH
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_quick_start_is_install_then_train_and_one_test_command() -> None:
    assert "## Quick start" in README  # on the front page, not in docs/
    install, train = bash_lines(section("Quick start"))[:2]
    assert install.startswith("pip install") and "-r requirements.txt" in install
    assert train == "python cli.py fit --config configs/dct4x.yaml"
    (test_command,) = [line for line in bash_lines(section("Quick start"))[2:] if "pytest" in line]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(test_command)}$", ci, flags=re.M), "CI must run the README's test command"


def test_quick_start_then_generate_in_miniature(tmp_path: Path) -> None:
    """The README's train command at debug size on a small text (no download), then its generate command on
    the checkpoint it wrote: a checkpoint, TensorBoard events and text in the vocabulary come out."""
    (tmp_path / "configs").symlink_to(REPO / "configs")
    text = make_text(6_000, seed=2)
    (tmp_path / "tiny.txt").write_text(text, encoding="utf-8")
    train = shlex.split(bash_lines(section("Quick start"))[1])
    assert train[:2] == ["python", "cli.py"]
    run([sys.executable, str(REPO / "cli.py"), *train[2:], "--data.path", "tiny.txt", *DEBUG], tmp_path)

    run_dir = tmp_path / "runs" / "dct4x" / "version_0"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))

    (generate,) = [line for line in bash_lines(section("Generate text")) if "spectral_lightning.generate" in line]
    args = shlex.split(generate)
    assert args[:3] == ["python", "-m", "spectral_lightning.generate"]
    args = [a.replace("ROMEO:", "the cat") for a in args[3:]]  # a prompt in the tiny text's vocabulary
    args += ["--max_new_tokens", "40"]
    out = run([sys.executable, "-m", "spectral_lightning.generate", *args], tmp_path).stdout
    assert out.count("the cat") >= 3  # --num_samples 3 in the README
    assert set(out) <= set(text) | {"-", "\n"}


@functools.cache
def help_text(target: tuple[str, ...]) -> str:
    """The ``--help`` of a command (``cli.py fit`` for ``cli.py``, ``-m <module>`` for a module command), from its
    own parser in this process (the real processes are run above and in test_cli), once per command."""
    if target == ("cli.py",):
        main, argv = cli_main, ["fit", "--help"]
    else:
        assert target[0] == "-m", target
        main, argv = importlib.import_module(target[1]).main, ["--help"]
    return exit_output(main, argv)


@pytest.mark.parametrize("name", ["Export", "Compress a trained dense model"])
def test_documented_commands_name_real_options(name: str) -> None:
    """Every --option the README gives to cli.py or a module command is accepted by its parser."""
    for line in bash_lines(section(name)):
        args = shlex.split(line)
        target = args[1:3] if args[1] == "-m" else args[1:2]
        helptext = help_text(tuple(target))
        for option in (a for a in args if a.startswith("--") and a != "--config"):
            assert option.split("=")[0] in helptext, f"{option} is not an option of {' '.join(target)}"


def test_every_local_link_of_the_readme_and_docs_resolves() -> None:
    """The README is a front page that links to docs/: every relative link points to a file that exists, and
    every ``#anchor`` to a heading of that file."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) > 1
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), flags=re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{page.name} links to {target}: no such heading"
