"""One-sentence messages for the command line's parsing errors.

jsonargparse reports a mistyped option or a value of the wrong type with the whole usage (dozens of lines)
followed by a multi-line explanation that lists every member of a ``Union``. :class:`SpectralArgumentParser`
replaces that with one line that names the option, where it was given (which ``--config`` file, or the
command line), the value, and what would be valid, e.g.::

    error: unknown option model.n_layr in mine.yaml; did you mean model.n_layer? (cli.py fit --help lists every option)
    error: model.n_layer='four' in mine.yaml is not valid: expected an integer

Parsing and validation stay jsonargparse's; only the final report changes, drawn from public interfaces:
the command line from :func:`command_line` (set around parsing by the CLI; else ``sys.argv[1:]``), the options
a subcommand accepts from its parser's ``get_defaults()``, and what went wrong from the message alone (a plain
``ArgumentError`` carries nothing else). :func:`describe` recognises a few shapes of that English text
(``_SHAPES``); any other shape, or a known one whose details are not where expected, is reported as
jsonargparse's own text on one line: a new wording loses the rewrite, never the information.
``tests/test_parse_errors.py`` produces every recognised shape with the installed jsonargparse, so a change of
wording fails there, and ``requirements.txt`` bounds jsonargparse to the releases those tests pass on.

``JSONARGPARSE_DEBUG=true`` restores jsonargparse's original behaviour (an exception with its own message);
jsonargparse 4.53 accepts only ``true``/``false`` there (``1`` is a ``ValueError`` when a parser is built).
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import os
import re
import sys
import textwrap
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import yaml
from jsonargparse import ActionSubCommands, ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from spectral_lightning.parameterizations import find_class

SUBCOMMANDS = tuple(LightningCLI.subcommands())  # fit, validate, test, predict
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "NoneType": "null",
    "dict": "a mapping",
    "list": "a list",
}
_COMMAND_LINE: ContextVar[tuple[str, ...] | None] = ContextVar("spectral_lightning_command_line", default=None)


@contextmanager
def command_line(args: Sequence[str]) -> Iterator[None]:
    """Report the parsing errors raised inside this block against ``args``, the arguments being parsed (a
    context variable reaches the parser of every subcommand without touching any)."""
    token = _COMMAND_LINE.set(tuple(args))
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def current_command_line() -> tuple[str, ...]:
    """The arguments set by the innermost :func:`command_line` block, else ``sys.argv[1:]``."""
    given = _COMMAND_LINE.get()
    return tuple(sys.argv[1:]) if given is None else given


class SpectralArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose fatal errors are one line: ``error: <what is wrong and what is
    valid>``, exit status 2 (the usage is left to ``--help``)."""

    #: name -> parser of this parser's subcommands (empty for a parser without subcommands)
    subcommand_parsers: Mapping[str, ArgumentParser] = MappingProxyType({})

    def add_subcommands(self, required: bool = True, dest: str = "subcommand", **kwargs: Any) -> ActionSubCommands:
        action = super().add_subcommands(required=required, dest=dest, **kwargs)
        # An argparse subparsers action keeps its name -> parser map as ``choices`` (public); LightningCLI fills
        # it with fit/validate/test/predict after this call returns.
        self.subcommand_parsers = action.choices
        return action

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # While jsonargparse parses a subcommand or tries the members of a Union, errors are exceptions it
        # catches (exit_on_error is off then): only the final report is replaced.
        if not self.exit_on_error or _debug_mode():
            super().error(message, ex)
        args = current_command_line()
        subcommand = next((a for a in args if a in self.subcommand_parsers), None)
        parser = self.subcommand_parsers[subcommand] if subcommand else self
        print(f"error: {describe(message, args, option_names(parser), self.prog)}", file=sys.stderr)
        self.exit(2)


def _debug_mode() -> bool:
    return os.environ.get("JSONARGPARSE_DEBUG", "").lower() not in ("", "0", "false", "no")


def option_names(parser: ArgumentParser) -> frozenset[str]:
    """The dotted keys ``parser`` accepts (``model.n_layer``, ``trainer.max_steps``, ...), from its defaults."""
    try:
        defaults = parser.get_defaults(skip_validation=True)
    except Exception:  # the names only feed "did you mean": never let them hide the user's real error
        return frozenset()
    return frozenset(key for key in defaults.keys() if key not in ("config", "subcommand"))


def describe(message: str, args: Sequence[str], options: Collection[str] = (), prog: str = "cli.py") -> str:
    """The one-line version of jsonargparse's ``message``.

    Args:
        message: what jsonargparse passed to ``ArgumentParser.error``.
        args: the command line that was parsed (it tells which ``--config`` file set an option).
        options: the dotted option names the subcommand accepts, for "did you mean" hints.
        prog: the program name shown in hints (``cli.py``).

    Returns:
        The rewrite of the first shape in ``_SHAPES`` that recognises ``message``, else jsonargparse's own
        text with its lines joined.
    """
    report = _Report(tuple(args), options, prog.split()[0] if prog.strip() else "cli.py")
    text = message.strip()
    for shape in _SHAPES:
        rewritten = shape(text, report)
        if rewritten is not None:
            return rewritten
    return _one_line(text)


