"""Random basis: W is rebuilt from K coefficients in a fixed, seeded random orthonormal basis.

The control experiment of the paper's second version: the same budget as the DCT, a different basis. For
W of shape m×n let Q_m (m×m) and Q_n (n×n) be random orthogonal matrices, fixed by ``seed`` and the shape.
The layer stores K coefficients at K random positions of an m×n matrix X (zero elsewhere) and uses

    W = Q_mᵀ X Q_n            parameters: K = round(mn / c) (+ m for the bias)

Q is the Q factor of the QR decomposition of a seeded standard Gaussian matrix, with the signs of its columns
fixed so that R has a positive diagonal: this makes Q unique, and Haar-distributed (uniform over the
orthogonal group). It is computed in float64 and kept as float32 non-persistent buffers, so a checkpoint
holds the K coefficients only and the same seed and shape rebuild the same basis on any machine or DDP rank.

The K positions are drawn at random (the DCT's ``random`` selection, with the same ``seed``, so the two
parameterizations differ only in the basis). A low-pass block or a zigzag triangle would cap rank(W) = rank(X) far
below min(m, n); random positions do not, so this parameterization isolates the question "does the DCT basis
matter, or only the budget and the rank the selection allows?".

As for the DCT, both bases are orthonormal, so ‖W‖_F = ‖X‖_F (Parseval), weight decay on X equals weight
decay on W, and projecting a dense W (X = Q_m W Q_nᵀ, keep the selected entries) is the best Frobenius
approximation on the selected support.

This module is written exactly as a user's own parameterization would be: a subclass of :class:`Parameterization`
plus one ``@register`` line, reusing the package's base classes and helpers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spectral_lightning.parameterizations.adaptive import (
    Budget,
    Grow,
    SupportSchedule,
    check_grow_window,
    check_support_options,
)
from spectral_lightning.parameterizations.base import OrthonormalCoefficientLinear, Parameterization
from spectral_lightning.parameterizations.dct import select_positions
from spectral_lightning.parameterizations.options import check_compression, check_int, check_std, coefficient_budget
from spectral_lightning.parameterizations.registry import register
from spectral_lightning.seeds import derive_seed


def random_orthogonal(
    n: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """A Haar-random orthogonal n×n matrix, a pure function of ``(n, seed)``.

    QR of an n×n standard Gaussian drawn in float64 on the CPU (so every device gets the same matrix), with
    each column of Q multiplied by the sign of the matching diagonal entry of R. Then cast and moved.

    Args:
        n: size (≥ 1).
        seed: seed of the Gaussian draw.
        dtype: dtype of the result (computed in float64 first).
        device: device of the result.
    """
    gen = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(n, n, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs).to(dtype=dtype, device=device)


class RandomBasisLinear(OrthonormalCoefficientLinear):
    """Linear layer whose weight is W = Q_mᵀ X Q_n with X holding ``stored`` trainable coefficients.

    Args:
        in_features: n.
        out_features: m.
        bias: learn a bias.
        k: number of coefficients (exact; random positions).
        seed: seed of the bases and of the positions.
        init_std: per-entry standard deviation of the initial W (matches the dense init).
        support: None for a fixed support; a schedule makes the random positions the starting support only.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        k: int = 1,
        seed: int = 0,
        init_std: float = 0.02,
        support: SupportSchedule | None = None,
    ) -> None:
        positions = select_positions(out_features, in_features, k, "random", seed)
        super().__init__(in_features, out_features, bias, positions, seed, init_std, support)

    def basis(self, side: str, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
        """Q_m (``side="out"``) or Q_n (``"in"``); the seed of each also depends on (m, n) and the side."""
        m, n = self.out_features, self.in_features
        return random_orthogonal(m if side == "out" else n, derive_seed(self.seed, m, n, side), dtype, device)

    def describe(self) -> str:
        return f"random_basis seed={self.seed}"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, seed={self.seed}"


@register("random_basis")
class RandomBasis(Parameterization):
    """Store K coefficients per weight in a fixed seeded random orthonormal basis: W = Q_mᵀ X Q_n.

    Args:
        compression: c ≥ 1; each m×n weight keeps K = round(mn / c) coefficients at random positions
            (c = 1: every coefficient, exactly equivalent to dense).
        k: explicit K in [1, m·n] for every layer; when given it takes precedence over ``compression``.
        seed: seed of the random bases and positions (any integer ≥ 0); the same seed and shape give the
            same layer, so checkpoints reload and DDP ranks agree.
        init_std: per-entry std of the initial W (> 0), matched to the dense init.
        update_every: None (default): the support is fixed. An integer ≥ 1: the K positions move every
            ``update_every`` steps, starting from the seeded random ones (RigL-style, see
            ``parameterizations/adaptive.py``).
        update_until: fraction of training in (0, 1] after which the support stays fixed.
        drop_fraction: share of K in (0, 1] replaced at the first update, decayed with a cosine to 0 at
            ``update_until``.
        grow: where new coefficients go: ``gradient`` (largest |gradient|) or ``random`` (seeded).
        budget: ``per_layer`` (each layer keeps its K) or ``global`` (the total K is fixed and moves between
            layers; raw magnitudes compared across layers) or ``global_relative`` (the same, with each layer's
            |x| and |gradient| divided by their mean in that layer).
        grow_window: with ``grow: gradient``, the number of steps (1 to ``update_every``) whose gradients are
            summed to choose where to grow, ending with the update step: 1 (default) is that step's gradient alone,
            more follows the gradient's consistent direction over the window (a gradient momentum).
    """

    def __init__(
        self,
        compression: float = 4.0,
        k: int | None = None,
        seed: int = 0,
        init_std: float = 0.02,
        update_every: int | None = None,
        update_until: float = 0.75,
        drop_fraction: float = 0.3,
        grow: Grow = "gradient",
        budget: Budget = "per_layer",
        grow_window: int = 1,
    ) -> None:
        self.compression = check_compression(compression)
        self.k = None if k is None else check_int("k", k, 1)
        self.seed = check_int("seed", seed, 0)
        self.init_std = check_std(init_std)
        self.update_every, self.update_until, self.drop_fraction, self.grow, self.budget = check_support_options(
            update_every, update_until, drop_fraction, grow, budget
        )
        self.grow_window = check_grow_window(grow_window, self.update_every)

    def num_coefficients(self, in_features: int, out_features: int) -> int:
        """K used for an (out_features × in_features) weight."""
        return coefficient_budget(self.compression, self.k, in_features, out_features)

    def build(self, in_features: int, out_features: int, bias: bool = True) -> RandomBasisLinear:
        k = self.num_coefficients(in_features, out_features)
        support = SupportSchedule.of(self)
        return RandomBasisLinear(in_features, out_features, bias, k, self.seed, self.init_std, support)
