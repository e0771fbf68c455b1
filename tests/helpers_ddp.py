"""Test-only callbacks for the DDP test: each rank records what it trained on and what it ended with, and one run
can mix parameterizations layer by layer.

Passed to ``cli.py`` (with ``tests/`` on ``PYTHONPATH``) as ``--trainer.callbacks+=helpers_ddp.RecordBatches
--trainer.callbacks.out_dir DIR``; every rank writes ``DIR/rank<r>.pt`` holding the batches it drew, its final
weight-defining parameters, the class of each linear and the DDP settings in force. Adding
``--trainer.callbacks+=helpers_ddp.Reparameterize --trainer.callbacks.layers '{"blocks.0.mlp.fc": "monarch"}'``
swaps single layers before DDP wraps the model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from spectral_lightning.parameterizations import resolve


class RecordBatches(L.Callback):
    """Records every training batch and, at the end of fit, the model's parameters, one file per rank.

    Args:
        out_dir: folder for ``rank<r>.pt`` (created if missing).
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.batches: list[Tensor] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Tensor, batch_idx: int
    ) -> None:
        self.batches.append(batch.detach().cpu().clone())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        strategy = trainer.strategy
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(strategy).__name__,
            "ddp_kwargs": dict(getattr(strategy, "_ddp_kwargs", {})),
            "batches": torch.stack(self.batches),
            "params": {k: v.detach().cpu().clone() for k, v in pl_module.model.named_parameters()},
            "global_step": trainer.global_step,
            "layers": {name: type(m).__name__ for name, m in pl_module.model.linears().items()},
        }
        folder = Path(self.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        torch.save(record, tmp)
        os.replace(tmp, folder / f"rank{trainer.global_rank}.pt")


class Reparameterize(L.Callback):
    """Replaces single layers of the model by other parameterizations in ``setup``, which Lightning calls before
    the strategy wraps the model in DDP and builds the optimizer: one two-rank run then covers several
    parameterizations side by side.

    Args:
        layers: module name (e.g. ``blocks.0.mlp.fc``) to anything ``parameterize`` accepts (a registered name or
            a ``{"class_path": ..., "init_args": {...}}`` dict); each new layer has the old one's shape and bias
            and starts from that parameterization's own init.
    """

    def __init__(self, layers: dict[str, Any]) -> None:
        self.layers = layers

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for name, spec in self.layers.items():
            old = pl_module.model.get_submodule(name)
            parent, _, child = name.rpartition(".")
            new = resolve(spec).build(old.in_features, old.out_features, old.bias is not None)
            setattr(pl_module.model.get_submodule(parent), child, new)
