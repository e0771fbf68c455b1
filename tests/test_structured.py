"""Structured parameterizations beyond the generic matrix of ``test_parameterizations.py``: the exact form each
one stores, its projection of a dense weight, how ``compression`` picks the structure, and its error messages."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from spectral_lightning import GPT, GPTConfig, Kronecker, Monarch, densify, parameterize, parameterized_names
from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations.kronecker import KroneckerLinear
from spectral_lightning.parameterizations.monarch import MonarchLinear, divisors

SHAPES = [(128, 128), (512, 128), (128, 512), (2048, 768)]  # (m, n)

# The paper's GPT (d = 128, 4 layers): every parameter that is not a block linear (embeddings, norms, biases,
# head) is 826,368 − 4·196,608 = 39,936; its block linears, (m, n) each.
PAPER_REST = 826_368 - 4 * 196_608
PAPER_LINEARS = [(384, 128), (128, 128), (512, 128), (128, 512)]


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.detach().double() - b.double()).norm() / b.double().norm())


def random_weight(m: int, n: int, seed: int = 0) -> Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def best_scaled_error(candidate: Tensor, w: Tensor) -> float:
    """min over α of ‖W − α·C‖ / ‖W‖: a random structure at its best scale."""
    c = candidate.detach().double()
    alpha = float((c * w).sum() / (c * c).sum())
    return rel_err(alpha * c, w)


# -- monarch ---------------------------------------------------------------------------------------------------


def monarch_by_definition(layer: MonarchLinear) -> Tensor:
    """R·P₁·L written out: dense block-diagonal matrices and the permutation as a 0/1 matrix."""
    b, k = layer.nblocks, layer.width
    big_l = torch.block_diag(*layer.L.detach().double())  # (b·k, n)
    big_r = torch.block_diag(*layer.R.detach().double())  # (m, b·k)
    p1 = torch.zeros(b * k, b * k, dtype=torch.float64)
    for f in range(b * k):  # position f of the permuted vector is unit t = f // b of L block i = f mod b
        p1[f, (f % b) * k + f // b] = 1.0
    return big_r @ p1 @ big_l


@pytest.mark.parametrize(("m", "n", "b", "k"), [(32, 32, 4, 4), (48, 32, 4, 8), (64, 32, 4, 5), (16, 24, 2, 3)])
def test_monarch_weight_is_r_p1_l(m: int, n: int, b: int, k: int) -> None:
    layer = MonarchLinear(n, m, True, b, k).double()
    torch.testing.assert_close(layer.weight.detach(), monarch_by_definition(layer), rtol=0, atol=1e-12)
    assert layer.stored == k * (m + n) == layer.L.numel() + layer.R.numel()


def test_square_monarch_has_rank_one_blocks() -> None:
    # k = b (the paper's square form): block (j, i) of W is the outer product of column i of R_j and row j of L_i.
    layer = MonarchLinear(16, 16, False, 4, 4).double()
    w, big_l, big_r = layer.weight.detach(), layer.L.detach(), layer.R.detach()
    for j in range(4):
        for i in range(4):
            block = w[4 * j : 4 * j + 4, 4 * i : 4 * i + 4]
            torch.testing.assert_close(block, torch.outer(big_r[j, :, i], big_l[i, j]), rtol=0, atol=1e-15)


@pytest.mark.parametrize(("m", "n", "b", "k"), [(32, 32, 4, 8), (64, 32, 4, 5), (48, 24, 8, 12)])
def test_monarch_round_trip_is_exact_for_a_monarch_matrix(m: int, n: int, b: int, k: int) -> None:
    # A Monarch matrix of the layer's form, built from independent factors by the definition.
    source = MonarchLinear(n, m, True, b, k).double()
    with torch.no_grad():
        source.L.normal_(generator=torch.Generator().manual_seed(1))
        source.R.normal_(generator=torch.Generator().manual_seed(2))
    w = monarch_by_definition(source)
    layer = MonarchLinear(n, m, True, b, k).double().load_dense_(w)
    assert float((layer.weight.detach() - w).abs().max()) <= 1e-10 * float(w.abs().max())
    # A random perturbation raises the rank of the top-left blocks beyond the form's: no longer exact.
    w2 = w.clone()
    w2[:8, :8] += random_weight(8, 8)
    assert rel_err(MonarchLinear(n, m, True, b, k).double().load_dense_(w2).weight, w2) > 1e-3


def test_monarch_projection_is_the_per_block_truncated_svd() -> None:
    # 64×32 with b = 4, k = 5: block ranks 2, 1, 1, 1 along each block row (the extra unit moves along).
    w = random_weight(64, 32)
    layer = MonarchLinear(32, 64, True, 4, 5).double().load_dense_(w)
    ranks = torch.zeros(4, 4, dtype=torch.long)
    for f in range(4 * 5):
        ranks[f // 5, f % 4] += 1  # unit f serves R block j = f // k and L block i = f mod b
    assert ranks.sum(1).tolist() == [5] * 4 and sorted(ranks[0].tolist()) == [1, 1, 1, 2]
    dropped = 0.0
    for j in range(4):
        for i in range(4):
            s = torch.linalg.svdvals(w[16 * j : 16 * j + 16, 8 * i : 8 * i + 8])
            dropped += float(s[ranks[j, i] :].square().sum())
    err = float((layer.weight.detach() - w).norm())
    assert err == pytest.approx(math.sqrt(dropped), rel=1e-9)  # Eckart–Young in each independent block
    # Sanity: far better than a random Monarch matrix at its best scale, which explains almost nothing.
    assert rel_err(layer.weight, w) < 0.9 < best_scaled_error(MonarchLinear(32, 64, True, 4, 5).weight, w)


@pytest.mark.parametrize("c", [4, 10])
@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_monarch_compression_lands_just_under_the_budget(m: int, n: int, c: int) -> None:
    layer = Monarch(compression=c).build(n, m)
    budget = m * n / c
    assert budget - (m + n) < layer.stored <= budget  # the next width would not fit
    # b: the largest divisor of both widths that is at most k.
    assert layer.nblocks == max(d for d in divisors(math.gcd(m, n)) if d <= layer.width)


def test_monarch_structure_for_known_shapes() -> None:
    # 128×128: k = floor(16384 / (4·256)) = 16 = b: rank-1 blocks of 8×8; at c = 10, k = 6 and b = 4.
    assert Monarch(compression=4).structure_for(128, 128) == (16, 16)
    assert Monarch(compression=10).structure_for(128, 128) == (4, 6)
    # 2048×768: k = floor(1572864 / (4·2816)) = 139, b = 128 (divisors of gcd = 256 up to 139).
    assert Monarch(compression=4).structure_for(768, 2048) == (128, 139)
    assert Monarch(nblocks=2, width=10).structure_for(64, 32) == (2, 10)
    assert Monarch(compression=4).build(128, 128).describe() == "monarch b=16 k=16"


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        pytest.param(
            lambda: Monarch(nblocks=3).build(96, 128), ["nblocks=3", "128x96", "1, 2, 4, 8, 16, 32"], id="nblocks"
        ),
        pytest.param(
            lambda: Monarch(nblocks=16, compression=10).build(128, 128),
            ["nblocks=16", "k=6", "1, 2, 4"],
            id="nblocks>k",
        ),
        pytest.param(lambda: Monarch(width=33).build(32, 64), ["width=33", "[1, 32]"], id="width>min"),
        pytest.param(lambda: Monarch(width=0), ["width=0", ">= 1"], id="width0"),
        pytest.param(lambda: Monarch(nblocks=2.5), ["nblocks=2.5", "integer"], id="nblocks-float"),
        pytest.param(lambda: Monarch(compression=5).build(4, 4), ["compression=5.0", "4x4", "≤ 2"], id="too-much"),
    ],
)
def test_monarch_errors_name_the_option_and_the_valid_values(make, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# -- kronecker -------------------------------------------------------------------------------------------------


def kronecker_sum(a: Tensor, b: Tensor) -> Tensor:
    return sum(torch.kron(x, y) for x, y in zip(a, b, strict=True))


def test_kronecker_weight_is_a_sum_of_kronecker_products() -> None:
    layer = KroneckerLinear(24, 12, True, 3, 4, 6).double()  # A 4×6, B 3×4
    assert (layer.m2, layer.n2) == (3, 4)
    torch.testing.assert_close(layer.weight.detach(), kronecker_sum(layer.A.detach(), layer.B.detach()))
    assert layer.stored == 3 * (4 * 6 + 3 * 4) == layer.A.numel() + layer.B.numel()


@pytest.mark.parametrize("count", [1, 2, 3])
def test_kronecker_round_trip_is_exact_for_up_to_terms_products(count: int) -> None:
    gen = torch.Generator().manual_seed(count)
    a = torch.randn(count, 8, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(count, 4, 8, generator=gen, dtype=torch.float64)
    w = kronecker_sum(a, b)  # 32×32
    layer = Kronecker(terms=3, m1=8, n1=4).build(32, 32).double().load_dense_(w)
    assert float((layer.weight.detach() - w).abs().max()) <= 1e-10 * float(w.abs().max())
    # One term fewer than the sum holds is not exact.
    if count > 1:
        fewer = Kronecker(terms=count - 1, m1=8, n1=4).build(32, 32).double().load_dense_(w)
        assert rel_err(fewer.weight, w) > 1e-3


def test_kronecker_projection_is_best_and_improves_with_terms() -> None:
    w = random_weight(64, 32)
    errors = [rel_err(Kronecker(terms=t, m1=8, n1=8).build(32, 64).double().load_dense_(w).weight, w) for t in (1, 4)]
    assert errors[1] < errors[0] < 1.0
    # A single Kronecker product is W's best one: for the B of the projection, the best A is the least-squares fit.
    one = Kronecker(terms=1, m1=8, n1=8).build(32, 64).double().load_dense_(w)
    b = one.B.detach()[0]  # 8×4
    blocks = w.view(8, 8, 8, 4).transpose(1, 2)  # (a, c, 8, 4): the 8×4 block of W at block row a, column c
    a_best = (blocks * b).sum((-1, -2)) / b.square().sum()
    torch.testing.assert_close(one.A.detach()[0], a_best, rtol=1e-9, atol=1e-12)
    # Sanity: better than a random structure at its best scale.
    assert errors[1] < best_scaled_error(Kronecker(terms=4, m1=8, n1=8).build(32, 64).weight, w)
    # Full capacity (min(m1·n1, m2·n2) = 32 terms) reproduces any matrix.
    assert rel_err(Kronecker(terms=32, m1=8, n1=8).build(32, 64).double().load_dense_(w).weight, w) < 1e-12


@pytest.mark.parametrize("c", [4, 10])
@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_kronecker_compression_lands_just_under_the_budget(m: int, n: int, c: int) -> None:
    layer = Kronecker(compression=c).build(n, m)
    per_term = layer.m1 * layer.n1 + layer.m2 * layer.n2
    budget = m * n / c
    assert budget - per_term < layer.stored <= budget  # one more term would not fit
    # The factors have the fewest values per term among all factorizations.
    fewest = min(a + m * n // a for a in (m1 * n1 for m1 in divisors(m) for n1 in divisors(n)))
    assert per_term == fewest


@pytest.mark.parametrize(
    ("m", "n", "described"),
    [
        (128, 128, "kronecker t=16 (16x8)⊗(8x16)"),
        (384, 128, "kronecker t=27 (24x8)⊗(16x16)"),  # 192 + 256 values per term; 27·448 = 12,096 ≤ 12,288
        (64, 32, "kronecker t=5 (8x8)⊗(8x4)"),
    ],
)
def test_kronecker_factors_for_known_shapes(m: int, n: int, described: str) -> None:
    assert Kronecker(compression=4).build(n, m).describe() == described


def test_kronecker_fixed_factors() -> None:
    assert Kronecker(m1=4).factors_for(64, 128)[0] == 4
    layer = Kronecker(m1=4, n1=16, terms=3).build(64, 128)
    assert (layer.m1, layer.n1, layer.m2, layer.n2, layer.stored) == (4, 16, 32, 4, 3 * (64 + 128))


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        pytest.param(lambda: Kronecker(m1=5).build(64, 128), ["m1=5", "1, 2, 4, 8, 16, 32, 64, 128"], id="m1"),
        pytest.param(
            lambda: Kronecker(n1=5).build(96, 128), ["n1=5", "1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 96"], id="n1"
        ),
        pytest.param(lambda: Kronecker(m1=8, n1=8, terms=33).build(32, 64), ["terms=33", "[1, 32]"], id="terms>max"),
        pytest.param(lambda: Kronecker(terms=0), ["terms=0", ">= 1"], id="terms0"),
        pytest.param(lambda: Kronecker(compression=3).build(4, 4), ["compression=3.0", "4x4", "≤ 2"], id="too-much"),
    ],
)
def test_kronecker_errors_name_the_option_and_the_valid_values(make, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        make()
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# -- both: parameterize, densify, autocast -----------------------------------------------------------------------

STRUCTURED = [
    # Full capacity for both layers (min(m, n) = 16): Monarch k = 16; Kronecker A 4×4, B of 32 values, 16 terms.
    pytest.param(Monarch(width=16), Monarch(compression=4), id="monarch"),
    pytest.param(Kronecker(m1=4, n1=4, terms=16), Kronecker(compression=4), id="kronecker"),
]


@pytest.mark.parametrize(("full", "reduced"), STRUCTURED)
def test_parameterize_and_densify_a_plain_model(full, reduced) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))  # 32×16 and 16×32
    x = torch.randn(5, 16)
    before = model(x).detach()
    parameterize(model, full)  # init="keep": each layer projects the old weight, exactly at full capacity
    assert parameterized_names(model) == ["0", "2"]
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
    densify(model)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)
    # A reduced structure changes the outputs, and densify keeps what it computes.
    parameterize(model, reduced)
    assert all(model[i].stored <= 32 * 16 / 4 for i in (0, 2))
    reduced_out = model(x).detach()
    assert not torch.allclose(reduced_out, before, atol=1e-3)
    densify(model)
    torch.testing.assert_close(model(x), reduced_out, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("full", "reduced"), STRUCTURED)
def test_bf16_autocast_and_bf16_weights_reconstruct_in_float32(full, reduced) -> None:
    layer = reduced.build(32, 64)
    x = torch.randn(3, 32)
    reference = layer(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        assert layer.weight.dtype == torch.float32
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, atol=2e-2, rtol=0)
    # bf16-true: the stored factors are bf16, the product is still taken in float32.
    half = reduced.build(32, 64).to(torch.bfloat16)
    assert half.weight.dtype == torch.float32
    torch.testing.assert_close(half.weight, copy.deepcopy(half).float().weight, rtol=0, atol=0)


# -- the paper's model -----------------------------------------------------------------------------------------


def monarch_stored(m: int, n: int, c: float) -> int:
    return math.floor(m * n / (c * (m + n))) * (m + n)


def kronecker_stored(m: int, n: int, c: float) -> int:
    per_term = min(a + m * n // a for a in (m1 * n1 for m1 in divisors(m) for n1 in divisors(n)))
    return math.floor(m * n / (c * per_term)) * per_term


@pytest.mark.parametrize(
    ("parameterization", "stored", "c", "total"),
    [
        # Monarch c = 4: k = 24, 16, 25, 25 for qkv, proj, fc, mlp.proj (b = 16 throughout).
        (Monarch, monarch_stored, 4, 233_472),
        (Monarch, monarch_stored, 10, 115_712),
        (Kronecker, kronecker_stored, 4, 235_776),
        (Kronecker, kronecker_stored, 10, 113_152),
    ],
)
def test_paper_model_builds_with_the_closed_form_count(parameterization: type, stored, c: float, total: int) -> None:
    model = GPT(GPTConfig(), parameterization(compression=c))
    linears = sum(stored(m, n, c) for m, n in PAPER_LINEARS)
    assert sum(model.linears()[name].stored for name in model.parameterized) == 4 * linears
    assert model.num_parameters() == PAPER_REST + 4 * linears == total
    assert 4 * linears <= 4 * sum(m * n for m, n in PAPER_LINEARS) / c
