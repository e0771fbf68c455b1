"""spectral_lightning: train transformers whose linear weights live in a compressed form.

Importing the package registers the built-in parameterizations (``dense``, ``dct``, ``lowrank``,
``random_basis``, ``sparse_lowrank``, ``monarch``, ``kronecker``).
"""

from spectral_lightning.convert import densify, parameterize, parameterized_names
from spectral_lightning.data import CharDataModule
from spectral_lightning.errors import ConfigError, DataError
from spectral_lightning.model import GPT, GPTConfig
from spectral_lightning.module import SpectralLM
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
from spectral_lightning.tokens import TokenDataModule

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
