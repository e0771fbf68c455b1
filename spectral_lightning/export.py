"""After training: dense export, compressed export, and initializing any strategy from a trained model.

Two export formats, both single ``torch.save`` files of plain values (they load with ``weights_only=True``):

* **dense** (``format: spectral_lightning.dense/1``): ``state_dict`` with every linear as an ordinary
  ``nn.Linear`` ``weight``/``bias`` (the materialized W), plus ``config`` (the :class:`GPTConfig` fields) and
  ``vocab``. Its keys load into ``GPT(GPTConfig(**config), Dense())``; :func:`load_dense_export` does that.
  It runs at dense speed and gives the trained model's logits exactly.
* **compressed** (``format: spectral_lightning.compressed/1``): the model's own ``state_dict`` (coefficients,
  factors or weights, biases, norms, embeddings: the bases are rebuilt from shape and seed, so they are not
  in it), the strategy as ``class_path`` + ``init_args``, the model's hyperparameters and ``vocab``; no
  optimizer state. :func:`load_compressed_export` rebuilds the :class:`SpectralLM` bit for bit.

Command line (sizes are printed in bytes and as a fraction of the dense export)::

    python -m spectral_lightning.export --ckpt_path runs/dct4x/version_0/checkpoints/last.ckpt \\
        --format compressed --output dct4x.pt

Conversion (``SpectralLM(init_from=...)``, i.e. ``--model.init_from`` on the command line) uses
:func:`init_from_checkpoint`: each linear of the new model is set by ``load_dense_`` from the source's
materialized weight (DCT: projection onto the selected coefficients; low-rank: truncated SVD).
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from spectral_lightning.data import CharTokenizer, atomic_write_bytes
from spectral_lightning.errors import ConfigError, exit_on_user_error
from spectral_lightning.model import GPT, GPTConfig
from spectral_lightning.module import SpectralLM
from spectral_lightning.parameterizations import Dense, Parameterization

DENSE_FORMAT = "spectral_lightning.dense/1"
COMPRESSED_FORMAT = "spectral_lightning.compressed/1"


# -- files -------------------------------------------------------------------------------------------------
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


def _read(path: str | Path) -> dict[str, Any] | None:
    """The file's top-level dict when it holds only plain values, ``None`` when it needs full unpickling
    (a Lightning checkpoint whose hyperparameters hold objects)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist (or is not a file): expected a .ckpt or an export")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConfigError(f"checkpoint {path} is not a readable PyTorch file ({err.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"checkpoint {path} holds a {type(obj).__name__}, not a checkpoint or export dict")
    return obj


def _kind(path: str | Path, obj: dict[str, Any] | None) -> str:
    if obj is None or ("state_dict" in obj and "hyper_parameters" in obj):
        return "lightning"
    if obj.get("format") in (DENSE_FORMAT, COMPRESSED_FORMAT):
        return obj["format"]
    raise ConfigError(
        f"{path} is neither a Lightning checkpoint of SpectralLM nor an export of this project "
        f"(format {obj.get('format')!r}; expected {DENSE_FORMAT!r} or {COMPRESSED_FORMAT!r})"
    )


def load_module(path: str | Path, map_location: str | torch.device = "cpu") -> SpectralLM:
    """A :class:`SpectralLM` from a Lightning checkpoint or a compressed export (in eval mode)."""
    obj = _read(path)
    kind = _kind(path, obj)
    if kind == "lightning":
        module = SpectralLM.load_from_checkpoint(str(path), map_location=map_location)
    elif kind == COMPRESSED_FORMAT:
        module = _compressed_to_module(obj, path).to(map_location)
    else:
        raise ConfigError(
            f"{path} is a dense export: it holds no parameterization to rebuild a SpectralLM from; give the "
            "training checkpoint (.ckpt) or a compressed export instead, or load it with load_dense_export()"
        )
    return module.eval()


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPT, CharTokenizer]:
    """The :class:`GPT` and tokenizer of any checkpoint kind: Lightning ``.ckpt``, compressed or dense export."""
    obj = _read(path)
    if _kind(path, obj) == DENSE_FORMAT:
        model, tokenizer = _dense_to_model(obj, path)
        return model.to(map_location), tokenizer
    module = load_module(path, map_location)
    return module.model, module.tokenizer


