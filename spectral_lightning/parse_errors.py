"""One-sentence messages for the command line's parsing errors.

jsonargparse reports a mistyped option or a value of the wrong type with the whole usage (dozens of lines)
followed by a multi-line explanation that lists every member of a ``Union``. :class:`SpectralArgumentParser`
replaces that with one line that names the option, where it was given (which ``--config`` file, or the
command line), the value, and what would be valid, e.g.::

    error: unknown option model.n_layr in mine.yaml; did you mean model.n_layer? (cli.py fit --help lists every option)
    error: model.n_layer='four' in mine.yaml is not valid: expected an integer

Parsing and validation themselves stay jsonargparse's: only the final report changes. ``JSONARGPARSE_DEBUG=1``
restores the original behaviour (an exception with jsonargparse's own message).
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch.cli import LightningArgumentParser

_BEFORE_SUBCOMMAND = re.compile(r"^Option '(?P<key>[^']+)' is not accepted before subcommand '?(?P<sub>[^']+?)'?$")
_UNKNOWN_PATTERNS = (
    re.compile(r"^Subcommand '(?P<sub>[^']+)' does not accept option '(?P<key>[^']+)'"),
    re.compile(r"^Group '(?P<group>[^']+)' does not accept option '(?P<key>[^']+)'"),
    re.compile(r"^Option '(?P<key>[^']+)' is not accepted"),
)
_PARSER_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":\s*(?P<rest>.*)$', re.S)
SUBCOMMANDS = ("fit", "validate", "test", "predict")
_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "NoneType": "null",
    "dict": "a mapping",
    "list": "a list",
}


class SpectralArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose fatal errors are one line: ``error: <what is wrong and what is
    valid>``, exit status 2 (the usage is left to ``--help``)."""

    #: the command-line arguments being parsed; set by :class:`~spectral_lightning.cli.SpectralCLI`
    cli_args: Sequence[str] | None = None

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # While jsonargparse parses a subcommand or tries the members of a Union, errors are exceptions it
        # catches (exit_on_error is off then): only the final report is replaced.
        if not self.exit_on_error or _debug_mode():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        args = list(self.cli_args if self.cli_args is not None else sys.argv[1:])
        print(f"error: {describe(message, args, parser, self.prog)}", file=sys.stderr)
        self.exit(2)


def _debug_mode() -> bool:
    return os.environ.get("JSONARGPARSE_DEBUG", "").lower() not in ("", "0", "false", "no")


def describe(message: str, args: Sequence[str], parser: Any = None, prog: str = "cli.py") -> str:
    """The one-line version of jsonargparse's ``message`` for the command line ``args``."""
    subcommand = next((a for a in args if a in SUBCOMMANDS), "")
    help_hint = f"({prog.split()[0]} {subcommand + ' ' if subcommand else ''}--help lists every option)"
    text = message.strip()

    if text.startswith("unrecognized arguments:"):
        unknown = text.split(":", 1)[1].split()
        options = [a for a in unknown if a.startswith("-")]
        key = options[0].lstrip("-").split("=", 1)[0] if options else (unknown[0] if unknown else "")
        return _unknown(key, "on the command line", _known_keys(parser), help_hint)
    match = _BEFORE_SUBCOMMAND.match(text)
    if match:  # e.g. `cli.py --config x.yaml fit`: options belong after the subcommand (or under `fit:`)
        key, sub = match["key"], match["sub"] if match["sub"] in SUBCOMMANDS else "fit"
        before = args[: args.index(sub)] if sub in args else args
        return (
            f"option {key} {_where(key, before)} comes before the subcommand: put the subcommand first "
            f"({prog.split()[0]} {sub} --config ...), or nest the file's options under '{sub}:'"
        )
    for pattern in _UNKNOWN_PATTERNS:
        match = pattern.match(text)
        if match:
            key = match["key"]
            if match.groupdict().get("group"):
                key = f"{match['group']}.{key}"
            return _unknown(key, _where(key, args), _known_keys(parser), help_hint)

    match = _PARSER_KEY.match(text)
    if match:
        key, rest = match["key"], match["rest"]
        if key == "config":  # the --config file itself
            missing = re.match(r"File does not exist: '(?P<path>[^']+)'", rest.strip())
            if missing:
                return (
                    f"--config file {missing['path']} does not exist; expected a YAML file such as configs/dct4x.yaml"
                )
            return f"--config: {_one_line(rest)}"
        return _bad_value(key, rest, args, help_hint)
    return _one_line(text)


