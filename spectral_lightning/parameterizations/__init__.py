"""Weight parameterizations: how each linear layer stores its m×n weight W.

============  ==========================  =====================================
name          W                           stored values
============  ==========================  =====================================
dense         W                           m·n
dct           C_mᵀ X C_n, X K-sparse      K = round(mn / c) (lowpass: a·b ≈ K)
lowrank       B·A, B m×r, A r×n           r·(m + n)
monarch       R·P₁·L, L R block-diagonal  k·(m + n)
kronecker     Σ_t A_t ⊗ B_t               t·(m1·n1 + m2·n2)
random_basis  Q_mᵀ X Q_n, X K-sparse      K = round(mn / c)
============  ==========================  =====================================

C_m is the orthonormal m×m DCT-II matrix; Q_m, Q_n are fixed random orthogonal matrices drawn from a seed
(``random_basis``: the paper v2's control). ``sparse_lowrank`` stores W = B·A + S with S on a seeded random
support of nnz entries: r·(m + n) + nnz = floor(mn / c) values. Add your own with one class and one
``@register("name")`` line.
"""

from __future__ import annotations

import importlib

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.base import (
    OrthonormalCoefficientLinear,
    Parameterization,
    ParameterizedLinear,
    ReconstructedLinear,
)
from spectral_lightning.parameterizations.batching import batch_groups, batched_weights
from spectral_lightning.parameterizations.dct import DCT, DCTLinear, dct_matrix
from spectral_lightning.parameterizations.dense import Dense, DenseLinear
from spectral_lightning.parameterizations.kronecker import Kronecker, KroneckerLinear
from spectral_lightning.parameterizations.lowrank import LowRank, LowRankLinear
from spectral_lightning.parameterizations.monarch import Monarch, MonarchLinear
from spectral_lightning.parameterizations.random_basis import RandomBasis, RandomBasisLinear
from spectral_lightning.parameterizations.registry import (
    available,
    get,
    register,
    unregister,
)
from spectral_lightning.parameterizations.sparse_lowrank import SparseLowRank, SparseLowRankLinear


def find_class(path: str) -> type:
    """The class a ``class_path`` names: a registered parameterization name (no dot) or a dotted import path."""
    if "." not in path:
        return get(path.lower())
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"class_path {path!r} cannot be imported ({err}); expected a registered name ({', '.join(available())}) "
            "or the import path of a Parameterization subclass in an importable module"
        ) from None


def resolve(spec: str | dict | Parameterization) -> Parameterization:
    """A parameterization from an instance (returned as is), a class path alone (default options), or a
    ``{"class_path": ..., "init_args": {...}}`` dict; a class path is a registered name or a dotted path."""
    if isinstance(spec, Parameterization):
        return spec
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if isinstance(spec, dict) and "class_path" in spec:
        path, init_args = spec["class_path"], dict(spec.get("init_args") or {})
        cls = find_class(path)
        if not (isinstance(cls, type) and issubclass(cls, Parameterization)):
            raise ConfigError(f"class_path {path!r} is not a Parameterization subclass")
        return cls(**init_args)
    raise ConfigError(
        f"parameterization={spec!r} is not valid: expected a registered name ({', '.join(available())}), "
        "a class_path/init_args mapping, or a Parameterization instance"
    )


__all__ = [
    "DCT",
    "DCTLinear",
    "Dense",
    "DenseLinear",
    "Kronecker",
    "KroneckerLinear",
    "LowRank",
    "LowRankLinear",
    "Monarch",
    "MonarchLinear",
    "OrthonormalCoefficientLinear",
    "Parameterization",
    "ParameterizedLinear",
    "RandomBasis",
    "RandomBasisLinear",
    "ReconstructedLinear",
    "SparseLowRank",
    "SparseLowRankLinear",
    "available",
    "batch_groups",
    "batched_weights",
    "dct_matrix",
    "find_class",
    "get",
    "register",
    "resolve",
    "unregister",
]
