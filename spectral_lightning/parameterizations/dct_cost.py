"""The cost model of the DCT layer's two paths: materialize W then one m×n product per token, or the transforms of
:mod:`~spectral_lightning.parameterizations.fast_dct` (never forming W).

Which way is cheaper (materialize W, then one m×n product per token; or the transforms) depends on the token count,
the shape and the device: :func:`transform_pays` counts the work of both from the shapes, with constants measured
once per (device, dtype) by :func:`calibration` (a transform's cost per element and per log₂ n, and one tensor
operation's, in units of one matmul multiply-add), and takes the transforms only when they count clearly cheaper
(:data:`MARGIN`).
Decisions are cached per shape and power-of-two token bucket (:data:`DECISIONS`); the measured constants travel
with checkpoints (:func:`calibration_state`), so a resumed run takes the same paths.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from spectral_lightning.parameterizations.fast_dct import (
    Strip,
    _SpectralProduct,
    autocast_off,
    compute_dtype,
    even_odd_order,
    twiddles,
)


@dataclass(frozen=True)
class Calibration:
    """Costs of one device and dtype, in units of one matmul multiply-add (so the shape counts below compare).

    A transform of length n costs n·(fft·log₂ n + elem) per row (:func:`transform_work`).

    Attributes:
        fft: per element and butterfly stage of the FFT (log₂ n stages).
        elem: per element, the transform's elementwise passes (reorders, twiddles, complex assembly, copies).
        op: fixed time of one tensor operation (dispatch, kernel launch): what makes many small steps slow.
    """

    fft: float
    elem: float
    op: float


#: Used while compiling (no timing while tracing) and on devices that cannot be timed: the order of magnitude
#: measured on a CPU core (a GPU's transforms cost more per element relative to its matmuls, its launches far more).
DEFAULT_CALIBRATION = Calibration(fft=2.0, elem=50.0, op=1.5e5)

#: The transform path is taken only when counted at most this share of the materializing path's cost: near a
#: tie the counts (±15% against measured times on a CPU) cannot tell, and materializing is the established path.
MARGIN = 0.85

#: (device type, device index, dtype) -> its measured :class:`Calibration`; filled by :func:`calibration`.
CALIBRATIONS: dict[tuple[str, int | None, torch.dtype], Calibration] = {}

# Tensor operations per pass, for the fixed costs: materializing W (two products, a cast, the linear) and the
# transform path (reorder, FFT, two twiddle passes, the product, complex assembly, inverse FFT, reorder, bias, cast).
_MATERIALIZE_OPS, _TRANSFORM_OPS = 5, 12
# FFT libraries (pocketfft, cuFFT) are fast for lengths whose prime factors are all ≤ 7; other lengths take a
# generic-radix or Bluestein kernel, measured 5-13× slower per element on a CPU (n = 1376 = 2⁵·43 is one).
_ROUGH_LENGTH = 8.0
# Keeping more than n/2 + 1 coefficients takes the imaginary parts too: a few more passes (flip, concatenation).
_WIDE_KEEP = 1.5


def transform_work(n: int, keep: int, cal: Calibration) -> float:
    """Cost of one length-n transform of one row that keeps (or starts from) ``keep`` coefficients."""
    rest = n
    for p in (2, 3, 5, 7):
        while rest % p == 0:
            rest //= p
    fft = cal.fft * math.log2(max(n, 2)) * (1.0 if rest == 1 else _ROUGH_LENGTH)
    return n * (fft + cal.elem * (_WIDE_KEEP if keep > n // 2 + 1 else 1.0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up (the minimum: on a shared machine the others
    include time taken by other processes)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _path_time(n: int, dtype: torch.dtype, device: torch.device) -> float:
    """Seconds of the forward and backward pass of an n → n transform-path product with an 8 × 8 block, on
    2¹⁷ / n rows (the same number of elements for every n)."""
    rows = (1 << 17) // n
    x = torch.randn(rows, n, dtype=dtype, device=device, requires_grad=True)
    coef = torch.randn(8, 8, dtype=dtype, device=device, requires_grad=True)
    grad = torch.randn(rows, n, dtype=dtype, device=device)
    order, tw = even_odd_order(n, device), twiddles(n, dtype, device)
    buffers, strips = (order, order, tw, tw), ((8, 0, 8),)
    return _best_time(lambda: _SpectralProduct.apply(x, coef, None, strips, n, buffers, None).backward(grad), device)


def calibration(device: torch.device, dtype: torch.dtype) -> Calibration:
    """The :class:`Calibration` of ``device`` and ``dtype``, measured on the first call and cached in
    :data:`CALIBRATIONS` (about 30 ms on one CPU core; each timing is the best of five). One multiply-add: a
    (256 × 512) @ (512 × 512) product. One operation: ten tiny additions. The transform constants: the forward and
    backward pass of whole transform-path products (128 → 128 on 1024 rows, 1024 → 1024 on 128 rows, an 8 × 8
    block), less their fixed costs, per element of their four transforms; the two lengths separate the part that
    grows with log₂ n (``fft``) from the rest (``elem``), which carries everything the path does besides the
    products. While compiling, and on devices without data (meta): :data:`DEFAULT_CALIBRATION`."""
    device = torch.device(device)
    dtype = compute_dtype(dtype)
    key = (device.type, device.index, dtype)
    if key in CALIBRATIONS:
        return CALIBRATIONS[key]
    if torch.compiler.is_compiling() or device.type == "meta":
        return DEFAULT_CALIBRATION
    # Autograd on, even when the first decision is taken in evaluation (the timed products have a backward pass).
    with torch.inference_mode(False), torch.enable_grad(), autocast_off(device.type):
        a = torch.randn(256, 512, dtype=dtype, device=device)
        w = torch.randn(512, 512, dtype=dtype, device=device)
        mac = _best_time(lambda: a @ w, device) / (256 * 512 * 512)
        tiny = a[:1, :1]
        op = _best_time(lambda: [tiny + 1.0 for _ in range(10)], device) / 10 / mac
        fixed = (2 * (_TRANSFORM_OPS + 1) + 2) * op  # the path's operations
        per_element = [
            max(_path_time(n, dtype, device) / mac - fixed - (1 << 17) // n * 3 * 64, 0.0) / ((1 << 17) * 4)
            for n in (128, 1024)
        ]
    fft = max((per_element[1] - per_element[0]) / (math.log2(1024) - math.log2(128)), 0.05)
    result = Calibration(fft=fft, elem=max(per_element[0] - fft * math.log2(128), 0.5), op=op)
    CALIBRATIONS[key] = result
    return result


def calibration_state() -> dict[str, dict[str, float]]:
    """The calibrations measured in this process as plain values (``"cpu:None:torch.float32"`` → its three
    constants), for a checkpoint: a run resumed from it adopts them (:func:`load_calibration_state`), so it takes
    the same path in every layer as the run it continues, and resumes bit for bit."""
    return {f"{t}:{i}:{d}": dataclasses.asdict(c) for (t, i, d), c in CALIBRATIONS.items()}


def load_calibration_state(state: dict[str, dict[str, float]]) -> None:
    """Adopt the calibrations of :func:`calibration_state` (entries for other devices are kept for when they are
    asked for) and forget the decisions taken with the old ones."""
    for name, values in state.items():
        kind, index, dtype = name.split(":")
        key = (kind, None if index == "None" else int(index), getattr(torch, dtype.removeprefix("torch.")))
        CALIBRATIONS[key] = Calibration(**values)
    DECISIONS.clear()


def materialize_cost(
    m: int, n: int, ra: int, cb: int, tokens: int, grad: bool, cached: bool, cal: Calibration
) -> float:
    """Work of the materializing path in multiply-adds: rebuild W (the cheaper order of the two basis products)
    and one m×n product per token. With autograd on, the backward pass adds two token products (∂x, ∂W) and one
    rebuild's worth (∂X through the bases); ``cached`` (autograd off, eager): W is reused, only the product."""
    rebuild = min(m * ra * cb + m * cb * n, ra * cb * n + m * ra * n)
    if cached:
        return tokens * m * n + 2 * cal.op
    if grad:
        return 3 * tokens * m * n + 2 * rebuild + 2 * _MATERIALIZE_OPS * cal.op
    return tokens * m * n + rebuild + _MATERIALIZE_OPS * cal.op


