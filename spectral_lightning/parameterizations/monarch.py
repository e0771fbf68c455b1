"""Monarch: W is a product of two block-diagonal factors with a fixed permutation between them (Dao et al.).

For W of shape m×n, ``nblocks`` b dividing both m and n, and a block width k (b ≤ k ≤ min(m, n)):

    W = P₂ · R · P₁ · L            parameters: k·(m + n) (+ m for the bias)

* L is block-diagonal with b blocks L_i of shape (k × n/b): block i maps input chunk i (columns i·n/b …) to k
  intermediate units, b·k in all. Stored as a (b, k, n/b) tensor: b·k·n/b = k·n values.
* P₁ is the reshape-transpose permutation: the b·k units, ordered (i, t) (block, unit in block), are read in the
  transposed order (t, i), so the unit at position f = j·k + s of the permuted vector is unit t = f // b of L
  block i = f mod b. R block j takes the k consecutive positions j·k … j·k + k − 1: one unit from every L block
  in turn, so every output sees every input.
* R is block-diagonal with b blocks R_j of shape (m/b × k): stored as a (b, m/b, k) tensor, k·m values.
* P₂ is the identity in this form: R block j writes output rows j·m/b …. Dao et al. also permute the outputs;
  that only relabels rows, and contiguous row blocks let the projection below work block by block.

Each intermediate unit links exactly one L block i to one R block j, so the (j, i) block of W (size m/b × n/b) is
a sum of r_ji outer products of its own values: a matrix of rank ≤ r_ji, independent of every other block, where
r_ji ∈ {⌊k/b⌋, ⌈k/b⌉} and Σ_i r_ji = k. With k = b every block has rank 1: the square Monarch of the paper (for
n = b², L and R hold b blocks of b×b each, 2·n·√n values). rank W ≤ min(m, n, b·k).

Choice of the structure: ``compression`` c sets k = floor(mn / (c·(m + n))), the largest k whose k·(m + n)
values fit in mn/c (so mn/c − (m + n) < stored ≤ mn/c, the low-rank budget at rank k); an explicit ``width``
sets k instead. ``nblocks`` sets b, or it defaults to the largest divisor of gcd(m, n) that is ≤ k, which
gives the highest rank cap b·k for the same count.

``load_dense_`` is the Monarch paper's projection: each (j, i) block of the dense W is replaced by its best
rank-r_ji approximation (truncated SVD, singular values shared evenly between the R and L units). The blocks are
independent, so this is the best Frobenius approximation in the class, and exact when W is itself such a Monarch
matrix.

Weight decay: L and R are both decayed. Per block this is the low-rank case (``lowrank.py``): the decay acts
as a penalty on the sum of the blocks' nuclear norms.
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


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n`` (≥ 1), ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def monarch_wiring(nblocks: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Which intermediate unit carries each rank-one term of each block of W, for b blocks of width k.

    Units are numbered in R's order, f = j·k + s (R block j, its input s); the same unit is row i·k + t of L
    (block i = f mod b, row t = f // b). Within block (j, i) the units are taken in increasing s, and their
    number there is the block's rank r_ji; slots beyond it (up to ⌈k/b⌉) are padding.

    Returns:
        ``(r_units, l_units, used, ranks)``: the R unit and the L unit of each (j, i, slot), flattened (b·b·⌈k/b⌉),
        padding slots pointing at unit 0; ``used`` (b, b, ⌈k/b⌉) marks the real slots; ``ranks`` (b, b) is r_ji.
    """
    b, k = nblocks, width
    f = torch.arange(b * k)
    j, i, t = f // k, f % b, f // b
    # The first unit of block (j, i) is the smallest t with t·b + i ≥ j·k, i.e. t₀ = ⌈(j·k − i) / b⌉.
    first = -torch.div(i - j * k, b, rounding_mode="floor")
    slot = t - first
    slots = -(-k // b)  # ⌈k/b⌉
    position = (j * b + i) * slots + slot
    r_units = torch.zeros(b * b * slots, dtype=torch.long).index_copy(0, position, f)
    l_units = torch.zeros(b * b * slots, dtype=torch.long).index_copy(0, position, i * k + t)
    used = torch.zeros(b * b * slots, dtype=torch.bool).index_fill(0, position, True).view(b, b, slots)
    return r_units, l_units, used, used.sum(-1)


class MonarchLinear(ReconstructedLinear):
    """Linear layer with W = R·P₁·L, L and R block-diagonal with ``nblocks`` blocks of width ``width``.

    Args:
        in_features: n (a multiple of ``nblocks``).
        out_features: m (a multiple of ``nblocks``).
        bias: learn a bias.
        nblocks: b, dividing both m and n, at most ``width``.
        width: k in [b, min(m, n)]: the units each L block feeds (and each R block reads).
        init_std: per-entry standard deviation of the initial W (matches the dense init).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        nblocks: int = 1,
        width: int = 1,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.nblocks, self.width, self.init_std = nblocks, width, init_std
        b, k = nblocks, width
        self.block_out, self.block_in = out_features // b, in_features // b  # q = m/b, p = n/b
        self.slots = -(-k // b)  # ⌈k/b⌉: the largest block rank
        self.uniform = k % b == 0  # every block has rank k/b: no padding slots
        self.L = nn.Parameter(torch.empty(b, k, self.block_in))  # L_i: (k × n/b)
        self.R = nn.Parameter(torch.empty(b, self.block_out, k))  # R_j: (m/b × k)
        self._build_buffers()
        self.reset_parameters()

    def _build_buffers(self, device: torch.device | None = None) -> None:
        # Index sets only (no float buffers): they derive from (b, k), so a checkpoint holds L and R alone.
        r_units, l_units, used, _ = monarch_wiring(self.nblocks, self.width)
        self.register_buffer("r_units", r_units.to(device), persistent=False)
        self.register_buffer("l_units", l_units.to(device), persistent=False)
        self.register_buffer("used", used.unsqueeze(-1).to(device), persistent=False)  # (b, b, slots, 1)

    def reset_parameters(self) -> None:
        # W's entries in block (j, i) sum r_ji products of one R and one L entry: Var W = r_ji·σ_R²·σ_L². Giving
        # each unit's R column and L row the std (σ/√r_ji)^½ (balanced, as in lowrank.py) makes every entry's
        # variance σ², also when k is not a multiple of b and the block ranks differ by one.
        b, k = self.nblocks, self.width
        _, l_units, used, ranks = monarch_wiring(b, k)
        f = torch.arange(b * k)
        unit_rank = ranks[f // k, f % b].double()  # r_ji of the block each unit (in R's order) serves
        unit_std = (self.init_std / unit_rank.sqrt()).sqrt()
        l_std = torch.empty(b * k, dtype=torch.float64)
        l_std[(f % b) * k + f // b] = unit_std  # the same units in L's order (row i·k + t)
        with torch.no_grad():
            nn.init.normal_(self.R)
            nn.init.normal_(self.L)
            self.R.mul_(unit_std.view(b, 1, k).to(self.R.dtype))
            self.L.mul_(l_std.view(b, k, 1).to(self.L.dtype))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def stored(self) -> int:
        return self.width * (self.in_features + self.out_features)

    def _synthesize(self, r: Tensor, l: Tensor) -> Tensor:
        """W (..., m, n) from R (..., b, m/b, k) and L (..., b, k, n/b): each block (j, i) of W is the product of
        its own ⌈k/b⌉ gathered R columns and L rows (padding slots zeroed), one batched matmul over the b² blocks:
        m·n·⌈k/b⌉ multiply-adds."""
        b, q, p, k = self.nblocks, self.block_out, self.block_in, self.width
        lead = l.shape[:-3]
        r_rows = r.transpose(-1, -2).reshape(*lead, b * k, q)  # R's units as rows, f = j·k + s
        l_rows = l.reshape(*lead, b * k, p)  # L's units as rows, i·k + t
        rg = r_rows.index_select(-2, self.r_units).view(*lead, b, b, self.slots, q)  # (..., j, i, slot, q)
        lg = l_rows.index_select(-2, self.l_units).view(*lead, b, b, self.slots, p)  # (..., j, i, slot, p)
        if not self.uniform:
            lg = torch.where(self.used, lg, 0.0)  # padding slots add nothing
        blocks = rg.transpose(-1, -2) @ lg  # (..., j, i, q, slot) @ (..., j, i, slot, p) -> (..., j, i, q, p)
        return blocks.transpose(-3, -2).reshape(*lead, b * q, b * p)  # (..., j, q, i, p) -> (..., m, n)

    def reconstruct(self) -> Tensor:
        dtype = torch.promote_types(self.L.dtype, torch.float32)  # float32 (float64 after .double())
        return self._synthesize(self.R.to(dtype), self.L.to(dtype))

    def batch_key(self) -> tuple:
        return (type(self), self.out_features, self.in_features, self.nblocks, self.width, self.L.dtype)

    @classmethod
    def reconstruct_batch(cls, layers: Sequence[MonarchLinear]) -> Tensor:
        first = layers[0]
        dtype = torch.promote_types(first.L.dtype, torch.float32)
        r = torch.stack([layer.R for layer in layers]).to(dtype)  # (L, b, m/b, k)
        l = torch.stack([layer.L for layer in layers]).to(dtype)  # (L, b, k, n/b)
        return first._synthesize(r, l)  # (L, m, n)

    def _load_dense_weight(self, weight: Tensor) -> None:
        b, q, p, k, slots = self.nblocks, self.block_out, self.block_in, self.width, self.slots
        blocks = weight.view(b, q, b, p).transpose(1, 2)  # (j, i, q, p): block (j, i) of W
        u, s, vh = torch.linalg.svd(blocks, full_matrices=False)  # a batch of b² SVDs; min(q, p) ≥ ⌈k/b⌉
        root = s[..., :slots].sqrt()  # (j, i, slot)
        r_cols = (u[..., :slots] * root.unsqueeze(-2)).transpose(-1, -2)  # (j, i, slot, q): R's unit columns
        l_rows = root.unsqueeze(-1) * vh[..., :slots, :]  # (j, i, slot, p): L's unit rows
        used = self.used.to(weight.device).flatten()
        r_units, l_units = self.r_units.to(weight.device)[used], self.l_units.to(weight.device)[used]
        # Every unit fills exactly one real slot: scatter the slots back to the units' places in R and L.
        r = torch.zeros(b * k, q, dtype=weight.dtype, device=weight.device)
        r[r_units] = r_cols.reshape(-1, q)[used]
        l = torch.zeros(b * k, p, dtype=weight.dtype, device=weight.device)
        l[l_units] = l_rows.reshape(-1, p)[used]
        self.R.copy_(r.view(b, k, q).transpose(1, 2))
        self.L.copy_(l.view(b, k, p))

    def describe(self) -> str:
        return f"monarch b={self.nblocks} k={self.width}"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nblocks={self.nblocks}, width={self.width}"


@register("monarch")
class Monarch(Parameterization):
    """Store each weight as a Monarch matrix W = R·P₁·L (block-diagonal L and R, a reshape-transpose between).

    Args:
        compression: c ≥ 1; the block width k = floor(mn / (c·(m + n))), so the k·(m + n) stored values are at
            most mn/c and within m + n of it.
        nblocks: b for every layer: must divide both widths of each weight and be at most k. Default: the
            largest divisor of gcd(m, n) that is at most k (k = b: rank-1 blocks, the paper's square form).
        width: explicit k for every layer, in [b, min(m, n)]; takes precedence over ``compression``.
            ``width=min(m, n)`` represents every m×n matrix (full capacity).
        init_std: per-entry std of the initial W (> 0), matched to the dense init.
    """

    def __init__(
        self,
        compression: float = 4.0,
        nblocks: int | None = None,
        width: int | None = None,
        init_std: float = 0.02,
    ) -> None:
        self.compression = check_compression(compression)
        self.nblocks = None if nblocks is None else check_int("nblocks", nblocks, 1)
        self.width = None if width is None else check_int("width", width, 1)
        self.init_std = check_std(init_std)

    def structure_for(self, in_features: int, out_features: int) -> tuple[int, int]:
        """(nblocks, width) used for an (out_features × in_features) weight."""
        m, n = out_features, in_features
        where = f" for a {m}x{n} weight"
        if self.width is not None:
            k = check_int("width", self.width, 1, min(m, n), where=where)
        else:
            k = math.floor(m * n / (self.compression * (m + n)))
            if k < 1:
                raise ConfigError(
                    f"compression={self.compression} leaves no Monarch block width{where} (k·(m + n) ≤ mn/c needs "
                    f"k ≥ 1): expected compression ≤ {m * n / (m + n):.4g}"
                )
        valid = divisors(math.gcd(m, n))
        if self.nblocks is None:
            return max(d for d in valid if d <= k), k
        if self.nblocks not in valid:
            raise ConfigError(
                f"nblocks={self.nblocks} does not divide both widths{where}: expected one of "
                f"{', '.join(map(str, valid))}"
            )
        if self.nblocks > k:
            fits = ", ".join(str(d) for d in valid if d <= k)
            raise ConfigError(
                f"nblocks={self.nblocks} exceeds the block width k={k}{where} (each block pair needs a unit): "
                f"expected one of {fits}, or a larger width (smaller compression)"
            )
        return self.nblocks, k

    def build(self, in_features: int, out_features: int, bias: bool = True) -> MonarchLinear:
        b, k = self.structure_for(in_features, out_features)
        return MonarchLinear(in_features, out_features, bias, b, k, self.init_std)