# -- dense export ------------------------------------------------------------------------------------------
@torch.no_grad()
def dense_state_dict(model: GPT) -> dict[str, Tensor]:
    """The state dict of ``GPT(model.config, Dense())`` holding ``model``'s weights, linears materialized.

    Every tensor is a compact CPU copy; the keys are exactly those of the dense model, in its order.
    """
    with torch.device("meta"):
        reference = GPT(model.config, Dense())
    linears = model.linears()
    dtype = model.wte.weight.dtype
    own = model.state_dict()
    state: dict[str, Tensor] = {}
    for key in reference.state_dict():
        owner, _, leaf = key.rpartition(".")
        if owner in linears:
            layer = linears[owner]
            value = layer.weight.detach().to(dtype) if leaf == "weight" else layer.bias.detach()
        elif key in own:
            value = own[key]
        else:  # a layout change nobody mirrored here
            raise RuntimeError(f"dense export: no source for {key}")
        state[key] = value.detach().to("cpu", copy=True).contiguous()
    return state


def dense_export(model: GPT, vocab: str) -> dict[str, Any]:
    """The dense export dict (see the module docstring) of ``model`` with vocabulary ``vocab``."""
    return {
        "format": DENSE_FORMAT,
        "config": dataclasses.asdict(model.config),
        "vocab": vocab,
        "state_dict": dense_state_dict(model),
    }


def _dense_to_model(obj: dict[str, Any], path: str | Path) -> tuple[GPT, CharTokenizer]:
    model = GPT(GPTConfig(**obj["config"]), Dense())
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as err:
        raise ConfigError(f"dense export {path} does not match its config: {err}") from None
    return model.eval(), CharTokenizer(obj["vocab"])


def load_dense_export(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPT, CharTokenizer]:
    """Rebuild a dense export as ``GPT(config, Dense())`` (every linear an ``nn.Linear``-style weight/bias).

    Plain PyTorch can read the file too: ``torch.load(path, weights_only=True)`` gives ``config``, ``vocab``
    and a ``state_dict`` whose keys are the usual ``wte.weight``, ``blocks.0.attn.qkv.weight``, ...
    """
    obj = _read(path)
    if obj is None or obj.get("format") != DENSE_FORMAT:
        raise ConfigError(f"{path} is not a dense export (expected format {DENSE_FORMAT!r})")
    model, tokenizer = _dense_to_model(obj, path)
    return model.to(map_location), tokenizer


# -- compressed export -------------------------------------------------------------------------------------
def strategy_spec(strategy: Parameterization) -> dict[str, Any]:
    """``{"class_path": ..., "init_args": {...}}`` of a strategy (what YAML and ``resolve`` accept)."""
    cls = type(strategy)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(strategy.options())}


def _plain(value: Any) -> Any:
    """Hyperparameter values as plain Python containers (so the export loads with ``weights_only=True``)."""
    if isinstance(value, Parameterization):
        return strategy_spec(value)
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in dict(value.items()).items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "__dict__"):  # e.g. a jsonargparse Namespace
        return _plain(vars(value))
    raise ConfigError(f"hyperparameter value {value!r} of type {type(value).__name__} cannot be exported")


def compressed_export(module: SpectralLM) -> dict[str, Any]:
    """The compressed export dict: the model state dict (no bases, no optimizer), strategy, hparams, vocab."""
    hparams = _plain(dict(module.hparams))
    hparams["parameterization"] = strategy_spec(module.strategy)
    hparams.pop("init_from", None)  # the weights are in the file; the source is not needed again
    return {
        "format": COMPRESSED_FORMAT,
        "strategy": strategy_spec(module.strategy),
        "hparams": hparams,
        "vocab": module.hparams.vocab,
        "state_dict": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.model.state_dict().items()},
    }


def _compressed_to_module(obj: dict[str, Any], path: str | Path) -> SpectralLM:
    module = SpectralLM(**obj["hparams"])
    try:
        module.model.load_state_dict(obj["state_dict"])
    except RuntimeError as err:
        raise ConfigError(f"compressed export {path} does not match its hyperparameters: {err}") from None
    return module.eval()


