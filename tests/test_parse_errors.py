"""The one-line parsing errors of :mod:`spectral_lightning.parse_errors`, against the installed jsonargparse.

Every message here is produced by parsing bad arguments with a small parser of the CLI's kinds of options, never
typed in by hand: when a jsonargparse release words a message differently, the rewrite of that shape fails
here (and its users get jsonargparse's own text, on one line, until the layer learns the new wording).
``tests/test_bad_inputs.py`` checks the same messages through the real CLI.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from jsonargparse import ActionConfigFile

import spectral_lightning.parse_errors as parse_errors
from spectral_lightning.cli import SpectralCLI
from spectral_lightning.parameterizations import Parameterization
from spectral_lightning.parse_errors import (
    SpectralArgumentParser,
    command_line,
    current_command_line,
    describe,
    option_names,
)

FILES = {
    "typo.yaml": "model:\n  n_layr: 2\n",
    "type.yaml": "model:\n  n_layer: two\n",
    "early.yaml": "model:\n  n_layer: 1\n",
    "opt.yaml": "model:\n  parameterization:\n    class_path: spectral_lightning.DCT\n"
    "    init_args:\n      compresion: 3\n",
}
FIT_OPTIONS = {"model.n_layer", "model.parameterization", "trainer.max_steps", "trainer.precision"}


def fit_parser(exit_on_error: bool = True) -> SpectralArgumentParser:
    """The options of ``cli.py fit`` in small: an int, a class chosen by ``class_path`` (``model.parameterization``),
    a Union of Literals (``trainer.precision``), the ``model`` options in a named group as LightningCLI makes."""
    parser = SpectralArgumentParser(prog="cli.py", exit_on_error=exit_on_error)
    parser.add_argument("--config", action=ActionConfigFile)
    model = parser.add_argument_group("model", name="model")
    model.add_argument("--model.n_layer", type=int, default=4)
    model.add_argument("--model.parameterization", type=Parameterization | str, default="dense")
    parser.add_argument("--trainer.max_steps", type=int, default=-1)
    precision = Literal[32, 16] | Literal["32-true", "bf16-mixed"] | None
    parser.add_argument("--trainer.precision", type=precision, default=None)
    return parser


def cli_parser() -> SpectralArgumentParser:
    """``cli.py`` with the subcommand ``fit``."""
    root = SpectralArgumentParser(prog="cli.py")
    root.add_argument("--config", action=ActionConfigFile)
    root.add_subcommands().add_subcommand("fit", fit_parser())
    return root


@dataclass
class Case:
    id: str
    args: list[str]
    expect: str  # the whole line after "error: "
    subcommands: bool = True  # False: the parser is fit_parser() alone, without subcommands


HINT = "(cli.py fit --help lists every option)"
CASES = [
    Case("unknown_option_on_command_line", ["fit", "--trainer.max_stepz", "3"],
         f"unknown option trainer.max_stepz on the command line; did you mean trainer.max_steps? {HINT}"),
    Case("unknown_option_with_equals", ["fit", "--model.n_layr=3"],
         f"unknown option model.n_layr on the command line; did you mean model.n_layer? {HINT}"),
    Case("unknown_key_in_config", ["fit", "--config", "typo.yaml"],
         f"unknown option model.n_layr in typo.yaml; did you mean model.n_layer? {HINT}"),
    Case("unknown_key_in_group", ["--config", "typo.yaml"],
         "unknown option model.n_layr in typo.yaml; did you mean model.n_layer? (cli.py --help lists every option)",
         subcommands=False),
    Case("config_before_subcommand", ["--config", "early.yaml", "fit"],
         "option model.n_layer in early.yaml comes before the subcommand: put the subcommand first "
         "(cli.py fit --config ...), or nest the file's options under 'fit:'"),
    Case("wrong_type_on_command_line", ["fit", "--model.n_layer", "two"],
         "model.n_layer='two' on the command line is not valid: expected an integer"),
    Case("wrong_type_in_config", ["fit", "--config", "type.yaml"],
         "model.n_layer='two' in type.yaml is not valid: expected an integer"),
    Case("union_of_literals", ["fit", "--trainer.precision", "bf17"],
         "trainer.precision='bf17' on the command line is not valid: expected one of: 32, 16, '32-true', "
         "'bf16-mixed', null"),
    Case("missing_config_file", ["fit", "--config", "nope.yaml"],
         "--config file nope.yaml does not exist; expected a YAML file such as configs/dct4x.yaml"),
    Case("class_option_typo", ["fit", "--config", "opt.yaml"],
         "unknown option model.parameterization.init_args.compresion of spectral_lightning.DCT in opt.yaml; "
         f"did you mean model.parameterization.init_args.compression? {HINT}"),
    Case("class_option_not_a_choice",
         ["fit", "--model.parameterization", "spectral_lightning.DCT",
          "--model.parameterization.init_args.selection", "highpass"],
         "model.parameterization.init_args.selection='highpass' on the command line is not valid: "
         "expected one of: 'lowpass', 'zigzag', 'random'"),
    Case("stray_word", ["fit", "extra"], f"unexpected argument 'extra' on the command line {HINT}"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding FILES; jsonargparse's debug mode off unless a test turns it on."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JSONARGPARSE_DEBUG", raising=False)
    return tmp_path


def build(case: Case) -> SpectralArgumentParser:
    return cli_parser() if case.subcommands else fit_parser()


def jsonargparse_message(parser: SpectralArgumentParser, args: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """What jsonargparse itself says about ``args``: its debug mode raises the message instead of exiting."""
    monkeypatch.setenv("JSONARGPARSE_DEBUG", "true")
    with pytest.raises(argparse.ArgumentError) as err:
        parser.parse_args(args)
    monkeypatch.delenv("JSONARGPARSE_DEBUG")
    return str(err.value)


def reported(parser: SpectralArgumentParser, args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What the user sees: the parser's stderr; the exit status must be 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# -- recognised shapes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_describe_rewrites_jsonargparse_message(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    message = jsonargparse_message(build(case), case.args, monkeypatch)
    assert describe(message, case.args, option_names(fit_parser()), "cli.py") == case.expect


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parser_prints_one_line_and_exits_2(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    with command_line(case.args):
        stderr = reported(build(case), case.args, capsys)
    assert stderr == f"error: {case.expect}\n"


def test_without_command_line_block_sys_argv_is_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--config", "type.yaml"]
    monkeypatch.setattr(sys, "argv", ["cli.py", *args])
    expect = "error: model.n_layer='two' in type.yaml is not valid: expected an integer\n"
    assert reported(cli_parser(), args, capsys) == expect


def test_command_line_block_sets_and_restores() -> None:
    outside = tuple(sys.argv[1:])
    with command_line(["fit", "--config", "a.yaml"]):
        assert current_command_line() == ("fit", "--config", "a.yaml")
        with command_line(["validate"]):
            assert current_command_line() == ("validate",)
        assert current_command_line() == ("fit", "--config", "a.yaml")
    assert current_command_line() == outside


def test_option_names_are_every_dotted_option() -> None:
    assert option_names(fit_parser()) == FIT_OPTIONS
    assert option_names(cli_parser()) == set()  # the root takes only --config and the subcommand


# -- anything else is jsonargparse's own text ----------------------------------------------------------------------


def test_unrecognised_jsonargparse_message_is_kept_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    message = jsonargparse_message(cli_parser(), ["fitt"], monkeypatch)  # argparse's wording for a bad subcommand
    assert message.startswith("argument subcommand: invalid choice: 'fitt'")
    assert describe(message, ["fitt"], FIT_OPTIONS) == message


@pytest.mark.parametrize(
    ("message", "expect"),
    [
        # a shape never seen: the lines joined, the list markers dropped
        ("Something new went wrong:\n  - first detail\n  - second detail",
         "Something new went wrong: first detail second detail"),
        # a known opening whose explanation is not where the layer looks: not "expected <something>"
        ('Parser key "model.n_layer":\n  The value is out of this world',
         'Parser key "model.n_layer": The value is out of this world'),
        ('Parser key "config": Could not read the file',
         'Parser key "config": Could not read the file'),
        # a known sentence with more after it
        ("Option 'model.n_layr' is not accepted, nor is anything else today",
         "Option 'model.n_layr' is not accepted, nor is anything else today"),
    ],
    ids=["new_shape", "parser_key_unknown_explanation", "config_other_problem", "known_sentence_extended"],
)  # fmt: skip
def test_unknown_shape_falls_back_to_jsonargparse_text(message: str, expect: str) -> None:
    assert describe(message, ["fit", "--model.n_layer", "4"], FIT_OPTIONS) == expect


def test_parser_prints_unknown_shape_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_parser().error("A complaint of a new kind\n  with a detail")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: A complaint of a new kind with a detail\n"


# -- debug mode and internals --------------------------------------------------------------------------------------


def test_debug_mode_raises_jsonargparse_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JSONARGPARSE_DEBUG", "true")
    with command_line(["fit", "--trainer.precision", "bf17"]), pytest.raises(argparse.ArgumentError) as err:
        cli_parser().parse_args(["fit", "--trainer.precision", "bf17"])
    message = str(err.value)
    assert message.startswith('Parser key "trainer.precision":\n') and "Given value: bf17" in message
    assert "error:" not in capsys.readouterr().err


def _private_attributes(source: str) -> list[str]:
    """``x._name`` attribute accesses (dunders aside) in ``source``."""
    tree = ast.parse(textwrap.dedent(source))
    return [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    ]


def test_no_private_attributes_of_jsonargparse_or_argparse() -> None:
    assert _private_attributes(inspect.getsource(parse_errors)) == []
    assert _private_attributes(inspect.getsource(SpectralCLI.parse_arguments)) == []
    assert _private_attributes("parser._subcommands_action.choices") != []  # the check itself sees them
