"""User-facing errors. ``cli.py`` prints these as one line (no traceback) and exits with status 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """An option, file or checkpoint given by the user is not valid; the message says which and why."""


class DataError(ConfigError):
    """A data file is missing, unreadable, corrupt or unsuitable."""
