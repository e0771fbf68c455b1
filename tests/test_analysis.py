"""Measurements of a model (spectral_lightning.analysis): parameter counts pinned to the paper's numbers, stable
rank of matrices with known singular values, frequency planes against scipy's DCT, and the parameter table that
the console and TensorBoard both draw."""

from __future__ import annotations

import pytest
import scipy.fft
import torch
from rich.console import Console

from spectral_lightning import DCT, GPT, Dense, GPTConfig, LowRank, Parameterization, RandomBasis
from spectral_lightning.analysis import (
    TextTable,
    frequency_plane,
    markdown_table,
    parameter_report,
    parameter_table,
    rich_table,
    stable_rank,
)
from spectral_lightning.model import BLOCK_LINEARS
from spectral_lightning.parameterizations.dct import select_positions

# The paper's model (GPTConfig's defaults: 4 blocks, d = 128, vocab 65, context 128). Each block has four
# parameterized linears, m×n = out × in:
BLOCK_SHAPES = {"attn.qkv": (384, 128), "attn.proj": (128, 128), "mlp.fc": (512, 128), "mlp.proj": (128, 512)}
LINEAR_DENSE = 4 * sum(m * n for m, n in BLOCK_SHAPES.values())  # 4 · 196,608 = 786,432
DENSE_TOTAL = 826_368  # DESIGN.md; the other 39,936 are embeddings, norms, biases and the 65×128 LM head


