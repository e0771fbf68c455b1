"""Write a trained model as a file of its own: the dense export and the compressed export.

Two export formats, both single ``torch.save`` files of plain values (they load with ``weights_only=True``);
:mod:`spectral_lightning.checkpoints` reads them back (with Lightning checkpoints, through the same reader):

* **dense** (``format: spectral_lightning.dense/1``): ``state_dict`` with every linear as an ordinary
  ``nn.Linear`` ``weight``/``bias`` (the materialized W; ``Conv1D`` where a ``transformers`` model had one), plus
  ``architecture``, ``config`` (the fields of its config dataclass) and ``vocab``. For ``gpt`` its keys load into
  ``GPT(GPTConfig(**config), Dense())``; ``checkpoints.load_model`` rebuilds any architecture. It runs at dense
  speed and gives the trained model's logits exactly.
* **compressed** (``format: spectral_lightning.compressed/1``): the model's own ``state_dict`` (coefficients,
  factors or weights, biases, norms, embeddings: the bases are rebuilt from shape and seed, so they are not
  in it), the parameterization as ``class_path`` + ``init_args``, the model's hyperparameters and ``vocab``; no
  optimizer state. ``SpectralLM.load`` rebuilds the module bit for bit.

Command line (sizes are printed in bytes and as a fraction of the dense export)::

    python -m spectral_lightning.export --ckpt_path runs/dct4x/version_0/checkpoints/last.ckpt \\
        --format compressed --output dct4x.pt

Conversion between parameterizations is not an export: ``--model.init_from`` (``SpectralLM.initialize_from``)
initializes a new model of any parameterization from any of these files.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from spectral_lightning.architectures import architecture_of
from spectral_lightning.checkpoints import COMPRESSED_FORMAT, DENSE_FORMAT, dense_state_dict, load_model
from spectral_lightning.errors import ConfigError, exit_on_user_error
from spectral_lightning.files import atomic_write_bytes
from spectral_lightning.model import CausalLM
from spectral_lightning.module import SpectralLM


def to_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory (the size of the file it would write)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_atomic(obj: Any, path: str | Path) -> int:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace``; returns the size in bytes."""
    data = to_bytes(obj)
    try:
        atomic_write_bytes(Path(path), data)
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}; choose another --output") from None
    return len(data)


def dense_export(model: CausalLM, vocab: str) -> dict[str, Any]:
    """The dense export dict (see the module docstring) of ``model`` with vocabulary ``vocab``."""
    return {
        "format": DENSE_FORMAT,
        "architecture": architecture_of(model),
        "config": dataclasses.asdict(model.config),
        "vocab": vocab,
        "state_dict": dense_state_dict(model),
    }


def compressed_export(module: SpectralLM) -> dict[str, Any]:
    """The compressed export dict: the model state dict (no bases, no optimizer), parameterization, hparams, vocab."""
    spec = module.parameterization.spec()
    hparams = {k: _plain(v) for k, v in module.hparams.items() if not k.startswith("_")}
    hparams["parameterization"] = spec
    hparams.pop("init_from", None)  # the weights are in the file; the source is not needed again
    return {
        "format": COMPRESSED_FORMAT,
        "parameterization": spec,
        "hparams": hparams,
        "vocab": module.hparams.vocab,
        "state_dict": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.model.state_dict().items()},
    }


def _plain(value: Any) -> Any:
    """A hyperparameter value as plain Python containers (so the export loads with ``weights_only=True``)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in dict(value.items()).items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "__dict__"):  # e.g. a jsonargparse Namespace
        return _plain(vars(value))
    raise ConfigError(f"hyperparameter value {value!r} of type {type(value).__name__} cannot be exported")


# -- command -----------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    """What :func:`export` wrote: the file, its size and the size of the dense export for comparison."""

    path: Path
    bytes: int
    dense_bytes: int
    checkpoint_bytes: int


def export(ckpt_path: str | Path, format: Literal["dense", "compressed"], output: str | Path) -> ExportResult:
    """Write the dense or compressed export of a checkpoint to ``output`` (atomically).

    Args:
        ckpt_path: a Lightning checkpoint of SpectralLM (``.ckpt``) or a compressed export (for ``dense``, also
            a dense export).
        format: ``dense`` (plain ``nn.Linear`` weights; loads without spectral code) or ``compressed``
            (trainable values only, with the parameterization's options and the vocabulary).
        output: file to write (its folder is created).
    """
    if format not in ("dense", "compressed"):
        raise ConfigError(f"format={format!r} is not valid: expected 'dense' or 'compressed'")
    if format == "compressed":
        module = SpectralLM.load(ckpt_path)
        model, vocab = module.model, module.hparams.vocab
    else:
        model, tokenizer = load_model(ckpt_path)
        vocab = tokenizer.spec
    dense = dense_export(model, vocab)
    dense_bytes = len(to_bytes(dense))
    obj = dense if format == "dense" else compressed_export(module)
    written = save_atomic(obj, output)
    return ExportResult(Path(output), written, dense_bytes, Path(ckpt_path).stat().st_size)


def export_command(
    ckpt_path: str,
    format: Literal["dense", "compressed"] = "compressed",
    output: str = "model.pt",
) -> None:
    """Export a trained checkpoint as plain dense weights or as its compressed trainable values.

    Prints the size of the written file in bytes and as a fraction of the dense export.

    Args:
        ckpt_path: a Lightning checkpoint of SpectralLM (e.g. runs/dct4x/version_0/checkpoints/last.ckpt) or
            a compressed export (for the dense format, a dense export too).
        format: dense: every linear as an ordinary nn.Linear weight/bias, plus config and vocab (load with
            spectral_lightning.checkpoints.load_model, or for gpt GPT(GPTConfig(**config), Dense())); compressed:
            the trainable values only (coefficients/factors, biases, norms, embeddings), the parameterization's
            class_path and options, the hyperparameters and vocab (load with SpectralLM.load).
        output: path of the file to write; written through a temporary file, then renamed into place.
    """
    result = export(ckpt_path, format, output)
    print(
        f"wrote {format} export {result.path}: {result.bytes:,} bytes "
        f"({result.bytes / result.dense_bytes:.1%} of the dense export, {result.dense_bytes:,} bytes; "
        f"source checkpoint {result.checkpoint_bytes:,} bytes)"
    )


def main(args: list[str] | None = None) -> None:
    """``python -m spectral_lightning.export --ckpt_path X --format dense|compressed --output Y``.

    User errors (missing file, wrong kind of file, unwritable output) print one line and exit with status 2.
    """
    from jsonargparse import auto_cli

    with exit_on_user_error():
        auto_cli(export_command, args=args, as_positional=False)


if __name__ == "__main__":
    main()
