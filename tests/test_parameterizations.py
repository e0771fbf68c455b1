"""The parameterization strategies: DCT maths, one test matrix over the registry, ranks, options, counts, CLI.

Adding a strategy = appending ONE row to ``ROWS`` (``test_every_registered_name_has_a_row`` fails until then).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from helpers_custom_strategy import ColumnBlock, ColumnBlockLinear
from torch import Tensor, nn
from torch.func import functional_call

from spectral_lightning.cli import cli_main
from spectral_lightning.data import CharDataModule
from spectral_lightning.model import GPT, GPTConfig
from spectral_lightning.module import SpectralLM
from spectral_lightning.parameterizations import (
    DCT,
    Dense,
    Kronecker,
    LowRank,
    LowRankLinear,
    Monarch,
    Parameterization,
    ReconstructedLinear,
    available,
    dct_matrix,
    register,
    unregister,
)
from spectral_lightning.parameterizations.dct import select_positions, zigzag_order
from spectral_lightning.parameterizations.options import check_std
from spectral_lightning.parameterizations.random_basis import RandomBasis, random_orthogonal
from spectral_lightning.parameterizations.sparse_lowrank import SparseLowRank


def rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


# -- the DCT basis ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 32, 128, 384])
def test_dct_basis_is_orthonormal_and_equals_independent_dct_ii(n: int) -> None:
    c = dct_matrix(n, torch.float32)
    assert c.shape == (n, n) and c.dtype == torch.float32
    torch.testing.assert_close(c.t() @ c, torch.eye(n), rtol=0, atol=1e-6)
    # The float32 entries themselves (products accumulated in float64): orthonormal rows as well as columns.
    c64 = c.double()
    torch.testing.assert_close(c64 @ c64.t(), torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-6)

    # scipy: column j of dct(I) is the DCT-II of e_j, i.e. column j of C.
    ref = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)
    np.testing.assert_allclose(dct_matrix(n).numpy(), ref, rtol=0, atol=1e-12)

    # Direct cosine sum in float64: C[k, i] = √(2/n)·cos(π(2i+1)k / 2n), row 0 scaled by 1/√2.
    direct = np.array(
        [
            [math.sqrt((1 if k == 0 else 2) / n) * math.cos(math.pi * (2 * i + 1) * k / (2 * n)) for i in range(n)]
            for k in range(n)
        ]
    )
    np.testing.assert_allclose(dct_matrix(n).numpy(), direct, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c.numpy(), direct, rtol=0, atol=1e-6)


def test_dct_basis_transforms_like_scipy() -> None:
    x = np.random.default_rng(0).standard_normal((48, 20))
    got = dct_matrix(48) @ torch.from_numpy(x) @ dct_matrix(20).t()
    np.testing.assert_allclose(got.numpy(), scipy.fft.dctn(x, type=2, norm="ortho"), rtol=0, atol=1e-12)


# -- full capacity is exact; reduced capacity is not -----------------------------------------------------------

# (full capacity for an m×n weight, the same strategy at compression 4)
FULL_VS_REDUCED = [
    pytest.param(
        lambda m, n: DCT(compression=1, selection="lowpass"), DCT(compression=4, selection="lowpass"), id="dct-lowpass"
    ),
    pytest.param(
        lambda m, n: DCT(compression=1, selection="zigzag"), DCT(compression=4, selection="zigzag"), id="dct-zigzag"
    ),
    pytest.param(
        lambda m, n: DCT(compression=1, selection="random", seed=5),
        DCT(compression=4, selection="random", seed=5),
        id="dct-random",
    ),
    pytest.param(lambda m, n: LowRank(rank=min(m, n)), LowRank(compression=4), id="lowrank"),
    # width k = min(m, n): every one of the 4×4 blocks has full rank k/4 = min(m, n)/4.
    pytest.param(lambda m, n: Monarch(nblocks=4, width=min(m, n)), Monarch(compression=4), id="monarch"),
    # A 8×8, B (m/8 × n/8) of at least 64 entries: 64 terms = min(64, mn/64) represent every matrix.
    pytest.param(lambda m, n: Kronecker(terms=64, m1=8, n1=8), Kronecker(compression=4), id="kronecker"),
    pytest.param(lambda m, n: RandomBasis(compression=1), RandomBasis(compression=4), id="random_basis"),
    pytest.param(lambda m, n: SparseLowRank(rank=min(m, n)), SparseLowRank(compression=4), id="sparse_lowrank"),
]


@pytest.mark.parametrize("full, reduced", FULL_VS_REDUCED)
@pytest.mark.parametrize("out_features, in_features", [(384, 128), (128, 512)])
def test_full_capacity_round_trip_is_exact(
    full: Callable[[int, int], Parameterization], reduced: Parameterization, out_features: int, in_features: int
) -> None:
    w = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(0))
    layer = full(out_features, in_features).build(in_features, out_features).load_dense_(w)
    assert layer.stored >= out_features * in_features  # really full capacity
    assert rel_err(layer.weight, w) <= 1e-5
    # Guard: at compression 4 a random matrix loses most of its energy (a DCT selection of mn/4 coefficients keeps
    # about 1/4 of it: error ≈ √(3/4)), so a load_dense_/weight pair that merely echoes its input cannot pass.
    small = reduced.build(in_features, out_features).load_dense_(w)
    assert rel_err(small.weight, w) > 0.1


# -- one test matrix over the registry -------------------------------------------------------------------------


@dataclass
class Case:
    """One row: a strategy, the shape it builds, its closed-form stored count and the row's tolerances.

    Attributes:
        strategy: the strategy instance under test.
        in_features: n.
        out_features: m.
        stored: values the layer stores (excluding the bias), from a closed form written in the row.
        init_rtol: relative tolerance of mean(W²) / init_std² over 32 seeded builds.
        bf16_atol: absolute tolerance of the bf16-autocast output against the float32 output.
    """

    strategy: Parameterization
    in_features: int
    out_features: int
    stored: int
    init_rtol: float
    bf16_atol: float = 2e-2

    def build(self, bias: bool = True) -> nn.Module:
        return self.strategy.build(self.in_features, self.out_features, bias)


ROWS = [
    pytest.param(Case(Dense(), 32, 32, stored=32 * 32, init_rtol=0.05), id="dense"),
    # lowpass c = 4: a 16×16 block, exactly mn/4.
    pytest.param(Case(DCT(compression=4), 32, 32, stored=32 * 32 // 4, init_rtol=0.1), id="dct-lowpass-c4"),
    pytest.param(Case(DCT(compression=2, selection="zigzag"), 32, 32, stored=512, init_rtol=0.1), id="dct-zigzag-c2"),
    pytest.param(
        Case(DCT(compression=2, selection="random", seed=3), 32, 32, stored=512, init_rtol=0.1), id="dct-random-c2"
    ),
    # explicit k on a non-square 40×24 weight; zigzag keeps exactly k.
    pytest.param(Case(DCT(k=100, selection="zigzag"), 24, 40, stored=100, init_rtol=0.15), id="dct-k100"),
    # lowpass c = 2 on 96×32: K = 1536, block a = round(√(K·m/n)) = 68, b = round(K/a) = 23.
    pytest.param(Case(DCT(compression=2), 32, 96, stored=68 * 23, init_rtol=0.1), id="dct-lowpass-c2-96x32"),
    pytest.param(Case(LowRank(rank=4), 32, 32, stored=4 * (32 + 32), init_rtol=0.2), id="lowrank-r4"),
    # compression 4 on 64×32: r = floor(mn / (c(m+n))) = floor(2048 / 384) = 5.
    pytest.param(Case(LowRank(compression=4), 32, 64, stored=5 * (64 + 32), init_rtol=0.2), id="lowrank-c4-64x32"),
    # Monarch: k·(m + n) values; 4 blocks of width 8 (every 8×8 block of W has rank 2).
    pytest.param(Case(Monarch(nblocks=4, width=8), 32, 32, stored=8 * (32 + 32), init_rtol=0.2), id="monarch-b4-k8"),
    # compression 4 on 64×32: k = floor(mn / (c(m+n))) = floor(2048 / 384) = 5, b = largest divisor of 32 that is
    # ≤ 5 = 4, so the block ranks are uneven (2, 1, 1, 1 along each block row).
    pytest.param(Case(Monarch(compression=4), 32, 64, stored=5 * (64 + 32), init_rtol=0.2), id="monarch-c4-64x32"),
    # Kronecker: t·(m1·n1 + m2·n2) values; A 4×8, B 8×4.
    pytest.param(
        Case(Kronecker(terms=2, m1=4, n1=8), 32, 32, stored=2 * (4 * 8 + 8 * 4), init_rtol=0.2), id="kronecker-t2"
    ),
    # compression 4 on 64×32: the fewest values per term is 96 (A 8×8, B 8×4, the squarer of the ties), and
    # t = floor(2048 / (4·96)) = 5.
    pytest.param(
        Case(Kronecker(compression=4), 32, 64, stored=5 * (8 * 8 + 8 * 4), init_rtol=0.2), id="kronecker-c4-64x32"
    ),
    # W = Q_mᵀ X Q_n with seeded random orthogonal Q; K = round(mn/c) random positions.
    pytest.param(Case(RandomBasis(compression=2, seed=1), 32, 32, stored=512, init_rtol=0.1), id="random_basis-c2"),
    # W = B·A + S: rank 4 plus nnz = round(0.1·32·32) = 102 entries of S.
    pytest.param(
        Case(SparseLowRank(rank=4, density=0.1), 32, 32, stored=4 * (32 + 32) + 102, init_rtol=0.2),
        id="sparse_lowrank-r4",
    ),
    # compression 4 on 64×32: budget floor(2048/4) = 512, S at least round(0.03·2048) = 61, r = floor((512 − 61)/96)
    # = 4, and S takes the rest: 512 − 4·96 = 128 entries. Stored: exactly 512.
    pytest.param(
        Case(SparseLowRank(compression=4), 32, 64, stored=4 * (64 + 32) + 128, init_rtol=0.2),
        id="sparse_lowrank-c4-64x32",
    ),
]


def test_every_registered_name_has_a_row() -> None:
    covered = {type(row.values[0].strategy).name for row in ROWS}
    missing = sorted(set(available()) - covered)
    assert not missing, f"add a row to ROWS in {__file__} for: {missing}"


def _inputs(case: Case, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(2, 3, case.in_features, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("case", ROWS)
def test_forward_is_linear_in_the_materialized_weight(case: Case) -> None:
    layer = case.build()
    x = _inputs(case)
    y = layer(x)
    assert (layer.in_features, layer.out_features) == (case.in_features, case.out_features)
    assert y.shape == (2, 3, case.out_features)
    assert layer.weight.shape == (case.out_features, case.in_features)
    with torch.no_grad():  # a non-zero bias, so that the bias path is checked as well
        layer.bias.normal_()
    y = layer(x)
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Linear)
    torch.testing.assert_close(dense(x), y, rtol=0, atol=0)
    no_bias = case.build(bias=False)
    assert no_bias.bias is None
    torch.testing.assert_close(no_bias(x), F.linear(x, no_bias.weight), rtol=0, atol=0)
    torch.testing.assert_close(no_bias.to_dense()(x), no_bias(x), rtol=0, atol=0)


@pytest.mark.parametrize("case", ROWS)
def test_stored_count_matches_closed_form(case: Case) -> None:
    layer = case.build()
    weight_numel = sum(p.numel() for name, p in layer.named_parameters() if name != "bias")
    assert layer.stored == case.stored
    assert weight_numel == case.stored
    assert sum(p.numel() for p in layer.weight_parameters()) == case.stored
    assert sum(p.numel() for p in layer.parameters()) == case.stored + case.out_features  # + bias


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.AdamW])
@pytest.mark.parametrize("case", ROWS)
def test_a_step_changes_every_own_parameter_and_no_buffer(case: Case, optimizer: type) -> None:
    layer = case.build()
    # Only trainable values are Parameters: the weight-defining ones plus the bias.
    weight_ids = {id(p) for p in layer.weight_parameters()}
    assert {id(p) for p in layer.parameters()} == weight_ids | {id(layer.bias)}
    # Derived tensors are non-persistent buffers: the state dict holds exactly the Parameters.
    state = layer.state_dict()
    assert set(state) == {name for name, _ in layer.named_parameters()}
    assert not any(name in state for name, _ in layer.named_buffers())

    params = {name: p.detach().clone() for name, p in layer.named_parameters()}
    buffers = {name: b.clone() for name, b in layer.named_buffers()}
    opt = optimizer(layer.parameters(), lr=1e-2)
    target = torch.randn(2, 3, case.out_features, generator=torch.Generator().manual_seed(2))
    loss = (layer(_inputs(case)) * target).sum()
    loss.backward()
    opt.step()
    for name, p in layer.named_parameters():
        assert not torch.equal(p, params[name]), f"Parameter {name!r} did not change"
    for name, b in layer.named_buffers():
        assert torch.equal(b, buffers[name]), f"buffer {name!r} changed"


@pytest.mark.parametrize("case", ROWS)
def test_float64_gradcheck(case: Case) -> None:
    layer = case.build().double()
    # .double() must give a float64 reconstruction: a float32 one would make the check below fail.
    assert layer.weight.dtype == torch.float64
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().normal_().requires_grad_() for _, p in layer.named_parameters())
    x = torch.randn(2, case.in_features, dtype=torch.float64, requires_grad=True)

    def forward(x: Tensor, *values: Tensor) -> Tensor:
        return functional_call(layer, dict(zip(names, values, strict=True)), (x,))

    # Derivatives with respect to the input and to every Parameter (coefficients, factors, bias). fast_mode checks
    # random projections of the Jacobian (a float32 reconstruction fails it too) in 0.2 s instead of 30 s.
    assert torch.autograd.gradcheck(forward, (x, *params), fast_mode=True)


@pytest.mark.parametrize("case", ROWS)
def test_init_variance_matches_dense(case: Case) -> None:
    torch.manual_seed(0)
    std = case.strategy.init_std
    mean_square = sum(float(case.build().weight.detach().pow(2).mean()) for _ in range(32)) / 32
    assert mean_square / std**2 == pytest.approx(1.0, rel=case.init_rtol)


@pytest.mark.parametrize("case", ROWS)
def test_autocast_bf16_keeps_float32_reconstruction(case: Case) -> None:
    layer = case.build()
    x = _inputs(case)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        w = layer.weight
    assert y.dtype == torch.bfloat16
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, layer.weight, rtol=0, atol=0)
    torch.testing.assert_close(y.float(), layer(x), rtol=0, atol=case.bf16_atol)


@pytest.mark.parametrize("case", ROWS)
def test_eval_cache_is_reused_and_invalidated(case: Case) -> None:
    layer = case.build().eval()
    with torch.no_grad():
        first = layer.weight
        assert layer.weight is first  # reused while no Parameter changes
        before = first.clone()
        for p in layer.weight_parameters():
            p.mul_(1.5).add_(0.01)  # an in-place update, as an optimizer step does
        after = layer.weight
    fresh = layer.weight.detach()  # grad enabled: always rebuilt from the Parameters
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)


# -- rank of the reconstructed weight --------------------------------------------------------------------------


def test_rank_of_each_selection_at_c10() -> None:
    m = n = 128
    k = round(m * n / 10)
    assert k == 1638

    def rank(selection: str) -> tuple[int, int]:
        layer = DCT(compression=10, selection=selection).build(n, m).double()  # float64 reconstruction
        return int(torch.linalg.matrix_rank(layer.weight.detach())), layer.stored

    # rank W = rank X (orthonormal bases). lowpass keeps an a×b block, a = round(√K) = 40, b = round(K/a) = 41:
    # rank ≤ min(a, b) = 40.
    lowpass, stored = rank("lowpass")
    assert stored == 40 * 41
    assert lowpass <= 40
    assert lowpass == 40  # random coefficients fill the block's rank: the bound is reached
    # zigzag fills anti-diagonals i + j ≤ D where D is the smallest with (D+1)(D+2)/2 ≥ K: X has at most D+1
    # non-zero rows, so rank ≤ D + 1 (here D = 56, bound 57).
    d = next(d for d in range(m + n) if (d + 1) * (d + 2) // 2 >= k)
    assert d + 1 == 57
    zigzag, stored = rank("zigzag")
    assert stored == k
    assert zigzag <= d + 1
    # Diagonals 0..55 hold 1596 positions; the other 42 run up diagonal 56 from (56, 0) to (15, 41). X spans
    # rows 0..56 but only columns 0..55, so rank 56 (a row-major order would fill a 13-row block: rank 13).
    assert zigzag == 56
    # random positions leave no structural cap: full rank.
    random, stored = rank("random")
    assert stored == k
    assert random == 128


@pytest.mark.parametrize(
    ("m", "n", "expected"),
    [
        # JPEG order written out by hand: (0,0) (0,1) (1,0) (2,0) (1,1) (0,2) (0,3) (1,2) (2,1) (3,0) ...
        (4, 4, [0, 1, 4, 8, 5, 2, 3, 6, 9, 12, 13, 10, 7, 11, 14, 15]),
        (3, 3, [0, 1, 3, 6, 4, 2, 5, 7, 8]),
        # 2×3: (0,0) | (0,1) (1,0) | (1,1) (0,2) | (1,2): a diagonal that leaves the matrix is cut, not skipped
        (2, 3, [0, 1, 3, 4, 2, 5]),
    ],
)
def test_zigzag_order_is_jpeg_order(m: int, n: int, expected: list[int]) -> None:
    assert zigzag_order(m, n).tolist() == expected
    assert select_positions(m, n, 4, "zigzag", 0).tolist() == sorted(expected[:4])


def test_random_selection_and_random_basis_depend_on_their_seed() -> None:
    # The DCT's random positions: a pure function of (shape, seed), different for another seed.
    a, b = select_positions(64, 32, 200, "random", 0), select_positions(64, 32, 200, "random", 1)
    assert torch.equal(a, select_positions(64, 32, 200, "random", 0)) and not torch.equal(a, b)
    assert len(set(a.tolist())) == 200 and int(a.max()) < 64 * 32
    # random_basis: Haar-random orthogonal bases (QR of a Gaussian, signs fixed by diag R > 0), not the DCT, one
    # per side and seed; its positions are the DCT random selection with the same seed.
    layer = RandomBasis(k=200, seed=3).build(32, 64)
    q_out, q_in = layer.basis("out"), layer.basis("in")
    assert q_out.shape == (64, 64) and q_in.shape == (32, 32)
    for q in (q_out, q_in):
        assert torch.allclose(q @ q.T, torch.eye(len(q), dtype=torch.float64), atol=1e-12)
        assert not torch.allclose(q.abs(), dct_matrix(len(q)).abs(), atol=0.1)
    g = torch.randn(32, 32, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    assert torch.allclose(random_orthogonal(32, 11), q * torch.sign(torch.diagonal(r)), atol=1e-12)
    other = RandomBasis(k=200, seed=4).build(32, 64)
    assert not torch.allclose(other.basis("in"), q_in, atol=0.1)
    assert torch.equal(RandomBasis(k=200, seed=3).build(32, 64).basis("in"), q_in)  # rebuilt identically
    assert not torch.allclose(RandomBasis(k=200, seed=3).build(32, 32).basis("in"), q_in, atol=0.1)  # per shape
    rows, cols = select_positions(64, 32, 200, "random", 3) // 32, select_positions(64, 32, 200, "random", 3) % 32
    assert torch.equal(layer.positions, rows * layer.cb + cols)


def test_lowrank_load_dense_is_the_best_rank_r_approximation() -> None:
    # Eckart–Young: the truncated SVD's error is the energy of the dropped singular values, and the two factors
    # share the singular values evenly (‖B‖_F = ‖A‖_F), so weight decay treats them alike.
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    layer = LowRank(rank=10).build(64, 96).double().load_dense_(w)
    err = float((layer.weight.detach() - w).norm())
    assert err == pytest.approx(float(s[10:].square().sum().sqrt()), rel=1e-9)
    assert float(layer.B.detach().norm()) == pytest.approx(float(layer.A.detach().norm()), rel=1e-9)


# -- a strategy defined right here, registered, and trained through the model ----------------------------------


def _orthogonal(n: int, seed: int) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


class OrthoBlockLinear(ReconstructedLinear):
    """W = Q_m[:a]ᵀ X Q_n[:b] with X a trainable a×b block and Q seeded random orthogonal matrices."""

    _basis_buffers = ("q_out", "q_in")

    def __init__(self, in_features: int, out_features: int, bias: bool, keep: float, seed: int, init_std: float):
        super().__init__(in_features, out_features, bias)
        self.a, self.b, self.seed = max(1, round(out_features * keep)), max(1, round(in_features * keep)), seed
        # Parseval: ‖W‖_F = ‖X‖_F, so X ~ N(0, σ²·mn/(ab)) gives W the dense per-entry variance σ².
        std = init_std * math.sqrt(in_features * out_features / (self.a * self.b))
        self.coef = nn.Parameter(torch.randn(self.a, self.b) * std)
        self._build_buffers()

    def _build_buffers(self, device: torch.device | None = None) -> None:
        q_out = _orthogonal(self.out_features, self.seed)[: self.a].float().to(device)
        q_in = _orthogonal(self.in_features, self.seed + 1)[: self.b].float().to(device)
        self.register_buffer("q_out", q_out, persistent=False)
        self.register_buffer("q_in", q_in, persistent=False)

    @property
    def stored(self) -> int:
        return self.a * self.b

    def reconstruct(self) -> Tensor:
        return self.q_out.t() @ self.coef.to(self.q_in.dtype) @ self.q_in  # (m, a) @ (a, b) @ (b, n)

    def _load_dense_weight(self, weight: Tensor) -> None:
        self.coef.copy_(self.q_out.double() @ weight @ self.q_in.double().t())


class OrthoBasis(Parameterization):
    """Keep a keep·m × keep·n block of coefficients in a fixed seeded random orthonormal basis.

    Args:
        keep: share of each side kept, in (0, 1].
        seed: seed of the bases.
        init_std: per-entry std of the initial W.
    """

    def __init__(self, keep: float = 0.5, seed: int = 0, init_std: float = 0.02) -> None:
        self.keep, self.seed, self.init_std = keep, seed, check_std(init_std)

    def build(self, in_features: int, out_features: int, bias: bool = True) -> OrthoBlockLinear:
        return OrthoBlockLinear(in_features, out_features, bias, self.keep, self.seed, self.init_std)


@pytest.fixture
def orthobasis() -> Iterator[str]:
    """Registers :class:`OrthoBasis` for one test, as a user's module does at import with ``@register``."""
    register("test_orthobasis")(OrthoBasis)
    try:
        yield "test_orthobasis"
    finally:
        unregister("test_orthobasis")
    assert "test_orthobasis" not in available()


