"""What a training run prints: the run's progress in optimizer steps, and nothing from its dependencies.

The configs train for ``trainer.max_steps`` with ``max_epochs: -1`` (an epoch is only the validation interval,
``data.batches_per_epoch`` batches), so Lightning's own bar reads ``Epoch 0/-2 ... 37/500 ... v_num: 0.000``:
an epoch count with no end, a counter that restarts every 500 steps and the logger's version folder as if it
were a metric. :class:`StepProgressBar` shows what the run is measured in instead::

    step 1200/5000 ━━━━━━━━━━━━━╺━━━━━━━━━━━━━━━━━━━━ 0:05:12 • 0:13:48 3.84it/s train/loss: 1.731 val/loss: 1.802

with the time left for the whole run, not for the current epoch. :func:`drop_tips` is a :mod:`logging` filter
for the product tips Lightning logs on every run; ``cli_main`` installs it next to its warning filters.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import (
    BatchesProcessedColumn,
    CustomBarColumn,
    CustomTimeColumn,
    ProcessingSpeedColumn,
)
from rich.progress import TextColumn


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting the optimizer steps of the whole run: ``step N/max_steps``.

    One training bar runs from the step the run starts at (a resumed run starts at its checkpoint's step) to
    ``trainer.estimated_stepping_batches`` (``max_steps``, or what ``max_epochs`` amounts to); it is not reset
    at epoch boundaries, so its rate and time left are those of the whole run. With gradient accumulation it
    counts optimizer steps, not batches. Validation, test and predict bars are Lightning's. The metrics column
    shows what the module logs with ``prog_bar=True``, without the logger's version number (``v_num``).
    Options are :class:`~lightning.pytorch.callbacks.RichProgressBar`'s (``refresh_rate``, ``theme``, ...).
    """

    @property
    def train_description(self) -> str:
        return "step"

    def configure_columns(self, trainer: L.Trainer) -> list:
        """Lightning's columns with the count right after the description: ``step 1200/5000 ━━━ ...``."""
        return [
            TextColumn("[progress.description]{task.description}"),
            BatchesProcessedColumn(style=self.theme.batch_progress),
            CustomBarColumn(
                complete_style=self.theme.progress_bar,
                finished_style=self.theme.progress_bar_finished,
                pulse_style=self.theme.progress_bar_pulse,
            ),
            CustomTimeColumn(style=self.theme.time),
            ProcessingSpeedColumn(style=self.theme.processing_speed),
        ]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning starts a new bar for every epoch; this bar is made once and keeps counting.
        self._ensure_train_bar(trainer)
        self.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._ensure_train_bar(trainer)
        # Lightning's bar shows batch_idx + 1 (the batch within the epoch); this one shows the optimizer step.
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the run's version folder, already in the path it writes to
        return metrics

    def _ensure_train_bar(self, trainer: L.Trainer) -> None:
        if self.is_disabled or self.progress is None or self.train_progress_bar_id is not None:
            return
        total = trainer.estimated_stepping_batches  # max_steps, or max_epochs x batches per epoch / accumulation
        if total <= 0:  # an iterable dataset without max_steps: no known end (shown as --, a pulsing bar)
            total = math.inf
        style = self.theme.description
        description = f"[{style}]{self.train_description}" if style else self.train_description
        self.train_progress_bar_id = self.progress.add_task(description, total=total, completed=trainer.global_step)


def drop_tips(record: logging.LogRecord) -> bool:
    """:mod:`logging` filter that drops Lightning's product tips (``💡 Tip: ... try installing ...``), which it
    logs on every run that does not use its cloud services; every other record passes."""
    return not record.getMessage().startswith("💡 Tip:")