def transform_cost(m: int, n: int, strips: tuple[Strip, ...], tokens: int, grad: bool, cal: Calibration) -> float:
    """Work of the transform path in multiply-adds: per token a DCT-II of length n keeping cb and an inverse of
    length m from ra (:func:`transform_work`), plus the strips' products Σ a_r·b_r; the backward pass runs the
    transforms the other way (DCT-II of length m keeping ra, inverse of length n from cb) and does two products
    per strip (∂x̂, ∂X)."""
    ra, cb = strips[0][0], strips[-1][2]
    block = sum(a * (e - s) for a, s, e in strips)
    forward = transform_work(n, cb, cal) + transform_work(m, ra, cal)
    ops = (_TRANSFORM_OPS + len(strips)) * cal.op
    if grad:
        backward = transform_work(m, ra, cal) + transform_work(n, cb, cal)
        return tokens * (forward + backward + 3 * block) + 2 * ops + 2 * len(strips) * cal.op
    return tokens * (forward + block) + ops


def transform_pays(
    m: int,
    n: int,
    ra: int,
    cb: int,
    strips: tuple[Strip, ...],
    tokens: int,
    grad: bool,
    cached: bool,
    cal: Calibration,
) -> bool:
    """Whether the transform path costs clearly less than materializing W (by :data:`MARGIN`), for ``tokens`` rows
    through an m×n layer whose coefficients lie in ``strips`` of the ra×cb corner (see :func:`materialize_cost`)."""
    transform = transform_cost(m, n, strips, tokens, grad, cal)
    return transform < MARGIN * materialize_cost(m, n, ra, cb, tokens, grad, cached, cal)


#: (device, dtype, shape, strips, token bucket, autograd on) -> the decision; see :func:`choose_transform`.
DECISIONS: dict[tuple, bool] = {}


def choose_transform(
    m: int,
    n: int,
    ra: int,
    cb: int,
    strips: tuple[Strip, ...],
    tokens: int,
    device: torch.device,
    dtype: torch.dtype,
) -> bool:
    """:func:`transform_pays` for this forward: autograd on (training), or off with W cached (eager evaluation),
    or off while compiling (W rebuilt each call). Eager decisions are made once per power-of-two bucket of the
    token count (at its geometric middle) and shape, with the device's measured calibration, and cached in
    :data:`DECISIONS`; while compiling, the shapes and :data:`DEFAULT_CALIBRATION` decide (no timing, no state)."""
    grad = torch.is_grad_enabled()
    if torch.compiler.is_compiling():
        return transform_pays(m, n, ra, cb, strips, tokens, grad, False, DEFAULT_CALIBRATION)
    bucket = max(int(tokens), 1).bit_length()
    key = (device.type, device.index, dtype, m, n, ra, cb, strips, bucket, grad)
    decision = DECISIONS.get(key)
    if decision is None:
        middle = round(2 ** (bucket - 0.5))
        decision = transform_pays(m, n, ra, cb, strips, middle, grad, not grad, calibration(device, dtype))
        DECISIONS[key] = decision
    return decision
