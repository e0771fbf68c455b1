"""Low-rank: W = B·A with B (m×r) and A (r×n). Parameters: r·(m + n) (+ m for the bias).

The paper's baseline at matched budget. ``rank`` sets r directly; ``compression`` c picks the largest r with
r·(m + n) ≤ mn / c, i.e. r = floor(mn / (c·(m + n))). ``load_dense_`` keeps the top-r singular triplets
(the best rank-r approximation, Eckart–Young), split evenly: B = U_r·√S_r, A = √S_r·V_rᵀ.

Weight decay: both factors are decayed. λ(‖B‖² + ‖A‖²) is minimized over the factorizations of a given W at
2λ‖W‖_* (the nuclear norm), so decaying the factors regularizes W towards low nuclear norm, the low-rank
analogue of the Frobenius decay dense and DCT weights receive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.base import Parameterization, ReconstructedLinear
from spectral_lightning.parameterizations.options import check_compression, check_int, check_std
from spectral_lightning.parameterizations.registry import register


class LowRankLinear(ReconstructedLinear):
    """Linear layer with W = B·A of rank ``rank``.

    Args:
        in_features: n.
        out_features: m.
        bias: learn a bias.
        rank: r in [1, min(m, n)].
        init_std: per-entry standard deviation of the initial W (matches the dense init).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, rank: int = 1, init_std: float = 0.02
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.rank, self.init_std = rank, init_std
        self.B = nn.Parameter(torch.empty(out_features, rank))
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.reset_parameters()

    def _build_buffers(self, device: torch.device | None = None) -> None:
        pass  # nothing derived

    def reset_parameters(self) -> None:
        # W_ij = Σ_r B_ir A_rj sums r products of independent zero-mean entries: Var W = r·σ_B²·σ_A². Equal
        # factor scales σ_B = σ_A = (σ/√r)^½ give W the dense per-entry variance σ² with balanced factors.
        std = math.sqrt(self.init_std / math.sqrt(self.rank))
        nn.init.normal_(self.B, mean=0.0, std=std)
        nn.init.normal_(self.A, mean=0.0, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def stored(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def reconstruct(self) -> Tensor:
        dtype = torch.promote_types(self.B.dtype, torch.float32)  # float32 (float64 after .double())
        return self.B.to(dtype) @ self.A.to(dtype)  # (m, r) @ (r, n) -> (m, n)

    def batch_key(self) -> tuple:
        return (type(self), self.out_features, self.in_features, self.rank, self.B.dtype)

    @classmethod
    def reconstruct_batch(cls, layers: Sequence[LowRankLinear]) -> Tensor:
        dtype = torch.promote_types(layers[0].B.dtype, torch.float32)
        b = torch.stack([layer.B for layer in layers]).to(dtype)  # (L, m, r)
        a = torch.stack([layer.A for layer in layers]).to(dtype)  # (L, r, n)
        return b @ a  # (L, m, n)

    def _load_dense_weight(self, weight: Tensor) -> None:
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        root = s[: self.rank].sqrt()
        self.B.copy_(u[:, : self.rank] * root)
        self.A.copy_(root.unsqueeze(1) * vh[: self.rank])

    def describe(self) -> str:
        return f"lowrank r={self.rank}"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


@register("lowrank")
class LowRank(Parameterization):
    """Factor each weight as W = B·A of rank r.

    Args:
        compression: c ≥ 1; r = floor(mn / (c·(m + n))) so the factors hold at most mn/c values.
        rank: explicit r ≥ 1 for every layer (must not exceed min(m, n)); takes precedence over
            ``compression``. The paper's baselines: 16 (21% of parameters) and 48 (same count as K = mn/2).
        init_std: per-entry std of the initial W (> 0), matched to the dense init.
    """

    def __init__(self, compression: float = 4.0, rank: int | None = None, init_std: float = 0.02) -> None:
        self.compression = check_compression(compression)
        self.rank = None if rank is None else check_int("rank", rank, 1)
        self.init_std = check_std(init_std)

    def rank_for(self, in_features: int, out_features: int) -> int:
        """r used for an (out_features × in_features) weight."""
        m, n = out_features, in_features
        where = f" for a {m}x{n} weight"
        if self.rank is not None:
            return check_int("rank", self.rank, 1, min(m, n), where=where)
        r = math.floor(m * n / (self.compression * (m + n)))
        if r < 1:
            raise ConfigError(f"compression={self.compression} gives rank 0{where}: expected a smaller compression")
        return r

    def build(self, in_features: int, out_features: int, bias: bool = True) -> LowRankLinear:
        return LowRankLinear(in_features, out_features, bias, self.rank_for(in_features, out_features), self.init_std)
