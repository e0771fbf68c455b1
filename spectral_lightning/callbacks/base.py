"""What the callbacks share: the TensorBoard logger and step to write at, the model of a module, and the
every-N-validations cadence (saved in checkpoints)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from spectral_lightning.errors import ConfigError, check_positive_int
from spectral_lightning.model import CausalLM


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoardLogger, or None."""
    return next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)


def log_step(trainer: L.Trainer) -> int:
    """The step Lightning's own logger uses for the metrics logged now (validation metrics after 500 steps are
    logged at step 499), so images, text and scalars written here line up with ``val/loss``."""
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def model_of(pl_module: L.LightningModule) -> CausalLM:
    model = getattr(pl_module, "model", None)
    if not isinstance(model, CausalLM):
        raise ConfigError(
            "this callback needs a LightningModule with a CausalLM in `.model` (SpectralLM); got "
            f"{type(pl_module).__name__}"
        )
    return model


class EveryNValidations(L.Callback):
    """A callback that acts at validations N, 2N, 3N, ... (sanity check excluded, rank 0 only).

    The count is saved in checkpoints (``{"validations": count}``), so a resumed run keeps the cadence.
    """

    def __init__(self, every_n_validations: int) -> None:
        super().__init__()
        option = f"{type(self).__name__}.every_n_validations"
        self.every_n_validations = check_positive_int(option, every_n_validations)
        self._validations = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations == 0 and trainer.is_global_zero:
            self.write(trainer, pl_module)

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write this callback's output at the current step (called on rank 0 only)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))
