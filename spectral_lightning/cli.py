"""The LightningCLI behind ``cli.py``: links data to model and picks hardware defaults."""

from __future__ import annotations

import sys

import torch
from lightning.pytorch.cli import LightningCLI

from spectral_lightning.data import CharDataModule
from spectral_lightning.errors import ConfigError
from spectral_lightning.module import NonFiniteLossError, SpectralLM


def default_precision() -> str:
    """bf16 autocast on GPUs that support it, full float32 elsewhere (CPU, older GPUs)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class SpectralCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (LightningArgumentParser)
        # The vocabulary exists right after the DataModule's __init__; it travels into the model's hparams.
        parser.link_arguments("data.vocab", "model.vocab", apply_on="instantiate")
        parser.link_arguments("data.block_size", "model.block_size")
        parser.set_defaults({"trainer.precision": default_precision()})


def cli_main(args: list[str] | None = None, run: bool = True) -> SpectralCLI:
    """Entry point; ``args`` lets tests drive it (``cli_main(["fit", "--config", ...])``).

    Errors in the user's options, files or checkpoints (:class:`ConfigError`) are printed as one line and
    exit with status 2, like argument errors.
    """
    torch.set_float32_matmul_precision("high")
    try:
        return SpectralCLI(
            SpectralLM,
            CharDataModule,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
        )
    except (ConfigError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
