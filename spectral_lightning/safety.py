"""Run safety: a checkpoint file is never half written, and a stopped run can always continue.

* :class:`AtomicCheckpointIO` writes every local checkpoint through a temporary file in its folder and a rename,
  so a crash mid-write never leaves a truncated ``last.ckpt``.
* :class:`SaveOnInterrupt` turns SIGINT (Ctrl-C) or SIGTERM during ``fit`` into ``last.ckpt`` at the next step
  boundary and a stop (exit status 130 / 143 from ``cli.py``); a second signal stops at once without saving.

``cli.py`` installs both on every run; both work with a plain ``Trainer`` too.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from spectral_lightning.errors import TrainingInterrupted
from spectral_lightning.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes each local checkpoint to a temporary file in the destination folder,
    fsyncs it and renames it into place, so the path holds either the old or the new checkpoint, never a
    partial one. (Lightning's own writer stages the file in the system temp folder and moves it, which is a
    plain copy when that folder is on another filesystem.) Remote paths (``s3://``, ...) use Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))
        return None


class SaveOnInterrupt(Callback):
    """Turns SIGINT (Ctrl-C) and SIGTERM during training into a checkpoint at a step boundary, then a stop.

    The first signal is only recorded. At the end of the current training step (after the optimizer and LR
    scheduler have stepped: the state an uninterrupted run has at that step) ``last.ckpt`` is written into the
    checkpoint folder and :class:`~spectral_lightning.errors.TrainingInterrupted` is raised, so
    ``fit --ckpt_path last`` continues exactly. A second signal stops at once without saving. Under DDP the
    ranks agree on the stop at the same step. ``cli.py`` adds this callback to every ``fit``.
    """

    SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        print(
            f"\nreceived {signal.Signals(signum).name}: saving a checkpoint after the current step "
            "(send it again to stop at once without saving)",
            file=sys.stderr,
            flush=True,
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self.received if self.received is not None else signal.SIGTERM
        path = None
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.dirpath is not None:
            path = os.path.join(ckpt.dirpath, f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}")
            trainer.save_checkpoint(path, weights_only=False)
        self._restore()
        raise TrainingInterrupted(signum, trainer.global_step, path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
