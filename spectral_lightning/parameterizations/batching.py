"""Rebuilding the weights of many layers at once.

Layers with an equal :meth:`~spectral_lightning.parameterizations.ReconstructedLinear.batch_key` (every block of a GPT
has the same shapes) can rebuild their weights with one batched product per step. :func:`batch_groups` finds them
once, when the model is built; :func:`batched_weights` does the products around a forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from spectral_lightning.parameterizations.base import ReconstructedLinear, _without_autocast


def batch_groups(layers: Iterable[nn.Module]) -> list[list[ReconstructedLinear]]:
    """The layers that :func:`batched_weights` rebuilds together: two or more with an equal batch key."""
    groups: dict[tuple, list[ReconstructedLinear]] = {}
    for layer in layers:
        key = layer.batch_key() if isinstance(layer, ReconstructedLinear) else None
        if key is not None:
            groups.setdefault(key, []).append(layer)
    return [group for group in groups.values() if len(group) > 1]


@contextlib.contextmanager
def batched_weights(groups: Sequence[Sequence[ReconstructedLinear]], tokens: int | None = None) -> Iterator[None]:
    """Rebuild each group's weights with one batched product and let the layers use them inside the block.

    A model whose layers share shapes (every block of a GPT) then pays a few kernel launches per shape and
    step instead of a few per layer, which matters where a step is launch-bound (small models on a GPU). Only
    in eager training: with autograd off the per-layer cache already makes weights free, and under
    ``torch.compile`` the compiler fuses the per-layer products itself. ``tokens``: the input rows each layer
    will see in this forward (B·T in a transformer's blocks); layers that skip W for that many
    (:meth:`ReconstructedLinear.skips_weight`, e.g. a low-pass DCT layer on its transform path) are not rebuilt.
    """
    if not groups or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        yield
        return
    try:
        for group in groups:
            live = [layer for layer in group if tokens is None or not layer.skips_weight(tokens)]
            if not live:
                continue
            weights = _without_autocast(live[0], lambda g=live: type(g[0]).reconstruct_batch(g))
            for layer, w in zip(live, weights.unbind(0), strict=True):
                layer._batched = w
        yield
    finally:
        for group in groups:
            for layer in group:
                layer._batched = None
