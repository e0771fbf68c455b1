"""User-facing errors. ``cli.py`` prints these as one line (no traceback) and exits with status 2
(:class:`TrainingInterrupted`: 128 + the signal number)."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator


class ConfigError(ValueError):
    """An option, file or checkpoint given by the user is not valid; the message says which and why."""


class DataError(ConfigError):
    """A data file is missing, unreadable, corrupt or unsuitable."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM at a step boundary, after saving a checkpoint.

    Attributes:
        signum: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
        step: the global step the run stopped at (the checkpoint holds the state after this many steps).
        path: the checkpoint written, or ``None`` when the trainer has no checkpoint callback.
    """

    def __init__(self, signum: int, step: int, path: str | None) -> None:
        self.signum, self.step, self.path = signum, step, path
        name = signal.Signals(signum).name
        saved = f"saved {path}" if path else "no checkpoint was saved (checkpointing is disabled)"
        super().__init__(
            f"interrupted by {name} at step {step}; {saved}. Resume with the same command plus --ckpt_path last"
        )

    @property
    def exit_code(self) -> int:
        """The shell convention for a process stopped by a signal: 128 + signal number (130, 143)."""
        return 128 + self.signum


def check_positive_int(option: str, value: object, hint: str = "") -> int:
    """``value`` when it is an integer >= 1 (not a bool), else a :class:`ConfigError` naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option}={value!r} is not valid: expected a positive integer{hint}")
    return value


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line errors that
    quote what a library said."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def exit_on_user_error(*also: type[BaseException]) -> Iterator[None]:
    """For command-line entry points: print a :class:`ConfigError` (or one of ``also``) as one line,
    ``error: ...``, with no traceback, and exit with status 2, the status of an argument error."""
    try:
        yield
    except (ConfigError, *also) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