def _bad_value(key: str, rest: str, args: Sequence[str], help_hint: str) -> str:
    # A class given by class_path whose own options are wrong: report that option, not the whole class.
    problem = re.search(r"Problem with given class_path '(?P<path>[^']+)':\n", rest)
    if problem:
        path, block = problem["path"], _indented_block(rest[problem.end() :])
        nested = re.match(r"Option '(?P<opt>[^']+)' is not accepted", block)
        inner = _PARSER_KEY.match(block)
        if nested:
            options = _init_options(path)
            full = f"{key}.init_args.{nested['opt']}"
            hint = f"; {path} accepts {', '.join(sorted(options))}" if options else ""
            guess = difflib.get_close_matches(nested["opt"], sorted(options), n=1, cutoff=0.75)
            hint = f"; did you mean {key}.init_args.{guess[0]}?" if guess else hint
            return f"unknown option {full} of {path} {_where(full, args)}{hint} {help_hint}"
        if inner:
            return _bad_value(f"{key}.init_args.{inner['key']}", inner["rest"], args, help_hint)
        return f"{key}: {path!r} cannot be used: {_one_line(block)}"
    given = re.search(r"(?:Got value|Given value): (?P<value>.*)$", rest, re.M)
    value = given["value"].strip() if given else None
    shown = f"{key}={value!r}" if value is not None else key
    return f"{shown} {_where(key, args)} is not valid: expected {_expected(rest)}"


def _indented_block(text: str) -> str:
    """The leading lines of ``text`` indented at least as deeply as its first line, dedented."""
    lines = text.splitlines()
    if not lines:
        return ""
    depth = len(lines[0]) - len(lines[0].lstrip())
    block = []
    for line in lines:
        if line.strip() and len(line) - len(line.lstrip()) < depth:
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip()


def _unknown(key: str, where: str, known: set[str], help_hint: str) -> str:
    guess = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    hint = f"; did you mean {guess[0]}?" if guess else ""
    return f"unknown option {key} {where}{hint} {help_hint}"


def _init_options(class_path: str) -> set[str]:
    """The constructor options of the class at ``class_path`` (or a registered strategy name)."""
    from spectral_lightning.parameterizations import find_class

    try:
        params = inspect.signature(find_class(class_path).__init__).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return set()
    return {p for p, v in params.items() if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)}


def _expected(rest: str) -> str:
    """What jsonargparse's explanation says would be valid, in words."""
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
        return _one_line(rest) or "a valid value"
    return found[0] if len(found) == 1 else "one of: " + ", ".join(found)


def _words(expected: str) -> Iterable[str]:
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", expected)
    if literal:
        yield from (v.strip() for v in literal[1].split(","))
        return
    if expected.startswith("dot import path string"):
        yield "the import path of a class (e.g. lightning.pytorch.callbacks.ModelCheckpoint)"
        return
    cls = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", expected)
    if cls:
        yield _TYPE_WORDS.get(cls[1], f"a {cls[1]}")
        return
    yield expected


def _one_line(text: str) -> str:
    return " ".join(line.strip(" -") for line in text.strip().splitlines() if line.strip())


def _where(key: str, args: Sequence[str]) -> str:
    """``on the command line`` or ``in <file>`` (the last source that sets ``key`` wins, as in parsing)."""
    where = ""
    configs = []
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in ("--config", "-c"):
            path = value or (args[i + 1] if i + 1 < len(args) else "")
            configs.append(path)
            if _sets_key(path, key):
                where = f"in {path}"
        elif name.lstrip("-").rstrip("+") == key or name.lstrip("-").startswith(key + "."):
            where = "on the command line"
    if where:
        return where
    if configs:
        return f"in the configuration ({', '.join(configs)})"
    return "on the command line"


def _sets_key(path: str, key: str) -> bool:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    parts = key.split(".")
    for start in (data, *(v for v in (data or {}).values() if isinstance(v, dict))):  # plain or under "fit:"
        node = start
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return True
    return False


def _known_keys(parser: Any) -> set[str]:
    keys: set[str] = set()
    for action in getattr(parser, "_actions", []):
        dest = getattr(action, "dest", "")
        if dest and dest not in ("help", "config", "print_config"):
            keys.add(dest)
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            keys |= _known_keys(sub)
    return keys
