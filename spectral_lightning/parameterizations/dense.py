"""Dense: W is stored as is. Parameters: m·n (+ m for the bias)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spectral_lightning.parameterizations.base import Parameterization, ParameterizedLinear
from spectral_lightning.parameterizations.options import check_std
from spectral_lightning.parameterizations.registry import register


class DenseLinear(ParameterizedLinear):
    """``nn.Linear`` under the parameterization contract: ``weight`` is a Parameter."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_std: float = 0.02) -> None:
        super().__init__(in_features, out_features, bias)
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # N(0, 0.02^2) as in GPT-2 / nanoGPT: the reference scale every other parameterization matches per entry.
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def stored(self) -> int:
        return self.in_features * self.out_features

    def _load_dense_weight(self, weight: Tensor) -> None:
        self.weight.copy_(weight)


@register("dense")
class Dense(Parameterization):
    """The uncompressed baseline.

    Args:
        init_std: standard deviation of the N(0, init_std^2) weight init (> 0; GPT-2 uses 0.02).
    """

    def __init__(self, init_std: float = 0.02) -> None:
        self.init_std = check_std(init_std)

    def build(self, in_features: int, out_features: int, bias: bool = True) -> DenseLinear:
        return DenseLinear(in_features, out_features, bias, init_std=self.init_std)