@dataclass(frozen=True)
class _Report:
    """What :func:`describe` knows besides the message."""

    args: tuple[str, ...]
    options: Collection[str]
    prog: str

    @property
    def subcommand(self) -> str:
        return next((a for a in self.args if a in SUBCOMMANDS), "")

    @property
    def help_hint(self) -> str:
        return f"({self.prog} {self.subcommand + ' ' if self.subcommand else ''}--help lists every option)"

    def unknown(self, key: str, where: str) -> str:
        guess = difflib.get_close_matches(key, sorted(self.options), n=1, cutoff=0.75)
        hint = f"; did you mean {guess[0]}?" if guess else ""
        return f"unknown option {key} {where}{hint} {self.help_hint}"


# -- the shapes of jsonargparse's messages (each returns None when the message is not its shape) -----------------
_UNRECOGNIZED = re.compile(r"^unrecognized arguments: (?P<rest>.+)$", re.S)
_BEFORE_SUBCOMMAND = re.compile(r"^Option '(?P<key>[^']+)' is not accepted before subcommand (?P<sub>\S+)$")
_NOT_ACCEPTED = (
    re.compile(r"^Subcommand '(?P<sub>[^']+)' does not accept option '(?P<key>[^']+)'$"),
    re.compile(r"^Group '(?P<group>[^']+)' does not accept option '(?P<key>[^']+)'$"),
    re.compile(r"^Option '(?P<key>[^']+)' is not accepted$"),
)
_PARSER_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":\s*(?P<rest>.*)$', re.S)
_MISSING_FILE = re.compile(r"^File does not exist: '(?P<path>[^']+)'$")


def _unrecognized_arguments(text: str, report: _Report) -> str | None:
    """argparse's ``unrecognized arguments: --trainer.max_stepz 3`` (an option no parser knows)."""
    match = _UNRECOGNIZED.match(text)
    if not match:
        return None
    unknown = match["rest"].split()
    option = next((a for a in unknown if a.startswith("-")), None)
    if option is None:  # e.g. `cli.py fit extra`: a word where an option was expected
        return f"unexpected argument {unknown[0]!r} on the command line {report.help_hint}"
    return report.unknown(option.lstrip("-").split("=", 1)[0], "on the command line")


def _before_subcommand(text: str, report: _Report) -> str | None:
    """``Option 'model.n_layer' is not accepted before subcommand 'fit'``: e.g. ``cli.py --config x.yaml fit``,
    whose file's options belong after the subcommand (or under ``fit:``)."""
    match = _BEFORE_SUBCOMMAND.match(text)
    if not match:
        return None
    key, sub = match["key"], match["sub"].strip("'")
    sub = sub if sub in SUBCOMMANDS else report.subcommand or "fit"  # `{fit,...}` when none was given
    before = report.args[: report.args.index(sub)] if sub in report.args else report.args
    return (
        f"option {key} {_where(key, before)} comes before the subcommand: put the subcommand first "
        f"({report.prog} {sub} --config ...), or nest the file's options under '{sub}:'"
    )


def _not_accepted(text: str, report: _Report) -> str | None:
    """An unknown key in a ``--config`` file: ``Subcommand 'fit' does not accept option 'model.n_layr'``,
    ``Group 'model' does not accept option 'n_layr'`` or ``Option 'model.n_layr' is not accepted``."""
    for pattern in _NOT_ACCEPTED:
        match = pattern.match(text)
        if match:
            group = match.groupdict().get("group")
            key = f"{group}.{match['key']}" if group else match["key"]
            return report.unknown(key, _where(key, report.args))
    return None


def _parser_key(text: str, report: _Report) -> str | None:
    """``Parser key "model.n_layer":`` and jsonargparse's explanation of why the value does not fit, or
    ``Parser key "config": File does not exist: '/abs/path/nope.yaml'``."""
    match = _PARSER_KEY.match(text)
    if not match or match["key"] != "config":
        return _value_problem(match["key"], match["rest"], report) if match else None
    missing = _MISSING_FILE.match(match["rest"].strip())
    if not missing:
        return None
    given = next((p for p in _config_paths(report.args) if Path(p).resolve() == Path(missing["path"]).resolve()), None)
    return f"--config file {given or missing['path']} does not exist; expected a YAML file such as configs/dct4x.yaml"


_SHAPES: tuple[Callable[[str, _Report], str | None], ...] = (
    _unrecognized_arguments,
    _before_subcommand,
    _not_accepted,
    _parser_key,
)


