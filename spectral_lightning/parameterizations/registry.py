"""Name -> parameterization class registry.

Built-in parameterizations register themselves when :mod:`spectral_lightning` is imported; a user's own parameterization
registers with the same decorator from any importable module::

    @register("my_basis")
    class MyBasis(Parameterization): ...

Names are lowercase. A duplicate name and an unknown name both raise an error that lists the registered
names, so a typo in a YAML file is caught with the valid choices in the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from spectral_lightning.errors import ConfigError

if TYPE_CHECKING:
    from spectral_lightning.parameterizations.base import Parameterization

_REGISTRY: dict[str, type[Parameterization]] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

P = TypeVar("P", bound="type[Parameterization]")


def register(name: str) -> Callable[[P], P]:
    """Class decorator that registers a :class:`Parameterization` subclass under ``name``.

    Args:
        name: lowercase identifier (letters, digits, underscores) used in configs, e.g. ``"dct"``.

    Raises:
        ValueError: if ``name`` is not a lowercase identifier or is already taken by another class.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"parameterization name {name!r} must be a lowercase identifier such as 'dct' or 'my_basis'")

    def decorator(cls: P) -> P:
        from spectral_lightning.parameterizations.base import Parameterization

        if not (isinstance(cls, type) and issubclass(cls, Parameterization)):
            raise TypeError(f"@register({name!r}) expects a Parameterization subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ConfigError(
                f"parameterization name {name!r} is already registered to "
                f"{existing.__module__}.{existing.__qualname__}; registered names: {', '.join(available())}"
            )
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorator


def get(name: str) -> type[Parameterization]:
    """Return the parameterization class registered under ``name``.

    Raises:
        ValueError: for an unknown name; the message lists every registered name.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown parameterization {name!r}; registered names: {', '.join(available())} "
            "(or give a class_path to your own Parameterization subclass)"
        ) from None


def available() -> list[str]:
    """Sorted list of registered parameterization names."""
    return sorted(_REGISTRY)


def unregister(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive sessions)."""
    _REGISTRY.pop(name, None)
