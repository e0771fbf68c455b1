"""Sparse plus low-rank: W = B·A + S, with S non-zero only on a fixed, seeded random support (SLTrain's form).

For W of shape m×n the layer stores a rank-r factorization B (m×r), A (r×n) and the values of S on ``nnz``
positions:

    W = B·A + S            parameters: r·(m + n) + nnz (+ m for the bias)

The low-rank part carries the directions shared across the matrix; S adds a sparse set of free entries, so
rank(W) is not capped at r (a random support of a few percent is full rank almost surely). The support is a
pure function of the shape and ``seed`` (``nnz`` positions drawn as the DCT's ``random`` selection, from a seed
derived from (seed, m, n)), kept as a non-persistent buffer: a checkpoint holds B, A and the nnz values only,
and every DDP rank agrees.

Budget rule at compression c (``rank`` not given), with N = floor(mn / c) values to spend:

* S first gets round(density·mn) entries (``density`` defaults to 0.03, SLTrain's default);
* r = floor((N − round(density·mn)) / (m + n)): the largest rank that still fits;
* the remainder N − r·(m + n) (fewer than m + n entries) goes to S as well.

So a layer stores exactly floor(mn / c) values (the DCT's K = round(mn / c) up to rounding), with S's share at
least ``density`` (``describe()`` shows the share each layer ended with). A density that leaves no room for
rank 1 is an error. With an explicit ``rank``, S holds round(density·mn) entries and ``compression`` is unused.

Init: B·A carries the dense per-entry variance and S starts at zero (see ``reset_parameters``). ``load_dense_``
fits B·A to W off the support by alternating least squares from the truncated SVD and sets S to the residual on
the support: exact (to float64 rounding) when W is rank r plus a matrix on the support, and never worse than
the truncated SVD alone.

Weight decay: B, A and S are all decayed. On the factors it acts as a nuclear-norm penalty on B·A (see
``lowrank.py``); on S it is the Frobenius decay a dense weight gets, restricted to the support.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.base import Parameterization, ReconstructedLinear
from spectral_lightning.parameterizations.dct import select_positions
from spectral_lightning.parameterizations.options import check_compression, check_int, check_std
from spectral_lightning.parameterizations.registry import register
from spectral_lightning.seeds import derive_seed

# Fit of a dense weight (load_dense_): at most this many alternating steps after the truncated SVD; near an exact
# fit, stop after this many steps in a row that lower the residual by under 1% (see _load_dense_weight).
MAX_REFINEMENTS = 50
STALL_STEPS = 8
# Ridge added to each r×r system of the fit. Relative to the systems' scale (1: the basis is orthonormal), so it
# keeps singular systems solvable and moves an exact fit by about 1e-14 relative.
RIDGE = 1e-14


class SparseLowRankLinear(ReconstructedLinear):
    """Linear layer with W = B·A + S: rank ``rank`` plus ``nnz`` trainable entries at seeded random positions.

    Args:
        in_features: n.
        out_features: m.
        bias: learn a bias.
        rank: r in [1, min(m, n)].
        nnz: number of entries of S, in [1, m·n].
        seed: seed of the support (the same seed and shape give the same positions).
        init_std: per-entry standard deviation of the initial W (matches the dense init).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int = 1,
        nnz: int = 1,
        seed: int = 0,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.rank, self.nnz, self.seed, self.init_std = rank, nnz, seed, init_std
        self.B = nn.Parameter(torch.empty(out_features, rank))
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.S = nn.Parameter(torch.empty(nnz))  # the values of S on its support, in row-major order
        self._build_buffers()
        self.reset_parameters()

    def _build_buffers(self, device: torch.device | None = None) -> None:
        m, n = self.out_features, self.in_features
        positions = select_positions(m, n, self.nnz, "random", derive_seed(self.seed, m, n, "sparse_lowrank"))
        self.register_buffer("positions", positions.to(device), persistent=False)  # sorted flat indices

    def reset_parameters(self) -> None:
        # All of the dense variance goes to B·A and S starts at zero (as SLTrain starts S small). B·A's entries
        # have variance r·σ_B²·σ_A² = σ² with σ_B = σ_A = (σ/√r)^½ (as in lowrank.py), on and off the support
        # alike, so every entry of W is distributed as the dense init's; a variance given to S would instead
        # make the few supported entries larger than the rest. S still learns from the first step: W is linear
        # in S, so its gradient is W's gradient on the support (unlike a zero factor of a product).
        std = math.sqrt(self.init_std / math.sqrt(self.rank))
        nn.init.normal_(self.B, mean=0.0, std=std)
        nn.init.normal_(self.A, mean=0.0, std=std)
        nn.init.zeros_(self.S)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def stored(self) -> int:
        return self.rank * (self.in_features + self.out_features) + self.nnz

    def _sparse(self, values: Tensor) -> Tensor:
        """S as dense (..., m, n) from its values (..., nnz): zeros off the support."""
        lead = values.shape[:-1]
        flat = values.new_zeros(*lead, self.out_features * self.in_features)
        return flat.index_copy(flat.dim() - 1, self.positions, values).view(*lead, self.out_features, self.in_features)

    def reconstruct(self) -> Tensor:
        dtype = torch.promote_types(self.B.dtype, torch.float32)  # float32 (float64 after .double())
        low = self.B.to(dtype) @ self.A.to(dtype)  # (m, r) @ (r, n) -> (m, n)
        return low + self._sparse(self.S.to(dtype))  # (m, n)

    def batch_key(self) -> tuple:
        # The support derives from (m, n, nnz, seed): layers with equal keys share it.
        return (type(self), self.out_features, self.in_features, self.rank, self.nnz, self.seed, self.B.dtype)

    @classmethod
    def reconstruct_batch(cls, layers: Sequence[SparseLowRankLinear]) -> Tensor:
        first = layers[0]
        dtype = torch.promote_types(first.B.dtype, torch.float32)
        b = torch.stack([layer.B for layer in layers]).to(dtype)  # (L, m, r)
        a = torch.stack([layer.A for layer in layers]).to(dtype)  # (L, r, n)
        s = torch.stack([layer.S for layer in layers]).to(dtype)  # (L, nnz)
        return b @ a + first._sparse(s)  # (L, m, n)

    def _load_dense_weight(self, weight: Tensor) -> None:
        # For fixed B·A the best S is the residual W − B·A on the support, which leaves
        #     min over B, A of ‖(W − B·A) off the support‖_F,
        # a low-rank fit to W's off-support entries (matrix completion with the support as the missing entries).
        # Start from the truncated SVD of W and alternate exact least-squares solves for B (A fixed) and A (B
        # fixed), one small r×r system per row or column (see _masked_rows). In exact arithmetic no step increases
        # the residual. When W is rank r plus a matrix on the support, the residual falls geometrically to float64
        # rounding (about ten steps for a support of a few percent); for any other W it levels off within a few
        # steps. Keep the best iterate, and stop at rounding level, after MAX_REFINEMENTS steps, or at the first
        # step that gains under 1%; once the residual is below 1e-6·‖W‖, only after STALL_STEPS such steps in a
        # row: when rank W < r, the spare rank can also absorb entries of S, some of the systems are then nearly
        # singular and the residual wanders near rounding level for a few steps before it settles.
        m, n = weight.shape
        idx = self.positions.to(weight.device)
        rows, cols = idx // n, idx % n
        by_row = _padded_lists(rows, cols, m, n)  # (m, k): each row's support columns, padded with n
        by_col = _padded_lists(cols, rows, n, m)  # (n, k'): each column's support rows, padded with m
        observed = weight.flatten().index_fill(0, idx, 0.0).view(m, n)  # W off the support, zeros on it
        norm = float(weight.norm())
        b, a = self._factors(weight)
        best, best_error, stalled = (b, a), math.inf, 0
        for _ in range(MAX_REFINEMENTS):
            error = float((weight - b @ a).flatten().index_fill(0, idx, 0.0).norm())  # what S cannot absorb
            stalled = stalled + 1 if error > 0.99 * best_error else 0
            if error < best_error:
                best, best_error = (b, a), error
            if error <= 1e-11 * norm or stalled >= (STALL_STEPS if error < 1e-6 * norm else 1):
                break
            q_in = torch.linalg.qr(a.t()).Q.t()  # (r, n): orthonormal rows spanning A's row space
            b = _masked_rows(observed, q_in, by_row)  # (m, r)
            q_out = torch.linalg.qr(b).Q  # (m, r): orthonormal columns spanning B's column space
            a, b = _masked_rows(observed.t(), q_out.t(), by_col).t(), q_out  # (r, n), (m, r)
        b, a = best
        # Share the singular values evenly between the factors, as _factors does: with B = Q·R (QR), the SVD
        # U·Σ·Vᵀ of the small r×n matrix R·A gives the SVD of B·A = (Q·U)·Σ·Vᵀ without an m×n decomposition.
        q, tri = torch.linalg.qr(b)
        u, sigma, vh = torch.linalg.svd(tri @ a, full_matrices=False)
        root = sigma.sqrt()
        self.B.copy_((q @ u) * root)
        self.A.copy_(root.unsqueeze(1) * vh)
        self.S.copy_((weight - b @ a).flatten()[idx])

    def _factors(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The best rank-r approximation of ``weight`` as (B, A), sharing the singular values evenly:
        B = U_r·√S_r, A = √S_r·V_rᵀ (so weight decay treats the factors alike)."""
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        root = s[: self.rank].sqrt()
        return u[:, : self.rank] * root, root.unsqueeze(1) * vh[: self.rank]

    def describe(self) -> str:
        share = 100 * self.nnz / (self.in_features * self.out_features)
        return f"sparse_lowrank r={self.rank} d={share:.3g}%"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, nnz={self.nnz}, seed={self.seed}"


@register("sparse_lowrank")
class SparseLowRank(Parameterization):
    """Store each weight as W = B·A + S: rank r plus a sparse S on a fixed seeded random support (SLTrain).

    Args:
        compression: c ≥ 1; each m×n weight stores exactly floor(mn / c) values: S gets round(density·mn)
            entries, the rank r = floor((floor(mn / c) − round(density·mn)) / (m + n)) fills what is left, and
            the remainder (< m + n) goes to S as well. Must leave r ≥ 1.
        rank: explicit r ≥ 1 for every layer (must not exceed min(m, n)); takes precedence over ``compression``
            (S then holds round(density·mn) entries).
        density: the share of W's m·n entries given to S, 0 < density < 1 (SLTrain's default: 0.03); with
            ``compression`` it is the minimum share.
        seed: seed of the support (any integer ≥ 0); the same seed and shape give the same positions, so
            checkpoints reload and DDP ranks agree.
        init_std: per-entry std of the initial W (> 0), matched to the dense init (carried by B·A; S starts at 0).
    """

    def __init__(
        self,
        compression: float = 4.0,
        rank: int | None = None,
        density: float = 0.03,
        seed: int = 0,
        init_std: float = 0.02,
    ) -> None:
        self.compression = check_compression(compression)
        self.rank = None if rank is None else check_int("rank", rank, 1)
        if (
            isinstance(density, bool)
            or not isinstance(density, (int, float))
            or not math.isfinite(density)
            or not 0 < density < 1
        ):
            raise ConfigError(f"density={density!r} is not valid: expected a number with 0 < density < 1 (e.g. 0.03)")
        self.density = float(density)
        self.seed = check_int("seed", seed, 0)
        self.init_std = check_std(init_std)

    def shape_for(self, in_features: int, out_features: int) -> tuple[int, int]:
        """(rank, nnz) used for an (out_features × in_features) weight."""
        m, n = out_features, in_features
        where = f" for a {m}x{n} weight"
        nnz = round(self.density * m * n)
        if nnz < 1:
            raise ConfigError(
                f"density={self.density} gives no entry of S{where}: expected density > {0.5 / (m * n):.3g}"
            )
        if self.rank is not None:
            return check_int("rank", self.rank, 1, min(m, n), where=where), nnz
        budget = math.floor(m * n / self.compression)
        if budget < m + n + 1:
            raise ConfigError(
                f"compression={self.compression} leaves {budget} values{where}, fewer than rank 1 and one entry of S "
                f"need ({m + n + 1}): expected compression <= {m * n / (m + n + 1):.4g}"
            )
        rank = (budget - nnz) // (m + n)
        if rank < 1:
            raise ConfigError(
                f"density={self.density} with compression={self.compression} leaves rank {max(rank, 0)}{where}: "
                f"S takes {nnz} of the {budget} values and rank 1 needs {m + n} more; expected density <= "
                f"{(budget - (m + n)) / (m * n):.4g} or a smaller compression"
            )
        return rank, budget - rank * (m + n)

    def build(self, in_features: int, out_features: int, bias: bool = True) -> SparseLowRankLinear:
        rank, nnz = self.shape_for(in_features, out_features)
        return SparseLowRankLinear(in_features, out_features, bias, rank, nnz, self.seed, self.init_std)


def _padded_lists(rows: Tensor, cols: Tensor, m: int, pad: int) -> Tensor:
    """(m, k) table of the ``cols`` each of the m ``rows`` holds (k = the most any row holds), padded with ``pad``."""
    order = torch.argsort(rows * (pad + 1) + cols)
    rows, cols = rows[order], cols[order]
    counts = torch.bincount(rows, minlength=m)
    start = torch.cumsum(counts, 0) - counts
    within = torch.arange(rows.numel(), device=rows.device) - start[rows]
    table = torch.full((m, int(counts.max()) if rows.numel() else 0), pad, dtype=cols.dtype, device=cols.device)
    table[rows, within] = cols
    return table


def _masked_rows(observed: Tensor, basis: Tensor, support: Tensor) -> Tensor:
    """X (m×r) minimizing ‖(W − X·Q) off the support‖_F, row by row, for a basis Q (r×n) with orthonormal rows.

    Row i solves (Σ_{j off Ω_i} q_j q_jᵀ) x_i = Q·w_i with w_i the row's off-support entries. Since Q·Qᵀ = I, the
    matrix is I − Σ_{j ∈ Ω_i} q_j q_jᵀ: built from the row's few support columns (``support``, padded with n),
    so the cost is m·r²·k instead of m·r²·n.

    Args:
        observed: (m, n) W with zeros on the support.
        basis: (r, n) Q, orthonormal rows.
        support: (m, k) each row's support columns, padded with n.
    """
    r = basis.shape[0]
    padded = torch.cat([basis, basis.new_zeros(r, 1)], dim=1)  # column n is zero: padding adds nothing
    local = padded[:, support].permute(1, 0, 2)  # (m, r, k): the basis columns on each row's support
    gram = torch.eye(r, dtype=basis.dtype, device=basis.device) * (1 + RIDGE) - local @ local.transpose(1, 2)
    rhs = observed @ basis.t()  # (m, n) @ (n, r) -> (m, r)
    return torch.linalg.solve(gram, rhs.unsqueeze(-1)).squeeze(-1)  # (m, r)
