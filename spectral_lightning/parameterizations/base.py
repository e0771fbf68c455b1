"""The contract every weight parameterization follows.

A *parameterization* (:class:`Parameterization`) is a small object of plain typed options (so YAML, ``--help`` and
``hparams.yaml`` all show them) that builds one linear layer for a given shape. A built layer
(:class:`ParameterizedLinear`) behaves like ``nn.Linear``:

* ``forward(x) == F.linear(x, layer.weight, layer.bias)``; ``weight`` is the materialized m×n matrix
  (m = ``out_features``, n = ``in_features``);
* only its trainable values are Parameters; derived tensors (bases, index sets) are non-persistent buffers
  rebuilt from shape and seed, so a checkpoint holds coefficients only;
* ``stored`` is the number of weight values it keeps (the bias, if any, is counted separately);
* ``to_dense()`` returns an ``nn.Linear`` with identical outputs; ``load_dense_(w, b)`` initializes the layer
  from a dense weight (a projection when the layer cannot represent ``w`` exactly).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.adaptive import SupportSchedule
from spectral_lightning.parameterizations.moving import MovingSupportMixin
from spectral_lightning.parameterizations.options import (  # noqa: F401 (re-exported: part of the contract)
    check_compression,
    check_int,
    check_std,
    coefficient_budget,
)


class ParameterizedLinear(nn.Module, ABC):
    """Base class of every layer a parameterization builds. Subclasses provide ``weight`` and ``stored``.

    Args:
        in_features: n, the input width.
        out_features: m, the output width.
        bias: whether to learn an additive bias (initialized to zero, as nanoGPT does).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    @abstractmethod
    def stored(self) -> int:
        """Number of weight values this layer stores (excluding the bias)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        return F.linear(x, w.to(x.dtype), self.bias)  # (..., n) -> (..., m)

    def weight_parameters(self) -> list[nn.Parameter]:
        """The Parameters that define ``weight`` (everything but the bias): these receive weight decay."""
        return [p for name, p in self.named_parameters(recurse=False) if name != "bias"]

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` holding the materialized weight; its outputs equal this layer's."""
        w = self.weight.detach()
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        dense = dense.to(device=w.device, dtype=self.bias.dtype if self.bias is not None else w.dtype)
        dense.weight.copy_(w)
        if self.bias is not None:
            dense.bias.copy_(self.bias)
        return dense

    @torch.no_grad()
    def load_dense_(self, weight: Tensor, bias: Tensor | None = None) -> ParameterizedLinear:
        """Initialize from a dense ``(out_features, in_features)`` weight (and bias); returns ``self``."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ConfigError(
                f"dense weight has shape {tuple(weight.shape)}, expected "
                f"({self.out_features}, {self.in_features}) for {self.__class__.__name__}"
            )
        self._load_dense_weight(weight.detach().to(torch.float64))
        if self.bias is not None and bias is not None:
            self.bias.copy_(bias)
        return self

    @abstractmethod
    def _load_dense_weight(self, weight: Tensor) -> None:
        """Set the stored values from a float64 dense weight (projecting if needed)."""

    def describe(self) -> str:
        """A short label of how this layer stores its weight, for tables (``dct lowpass``, ``lowrank r=16``)."""
        name = type(self).__name__.removesuffix("Linear")
        return name.lower() if name else type(self).__name__

    def extra_repr(self) -> str:
        dense = self.in_features * self.out_features
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"stored={self.stored} ({self.stored / dense:.1%} of {dense})"
        )


class ReconstructedLinear(ParameterizedLinear):
    """A layer whose weight is rebuilt from stored values by :meth:`reconstruct` at each forward.

    Reconstruction runs in float32 with autocast disabled (the bases are orthonormal only to float32
    precision, and bf16 rounding of coefficients would add noise to every weight entry); after ``.double()``
    it runs in float64, so float64 checks such as ``torch.autograd.gradcheck`` see the true derivative.
    When autograd is off (validation, generation) the materialized weight is cached and reused until a Parameter changes
    (tracked by each tensor's version counter and storage), so evaluation costs what a dense layer costs.

    Subclasses list their float basis buffers in ``_basis_buffers`` and rebuild them in
    :meth:`_build_buffers`; a cast of the module to half precision (``bf16-true``) then rebuilds the bases in
    float32 instead of rounding them.
    """

    _basis_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self._cache: tuple[tuple, Tensor] | None = None
        self._batched: Tensor | None = None  # this forward's weight, set by batched_weights()

    @abstractmethod
    def reconstruct(self) -> Tensor:
        """Materialize the (out_features, in_features) weight in float32 from the stored values."""

    def batch_key(self) -> tuple | None:
        """Layers with equal keys share bases and index sets, so :meth:`reconstruct_batch` can rebuild them
        together; None (the default) = never batched."""
        return None

    def skips_weight(self, tokens: int) -> bool:
        """Whether a forward over ``tokens`` input rows computes its output without building W (then
        :func:`batched_weights` leaves this layer out for that call). False here: W is always rebuilt."""
        return False

    @classmethod
    def reconstruct_batch(cls, layers: Sequence[ReconstructedLinear]) -> Tensor:
        """The (L, out_features, in_features) float32 weights of ``layers`` (equal :meth:`batch_key`).
        Subclasses override this with one batched product; this fallback rebuilds them one by one."""
        return torch.stack([layer.reconstruct() for layer in layers])

    @abstractmethod
    def _build_buffers(self, device: torch.device | None = None) -> None:
        """(Re)create the non-persistent derived buffers from shape and options."""

    @property
    def weight(self) -> Tensor:
        if self._batched is not None:
            return self._batched
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            self._cache = None
            return self._materialize()
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in self.weight_parameters())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._materialize())
        return self._cache[1]

    def _materialize(self) -> Tensor:
        return _without_autocast(self, self.reconstruct)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 (nn.Module signature)
        super()._apply(fn, recurse)
        self._cache = None
        bases = [self._buffers[name] for name in self._basis_buffers]
        if any(b is not None and b.dtype not in (torch.float32, torch.float64) for b in bases):
            self._build_buffers(device=bases[0].device)
        return self


def _without_autocast(layer: nn.Module, fn: Callable[[], Tensor]) -> Tensor:
    """``fn()`` with autocast off on the layer's device. Called once per layer (or group) per training step:
    no module traversal, and the autocast context is only entered when autocast is on (at the paper's size a
    GPU step costs mostly host time)."""
    device_type = next(iter(layer._parameters.values())).device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            return fn()
    return fn()


class OrthonormalCoefficientLinear(MovingSupportMixin, ReconstructedLinear):
    """W = P_mᵀ X P_n for orthonormal bases P_m (m×m), P_n (n×n), with K trainable entries of X stored at
    fixed ``positions`` (flat, row-major indices into m×n) and zeros elsewhere.

    The DCT and the random-basis parameterizations differ only in :meth:`basis`. Shared here: only the rows < ra and
    columns < cb that hold a position take part, so the bases are sliced to them once (a full top-left block
    needs no scatter at all); the product is taken in whichever order costs fewer flops; the K coefficients
    start with variance σ²·mn/K; a dense W is projected as X = P_m W P_nᵀ restricted to the positions.

    With a ``support`` schedule the positions move during training
    (:mod:`~spectral_lightning.parameterizations.adaptive`): the layer then uses the full bases (ra = m, cb = n:
    growth can happen anywhere), stores a flat ``coef`` of shape (K,) and keeps ``positions`` (sorted) as a
    persistent buffer, so checkpoints and exports restore the support; ``support_moves`` is True. The methods an
    update calls (the gradient probe, ``set_support``) come from
    :class:`~spectral_lightning.parameterizations.moving.MovingSupportMixin`.

    Args:
        in_features: n.
        out_features: m.
        bias: learn a bias.
        positions: sorted flat indices of the stored coefficients (derived from shape and options, never saved,
            unless the support moves: then they are the starting support, and saved).
        seed: the seed the positions or bases derive from (kept for ``extra_repr`` and subclasses).
        init_std: per-entry standard deviation of the initial W (matches the dense init).
        support: when and how the positions move; None (the default) = a fixed support.
    """

    _basis_buffers = ("basis_out", "basis_in")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        positions: Tensor,
        seed: int,
        init_std: float,
        support: SupportSchedule | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.seed, self.init_std = seed, init_std
        self.support = support
        self.support_moves = support is not None
        self._probe: Tensor | None = None  # armed on update steps (and grow_window): its gradient is Ĝ
        m, n = out_features, in_features
        rows, cols = positions // n, positions % n
        self.k = positions.numel()
        if self.support_moves:
            self.ra, self.cb, self.block = m, n, False
            self.register_buffer("positions", positions.clone(), persistent=True)  # state: saved and restored
        else:
            # Only rows < ra and columns < cb hold coefficients: slice the bases to them once.
            self.ra, self.cb = int(rows.max()) + 1, int(cols.max()) + 1
            self.block = self.k == self.ra * self.cb  # the support is the full top-left block: no scatter
            self._positions = rows * self.cb + cols  # flat indices into the ra×cb corner
        # Multiply in the cheaper order: (P_mᵀ X) P_n costs m·ra·cb + m·cb·n, P_mᵀ (X P_n) ra·cb·n + m·ra·n.
        self.out_first = m * self.cb * (self.ra + n) < n * self.ra * (self.cb + m)
        shape = (self.ra, self.cb) if self.block else (self.k,)
        self.coef = nn.Parameter(torch.empty(shape))
        self._build_buffers()
        self.reset_parameters()

    @abstractmethod
    def basis(self, side: str, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
        """The full orthonormal basis of one side (``"out"``: m×m, ``"in"``: n×n), basis vectors as rows,
        computed in float64 and then cast; the same shape and options must always give the same matrix."""

    def _build_buffers(self, device: torch.device | None = None) -> None:
        self.register_buffer("basis_out", self.basis("out", torch.float32, device)[: self.ra], persistent=False)
        self.register_buffer("basis_in", self.basis("in", torch.float32, device)[: self.cb], persistent=False)
        if not self.support_moves:  # a moving support is state, never rebuilt from the options
            self.register_buffer("positions", self._positions.to(device), persistent=False)

    def reset_parameters(self) -> None:
        # The bases are orthonormal, so ‖W‖_F² = ‖X‖_F² = sum of the K squared coefficients (Parseval). For
        # W's m·n entries to have the dense variance σ², the K coefficients need variance σ²·mn/K.
        std = self.init_std * math.sqrt(self.in_features * self.out_features / self.k)
        nn.init.normal_(self.coef, mean=0.0, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def stored(self) -> int:
        return self.k

    def coefficient_matrix(self, coef: Tensor | None = None) -> Tensor:
        """The ra×cb top-left corner of X (float32), zeros where no coefficient is stored; for stacked
        coefficients ``coef`` of several layers sharing the positions, (L, ra, cb)."""
        coef = (self.coef if coef is None else coef).to(self.basis_in.dtype)  # float32 (float64 after .double())
        if self.block:
            return coef
        if self.support_moves:  # full m×n; scattered into the probe on update steps, so its gradient is Ĝ
            x = (
                self._probe
                if self._probe is not None and torch.is_grad_enabled()
                else coef.new_zeros(self.ra * self.cb)
            )
            return x.index_copy(0, self.positions, coef).view(self.ra, self.cb)
        lead = coef.shape[:-1] if coef.dim() == 2 else ()  # (L,) for stacked flat coefficients
        x = coef.new_zeros(*lead, self.ra * self.cb)
        return x.index_copy(x.dim() - 1, self.positions, coef).view(*lead, self.ra, self.cb)

    def reconstruct(self) -> Tensor:
        return self._synthesize(self.coefficient_matrix())

    def _synthesize(self, x: Tensor) -> Tensor:
        """P_mᵀ X P_n for X of shape (ra, cb) or (L, ra, cb)."""
        if self.out_first:
            return (self.basis_out.t() @ x) @ self.basis_in  # ((m, ra) @ (ra, cb)) @ (cb, n) -> (m, n)
        return self.basis_out.t() @ (x @ self.basis_in)  # (m, ra) @ ((ra, cb) @ (cb, n)) -> (m, n)

    def batch_key(self) -> tuple:
        # Positions and bases derive from the class, the shape and the options that describe() names. Moving
        # supports share the full bases only (their positions, and under a global budget their K, differ).
        if self.support_moves:
            return (type(self), self.out_features, self.in_features, "moving", self.describe(), self.coef.dtype)
        return (type(self), self.out_features, self.in_features, self.k, self.describe(), self.coef.dtype)

    @classmethod
    def reconstruct_batch(cls, layers: Sequence[OrthonormalCoefficientLinear]) -> Tensor:
        first = layers[0]
        if first.support_moves:  # each layer scatters into its own m×n plane (and probe, on update steps)
            return first._synthesize(torch.stack([layer.coefficient_matrix() for layer in layers]))  # (L, m, n)
        coef = torch.stack([layer.coef for layer in layers])  # (L, ra, cb) or (L, k)
        return first._synthesize(first.coefficient_matrix(coef))  # (L, m, n)

    def _load_dense_weight(self, weight: Tensor) -> None:
        # The coefficients of W (W = P_mᵀ X P_n) in the ra×cb corner that holds the positions: only the first ra
        # rows of P_m and cb rows of P_n take part, multiplied in the cheaper order.
        p_out = self.basis("out", device=weight.device)[: self.ra]  # (ra, m)
        p_in = self.basis("in", device=weight.device)[: self.cb]  # (cb, n)
        m, n = weight.shape
        if self.ra * m * n + self.ra * n * self.cb <= m * n * self.cb + self.ra * m * self.cb:
            x = (p_out @ weight) @ p_in.t()  # ((ra, m) @ (m, n)) @ (n, cb) -> (ra, cb)
        else:
            x = p_out @ (weight @ p_in.t())  # (ra, m) @ ((m, n) @ (n, cb)) -> (ra, cb)
        coef = x if self.block else x.flatten()[self.positions.to(weight.device)]
        self.coef.copy_(coef.reshape(self.coef.shape))


class Parameterization:
    """A parameterization: typed options plus :meth:`build`. Subclass it and decorate with ``@register("name")``.

    Subclasses keep every ``__init__`` argument as an attribute of the same name (that is how ``repr``,
    equality and serialization find them) and validate them eagerly, raising ``ValueError`` that names the
    option, the value and the valid range.
    """

    name: ClassVar[str] = ""

    def build(self, in_features: int, out_features: int, bias: bool = True) -> ParameterizedLinear:
        """Return a freshly initialized layer computing ``y = x W^T + b`` with W of shape (out, in)."""
        raise NotImplementedError

    def options(self) -> dict[str, object]:
        """The constructor arguments of this parameterization, by name (what YAML's ``init_args`` holds)."""
        params = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in params if k != "self"}

    def spec(self) -> dict[str, object]:
        """``{"class_path": "<module>.<Class>", "init_args": {...}}``: the one serialized form of a
        parameterization, used by hparams, exports and dashboards, and accepted by ``resolve()`` and YAML.
        The class path is the full import path, so it also names a class that is not registered."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self.options())}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.options() == other.options()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted((k, repr(v)) for k, v in self.options().items()))))
