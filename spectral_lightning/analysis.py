"""Measurements of a model: what each linear stores, how far its weight is from low rank, where its energy sits.

Plain functions on a model (the project's GPT, or any ``nn.Module`` converted by
:func:`~spectral_lightning.convert.parameterize`) and its layers, with no Lightning in sight, so the
dashboard callbacks, the benchmark scripts and a notebook all measure the same way:

=========================  ===================================================================================
function                   answers
=========================  ===================================================================================
:func:`parameter_report`   per parameterized linear: shape m×n, parameterization, stored values, m·n; and the
                           model's totals against the dense model of the same shape
:func:`parameter_table`    the report as a :class:`TextTable` of formatted cells, drawn for the console by
                           :func:`rich_table` and for TensorBoard's text tab by :func:`markdown_table`
:func:`stable_rank`        ‖W‖_F² / ‖W‖₂², a smooth stand-in for rank W (1 for rank one, r for r equal
                           singular values)
:func:`frequency_plane`    X, the m×n matrix of 2-D DCT coefficients of a layer's weight: W = C_mᵀ X C_n
=========================  ===================================================================================

The two renderers live beside the table model they draw, so a script prints the same table as the console
without Lightning, and a change of a cell's format is one edit that both renderings follow.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from rich.table import Table
from rich.text import Text
from torch import Tensor, nn

from spectral_lightning.parameterizations import DCTLinear, ParameterizedLinear, dct_matrix

# -- parameter accounting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRow:
    """One parameterized linear, whose weight is m×n (``out_features`` × ``in_features``).

    Attributes:
        name: the module name in the model (``blocks.0.attn.qkv``).
        m: output width.
        n: input width.
        parameterization: how the layer stores W (its ``describe()``: ``dct lowpass``, ``lowrank r=16``).
        stored: weight values the layer keeps (its bias excluded).
        dense: m·n, the values a dense layer of that shape keeps.
    """

    name: str
    m: int
    n: int
    parameterization: str
    stored: int
    dense: int

    @property
    def ratio(self) -> float:
        """stored / dense (1.0 for a dense layer)."""
        return self.stored / self.dense


@dataclass(frozen=True)
class ParameterTotals:
    """Model totals.

    Attributes:
        stored: every Parameter value of the model (embeddings, norms, biases, head, layers' stored values).
        dense: the same count for the dense model of the same shape (every linear stores m·n values).
        linear_stored: stored weight values of the parameterized linears (biases excluded).
        linear_dense: m·n summed over the parameterized linears.
    """

    stored: int
    dense: int
    linear_stored: int
    linear_dense: int

    @property
    def ratio(self) -> float:
        """Whole model: stored / dense."""
        return self.stored / self.dense

    @property
    def linear_ratio(self) -> float:
        """Parameterized linears only: linear_stored / linear_dense (1.0 when there are none)."""
        return self.linear_stored / self.linear_dense if self.linear_dense else 1.0


def parameter_report(model: nn.Module) -> tuple[list[LayerRow], ParameterTotals]:
    """Rows for every parameterized linear of ``model`` and the model totals; ``model`` is any ``nn.Module``.

    The rows follow ``model.parameterized`` where the model lists the linears its parameterization built (the
    project's architectures, whose dense LM head is a ``ParameterizedLinear`` too but not listed), else every
    ``ParameterizedLinear`` in module order (a third-party model after ``parameterize``).
    ``totals.stored`` is ``sum(p.numel() for p in model.parameters())``; ``totals.dense`` is that count for the
    dense model of the same shape (for a GPT, ``GPT(gpt.config, Dense())``): each ``ParameterizedLinear``'s stored
    values are replaced by m·n, everything else is shared.
    For the paper's model, 826,368 dense; 236,544 with DCT at K = mn/4; 171,008 with rank-16 factors.
    """
    linears = {name: m for name, m in model.named_modules() if isinstance(m, ParameterizedLinear)}
    listed = getattr(model, "parameterized", None)
    rows = []
    for name in linears if listed is None else listed:
        layer = linears[name]
        m, n = layer.out_features, layer.in_features
        rows.append(LayerRow(name, m, n, layer.describe(), layer.stored, m * n))
    stored = sum(p.numel() for p in model.parameters())
    # Every linear (parameterized or not) would hold m·n weight values in the dense model.
    extra = sum(layer.out_features * layer.in_features - layer.stored for layer in linears.values())
    totals = ParameterTotals(
        stored=stored,
        dense=stored + extra,
        linear_stored=sum(r.stored for r in rows),
        linear_dense=sum(r.dense for r in rows),
    )
    return rows, totals


@dataclass(frozen=True)
class TextTable:
    """A table whose cells are already formatted strings: the one model every renderer draws.

    Renderers (the console's rich table, TensorBoard's Markdown) only lay the cells out, so they cannot
    disagree on a number or a label.

    Attributes:
        title: a caption.
        headers: one name per column.
        numeric: per column, whether it holds numbers (renderers right-align those).
        body: the data rows, each with ``len(headers)`` cells.
        footer: summary rows after the body (renderers set them apart and in bold).
    """

    title: str
    headers: tuple[str, ...]
    numeric: tuple[bool, ...]
    body: tuple[tuple[str, ...], ...]
    footer: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        width = len(self.headers)
        if len(self.numeric) != width or any(len(row) != width for row in (*self.body, *self.footer)):
            raise ValueError(f"every row of table {self.title!r} needs {width} cells, one per header")


def parameter_table(rows: list[LayerRow], totals: ParameterTotals, title: str = "parameterized linears") -> TextTable:
    """The parameter report as a table: one row per layer, then the linears' subtotal and the model total.

    Columns: layer, shape (m×n), parameterization, stored, dense, ratio. Counts carry thousands separators
    (``236,544``), ratios are percentages with one decimal (``28.6%``).
    """

    def counts(stored: int, dense: int, ratio: float) -> tuple[str, str, str]:
        return f"{stored:,}", f"{dense:,}", f"{ratio:.1%}"

    body = tuple((r.name, f"{r.m}×{r.n}", r.parameterization, *counts(r.stored, r.dense, r.ratio)) for r in rows)
    footer = (
        ("parameterized linears", "", "", *counts(totals.linear_stored, totals.linear_dense, totals.linear_ratio)),
        ("model total (all parameters)", "", "vs dense model", *counts(totals.stored, totals.dense, totals.ratio)),
    )
    headers = ("layer", "shape (m×n)", "parameterization", "stored", "dense", "ratio")
    return TextTable(title, headers, (False, True, False, True, True, True), body, footer)


def rich_table(table: TextTable) -> Table:
    """``table`` for the console: numeric columns right-aligned, the footer after a rule and in bold. Cells are
    shown verbatim (as ``Text``, so a label such as ``lowrank [r=16]`` is not taken for rich markup)."""
    out = Table(title=Text(table.title), header_style="bold")
    for header, numeric in zip(table.headers, table.numeric, strict=True):
        out.add_column(Text(header), justify="right" if numeric else "left")
    for row in table.body:
        out.add_row(*map(Text, row))
    out.add_section()
    for row in table.footer:
        out.add_row(*map(Text, row), style="bold")
    return out


def markdown_table(table: TextTable) -> str:
    """``table`` as GitHub Markdown (TensorBoard's text tab renders it): the same cells, footer in bold."""

    def line(cells: tuple[str, ...], bold: bool = False) -> str:
        cells = tuple(c.replace("|", "\\|") for c in cells)
        return "| " + " | ".join(f"**{c}**" if bold and c else c for c in cells) + " |"

    rule = "|" + "|".join("---:" if numeric else "---" for numeric in table.numeric) + "|"
    rows = [line(r) for r in table.body] + [line(r, bold=True) for r in table.footer]
    return "\n".join([line(table.headers), rule, *rows])


# -- spectra -------------------------------------------------------------------------------------------------


def stable_rank(weight: Tensor) -> float:
    """‖W‖_F² / ‖W‖₂² of a matrix, computed in float64.

    It lies in [1, rank W] (0 for an all-zero W): 1 when one singular value carries everything, r when r
    singular values are equal. Unlike rank W it moves smoothly as training spreads or concentrates energy.
    """
    w = weight.detach().double()
    top = torch.linalg.matrix_norm(w, ord=2)
    if top == 0:
        return 0.0
    return float(w.square().sum() / top.square())


@functools.lru_cache(maxsize=32)
def _dct_basis(n: int, device: torch.device) -> Tensor:
    """The float32 n×n DCT-II matrix on ``device``, built once per (n, device): a model has a handful of widths."""
    return dct_matrix(n, torch.float32, device)


@torch.no_grad()
def frequency_plane(layer: ParameterizedLinear) -> Tensor:
    """X, the m×n (``out_features`` × ``in_features``) float32 matrix of 2-D DCT-II coefficients of ``layer``.

    Row 0, column 0 hold the lowest frequencies. A DCT layer stores X directly: its coefficients sit at their
    positions and every other entry is exactly zero. Any other layer is materialized and transformed,
    X = C_m W C_nᵀ (C the orthonormal DCT-II matrix), so the planes of different parameterizations compare.
    """
    m, n = layer.out_features, layer.in_features
    if isinstance(layer, DCTLinear):
        corner = layer.coefficient_matrix().detach().float()  # (ra, cb), zero where nothing is stored
        x = corner.new_zeros(m, n)
        x[: corner.shape[0], : corner.shape[1]] = corner
        return x
    w = layer.weight.detach().float()  # (m, n)
    return _dct_basis(m, w.device) @ w @ _dct_basis(n, w.device).t()  # (m, n)


__all__ = [
    "LayerRow",
    "ParameterTotals",
    "TextTable",
    "frequency_plane",
    "markdown_table",
    "parameter_report",
    "parameter_table",
    "rich_table",
    "stable_rank",
]