def test_user_strategy_trains_through_the_model(orthobasis: str, text_file: Path, tmp_path: Path) -> None:
    import lightning as L

    L.seed_everything(0, verbose=False)
    dm = CharDataModule(path=str(text_file), block_size=16, batch_size=16, batches_per_epoch=30, seed=0)
    module = SpectralLM(
        dm.vocab, block_size=16, n_layer=1, n_head=2, n_embd=32, parameterization=orthobasis, lr=1e-2, warmup_steps=5
    )
    assert module.parameterization == OrthoBasis()
    linears = module.model.linears()
    for name in ("blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc", "blocks.0.mlp.proj"):
        assert isinstance(linears[name], OrthoBlockLinear), name
    assert not isinstance(linears["lm_head"], OrthoBlockLinear)
    # qkv 96×32 -> 48×16, attn.proj 32×32 -> 16×16, fc 128×32 -> 64×16, mlp.proj 32×128 -> 16×64.
    assert sum(linears[n].stored for n in module.model.parameterized) == 48 * 16 + 16 * 16 + 64 * 16 + 16 * 64

    ids = torch.tensor(dm.tokenizer.encode(text_file.read_text()[: 32 * 17])).view(32, 17)

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(module(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()))

    before = loss()
    trainer = quiet_trainer(max_steps=30, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    after = loss()
    assert trainer.global_step == 30
    assert after < before - 0.5, (before, after)


# -- bad options -----------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    # (make, fragments the message must contain: option, value, valid range)
    pytest.param(lambda: DCT(compression=0.5), ["compression", "0.5", ">= 1"], id="dct-c<1"),
    pytest.param(lambda: LowRank(compression=0.9), ["compression", "0.9", ">= 1"], id="lowrank-c<1"),
    pytest.param(lambda: DCT(k=0), ["k=0", ">= 1"], id="k<1"),
    pytest.param(lambda: DCT(k=1025).build(32, 32), ["k=1025", "[1, 1024]"], id="k>mn"),
    pytest.param(lambda: DCT(k=2.5), ["k=2.5", "integer"], id="k-non-integer"),
    pytest.param(lambda: LowRank(rank=0), ["rank=0", ">= 1"], id="rank=0"),
    pytest.param(lambda: LowRank(rank=-3), ["rank=-3", ">= 1"], id="rank<0"),
    pytest.param(lambda: LowRank(rank=17).build(64, 16), ["rank=17", "[1, 16]"], id="rank>min"),
    pytest.param(lambda: LowRank(rank="3"), ["rank='3'", "integer"], id="rank-str"),
    pytest.param(lambda: DCT(selection="highpass"), ["selection", "highpass", "lowpass", "zigzag", "random"], id="sel"),
    pytest.param(lambda: Dense(init_std=0), ["init_std=0", "> 0"], id="dense-std0"),
    pytest.param(lambda: DCT(init_std=-0.02), ["init_std=-0.02", "> 0"], id="dct-std<0"),
    pytest.param(lambda: LowRank(init_std=0.0), ["init_std=0.0", "> 0"], id="lowrank-std0"),
    pytest.param(lambda: RandomBasis(compression=0.5), ["compression", "0.5", ">= 1"], id="random_basis-c<1"),
    pytest.param(lambda: RandomBasis(k=5000).build(32, 32), ["k=5000", "[1, 1024]"], id="random_basis-k>mn"),
]


