"""spectral_lightning: train transformers whose linear weights live in a compressed form.

Importing the package registers the built-in parameterizations (``dense``, ``dct``, ``lowrank``,
``random_basis``, ``sparse_lowrank``, ``monarch``, ``kronecker``). It imports torch only: the names built on
Lightning (``SpectralLM``, ``CharDataModule``, ``TokenDataModule``) are imported on first use, so a plain PyTorch
program that takes ``parameterize`` or ``DCT`` from here does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spectral_lightning.convert import densify, parameterize, parameterized_names
from spectral_lightning.errors import ConfigError, DataError
from spectral_lightning.model import GPT, GPTConfig
from spectral_lightning.parameterizations import (
    DCT,
    Dense,
    Kronecker,
    LowRank,
    Monarch,
    Parameterization,
    ParameterizedLinear,
    RandomBasis,
    SparseLowRank,
    available,
    register,
)
from spectral_lightning.tokenization import BPETokenizer, CharTokenizer

if TYPE_CHECKING:
    from spectral_lightning.data import CharDataModule
    from spectral_lightning.module import SpectralLM
    from spectral_lightning.tokens import TokenDataModule

# name -> the module that defines it, imported when the name is first looked up (PEP 562)
_LIGHTNING_NAMES = {
    "CharDataModule": "spectral_lightning.data",
    "SpectralLM": "spectral_lightning.module",
    "TokenDataModule": "spectral_lightning.tokens",
}

__version__ = "0.1.0"

__all__ = [
    "DCT",
    "CharDataModule",
    "BPETokenizer",
    "CharTokenizer",
    "ConfigError",
    "DataError",
    "Dense",
    "GPT",
    "GPTConfig",
    "Kronecker",
    "LowRank",
    "Monarch",
    "Parameterization",
    "ParameterizedLinear",
    "RandomBasis",
    "SparseLowRank",
    "SpectralLM",
    "TokenDataModule",
    "available",
    "densify",
    "parameterize",
    "parameterized_names",
    "register",
]


def __getattr__(name: str) -> Any:
    if name in _LIGHTNING_NAMES:
        value = getattr(importlib.import_module(_LIGHTNING_NAMES[name]), name)
        globals()[name] = value  # later lookups find it directly
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LIGHTNING_NAMES))
