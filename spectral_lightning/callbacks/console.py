"""Console callbacks: training throughput in the progress bar and the parameter table at fit start."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from rich.console import Console
from torch import Tensor

from spectral_lightning.analysis import (
    markdown_table,
    parameter_report,
    parameter_table,
    rich_table,
)
from spectral_lightning.callbacks.base import log_step, model_of, tensorboard_logger
from spectral_lightning.errors import check_positive_int


class ThroughputMonitor(L.Callback):
    """Log training throughput as ``train/tokens_per_sec`` (progress bar and logger).

    Tokens are counted from batch shapes (no device sync) and timed over ``interval`` training batches; on GPU
    the device is synchronized once per interval so the time covers the queued work. The interval restarts
    after each validation, so evaluation time is not charged to training. The value is the total over all
    devices (per-device rate × world size).

    Args:
        interval: training batches per measurement (≥ 1); each measurement is logged once and stays in the bar.
        prog_bar: also show it in the progress bar.
    """

    def __init__(self, interval: int = 20, prog_bar: bool = True) -> None:
        super().__init__()
        self.interval = check_positive_int("ThroughputMonitor.interval", interval)
        self.prog_bar = prog_bar
        self._start: float | None = None
        self._tokens = 0
        self._steps = 0

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            self._start, self._tokens, self._steps = self._now(pl_module), 0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Next-token prediction on (B, T + 1) windows trains on B·T tokens.
        self._tokens += batch.shape[0] * (batch.shape[1] - 1) if isinstance(batch, Tensor) else 0
        self._steps += 1
        if self._steps < self.interval or self._start is None:
            return
        now = self._now(pl_module)
        rate = self._tokens * trainer.world_size / max(now - self._start, 1e-9)
        self._start, self._tokens, self._steps = now, 0, 0
        # Once per interval: the progress bar keeps the last value; loggers get it at this step directly
        # (pl_module.log would drop it unless the step happened to be a log_every_n_steps step).
        if self.prog_bar:
            pl_module.log("train/tokens_per_sec", rate, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"train/tokens_per_sec": rate}, log_step(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = None  # restart the interval at the next training batch


class ParameterTable(L.Callback):
    """At fit start, print a rich table of every parameterized linear and the model totals (rank 0 only).

    Columns: layer name, weight shape m×n, parameterization, stored values, dense values (m·n), ratio. Footer
    rows: the parameterized linears' sum, and the whole model's parameters against the dense model of the same
    shape (embeddings, norms, biases and the LM head included).

    Args:
        log_text: also write the table as Markdown to TensorBoard text (``model/parameters``).
        width: console width in characters (None: the terminal's width, or 120 when writing to a file).
    """

    def __init__(self, log_text: bool = True, width: int | None = None) -> None:
        super().__init__()
        self.log_text = log_text
        self.width = width

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        table = parameter_table(*parameter_report(model_of(pl_module)))
        console = Console(width=self.width)
        if self.width is None and not console.is_terminal:
            console = Console(width=120)  # logs and pipes: wide enough that no layer name is cut
        console.print(rich_table(table))
        tb = tensorboard_logger(trainer)
        if self.log_text and tb is not None:
            tb.experiment.add_text("model/parameters", markdown_table(table), log_step(trainer))
