"""DCT: W is rebuilt from K stored 2-D DCT-II coefficients.

For W of shape m×n let C_m, C_n be the orthonormal DCT-II matrices (``dct_matrix``). The layer stores K
coefficients at K selected positions of an m×n matrix X (zero elsewhere) and uses

    W = C_mᵀ X C_n            parameters: K (+ m for the bias)

Because both bases are orthonormal, ‖W‖_F = ‖X‖_F (Parseval), and projecting a dense W onto the selection
(X = C_m W C_nᵀ, keep the selected entries) is the best Frobenius approximation on that support.

Selections, and the rank they allow (rank W = rank X):

* ``lowpass``: the top-left a×b block with a ≈ m/√c, b ≈ n/√c (exactly mn/4 for c = 4): rank ≤ min(a, b);
* ``zigzag``: the first K positions in JPEG zigzag order (exact K). They fill the anti-diagonals
  i + j ≤ D, so X has at most D + 1 non-zero rows and columns: rank ≤ min(D + 1, m, n);
* ``random``: K positions drawn without replacement by a generator seeded with ``seed`` (exact K; the same
  seed and shape give the same positions, so checkpoints reload and DDP ranks agree). No structural rank cap.

Only the rows and columns that hold a selected position take part in the reconstruction: the bases are
sliced to them once, so ``lowpass`` is two small matmuls with no scatter at all
(:class:`~spectral_lightning.parameterizations.base.OrthonormalCoefficientLinear`).

A ``lowpass`` or ``zigzag`` layer can also skip W altogether: y = x Wᵀ = DCT-III(DCT-II(x) Xᵀ), two fast
transforms around a product with the coefficient block (or the zigzag's staircase of blocks), per token
O(n log n + m log m) + ~K work instead of m·n (:mod:`~spectral_lightning.parameterizations.fast_dct`). The ``path``
option chooses: ``auto`` (the default) takes whichever costs less for the shape and the token count of each call.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from torch import Tensor

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.adaptive import (
    Budget,
    Grow,
    SupportSchedule,
    check_grow_window,
    check_support_options,
)
from spectral_lightning.parameterizations.base import OrthonormalCoefficientLinear, Parameterization
from spectral_lightning.parameterizations.dct_cost import choose_transform
from spectral_lightning.parameterizations.fast_dct import (
    autocast_off,
    even_odd_order,
    spectral_product,
    staircase,
    staircase_heights,
    twiddles,
)
from spectral_lightning.parameterizations.options import check_compression, check_int, check_std, coefficient_budget
from spectral_lightning.parameterizations.registry import register

Selection = Literal["lowpass", "zigzag", "random"]
SELECTIONS: tuple[str, ...] = ("lowpass", "zigzag", "random")
ExecutionPath = Literal["auto", "materialize", "transform"]
PATHS: tuple[str, ...] = ("auto", "materialize", "transform")
#: Selections whose coefficients form a block or a staircase of blocks: the ones the transform path computes.
TRANSFORM_SELECTIONS: tuple[str, ...] = ("lowpass", "zigzag")


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """Orthonormal DCT-II matrix C (n×n): C[k, i] = √(2/n)·cos(π(2i+1)k / 2n), row 0 scaled by 1/√2.

    ``C @ x`` is the DCT-II of x; ``C.T @ y`` inverts it. Computed in float64, then cast; always a new tensor.
    The float64 matrices of the last four (n, device) asked for are kept (a model has a handful of widths, and
    each of its layers asks for two bases when built and two more when loaded from a dense weight: converting
    GPT-2 small asks 192 times for three widths). They hold 8·n² bytes each (75 MB for n = 3072).
    """
    return _dct_matrix64(n, torch.device("cpu") if device is None else torch.device(device)).to(dtype, copy=True)


@functools.lru_cache(maxsize=4)
def _dct_matrix64(n: int, device: torch.device) -> Tensor:
    """The float64 DCT-II matrix of :func:`dct_matrix`, cached; callers must not modify it in place."""
    k = torch.arange(n, dtype=torch.float64, device=device).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64, device=device).unsqueeze(0)
    # One n×n temporary, updated in place (the same operations in the same order as the formula above): a
    # 3072-wide basis is 75 MB in float64, and fresh temporaries for each step cost more than the arithmetic.
    c = (math.pi * (2 * i + 1)) * k
    c.div_(2 * n).cos_().mul_(math.sqrt(2.0 / n))
    c[0] /= math.sqrt(2.0)
    return c


def lowpass_block(m: int, n: int, k: int) -> tuple[int, int]:
    """Block a×b of about k positions with the aspect ratio of m×n (a ≈ √(k·m/n), b ≈ k/a)."""
    a = min(m, max(1, round(math.sqrt(k * m / n))))
    b = min(n, max(1, round(k / a)))
    return a, b


@functools.lru_cache(maxsize=16)
def zigzag_order(m: int, n: int) -> Tensor:
    """Flat (row-major) indices of an m×n matrix in JPEG zigzag order: by anti-diagonal d = i + j,
    alternating direction ((0,0), (0,1), (1,0), (2,0), (1,1), (0,2), ...). Cached per shape (a model has
    a handful of shapes); callers must not modify the result in place."""
    i, j = torch.meshgrid(torch.arange(m), torch.arange(n), indexing="ij")
    d = i + j
    # Odd diagonals run down-left (i increasing), even ones up-right (i decreasing).
    within = torch.where(d % 2 == 1, i, -i)
    key = d * (2 * m + 1) + within + m  # lexicographic (d, within) as one integer
    return torch.argsort(key.flatten())


def select_positions(m: int, n: int, k: int, selection: str, seed: int) -> Tensor:
    """Sorted flat indices of the k selected positions of an m×n coefficient matrix."""
    if selection == "zigzag":
        idx = zigzag_order(m, n)[:k]
    elif selection == "random":
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(m * n, generator=gen)[:k]
    elif selection == "lowpass":
        a, b = lowpass_block(m, n, k)
        return (torch.arange(a).unsqueeze(1) * n + torch.arange(b).unsqueeze(0)).flatten()  # row-major: sorted
    else:
        raise ConfigError(f"selection={selection!r} is not valid: expected one of {', '.join(SELECTIONS)}")
    return torch.sort(idx).values


class DCTLinear(OrthonormalCoefficientLinear):
    """Linear layer whose weight is W = C_mᵀ X C_n with X holding ``stored`` trainable coefficients.

    Args:
        in_features: n.
        out_features: m.
        bias: learn a bias.
        k: number of coefficients requested (``lowpass`` rounds it to an a×b block).
        selection: ``lowpass``, ``zigzag`` or ``random``.
        seed: seed of the ``random`` selection.
        init_std: per-entry standard deviation of the initial W (matches the dense init).
        support: None for a fixed support; a schedule makes ``selection`` the starting support only.
        path: how the forward pass runs: ``materialize`` (rebuild W, then ``F.linear``), ``transform`` (never form
            W: :func:`~spectral_lightning.parameterizations.fast_dct.spectral_product`; ``lowpass`` and
            ``zigzag`` with a fixed support only) or ``auto`` (the cheaper one per call, from the shapes, the token
            count and the device; a layer whose support moves always materializes). Not saved in the state_dict.
    """

    _basis_buffers = (*OrthonormalCoefficientLinear._basis_buffers, "twiddle_in", "twiddle_out")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        k: int = 1,
        selection: str = "lowpass",
        seed: int = 0,
        init_std: float = 0.02,
        support: SupportSchedule | None = None,
        path: str = "auto",
    ) -> None:
        self.selection = selection
        positions = select_positions(out_features, in_features, k, selection, seed)
        super().__init__(in_features, out_features, bias, positions, seed, init_std, support)
        if path not in PATHS:
            raise ConfigError(f"path={path!r} is not valid: expected one of {', '.join(PATHS)}")
        self.path = path
        # The column strips of the ra×cb corner that hold the coefficients (one for a block), or None when the
        # transform path does not apply: a random support, or one that moves (its strips would go stale).
        self._strips: tuple[tuple[int, int, int], ...] | None = None
        if not getattr(self, "support_moves", False):
            if self.block:
                self._strips = ((self.ra, 0, self.cb),)
            elif selection == "zigzag":
                heights = staircase_heights(self._positions // self.cb, self._positions % self.cb, self.cb)
                self._strips = None if heights is None else staircase(heights)
        if path == "transform" and self._strips is None:
            raise ConfigError(
                f"path='transform' needs a fixed lowpass or zigzag support, not selection={selection!r}"
                f"{' with a moving support' if getattr(self, 'support_moves', False) else ''}: expected selection in "
                f"{', '.join(TRANSFORM_SELECTIONS)} with update_every=None, or path='auto' / 'materialize'"
            )

    def _build_buffers(self, device: torch.device | None = None) -> None:
        super()._build_buffers(device)
        self._build_transform_buffers(torch.float32, device)

    def _build_transform_buffers(self, dtype: torch.dtype, device: torch.device | None) -> None:
        # The transform path's reorderings and twiddle factors (O(m + n) values; derived, never saved).
        m, n = self.out_features, self.in_features
        self.register_buffer("order_in", even_odd_order(n, device), persistent=False)
        self.register_buffer("order_out", even_odd_order(m, device), persistent=False)
        self.register_buffer("twiddle_in", twiddles(n, dtype, device), persistent=False)
        self.register_buffer("twiddle_out", twiddles(m, dtype, device), persistent=False)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 (nn.Module signature)
        super()._apply(fn, recurse)
        if self.basis_in.dtype == torch.float64:
            # After .double(): bases and twiddles recomputed in float64, so float64 checks of either path see the
            # exact DCT (float32 values cast up are orthonormal only to ~1e-7).
            device = self.basis_in.device
            self.basis_out = self.basis("out", torch.float64, device)[: self.ra]
            self.basis_in = self.basis("in", torch.float64, device)[: self.cb]
            self._build_transform_buffers(torch.float64, device)
        return self

    def skips_weight(self, tokens: int) -> bool:
        """Whether a forward over ``tokens`` input rows takes the transform path and skips W (see ``path``)."""
        if self._strips is None or self.path == "materialize" or getattr(self, "support_moves", False):
            return False
        if self.path == "transform":
            return True
        m, n, basis = self.out_features, self.in_features, self.basis_in
        return choose_transform(m, n, self.ra, self.cb, self._strips, tokens, basis.device, basis.dtype)

    def uses_transform(self, x: Tensor) -> bool:
        """Whether this call with input ``x`` skips W (see ``path``)."""
        return self.skips_weight(x.numel() // self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        if not self.uses_transform(x):
            return super().forward(x)
        # As the rebuilt W: float32 (float64 after .double()) with autocast off; the output has the dtype
        # F.linear would give (autocast's under autocast).
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        out_dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
        with autocast_off(device_type):
            coef = self.coefficient_matrix()  # (ra, cb), zeros where nothing is stored
            bias = None if self.bias is None else self.bias.to(coef.dtype)
            buffers = (self.order_in, self.order_out, self.twiddle_in, self.twiddle_out)
            y = spectral_product(x.to(coef.dtype), coef, bias, self._strips, self.out_features, buffers)  # (..., m)
        return y.to(out_dtype)

    def batch_key(self) -> tuple | None:
        # A layer forced onto the transform path never needs its W in training: leave it out of batched rebuilds.
        if self.path == "transform" and self._strips is not None and not getattr(self, "support_moves", False):
            return None
        return super().batch_key()

    def basis(self, side: str, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
        return dct_matrix(self.out_features if side == "out" else self.in_features, dtype, device)

    def describe(self) -> str:
        return f"dct {self.selection}" + (f" seed={self.seed}" if self.selection == "random" else "")

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, selection={self.selection}"
            + (f", seed={self.seed}" if self.selection == "random" else "")
            + (f", path={self.path}" if self.path != "auto" else "")
        )


@register("dct")
class DCT(Parameterization):
    """Store K 2-D DCT coefficients per weight and rebuild W = C_mᵀ X C_n at each forward.

    Args:
        compression: c ≥ 1; each m×n weight keeps K = round(mn / c) coefficients (c = 4: the paper's 29%
            model; c = 1: every coefficient, exactly equivalent to dense).
        k: explicit K in [1, m·n] for every layer; when given it takes precedence over ``compression``.
        selection: which positions are kept: ``lowpass`` (top-left block, ~m/√c × n/√c), ``zigzag``
            (first K in JPEG zigzag order) or ``random`` (K seeded random positions).
        seed: seed of the ``random`` selection (any integer ≥ 0).
        init_std: per-entry std of the initial W (> 0), matched to the dense init.
        update_every: None (default): the support is fixed. An integer ≥ 1: the K positions move every
            ``update_every`` steps (drop the smallest |x|, grow where the gradient is largest; RigL-style, see
            ``parameterizations/adaptive.py``); ``selection`` is then only the start, and ``random`` is the
            recommended one (a low-pass start has to travel far from its corner).
        update_until: fraction of training in (0, 1] after which the support stays fixed.
        drop_fraction: share of K in (0, 1] replaced at the first update, decayed with a cosine to 0 at
            ``update_until``.
        grow: where new coefficients go: ``gradient`` (largest |gradient|) or ``random`` (seeded).
        budget: ``per_layer`` (each layer keeps its K) or ``global`` (the total K is fixed and moves between
            layers; raw magnitudes compared across layers) or ``global_relative`` (the same, with each layer's
            |x| and |gradient| divided by their mean in that layer).
        path: how each layer's forward pass runs: ``auto`` (the cheaper of the two below per call, from the
            shapes, the token count and the device), ``materialize`` (rebuild W, then one m×n product per token)
            or ``transform`` (never form W: DCT-II of x, a product with the coefficient block, inverse DCT; for the
            ``lowpass`` and ``zigzag`` selections with a fixed support). Same function either way.
        grow_window: with ``grow: gradient``, the number of steps (1 to ``update_every``) whose gradients are
            summed to choose where to grow, ending with the update step: 1 (default) is that step's gradient alone,
            more follows the gradient's consistent direction over the window (a gradient momentum).
    """

    def __init__(
        self,
        compression: float = 4.0,
        k: int | None = None,
        selection: Selection = "lowpass",
        seed: int = 0,
        init_std: float = 0.02,
        update_every: int | None = None,
        update_until: float = 0.75,
        drop_fraction: float = 0.3,
        grow: Grow = "gradient",
        budget: Budget = "per_layer",
        path: ExecutionPath = "auto",
        grow_window: int = 1,
    ) -> None:
        self.compression = check_compression(compression)
        self.k = None if k is None else check_int("k", k, 1)
        if selection not in SELECTIONS:
            raise ConfigError(f"selection={selection!r} is not valid: expected one of {', '.join(SELECTIONS)}")
        self.selection = selection
        self.seed = check_int("seed", seed, 0)
        self.init_std = check_std(init_std)
        self.update_every, self.update_until, self.drop_fraction, self.grow, self.budget = check_support_options(
            update_every, update_until, drop_fraction, grow, budget
        )
        self.grow_window = check_grow_window(grow_window, self.update_every)
        if path not in PATHS:
            raise ConfigError(f"path={path!r} is not valid: expected one of {', '.join(PATHS)}")
        if path == "transform" and selection not in TRANSFORM_SELECTIONS:
            raise ConfigError(
                f"path='transform' is not valid with selection={selection!r}: the transform path needs a block or "
                f"staircase support, selection in {', '.join(TRANSFORM_SELECTIONS)} (or path='auto' / 'materialize')"
            )
        self.path = path

    def num_coefficients(self, in_features: int, out_features: int) -> int:
        """K requested for an (out_features × in_features) weight."""
        return coefficient_budget(self.compression, self.k, in_features, out_features)

    def build(self, in_features: int, out_features: int, bias: bool = True) -> DCTLinear:
        k = self.num_coefficients(in_features, out_features)
        support = SupportSchedule.of(self)
        return DCTLinear(
            in_features, out_features, bias, k, self.selection, self.seed, self.init_std, support, path=self.path
        )
