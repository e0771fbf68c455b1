"""Validation of a parameterization's options: each check names the option, the value and the valid range, so a
typo in YAML is one clear sentence. Shared by the built-ins and open to a user's own parameterization."""

from __future__ import annotations

import math

from spectral_lightning.errors import ConfigError


def check_int(option: str, value: object, low: int, high: int | None = None, where: str = "") -> int:
    """Validate an integer option; raise ValueError naming it, its value and the valid range."""
    rng = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{option}={value!r} is not valid{where}: expected {rng}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{option}={value} is out of range{where}: expected {rng}")
    return value


def check_compression(value: object, option: str = "compression") -> float:
    """Validate a compression factor c >= 1 (the layer keeps about 1/c of the dense values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1:
        raise ConfigError(f"{option}={value!r} is not valid: expected a finite number >= 1 (1 = no compression)")
    return float(value)


def coefficient_budget(compression: float, k: int | None, in_features: int, out_features: int) -> int:
    """K for an (out_features × in_features) weight: ``k`` when given (checked against [1, m·n]), else
    round(mn / compression); raise ConfigError when that leaves no coefficient."""
    mn = in_features * out_features
    if k is not None:
        return check_int("k", k, 1, mn, where=f" for a {out_features}x{in_features} weight")
    budget = round(mn / compression)
    if budget < 1:
        raise ConfigError(
            f"compression={compression} leaves no coefficient of a {out_features}x{in_features} weight: "
            f"expected a value in [1, {mn}]"
        )
    return budget


def check_std(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"init_std={value!r} is not valid: expected a finite number > 0 (e.g. 0.02)")
    return float(value)
