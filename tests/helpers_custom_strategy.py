"""A strategy living in a user's own module, selected by ``class_path`` only (it is deliberately not registered).

``tests/test_parameterizations.py`` names it in a LightningCLI YAML file as
``class_path: helpers_custom_strategy.ColumnBlock``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectral_lightning.parameterizations import Parameterization, ParameterizedLinear
from spectral_lightning.parameterizations.options import check_std


class ColumnBlockLinear(ParameterizedLinear):
    """W = [P | 0]: only the first ``cols`` input columns of W are stored (m·cols values).

    Args:
        in_features: n.
        out_features: m.
        bias: learn a bias.
        cols: stored columns, in [1, n].
        init_std: per-entry standard deviation of the initial W.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, cols: int = 1, init_std: float = 0.02
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.cols, self.init_std = cols, init_std
        self.part = nn.Parameter(torch.empty(out_features, cols))
        # Scaled by √(n/cols) so that W, zero outside the block, keeps the dense per-entry variance.
        nn.init.normal_(self.part, std=init_std * math.sqrt(in_features / cols))

    @property
    def weight(self) -> Tensor:
        return F.pad(self.part, (0, self.in_features - self.cols))  # (m, cols) -> (m, n)

    @property
    def stored(self) -> int:
        return self.out_features * self.cols

    def _load_dense_weight(self, weight: Tensor) -> None:
        self.part.copy_(weight[:, : self.cols])


class ColumnBlock(Parameterization):
    """Keep a leading block of input columns of every weight.

    Args:
        fraction: share of the input columns kept, in (0, 1].
        init_std: per-entry std of the initial W (> 0).
    """

    def __init__(self, fraction: float = 0.5, init_std: float = 0.02) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction={fraction!r} is not valid: expected a number in (0, 1]")
        self.fraction = float(fraction)
        self.init_std = check_std(init_std)

    def build(self, in_features: int, out_features: int, bias: bool = True) -> ColumnBlockLinear:
        cols = max(1, round(in_features * self.fraction))
        return ColumnBlockLinear(in_features, out_features, bias, cols, self.init_std)