@pytest.mark.parametrize("make, fragments", BAD_OPTIONS)
def test_bad_options_raise_value_error_naming_option_value_and_range(make, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        make()
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


# -- the paper's model -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, total",
    [
        pytest.param(Dense(), 826_368, id="dense"),
        pytest.param(DCT(compression=2, selection="zigzag"), 433_152, id="dct-c2-zigzag"),
        pytest.param(DCT(compression=2, selection="random"), 433_152, id="dct-c2-random"),
        pytest.param(DCT(compression=4), 236_544, id="dct-c4-lowpass"),
        pytest.param(LowRank(rank=16), 171_008, id="lowrank-r16"),
        pytest.param(LowRank(rank=48), 433_152, id="lowrank-r48"),
    ],
)
def test_paper_model_parameter_counts(strategy: Parameterization, total: int) -> None:
    assert GPT(GPTConfig(), strategy).num_parameters() == total


# -- selection from LightningCLI -------------------------------------------------------------------------------


def _cli(text_file: Path, *args: str):
    tiny = ["--data.path", str(text_file), "--data.block_size", "16", "--data.batch_size", "4"]
    tiny += ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32"]
    tiny += ["--trainer.logger", "false", "--trainer.callbacks=[]", "--trainer.accelerator", "cpu"]
    return cli_main(args=[*tiny, *args], run=False)