def load_compressed_export(path: str | Path, map_location: str | torch.device = "cpu") -> SpectralLM:
    """Rebuild the :class:`SpectralLM` of a compressed export (same strategy, same weights, eval mode)."""
    obj = _read(path)
    if obj is None or obj.get("format") != COMPRESSED_FORMAT:
        raise ConfigError(f"{path} is not a compressed export (expected format {COMPRESSED_FORMAT!r})")
    return _compressed_to_module(obj, path).to(map_location)


# -- conversion --------------------------------------------------------------------------------------------
@torch.no_grad()
def init_from_checkpoint(module: SpectralLM, path: str | Path) -> None:
    """Initialize ``module``'s weights from a trained checkpoint or export of any strategy.

    Every linear gets ``load_dense_(W, b)`` with the source's materialized W (a DCT layer keeps the
    projection of W onto its selected coefficients, a low-rank layer its truncated SVD, a dense layer W
    itself); embeddings and norms are copied.

    Args:
        module: the model to initialize (any strategy).
        path: a Lightning ``.ckpt`` of SpectralLM, a compressed export or a dense export.

    Raises:
        ConfigError: the file is missing or unreadable, or its vocabulary or sizes differ from ``module``'s.
    """
    source, tokenizer = load_model(path)
    target = module.model
    if tokenizer.vocab != module.hparams.vocab:
        raise ConfigError(
            f"model.init_from={str(path)!r} was trained on a vocabulary of {len(tokenizer)} characters "
            f"({tokenizer.vocab!r}), but this model's is {len(module.hparams.vocab)} ({module.hparams.vocab!r}); "
            "use the data the source was trained on"
        )
    src_cfg, dst_cfg = dataclasses.asdict(source.config), dataclasses.asdict(target.config)
    differ = [f"{k}: {src_cfg[k]} vs {dst_cfg[k]}" for k in dst_cfg if k != "dropout" and src_cfg[k] != dst_cfg[k]]
    if differ:
        raise ConfigError(
            f"model.init_from={str(path)!r} has other sizes than this model (source vs model: {'; '.join(differ)}); "
            "set the model options to the source's"
        )
    src_linears, dst_linears = source.linears(), target.linears()
    for name, layer in dst_linears.items():
        src = src_linears[name]
        device = next(layer.parameters()).device
        bias = None if src.bias is None else src.bias.detach().to(device)
        layer.load_dense_(src.weight.detach().to(device), bias)
    merged = target.state_dict()
    for key, value in source.state_dict().items():
        if key.rpartition(".")[0] not in src_linears:
            merged[key] = value
    target.load_state_dict(merged)


def apply_init_from(module: SpectralLM) -> None:
    """Run :func:`init_from_checkpoint` for ``module.hparams.init_from`` once per module (later
    ``configure_model`` calls of the same module, e.g. ``validate`` after ``fit``, keep the trained weights)."""
    path = module.hparams.get("init_from")
    if not path or getattr(module, "_init_from_done", None) == path:
        return
    init_from_checkpoint(module, path)
    module._init_from_done = path


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
        ckpt_path: a Lightning checkpoint of SpectralLM (``.ckpt``) or a compressed export.
        format: ``dense`` (plain ``nn.Linear`` weights; loads without spectral code) or ``compressed``
            (trainable values only, with the strategy options and the vocabulary).
        output: file to write (its folder is created).
    """
    if format not in ("dense", "compressed"):
        raise ConfigError(f"format={format!r} is not valid: expected 'dense' or 'compressed'")
    module = load_module(ckpt_path)
    dense = dense_export(module.model, module.hparams.vocab)
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
            a compressed export.
        format: dense: every linear as an ordinary nn.Linear weight/bias, plus config and vocab (load with
            spectral_lightning.export.load_dense_export, or GPT(GPTConfig(**config), Dense())); compressed:
            the trainable values only (coefficients/factors, biases, norms, embeddings), the strategy's
            class_path and options, the hyperparameters and vocab (load with load_compressed_export).
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
