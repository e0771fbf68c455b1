"""Orthonormal DCTs through ``torch.fft``, and the DCT layer's product computed without its weight.

Transforms (last dimension, batched over the leading ones; C_n = :func:`~.dct.dct_matrix` ``(n)``):

* ``dct_ii(x, keep)`` = the first ``keep`` entries of C_n x (the DCT-II; ``keep`` = n: all of it);
* ``dct_iii(y, n)`` = C_n[:k]ᵀ y for y of length k ≤ n (the inverse, from the first k coefficients, the rest zero).

Both follow Makhoul (1980), exact for every length n, odd and prime too: read x in the order v = (x₀, x₂, x₄, …,
x₅, x₃, x₁), take one real FFT V = rfft(v) of length n, and the unnormalized DCT-II is X_k = Re(e^{-iπk/2n} V_k)
for k ≤ n/2 and X_{n-k} = -Im(e^{-iπk/2n} V_k) for the rest (v is real, so rfft's n/2 + 1 outputs hold all of
it). The inverse runs the same steps backwards: V_k = e^{iπk/2n} (X_k - i X_{n-k}), v = irfft(V), undo the order.
The orthonormal scale (√(1/n) for k = 0, √(2/n) otherwise) is folded into the twiddle factors. Work: one FFT of
length n plus three passes over the data, O(n log n) instead of the matrix product's O(n·keep).

The layer product. A DCT layer whose coefficients lie in the top-left ra×cb corner X of its coefficient matrix has
W = C_m[:ra]ᵀ X C_n[:cb], so for tokens x of width n

    y = x Wᵀ = dct_iii(dct_ii(x, cb) Xᵀ, m)

one transform of x (keeping cb outputs), one product with X and one inverse transform: per token
O(n log n + m log m) + ra·cb multiply-adds instead of the dense m·n, and W is never formed. When the coefficients
do not fill the corner but form a staircase (the zigzag triangle), the product is split into column strips
[0:a_r, s_r:e_r] of the corner (:func:`staircase`), which skips most of the empty corner; the zeros a strip still
covers are the coefficient matrix's fixed zeros, so the function is the same. The backward pass is the same three
steps transposed (:class:`_SpectralProduct`): dct_ii of the output gradient, two products with the strips, dct_iii.

Which way is cheaper is the business of :mod:`~spectral_lightning.parameterizations.dct_cost`. On a CPU the rows
go through in cache-sized chunks (:func:`chunk_rows`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from spectral_lightning.errors import ConfigError

#: A column strip of the coefficient corner: (rows a, first column s, end column e), i.e. X[0:a, s:e].
Strip = tuple[int, int, int]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the transforms run in: float64 for float64 inputs, float32 for everything else (the FFT has no
    bf16/fp16 kernels at most lengths, and their rounding would add noise to every output)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def autocast_off(device_type: str) -> Iterator[None]:
    """Autocast disabled on ``device_type`` inside the block (entered only when it is on)."""
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def even_odd_order(n: int, device: torch.device | str | None = None) -> Tensor:
    """(2, n) int64: row 0 is the order Makhoul's algorithm reads x in (0, 2, 4, …, 5, 3, 1), row 1 its inverse."""
    order = torch.cat([torch.arange(0, n, 2, device=device), torch.arange(1, n, 2, device=device).flip(0)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=device)
    return torch.stack([order, inverse])


def twiddles(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """(4, n//2 + 1): s_k cos θ_k, s_k sin θ_k, cos θ_k / s_k, sin θ_k / s_k for θ_k = πk/2n and the orthonormal
    scale s (√(1/n) at k = 0, √(2/n) after); the first two rows serve the DCT-II, the last two its inverse.
    Computed in float64, then cast."""
    k = torch.arange(n // 2 + 1, dtype=torch.float64, device=device)
    theta = k * (math.pi / (2 * n))
    scale = torch.full_like(k, math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    cos, sin = theta.cos(), theta.sin()
    return torch.stack([scale * cos, scale * sin, cos / scale, sin / scale]).to(dtype)


def _dct_ii(x: Tensor, keep: int, order: Tensor, tw: Tensor, out: Tensor | None = None) -> Tensor:
    """The first ``keep`` orthonormal DCT-II coefficients of the last dimension; ``order``/``tw`` for its length;
    written into ``out`` when given."""
    n = x.shape[-1]
    h = n // 2 + 1
    spectrum = torch.fft.rfft(x.index_select(-1, order))  # (..., h) complex
    re, im = spectrum.real, spectrum.imag
    lo = min(keep, h)
    # X_k = s(cos θ Re V + sin θ Im V)
    low = torch.addcmul(re[..., :lo] * tw[0, :lo], im[..., :lo], tw[1, :lo], out=out if keep <= h else None)
    if keep <= h:
        return low
    # X_{n-j} = s(sin θ_j Re V_j - cos θ_j Im V_j) for j = n-keep+1 .. n-h, in falling order of n-j
    j = slice(n - keep + 1, n - h + 1)
    high = torch.addcmul(re[..., j] * tw[1, j], im[..., j], tw[0, j], value=-1.0)
    return torch.cat([low, high.flip(-1)], dim=-1, out=out)


def _dct_iii(y: Tensor, n: int, inverse_order: Tensor, tw: Tensor, out: Tensor | None = None) -> Tensor:
    """C_n[:k]ᵀ y along the last dimension (length k ≤ n); ``inverse_order``/``tw`` for length n; written into
    ``out`` when given."""
    k = y.shape[-1]
    h = n // 2 + 1
    lo = min(k, h)
    a = y[..., :lo]
    if k <= n - h + 1:  # no X_{n-j} with j ≤ n/2 is stored: V_j = e^{iθ_j} X_j / s_j, zero-padded by irfft
        spectrum = torch.complex(a * tw[2, :lo], a * tw[3, :lo])
    else:
        a = F.pad(a, (0, h - lo))
        b = F.pad(y[..., n - h + 1 :].flip(-1), (n - k + 1, 0))  # b_j = y_{n-j} (zero for j = 0 and n-j ≥ k)
        re = torch.addcmul(a * tw[2], b, tw[3])
        im = torch.addcmul(a * tw[3], b, tw[2], value=-1.0)
        spectrum = torch.complex(re, im)
    return torch.index_select(torch.fft.irfft(spectrum, n), -1, inverse_order, out=out)


def _check_length(option: str, value: int, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n:
        raise ConfigError(f"{option}={value!r} is not valid for length {n}: expected an integer in [1, {n}]")
    return value


def dct_ii(x: Tensor, keep: int | None = None) -> Tensor:
    """Orthonormal DCT-II of the last dimension of ``x``, its first ``keep`` outputs (default: all n).

    Equals ``x @ dct_matrix(n)[:keep].T``. Runs in float32 with autocast off (float64 for float64 inputs) and
    returns ``x.dtype``; differentiable (autograd through ``torch.fft``).

    Args:
        x: (..., n) real tensor, n ≥ 1.
        keep: how many leading coefficients to return, in [1, n].
    """
    n = x.shape[-1]
    keep = n if keep is None else _check_length("keep", keep, n)
    dtype = compute_dtype(x.dtype)
    with autocast_off(x.device.type):
        out = _dct_ii(x.to(dtype), keep, even_odd_order(n, x.device)[0], twiddles(n, dtype, x.device))
    return out.to(x.dtype)


def dct_iii(y: Tensor, n: int) -> Tensor:
    """Orthonormal inverse DCT (DCT-III) of the last dimension of ``y``: the first k coefficients of a length-n
    signal, the others zero. Equals ``y @ dct_matrix(n)[:k]``; dtypes and autograd as :func:`dct_ii`.

    Args:
        y: (..., k) real tensor of leading coefficients.
        n: the signal length, n ≥ k.
    """
    _check_length("n", n, 1 << 62)
    _check_length("coefficients (last dimension of y)", y.shape[-1], n)
    dtype = compute_dtype(y.dtype)
    with autocast_off(y.device.type):
        out = _dct_iii(y.to(dtype), n, even_odd_order(n, y.device)[1], twiddles(n, dtype, y.device))
    return out.to(y.dtype)


# -- the layer product ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def staircase(heights: tuple[int, ...], strip_cost: float | None = None) -> tuple[Strip, ...]:
    """Column strips X[0:a_r, s_r:e_r] covering a support whose column j holds rows < ``heights[j]``.

    The strips partition the columns, so every stored position lies in exactly one; a strip is as tall as its
    tallest column, so it may also cover empty positions (zeros of the coefficient matrix). Among all such
    partitions this one minimizes the covered area plus ``strip_cost`` per strip (each strip is one more product
    in the forward pass and two in the backward, and a thin product runs below the matmul's peak speed): a
    dynamic program over the column boundaries. Default ``strip_cost``: 1/32 of the support's area, so a strip
    must save about 3% of the work to be worth it (a triangle then takes about six strips and ~17% more than its
    area, instead of the full corner's 100%).

    Args:
        heights: rows held by each column, non-increasing, first one > 0 (a staircase, such as a zigzag prefix).
        strip_cost: the price of one more strip, in covered positions.
    """
    cb = len(heights)
    if cb == 0 or heights[0] <= 0 or any(b > a for a, b in zip(heights, heights[1:], strict=False)):
        raise ConfigError(f"staircase heights must be non-increasing and start above 0, got {heights[:8]}...")
    if strip_cost is None:
        strip_cost = sum(heights) / 32
    # Only a column where the height drops can start a strip: a strip starting inside a run of equal heights costs
    # as much and adds a strip. best[i]: the cheapest cover of the columns from bounds[i] on; one vector step each.
    bounds = [0] + [j for j in range(1, cb) if heights[j] < heights[j - 1]] + [cb]
    edges = torch.tensor(bounds, dtype=torch.float64)
    best = torch.zeros(len(bounds), dtype=torch.float64)
    end = [len(bounds) - 1] * len(bounds)
    for i in range(len(bounds) - 2, -1, -1):
        options = heights[bounds[i]] * (edges[i + 1 :] - bounds[i]) + strip_cost + best[i + 1 :]
        j = int(options.argmin())
        best[i], end[i] = options[j], i + 1 + j
    strips, i = [], 0
    while i < len(bounds) - 1:
        strips.append((heights[bounds[i]], bounds[i], bounds[end[i]]))
        i = end[i]
    return tuple(strips)


def staircase_heights(rows: Tensor, cols: Tensor, cb: int) -> tuple[int, ...] | None:
    """Rows held by each of the ``cb`` columns of a support given as (row, col) pairs, when the support is a
    staircase (column j holds exactly the rows below its height, and heights never rise); None otherwise."""
    heights = torch.zeros(cb, dtype=torch.long).scatter_reduce(0, cols.cpu(), rows.cpu() + 1, reduce="amax")
    if int(heights.sum()) != rows.numel() or bool((heights[1:] > heights[:-1]).any()) or int(heights.min()) == 0:
        return None  # a column with a gap, a rising step or an empty column
    return tuple(int(h) for h in heights)


def _block_product(xh: Tensor, coef: Tensor, strips: tuple[Strip, ...]) -> Tensor:
    """ŷ = x̂ Xᵀ for x̂ (T, cb) and X (ra, cb) restricted to the strips; (T, ra)."""
    a, s, e = strips[0]  # the first strip is the tallest: a = ra
    yh = xh[:, s:e] @ coef[:a, s:e].t()
    for a, s, e in strips[1:]:
        yh[:, :a].addmm_(xh[:, s:e], coef[:a, s:e].t())
    return yh


def chunk_rows(m: int, n: int, device: torch.device) -> int | None:
    """Rows per chunk on a CPU: the transform path streams its rows through in blocks of about 1 MB per (rows ×
    width) float32 tensor, so the reorder, FFT, twiddle and product of a block all hit the cache (one pass over
    memory instead of one per step; 2-4× faster at 16k tokens × 2048). None (one block) elsewhere: a GPU wants few,
    large kernels."""
    return max(64, (1 << 18) // max(m, n)) if device.type == "cpu" else None


class _SpectralProduct(torch.autograd.Function):
    """y = dct_iii(dct_ii(x, cb) Xᵀ, m) + b for 2-D x, with the backward pass written out: it is the same three
    steps transposed, and keeping x̂ = dct_ii(x, cb) from the forward pass spares one transform. Rows go through
    in chunks of ``chunk`` (None: all at once)."""

    @staticmethod
    def forward(  # noqa: ANN205 (autograd.Function)
        ctx,  # noqa: ANN001
        x: Tensor,
        coef: Tensor,
        bias: Tensor | None,
        strips: tuple[Strip, ...],
        m: int,
        buffers: tuple[Tensor, Tensor, Tensor, Tensor],
        chunk: int | None,
    ):
        order_in, order_out, tw_in, tw_out = buffers
        (T, n), cb = x.shape, coef.shape[1]
        chunk = T if chunk is None or chunk >= T else chunk
        xh, y = (None, None) if chunk == T else (x.new_empty(T, cb), x.new_empty(T, m))
        for r in range(0, T, chunk):  # chunk by chunk, each result written straight into its rows
            rows = slice(r, r + chunk)
            xh_r = _dct_ii(x[rows], cb, order_in[0], tw_in, None if xh is None else xh[rows])  # (rows, cb)
            yh_r = _block_product(xh_r, coef, strips)  # (rows, cb) -> (rows, ra)
            y_r = _dct_iii(yh_r, m, order_out[1], tw_out, None if y is None else y[rows])  # (rows, ra) -> (rows, m)
            if bias is not None:
                y_r += bias
            if chunk == T:
                xh, y = xh_r, y_r
        ctx.save_for_backward(xh, coef, *buffers)
        ctx.strips, ctx.n, ctx.chunk, ctx.has_bias = strips, n, chunk, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205 (autograd.Function)
        xh, coef, order_in, order_out, tw_in, tw_out = ctx.saved_tensors
        strips, chunk = ctx.strips, ctx.chunk
        (T, cb), ra = xh.shape, coef.shape[0]
        need_x, need_coef = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad = grad.contiguous()
        grad_x = grad.new_empty(T, ctx.n) if need_x and chunk < T else None
        grad_coef = coef.new_zeros(ra, cb) if need_coef else None
        for r in range(0, T, chunk):
            gh = _dct_ii(grad[r : r + chunk], ra, order_out[0], tw_out)  # (rows, m) -> (rows, ra): ∂L/∂ŷ
            xh_r = xh[r : r + chunk]
            if need_coef:  # ∂L/∂X = ĝᵀ x̂ on the strips
                for a, s, e in strips:
                    grad_coef[:a, s:e].addmm_(gh[:, :a].t(), xh_r[:, s:e])
            if need_x:  # ∂L/∂x̂ = ĝ X, strip by strip (the strips partition the columns, so they concatenate)
                parts = [gh[:, :a] @ coef[:a, s:e] for a, s, e in strips]
                gxh = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # (rows, cb)
                out = None if grad_x is None else grad_x[r : r + chunk]
                gx_r = _dct_iii(gxh, ctx.n, order_in[1], tw_in, out)  # (rows, cb) -> (rows, n)
                if chunk == T:
                    grad_x = gx_r
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_coef, grad_bias, None, None, None, None


def spectral_product(
    x: Tensor,
    coef: Tensor,
    bias: Tensor | None,
    strips: tuple[Strip, ...],
    out_features: int,
    buffers: tuple[Tensor, Tensor, Tensor, Tensor],
) -> Tensor:
    """x Wᵀ + b for W = C_m[:ra]ᵀ X C_n[:cb], without forming W; everything in the dtype of ``coef``, autocast off.

    Args:
        x: (..., n) input, the dtype of ``coef`` (float32, or float64).
        coef: X, the (ra, cb) corner of the coefficient matrix (zeros where nothing is stored).
        bias: (m,) or None.
        strips: the column strips of X that hold coefficients (:func:`staircase`; one strip for a full block).
        out_features: m.
        buffers: :func:`even_odd_order` of n and of m, :func:`twiddles` of n and of m (the dtype of ``coef``).
    """
    lead, n = x.shape[:-1], x.shape[-1]
    chunk = None if torch.compiler.is_compiling() else chunk_rows(out_features, n, x.device)
    y = _SpectralProduct.apply(x.reshape(-1, n), coef, bias, strips, out_features, buffers, chunk)
    return y.view(*lead, out_features)