def test_cli_selects_by_registered_name(text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = _cli(text_file, "--model.parameterization", "dct")
    assert cli.model.parameterization == DCT()
    assert cli.model.model.blocks[0].mlp.fc.stored == 128 * 32 // 4


def test_cli_selects_by_class_name_with_options(
    text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cli = _cli(text_file, "--model.parameterization", "DCT", "--model.parameterization.init_args.compression", "2")
    assert cli.model.parameterization == DCT(compression=2)


@pytest.mark.parametrize(
    "class_path, init_args, expected, layer_type, fc_stored",
    [
        pytest.param(
            "spectral_lightning.parameterizations.lowrank.LowRank",
            "rank: 2",
            LowRank(rank=2),
            LowRankLinear,
            2 * (128 + 32),
            id="lowrank",
        ),
        # a strategy class in the user's own (importable, unregistered) module
        pytest.param(
            "helpers_custom_strategy.ColumnBlock",
            "fraction: 0.25",
            ColumnBlock(fraction=0.25),
            ColumnBlockLinear,
            128 * 8,
            id="user-module",
        ),
    ],
)
def test_cli_selects_by_class_path_in_yaml(
    class_path: str,
    init_args: str,
    expected: Parameterization,
    layer_type: type,
    fc_stored: int,
    text_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model:\n  parameterization:\n    class_path: {class_path}\n    init_args:\n      {init_args}\n",
        encoding="utf-8",
    )
    cli = _cli(text_file, "--config", str(config))
    assert cli.model.parameterization == expected
    fc = cli.model.model.blocks[0].mlp.fc  # 128×32
    assert isinstance(fc, layer_type) and fc.stored == fc_stored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "tiny.txt"]  # nothing else written
