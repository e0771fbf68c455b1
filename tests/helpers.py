"""Helpers the test modules share: ``from helpers import REPO, make_text, printed_config, quiet_trainer``.

A plain module, not ``conftest.py``: pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in pyproject.toml),
so every test module imports these one way, and a CLI subprocess given ``PYTHONPATH=tests`` can import them too
without inheriting the settings conftest.py applies to the test session (one torch thread). Fixtures stay in
conftest.py.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from spectral_lightning import available
from spectral_lightning.cli import cli_main

REPO = Path(__file__).resolve().parents[1]


def make_text(n_chars: int = 20_000, seed: int = 0) -> str:
    """A learnable text: a few short words repeated in a seeded random order, with punctuation."""
    gen = torch.Generator().manual_seed(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "it", "big", "red", "hat"]
    out, size = [], 0
    while size < n_chars:
        w = words[int(torch.randint(len(words), (1,), generator=gen))]
        sep = ".\n" if int(torch.randint(8, (1,), generator=gen)) == 0 else " "
        out.append(w + sep)
        size += len(w) + len(sep)
    return "".join(out)[:n_chars]


def strategy_cases() -> list[tuple[str, dict]]:
    """Every registered strategy with its default options (as YAML would give them), plus one case per DCT
    selection: the rows the precision and compile tests run for each strategy. A newly registered strategy
    joins them without an edit; its own explicit row belongs in tests/test_parameterizations.py."""
    cases = [(name, {"class_path": name}) for name in available() if name != "dct"]
    cases += [
        (f"dct-{sel}", {"class_path": "dct", "init_args": {"selection": sel}})
        for sel in ("lowpass", "zigzag", "random")
    ]
    return sorted(cases)


def quiet_trainer(**options: object) -> L.Trainer:
    """A CPU Trainer that writes and prints nothing (no logger, checkpoints, progress bar, summary or
    validation) unless ``options`` say otherwise: for tests that only need a few training steps."""
    defaults: dict[str, object] = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    return L.Trainer(**{**defaults, **options})


def exit_output(main: Callable[[list[str]], object], argv: list[str]) -> str:
    """What a command's ``main(argv)`` prints to stdout when it ends by exiting cleanly (``--help``,
    ``--print_config``), run in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code in (None, 0), f"{argv} exited with {exit_.value.code}"
    return out.getvalue()


def printed_config(args: list[str]) -> dict:
    """What ``cli.py fit <args> --print_config`` prints: every option of the run, as a dict."""
    return yaml.safe_load(exit_output(cli_main, ["fit", *args, "--print_config"]))
