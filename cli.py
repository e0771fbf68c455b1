"""Train, evaluate and sample spectral_lightning models: ``python cli.py fit --config configs/dct4x.yaml``."""

from spectral_lightning.cli import cli_main

if __name__ == "__main__":
    cli_main()
