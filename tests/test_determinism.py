"""The same seed gives bit-identical training on CPU; another seed does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers import make_text
from lightning.pytorch.callbacks import Callback

from spectral_lightning.cli import cli_main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter", "ignore:.*logging interval")


class LossRecorder(Callback):
    """Test-only: keeps every training loss (the exact float32 value the optimizer stepped on)."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses.append(outputs["loss"].detach().clone())


def train(folder: Path, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Ten steps of a tiny DCT model with dropout; returns the losses and the final weights."""
    cli = cli_main([
        "fit", f"--seed_everything={seed}", f"--data.path={folder / 'tiny.txt'}", "--data.block_size=16",
        "--data.batch_size=4", "--data.batches_per_epoch=4", "--data.val_fraction=0.03",
        "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32", "--model.dropout=0.1",
        "--model.parameterization=spectral_lightning.DCT", "--model.parameterization.init_args.selection=random",
        "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.max_steps=10",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={folder}",
        "--trainer.callbacks+=test_determinism.LossRecorder",
    ])  # fmt: skip
    (recorder,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, LossRecorder)]
    return torch.stack(recorder.losses), {k: v.clone() for k, v in cli.model.state_dict().items()}


def test_same_seed_gives_bit_identical_losses_and_weights(tmp_path: Path) -> None:
    (tmp_path / "tiny.txt").write_text(make_text(), encoding="utf-8")
    losses_a, weights_a = train(tmp_path, seed=3)
    losses_b, weights_b = train(tmp_path, seed=3)
    losses_c, _ = train(tmp_path, seed=4)

    assert losses_a.shape == (10,) and torch.isfinite(losses_a).all()
    assert torch.equal(losses_a, losses_b)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert not torch.equal(losses_a, losses_c)  # the seed matters, so equality above is not vacuous