# -- parameter report ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameterization", "label", "per_layer", "total"),
    [
        (Dense(), "dense", lambda m, n: m * n, 826_368),
        (DCT(compression=2.0, selection="zigzag"), "dct zigzag", lambda m, n: m * n // 2, 433_152),
        (DCT(compression=4.0), "dct lowpass", lambda m, n: m * n // 4, 236_544),  # the m/2 × n/2 block
        (LowRank(rank=16), "lowrank r=16", lambda m, n: 16 * (m + n), 171_008),
        (LowRank(rank=48), "lowrank r=48", lambda m, n: 48 * (m + n), 433_152),
    ],
    ids=["dense", "dct-mn/2", "dct-mn/4", "lowrank16", "lowrank48"],
)
def test_parameter_report_of_the_paper_model(parameterization: Parameterization, label, per_layer, total) -> None:
    gpt = GPT(GPTConfig(), parameterization)
    rows, totals = parameter_report(gpt)
    names = [f"blocks.{i}.{suffix}" for i in range(4) for suffix in BLOCK_SHAPES]
    assert [r.name for r in rows] == names
    for row in rows:
        m, n = BLOCK_SHAPES[row.name.split(".", 2)[2]]
        assert (row.m, row.n, row.dense, row.parameterization) == (m, n, m * n, label)
        assert row.stored == per_layer(m, n)
        assert row.ratio == pytest.approx(per_layer(m, n) / (m * n))
    linear_stored = 4 * sum(per_layer(m, n) for m, n in BLOCK_SHAPES.values())
    assert (totals.linear_stored, totals.linear_dense) == (linear_stored, LINEAR_DENSE)
    assert totals.stored == total == DENSE_TOTAL - LINEAR_DENSE + linear_stored
    assert totals.dense == DENSE_TOTAL
    assert totals.ratio == pytest.approx(total / DENSE_TOTAL)
    assert totals.linear_ratio == pytest.approx(linear_stored / LINEAR_DENSE)


def test_parameter_report_counts_a_parameterized_lm_head() -> None:
    """The dense model is the same whichever linears are parameterized; the head then has its own row."""
    gpt = GPT(GPTConfig(), DCT(compression=4.0, selection="zigzag"), parameterize=[*BLOCK_LINEARS, "lm_head"])
    rows, totals = parameter_report(gpt)
    head = rows[-1]
    assert (head.name, head.m, head.n, head.stored, head.dense) == ("lm_head", 65, 128, 2_080, 8_320)
    assert totals.dense == DENSE_TOTAL
    assert totals.stored == 236_544 - 8_320 + 2_080 == 230_304  # the head keeps K = 65·128/4 of 8,320 values
    assert (totals.linear_stored, totals.linear_dense) == (196_608 + 2_080, LINEAR_DENSE + 8_320)


# -- the parameter table -------------------------------------------------------------------------------------


def test_parameter_table_cells_of_dct4x() -> None:
    table = parameter_table(*parameter_report(GPT(GPTConfig(), DCT(compression=4.0))))
    assert table.headers == ("layer", "shape (m×n)", "parameterization", "stored", "dense", "ratio")
    assert table.numeric == (False, True, False, True, True, True)
    assert len(table.body) == 16
    assert table.body[0] == ("blocks.0.attn.qkv", "384×128", "dct lowpass", "12,288", "49,152", "25.0%")
    assert table.body[-1] == ("blocks.3.mlp.proj", "128×512", "dct lowpass", "16,384", "65,536", "25.0%")
    assert table.footer == (
        ("parameterized linears", "", "", "196,608", "786,432", "25.0%"),
        ("model total (all parameters)", "", "vs dense model", "236,544", "826,368", "28.6%"),
    )


def _rich_cells(table: TextTable) -> list[tuple[str, ...]]:
    """The header and every row of the console rendering, read back cell by cell."""
    console = Console(record=True, width=200)
    console.print(rich_table(table))
    lines = console.export_text().splitlines()
    return [tuple(c.strip() for c in line.split(line[0])[1:-1]) for line in lines if line[:1] in ("┃", "│")]


def _markdown_cells(text: str) -> list[tuple[str, ...]]:
    """The header and every row of the Markdown rendering (the alignment line skipped, bold marks removed)."""
    lines = [line for line in text.splitlines() if not set(line) <= set("|-:")]
    return [tuple(c.strip().removeprefix("**").removesuffix("**") for c in line.split("|")[1:-1]) for line in lines]


def test_rich_and_markdown_render_the_same_cells() -> None:
    table = parameter_table(*parameter_report(GPT(GPTConfig(), LowRank(rank=16))))
    expected = [table.headers, *table.body, *table.footer]
    assert len(expected) == 1 + 16 + 2
    assert _rich_cells(table) == expected
    text = markdown_table(table)
    assert _markdown_cells(text) == expected
    assert text.splitlines()[1] == "|---|---:|---|---:|---:|---:|"  # numbers right-aligned, as in the console
    assert text.splitlines()[-1].startswith("| **model total (all parameters)** |  | **vs dense model** | **171,008**")


def test_renderers_show_cells_verbatim_and_tables_reject_ragged_rows() -> None:
    table = TextTable("t", ("a", "b"), (False, True), (("x|y", "1"), ("lowrank [r=16]", "2")), ())
    assert markdown_table(table).splitlines()[2:] == ["| x\\|y | 1 |", "| lowrank [r=16] | 2 |"]
    assert _rich_cells(table)[1:] == [("x|y", "1"), ("lowrank [r=16]", "2")]  # not read as rich markup
    with pytest.raises(ValueError, match="needs 2 cells"):
        TextTable("t", ("a", "b"), (False, True), (("only one",),), ())


# -- stable rank ---------------------------------------------------------------------------------------------


def _with_singular_values(values: list[float], m: int, n: int, seed: int = 0) -> torch.Tensor:
    """An m×n float64 matrix U diag(values) Vᵀ with random orthonormal U, V (so it is not diagonal)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(values), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(values), generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.t()


def test_stable_rank_of_known_spectra() -> None:
    w = _with_singular_values([3.0, 2.0, 1.0], 12, 7)
    assert stable_rank(w) == pytest.approx((9 + 4 + 1) / 9, rel=1e-12)  # Σσ² / σ_max²
    assert stable_rank(100.0 * w.float()) == pytest.approx(14 / 9, rel=1e-5)  # scale-free; float32 input
    assert stable_rank(_with_singular_values([5.0], 12, 7)) == pytest.approx(1.0, rel=1e-12)  # rank one
    assert stable_rank(torch.eye(7)) == pytest.approx(7.0, rel=1e-12)  # 7 equal singular values
    assert stable_rank(torch.zeros(3, 3)) == 0.0


# -- frequency planes ----------------------------------------------------------------------------------------

M, N = 40, 24  # a layer with in_features = 24, out_features = 40: W and X are 40×24


def _dct2(w: torch.Tensor) -> torch.Tensor:
    """The orthonormal 2-D DCT-II of ``w`` in float64 by scipy: C_m W C_nᵀ."""
    return torch.from_numpy(scipy.fft.dctn(w.detach().double().numpy(), type=2, norm="ortho"))


@pytest.mark.parametrize(
    "parameterization",
    [DCT(compression=4.0), DCT(compression=3.0, selection="zigzag"), DCT(compression=2.0, selection="random", seed=3)],
    ids=["lowpass", "zigzag", "random"],
)
def test_frequency_plane_of_a_dct_layer_holds_its_coefficients_at_their_positions(parameterization: DCT) -> None:
    torch.manual_seed(0)
    layer = parameterization.build(N, M)
    plane = frequency_plane(layer)
    assert plane.shape == (M, N) and plane.dtype == torch.float32
    positions = select_positions(M, N, layer.stored, parameterization.selection, parameterization.seed)
    flat = plane.flatten()
    assert torch.equal(flat[positions], layer.coef.detach().flatten())  # exactly the stored values, in order
    others = torch.ones(M * N, dtype=torch.bool)
    others[positions] = False
    assert not flat[others].any()  # and exact zeros everywhere else
    torch.testing.assert_close(plane.double(), _dct2(layer.weight), atol=1e-6, rtol=1e-5)  # X = C_m W C_nᵀ


@pytest.mark.parametrize(
    "parameterization", [Dense(), LowRank(rank=4), RandomBasis(compression=2.0)], ids=["dense", "lowrank", "random"]
)
def test_frequency_plane_of_other_layers_is_the_2d_dct_of_the_weight(parameterization: Parameterization) -> None:
    torch.manual_seed(0)
    layer = parameterization.build(N, M)
    plane = frequency_plane(layer)
    assert plane.shape == (M, N) and plane.dtype == torch.float32
    torch.testing.assert_close(plane.double(), _dct2(layer.weight), atol=1e-6, rtol=1e-5)
    # Parseval: the orthonormal transform keeps the energy of W.
    assert plane.double().square().sum() == pytest.approx(layer.weight.double().square().sum().item(), rel=1e-5)