def _value_problem(key: str, rest: str, report: _Report) -> str | None:
    # A class given by class_path whose own options are wrong: report that option, not the whole class.
    problem = re.search(r"Problem with given class_path '(?P<path>[^']+)':\n", rest)
    if problem:
        path, block = problem["path"], _indented_block(rest[problem.end() :])
        nested = re.fullmatch(r"Option '(?P<opt>[^']+)' is not accepted", block)
        inner = _PARSER_KEY.match(block)
        if nested:
            options = _init_options(path)
            full = f"{key}.init_args.{nested['opt']}"
            guess = difflib.get_close_matches(nested["opt"], sorted(options), n=1, cutoff=0.75)
            hint = f"; {path} accepts {', '.join(sorted(options))}" if options else ""
            hint = f"; did you mean {key}.init_args.{guess[0]}?" if guess else hint
            return f"unknown option {full} of {path} {_where(full, report.args)}{hint} {report.help_hint}"
        if inner:
            return _value_problem(f"{key}.init_args.{inner['key']}", inner["rest"], report)
        return f"{key}: {path!r} cannot be used: {_one_line(block)}"
    expected = _expected(rest)
    if expected is None:
        return None
    given = re.search(r"(?:Got value|Given value): (?P<value>.*)$", rest, re.M)
    shown = f"{key}={given['value'].strip()!r}" if given else key
    return f"{shown} {_where(key, report.args)} is not valid: expected {expected}"


def _indented_block(text: str) -> str:
    """The leading lines of ``text`` indented at least as deeply as its first line, dedented."""
    lines = text.splitlines() or [""]
    depth = len(lines[0]) - len(lines[0].lstrip())
    block = itertools.takewhile(lambda line: not line.strip() or len(line) - len(line.lstrip()) >= depth, lines)
    return textwrap.dedent("\n".join(block)).strip()


def _init_options(class_path: str) -> set[str]:
    """The constructor options of the class at ``class_path`` (or a registered parameterization name)."""
    try:
        params = inspect.signature(find_class(class_path).__init__).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return set()
    return {p for p, v in params.items() if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}


def _expected(rest: str) -> str | None:
    """What jsonargparse's explanation says would be valid, in words; None when it says nothing recognisable."""
    subtypes = re.search(r"Subtypes: \[(?P<types>.*)\]$", rest, re.M)
    if subtypes:  # a Union of Literals (e.g. trainer.precision): list the values themselves
        members = re.findall(r"typing\.Literal\[[^\]]*\]|<class '[\w.]+'>|[\w.]+\[[^\]]*\]", subtypes["types"])
        if members and all(m.startswith("typing.Literal") or m == "<class 'NoneType'>" for m in members):
            return "one of: " + ", ".join(w for m in members for w in _words(m))
    found: list[str] = []
    for expected in re.findall(r"Expected a (.+?)(?:\. Got value:.*)?$", rest, re.M):
        if expected.startswith("path but "):  # jsonargparse also tried the value as a config file path
            continue
        for word in _words(expected.strip()):
            if word not in found:
                found.append(word)
    if not found:
        return None
    return found[0] if len(found) == 1 else "one of: " + ", ".join(found)


def _words(expected: str) -> list[str]:
    """``typing.Literal['a', 'b']``: ``'a'``, ``'b'``; ``<class 'int'>``: ``an integer``; anything else as is."""
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", expected)
    cls = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", expected)
    if literal:
        return [v.strip() for v in literal[1].split(",")]
    if expected.startswith("dot import path string"):
        return ["the import path of a class (e.g. lightning.pytorch.callbacks.ModelCheckpoint)"]
    return [_TYPE_WORDS.get(cls[1], f"a {cls[1]}")] if cls else [expected]


def _one_line(text: str) -> str:
    return " ".join(line.strip(" -") for line in text.strip().splitlines() if line.strip())


# -- where an option was given ----------------------------------------------------------------------------------
def _config_path(args: Sequence[str], i: int) -> str | None:
    """The file named by ``args[i]`` when it is ``--config``/``-c`` (``--config x.yaml`` or ``--config=x.yaml``)."""
    name, sep, value = args[i].partition("=")
    if name not in ("--config", "-c"):
        return None
    return value if sep else (args[i + 1] if i + 1 < len(args) else "")


def _config_paths(args: Sequence[str]) -> list[str]:
    """The ``--config`` files in ``args``, in order."""
    return [path for i in range(len(args)) if (path := _config_path(args, i)) is not None]


def _where(key: str, args: Sequence[str]) -> str:
    """``on the command line`` or ``in <file>`` (the last source that sets ``key`` wins, as in parsing)."""
    where = ""
    for i, arg in enumerate(args):
        path = _config_path(args, i)
        option = arg.partition("=")[0].lstrip("-").rstrip("+")
        if path is not None:
            where = f"in {path}" if _sets_key(path, key) else where
        elif arg.startswith("-") and (option == key or option.startswith(key + ".")):
            where = "on the command line"
    if where:
        return where
    configs = _config_paths(args)
    return f"in the configuration ({', '.join(configs)})" if configs else "on the command line"


def _sets_key(path: str, key: str) -> bool:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(data, dict):
        return False
    for node in (data, *(v for v in data.values() if isinstance(v, dict))):  # plain or under "fit:"
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return True
    return False
