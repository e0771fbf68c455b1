"""The ``spectral-lightning`` command (and ``python -m spectral_lightning``): the command line of ``python cli.py``.

    spectral-lightning fit --config configs/dct4x.yaml
    spectral-lightning validate --config configs/dct4x.yaml --ckpt_path runs/dct4x/version_0/checkpoints/last.ckpt

``pip install -e .`` (or the README's ``pip install -r requirements.txt``) puts the command on the ``PATH``.
"""

from __future__ import annotations

from spectral_lightning.cli import cli_main


def main() -> None:
    """Run the CLI on ``sys.argv``.

    A console script hands its function's return value to ``sys.exit``, and ``cli_main`` returns the CLI object,
    which ``sys.exit`` would print and turn into exit status 1 after a successful run. This wrapper returns
    ``None`` (status 0); errors still leave through ``SystemExit`` with the CLI's own status (2 for bad input).
    """
    cli_main()


if __name__ == "__main__":
    main()
