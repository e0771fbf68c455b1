"""A test-only callback for the DDP test: each rank records what it trained on and what it ended with.

Passed to ``cli.py`` (with ``tests/`` on ``PYTHONPATH``) as ``--trainer.callbacks+=helpers_ddp.RecordBatches
--trainer.callbacks.out_dir DIR``; every rank writes ``DIR/rank<r>.pt`` holding the batches it drew, its final
weight-defining parameters and the DDP settings in force.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import lightning as L
import torch
from torch import Tensor


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
        }
        folder = Path(self.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        torch.save(record, tmp)
        os.replace(tmp, folder / f"rank{trainer.global_rank}.pt")
