"""Kronecker: W is a sum of Kronecker products of two small factors.

For W of shape m×n, factor shapes m = m1·m2 and n = n1·n2, and ``terms`` t:

    W = Σ_{s<t} A_s ⊗ B_s,   A_s (m1×n1), B_s (m2×n2)      parameters: t·(m1·n1 + m2·n2) (+ m for the bias)

so W[a·m2 + b, c·n2 + d] = Σ_s A_s[a, c]·B_s[b, d]. Rearranging W into the (m1·n1 × m2·n2) matrix 𝓡(W) whose
row (a, c) is the m2×n2 block W[a·m2 : (a+1)·m2, c·n2 : (c+1)·n2], flattened, turns a Kronecker product into an
outer product: 𝓡(A ⊗ B) = vec(A)·vec(B)ᵀ (Van Loan and Pitsianis). So 𝓡(W) = Σ_s vec(A_s)·vec(B_s)ᵀ is a
rank-t matrix, W is rebuilt as one (m1·n1 × t) @ (t × m2·n2) product plus a permutation, and t = min(m1·n1,
m2·n2) terms represent every m×n matrix. rank W ≤ t·min(m1, n1)·min(m2, n2).

Factor shapes: ``m1`` and ``n1`` fix them (each must divide m, resp. n); otherwise the pair is chosen with the
fewest values per term, m1·n1 + m2·n2 (A and B as close to √(mn) values each as the divisors allow), ties going to
the factors with the higher rank cap min(m1, n1)·min(m2, n2), then to the larger m1, then the larger n1. For
128×128 that is (16×8) ⊗ (8×16): 256 values per term.

Terms: ``compression`` c sets t = floor(mn / (c·(m1·n1 + m2·n2))), the most terms that fit in mn/c (so the count
is within one term of mn/c); an explicit ``terms`` takes precedence.

``load_dense_`` keeps the top-t singular triplets of 𝓡(W) (Van Loan–Pitsianis), split evenly between A and B:
the rearrangement preserves the Frobenius norm, so this is the best approximation of W by t Kronecker products,
and exact when W is a sum of at most t of them.

Weight decay: A and B are both decayed; through 𝓡 this is the low-rank case (``lowrank.py``), a penalty on the
nuclear norm of 𝓡(W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.base import Parameterization, ReconstructedLinear
from spectral_lightning.parameterizations.monarch import divisors
from spectral_lightning.parameterizations.options import check_compression, check_int, check_std
from spectral_lightning.parameterizations.registry import register


def rearrange(weight: Tensor, m1: int, n1: int) -> Tensor:
    """𝓡(W): the (..., m1·n1, m2·n2) matrix whose row a·n1 + c is block (a, c) of W (m2×n2), flattened."""
    *lead, m, n = weight.shape
    m2, n2 = m // m1, n // n1
    return weight.reshape(*lead, m1, m2, n1, n2).transpose(-3, -2).reshape(*lead, m1 * n1, m2 * n2)


class KroneckerLinear(ReconstructedLinear):
    """Linear layer with W = Σ_s A_s ⊗ B_s over ``terms`` products, A_s (m1×n1) and B_s (m2×n2).

    Args:
        in_features: n = n1·n2.
        out_features: m = m1·m2.
        bias: learn a bias.
        terms: t in [1, min(m1·n1, m2·n2)].
        m1: rows of each A (a divisor of m).
        n1: columns of each A (a divisor of n).
        init_std: per-entry standard deviation of the initial W (matches the dense init).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        terms: int = 1,
        m1: int = 1,
        n1: int = 1,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.terms, self.m1, self.n1, self.init_std = terms, m1, n1, init_std
        self.m2, self.n2 = out_features // m1, in_features // n1
        self.A = nn.Parameter(torch.empty(terms, m1, n1))
        self.B = nn.Parameter(torch.empty(terms, self.m2, self.n2))
        self.reset_parameters()

    def _build_buffers(self, device: torch.device | None = None) -> None:
        pass  # nothing derived: the permutation is a reshape

    def reset_parameters(self) -> None:
        # W_ij = Σ_s A_s[a, c]·B_s[b, d] sums t products of independent zero-mean entries: Var W = t·σ_A²·σ_B².
        # Equal factor scales σ_A = σ_B = (σ/√t)^½ give W the dense per-entry variance σ² (as in lowrank.py).
        std = math.sqrt(self.init_std / math.sqrt(self.terms))
        nn.init.normal_(self.A, mean=0.0, std=std)
        nn.init.normal_(self.B, mean=0.0, std=std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def stored(self) -> int:
        return self.terms * (self.m1 * self.n1 + self.m2 * self.n2)

    def _synthesize(self, a: Tensor, b: Tensor) -> Tensor:
        """W (..., m, n) from A (..., t, m1, n1) and B (..., t, m2, n2): 𝓡(W) = vec(A)ᵀ·vec(B), un-rearranged."""
        lead = a.shape[:-3]
        r = a.flatten(-2).transpose(-1, -2) @ b.flatten(-2)  # (..., m1·n1, t) @ (..., t, m2·n2)
        w = r.view(*lead, self.m1, self.n1, self.m2, self.n2).transpose(-3, -2)  # (..., m1, m2, n1, n2)
        return w.reshape(*lead, self.out_features, self.in_features)

    def reconstruct(self) -> Tensor:
        dtype = torch.promote_types(self.A.dtype, torch.float32)  # float32 (float64 after .double())
        return self._synthesize(self.A.to(dtype), self.B.to(dtype))

    def batch_key(self) -> tuple:
        return (type(self), self.out_features, self.in_features, self.terms, self.m1, self.n1, self.A.dtype)

    @classmethod
    def reconstruct_batch(cls, layers: Sequence[KroneckerLinear]) -> Tensor:
        first = layers[0]
        dtype = torch.promote_types(first.A.dtype, torch.float32)
        a = torch.stack([layer.A for layer in layers]).to(dtype)  # (L, t, m1, n1)
        b = torch.stack([layer.B for layer in layers]).to(dtype)  # (L, t, m2, n2)
        return first._synthesize(a, b)  # (L, m, n)

    def _load_dense_weight(self, weight: Tensor) -> None:
        u, s, vh = torch.linalg.svd(rearrange(weight, self.m1, self.n1), full_matrices=False)
        root = s[: self.terms].sqrt()
        self.A.copy_((u[:, : self.terms] * root).t().reshape(self.A.shape))
        self.B.copy_((root.unsqueeze(1) * vh[: self.terms]).reshape(self.B.shape))

    def describe(self) -> str:
        return f"kronecker t={self.terms} ({self.m1}x{self.n1})⊗({self.m2}x{self.n2})"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, terms={self.terms}, factors=({self.m1}x{self.n1})⊗({self.m2}x{self.n2})"


@register("kronecker")
class Kronecker(Parameterization):
    """Store each weight as a sum of Kronecker products W = Σ_s A_s ⊗ B_s.

    Args:
        compression: c ≥ 1; t = floor(mn / (c·(m1·n1 + m2·n2))) terms, so the stored values are at most mn/c
            and within one term of it.
        terms: explicit t ≥ 1 for every layer (at most min(m1·n1, m2·n2), which represents every matrix);
            takes precedence over ``compression``.
        m1: rows of every A (must divide each weight's m). Default: chosen per shape, see the module docstring.
        n1: columns of every A (must divide each weight's n). Default: chosen per shape.
        init_std: per-entry std of the initial W (> 0), matched to the dense init.
    """

    def __init__(
        self,
        compression: float = 4.0,
        terms: int | None = None,
        m1: int | None = None,
        n1: int | None = None,
        init_std: float = 0.02,
    ) -> None:
        self.compression = check_compression(compression)
        self.terms = None if terms is None else check_int("terms", terms, 1)
        self.m1 = None if m1 is None else check_int("m1", m1, 1)
        self.n1 = None if n1 is None else check_int("n1", n1, 1)
        self.init_std = check_std(init_std)

    def factors_for(self, in_features: int, out_features: int) -> tuple[int, int]:
        """(m1, n1), the shape of A, for an (out_features × in_features) weight."""
        m, n = out_features, in_features
        rows = _factor_choices("m1", self.m1, m, f" for a {m}x{n} weight (m={m})")
        cols = _factor_choices("n1", self.n1, n, f" for a {m}x{n} weight (n={n})")

        def order(f: tuple[int, int]) -> tuple[int, int, int, int]:
            (m1, n1), m2, n2 = f, m // f[0], n // f[1]
            return (m1 * n1 + m2 * n2, -min(m1, n1) * min(m2, n2), -m1, -n1)

        return min(((m1, n1) for m1 in rows for n1 in cols), key=order)

    def terms_for(self, in_features: int, out_features: int, m1: int, n1: int) -> int:
        """t used for an (out_features × in_features) weight with A of shape (m1 × n1)."""
        m, n = out_features, in_features
        a, b = m1 * n1, (m // m1) * (n // n1)
        where = f" for a {m}x{n} weight with factors ({m1}x{n1})⊗({m // m1}x{n // n1})"
        if self.terms is not None:
            return check_int("terms", self.terms, 1, min(a, b), where=where)
        t = math.floor(m * n / (self.compression * (a + b)))
        if t < 1:
            raise ConfigError(
                f"compression={self.compression} leaves no Kronecker term{where} ({a + b} values per term): "
                f"expected compression ≤ {m * n / (a + b):.4g}"
            )
        return t

    def build(self, in_features: int, out_features: int, bias: bool = True) -> KroneckerLinear:
        m1, n1 = self.factors_for(in_features, out_features)
        t = self.terms_for(in_features, out_features, m1, n1)
        return KroneckerLinear(in_features, out_features, bias, t, m1, n1, self.init_std)


def _factor_choices(option: str, value: int | None, size: int, where: str) -> list[int]:
    """[value] when it divides ``size``, every divisor of ``size`` when value is None; else a ConfigError."""
    valid = divisors(size)
    if value is None:
        return valid
    if value not in valid:
        choices = ", ".join(map(str, valid))
        raise ConfigError(f"{option}={value} does not divide {size}{where}: expected one of {choices}")
    return [value]
