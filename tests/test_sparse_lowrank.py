"""Sparse plus low-rank (W = B·A + S on a seeded random support): the fit of a dense weight, the support, the
compression rule and the options. The generic checks (shapes, counts, steps, gradcheck, init) are its rows in
tests/test_parameterizations.py."""

from __future__ import annotations

import math

import pytest
import torch

from spectral_lightning.parameterizations import LowRank, SparseLowRank, SparseLowRankLinear, resolve
from spectral_lightning.parameterizations.dct import select_positions
from spectral_lightning.seeds import derive_seed


def decomposable(m: int, n: int, rank: int, layer: SparseLowRankLinear, seed: int = 0) -> tuple:
    """(W, L, S): L of the given rank, S with random values on the layer's support, W = L + S (float64)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(m, rank, generator=gen, dtype=torch.float64) @ torch.randn(
        rank, n, generator=gen, dtype=torch.float64
    )
    sparse = torch.zeros(m * n, dtype=torch.float64)
    sparse[layer.positions] = torch.randn(layer.nnz, generator=gen, dtype=torch.float64)
    sparse = sparse.view(m, n)
    return low + sparse, low, sparse


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b).norm() / b.norm())


# -- loading a dense weight --------------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "n", "density"), [(96, 64, 0.03), (48, 80, 0.1)])
def test_rank_r_plus_sparse_on_the_support_loads_exactly(m: int, n: int, density: float) -> None:
    layer = SparseLowRank(rank=4, density=density).build(n, m).double()
    w, low, sparse = decomposable(m, n, 4, layer)
    layer.load_dense_(w)
    assert rel(layer.weight, w) <= 1e-10
    # The split is recovered too: B·A is the rank-4 part and S its values on the support.
    assert rel(layer.B @ layer.A, low) <= 1e-10
    assert rel(layer.S, sparse.flatten()[layer.positions]) <= 1e-10


def test_lower_rank_plus_sparse_reconstructs_exactly() -> None:
    layer = SparseLowRank(rank=5, density=0.05).build(64, 96).double()
    w, _, _ = decomposable(96, 64, 3, layer, seed=1)  # rank 3 < r = 5
    layer.load_dense_(w)
    assert rel(layer.weight, w) <= 1e-10


def test_other_weights_are_fitted_better_than_by_the_truncated_svd_alone() -> None:
    # A Gaussian W is no rank-4 + 10%-sparse matrix: no exact fit (so the test above is not passed by an echo),
    # but S absorbs the residual on its support, so the error is below the best rank-4 error (Eckart–Young).
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    layer = SparseLowRank(rank=4, density=0.1).build(64, 96).double().load_dense_(w)
    lowrank = LowRank(rank=4).build(64, 96).double().load_dense_(w)
    err, svd_err = rel(layer.weight, w), rel(lowrank.weight, w)
    assert 0.1 < err < svd_err
    # S holds exactly the residual of B·A on the support: nothing is left there.
    residual = (w - layer.weight.detach()).flatten()
    assert float(residual[layer.positions].abs().max()) <= 1e-12


# -- the support -------------------------------------------------------------------------------------------


def test_support_depends_only_on_shape_and_seed_and_is_not_saved() -> None:
    torch.manual_seed(0)
    layer = SparseLowRank(rank=2, density=0.1, seed=7).build(32, 48)
    torch.manual_seed(1)  # another global seed: other factors, the same support
    again = SparseLowRank(rank=2, density=0.1, seed=7).build(32, 48)
    assert torch.equal(layer.positions, again.positions) and not torch.equal(layer.B, again.B)
    seed = derive_seed(7, 48, 32, "sparse_lowrank")
    assert torch.equal(layer.positions, select_positions(48, 32, layer.nnz, "random", seed))
    assert layer.nnz == round(0.1 * 48 * 32) == len(set(layer.positions.tolist()))
    assert not torch.equal(layer.positions, SparseLowRank(rank=2, density=0.1, seed=8).build(32, 48).positions)
    assert not torch.equal(layer.positions, SparseLowRank(rank=2, density=0.1, seed=7).build(48, 32).positions)

    # The state dict holds B, A and the nnz values of S only; a fresh layer reloads the same weight.
    state = layer.state_dict()
    assert set(state) == {"B", "A", "S", "bias"}
    assert state["S"].shape == (layer.nnz,)
    with torch.no_grad():
        layer.S.normal_()
    again.load_state_dict(layer.state_dict())
    torch.testing.assert_close(again.weight, layer.weight, rtol=0, atol=0)
    # S really sits on the support: the weight minus B·A is zero elsewhere.
    sparse = (layer.weight - layer.B @ layer.A).detach().flatten()
    off = torch.ones_like(sparse, dtype=torch.bool).index_fill(0, layer.positions, False)
    assert float(sparse[off].abs().max()) <= 1e-6 and float(sparse[layer.positions].abs().min()) > 0


# -- the compression rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [4, 10])
@pytest.mark.parametrize(("m", "n"), [(128, 128), (512, 128), (128, 512), (2048, 768)])
def test_compression_lands_at_or_just_under_mn_over_c(m: int, n: int, c: float) -> None:
    rank, nnz = SparseLowRank(compression=c).shape_for(n, m)
    stored = rank * (m + n) + nnz
    assert stored == math.floor(m * n / c) <= m * n / c
    # The rank fills what the default 3% of S leaves; S gets the remainder, under one more rank's worth.
    requested = round(0.03 * m * n)
    assert rank == (math.floor(m * n / c) - requested) // (m + n) >= 1
    assert requested <= nnz < requested + (m + n)


def test_compression_rule_by_hand_and_on_a_built_layer() -> None:
    # 128×128 at c = 10: budget floor(16384/10) = 1638; S at least round(491.52) = 492; r = floor(1146/256) = 4;
    # S takes 1638 − 1024 = 614 entries (3.75%).
    layer = SparseLowRank(compression=10).build(128, 128)
    assert (layer.rank, layer.nnz, layer.stored) == (4, 614, 1638)
    assert (layer.B.shape, layer.A.shape, layer.S.shape) == ((128, 4), (4, 128), (614,))
    assert layer.describe() == "sparse_lowrank r=4 d=3.75%"
    # An explicit rank takes precedence: S keeps round(density·mn) entries and compression is unused.
    layer = SparseLowRank(compression=10, rank=8, density=0.03).build(100, 100)
    assert (layer.rank, layer.nnz, layer.stored) == (8, 300, 8 * 200 + 300)
    assert layer.describe() == "sparse_lowrank r=8 d=3%"
    assert "rank=8, nnz=300, seed=0" in repr(layer)


def test_resolves_from_its_registered_name() -> None:
    assert resolve({"class_path": "sparse_lowrank", "init_args": {"density": 0.05}}) == SparseLowRank(density=0.05)
    assert SparseLowRank().spec() == {
        "class_path": "spectral_lightning.parameterizations.sparse_lowrank.SparseLowRank",
        "init_args": {"compression": 4.0, "rank": None, "density": 0.03, "seed": 0, "init_std": 0.02},
    }


# -- bad options -------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    # (make, fragments the message must contain: option, value, valid range)
    pytest.param(lambda: SparseLowRank(compression=0.5), ["compression", "0.5", ">= 1"], id="c<1"),
    pytest.param(lambda: SparseLowRank(density=0), ["density=0", "0 < density < 1"], id="density=0"),
    pytest.param(lambda: SparseLowRank(density=1.0), ["density=1.0", "0 < density < 1"], id="density=1"),
    pytest.param(lambda: SparseLowRank(density=-0.1), ["density=-0.1", "0 < density < 1"], id="density<0"),
    pytest.param(lambda: SparseLowRank(density="0.03"), ["density='0.03'", "0 < density < 1"], id="density-str"),
    pytest.param(lambda: SparseLowRank(density=True), ["density=True", "0 < density < 1"], id="density-bool"),
    pytest.param(lambda: SparseLowRank(rank=0), ["rank=0", ">= 1"], id="rank=0"),
    pytest.param(lambda: SparseLowRank(rank=17).build(64, 16), ["rank=17", "[1, 16]", "16x64"], id="rank>min"),
    pytest.param(lambda: SparseLowRank(seed=-1), ["seed=-1", ">= 0"], id="seed<0"),
    pytest.param(lambda: SparseLowRank(init_std=0.0), ["init_std=0.0", "> 0"], id="std0"),
    # The density alone takes more than the budget of 32·32/4 = 256 values: nothing left for rank 1.
    pytest.param(
        lambda: SparseLowRank(compression=4, density=0.3).build(32, 32),
        ["density=0.3", "compression=4.0", "rank 0", "32x32", "density <= 0.1875"],
        id="density>budget",
    ),
    # 32·32/20 = 51 values cannot hold rank 1 (64) and one entry of S.
    pytest.param(
        lambda: SparseLowRank(compression=20).build(32, 32),
        ["compression=20.0", "51 values", "32x32", "compression <= 15.75"],
        id="c-too-large",
    ),
    pytest.param(
        lambda: SparseLowRank(rank=2, density=1e-4).build(32, 32),
        ["density=0.0001", "no entry", "32x32", "density > 0.000488"],
        id="density-too-small",
    ),
]


@pytest.mark.parametrize("make, fragments", BAD_OPTIONS)
def test_bad_options_name_the_option_and_the_range(make, fragments: list[str]) -> None:  # noqa: ANN001
    with pytest.raises(ValueError) as err:
        make()
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
