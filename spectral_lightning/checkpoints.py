"""Every file a trained model lives in: read it, say what it is, check it against a model, rebuild a model.

Three kinds of file, each a single ``torch.save`` zip archive that loads with ``weights_only=True``:

=============  ==================================  ===================================================================
kind           written by                          holds
=============  ==================================  ===================================================================
``lightning``  ``fit`` (``last.ckpt``, best-k)     ``state_dict`` (keys ``model.*``), ``hyper_parameters``, optimizer,
                                                   loops, callbacks
``compressed`` ``export --format compressed``      ``format``, ``hparams``, ``parameterization``, ``vocab``, the
                                                   model's ``state_dict`` (coefficients/factors; bases are rebuilt)
``dense``      ``export --format dense``           ``format``, ``architecture`` (``gpt`` when absent), ``config`` (its
                                                   config dataclass), ``vocab``, the ``state_dict`` of the all-dense
                                                   model (materialized weights; ``nn.Linear`` names)
=============  ==================================  ===================================================================

:func:`read_checkpoint` is the one reader: every entry point that takes a file (``fit/validate/test/predict
--ckpt_path``, ``generate``, ``export``, ``model.init_from``) goes through it, so the same bad file gives the same
one-line :class:`~spectral_lightning.errors.ConfigError` everywhere. This module knows models and files, not the
LightningModule: ``module.py`` builds on it (``SpectralLM.load``, ``model.init_from``), ``export.py`` writes the
files it reads.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from spectral_lightning.architectures import architecture_of, build_model, dense_model, model_config
from spectral_lightning.convert import dense_weight, densify, linear_layers
from spectral_lightning.errors import ConfigError, first_line
from spectral_lightning.model import CausalLM
from spectral_lightning.parameterizations import ParameterizedLinear
from spectral_lightning.tokenization import Tokenizer, describe_spec, tokenizer_from_spec

DENSE_FORMAT = "spectral_lightning.dense/1"
COMPRESSED_FORMAT = "spectral_lightning.compressed/1"

Kind = Literal["lightning", "compressed", "dense"]
_FORMATS: dict[str, Kind] = {DENSE_FORMAT: "dense", COMPRESSED_FORMAT: "compressed"}
_CORRUPT = "the file is truncated, corrupt or not a checkpoint: use another one (e.g. an earlier .ckpt)"
#: Keys of a module's hyperparameters that Lightning/LightningCLI add for themselves (``_instantiator``, ...).
_PRIVATE_PREFIX = "_"


def read_checkpoint(path: str | Path, option: str = "--ckpt_path") -> Checkpoint:
    """Open any checkpoint kind (weights-only, tensors memory-mapped) and say which kind it is.

    Args:
        path: a Lightning ``.ckpt`` written by ``fit``, a compressed export or a dense export.
        option: the option the user gave ``path`` with, named in error messages (``--ckpt_path``,
            ``model.init_from``).

    Raises:
        ConfigError: the file is missing, truncated, damaged, holds objects that weights-only loading refuses,
            or is not one of the three kinds.
    """
    path = Path(path)
    where = f"{option} {path}"
    if not path.is_file():
        raise ConfigError(
            f"{where} does not exist (or is not a file); expected a checkpoint written by fit (e.g. "
            "runs/<name>/version_0/checkpoints/last.ckpt; fit also takes 'last') or an export"
        )
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no central directory
        raise ConfigError(f"{where} is not a complete checkpoint archive; {_CORRUPT}")
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"{where} holds objects that safe (weights-only) loading refuses ({first_line(err)}); use a "
            "checkpoint written by this project's fit or export"
        ) from None
    except Exception as err:  # noqa: BLE001 (torch raises RuntimeError, EOFError, ... for damaged files)
        raise ConfigError(f"{where} cannot be read: {first_line(err)}; {_CORRUPT}") from None
    if isinstance(contents, dict) and contents.get("format") in _FORMATS:
        return Checkpoint(path, _FORMATS[contents["format"]], contents, option)
    if isinstance(contents, dict) and isinstance(contents.get("state_dict"), dict):
        if not isinstance(contents.get("hyper_parameters"), dict) or "vocab" not in contents["hyper_parameters"]:
            raise ConfigError(
                f"{where} is a Lightning checkpoint of another model (its hyperparameters have no vocab); "
                "expected one written by this project's fit"
            )
        return Checkpoint(path, "lightning", contents, option)
    raise ConfigError(
        f"{where} is neither a Lightning checkpoint nor an export of this project (expected a .ckpt, or a file "
        f"with format {COMPRESSED_FORMAT!r} or {DENSE_FORMAT!r}); {_CORRUPT}"
    )


@dataclass(frozen=True)
class Checkpoint:
    """A file read by :func:`read_checkpoint`: its path, its kind and its contents (tensors memory-mapped)."""

    path: Path
    kind: Kind
    contents: dict[str, Any]
    option: str = "--ckpt_path"

    @property
    def where(self) -> str:
        """How error messages name the file: the option it was given with and its path."""
        return f"{self.option} {self.path}"

    @property
    def vocab(self) -> str:
        if self.kind == "lightning":
            return self.contents["hyper_parameters"]["vocab"]
        return self.contents["vocab"]

    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_spec(self.vocab)

    def hparams(self) -> dict[str, Any]:
        """The :class:`~spectral_lightning.module.SpectralLM` options the file was written with (plain values;
        Lightning's own ``_``-prefixed entries left out).

        Raises:
            ConfigError: for a dense export, which keeps the sizes but not the parameterization.
        """
        if self.kind == "dense":
            raise ConfigError(
                f"{self.where} is a dense export: it holds no parameterization to rebuild the training module "
                "from; give the training checkpoint (.ckpt) or a compressed export, or read its weights with "
                "spectral_lightning.checkpoints.load_model()"
            )
        saved = self.contents["hyper_parameters" if self.kind == "lightning" else "hparams"]
        return {k: v for k, v in saved.items() if not k.startswith(_PRIVATE_PREFIX)}

    def config(self) -> Any:
        """The sizes of the model in the file (the config dataclass of its architecture)."""
        if self.kind == "dense":
            return dense_model(self.architecture, self.contents["config"]).config
        return model_config(self.hparams())

    @property
    def architecture(self) -> str:
        """``gpt``, ``llama`` or ``hf`` (files written before there was a choice hold a ``gpt``)."""
        if self.kind == "dense":
            return self.contents.get("architecture", "gpt")
        return self.hparams().get("architecture", "gpt")

    def model_state_dict(self) -> dict[str, Tensor]:
        """The state dict of the file's model (the ``model.`` prefix of a Lightning checkpoint removed)."""
        state = self.contents["state_dict"]
        if self.kind == "lightning":
            return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        return dict(state)

    def build_model(self, map_location: str | torch.device = "cpu") -> CausalLM:
        """The model the file holds, its weights loaded, in eval mode: the file's parameterization, or every
        linear dense for a dense export."""
        if self.kind == "dense":
            model = dense_model(self.architecture, self.contents["config"])
        else:
            model = build_model(self.hparams())
        try:
            model.load_state_dict(self.model_state_dict())
        except RuntimeError as err:
            raise ConfigError(f"{self.where} does not match its own options: {first_line(err)}") from None
        return model.to(map_location).eval()

    # -- checks against the model of a run (before anything is written) -------------------------------------
    def check_vocab(self, vocab: str) -> None:
        """Raise unless the file was trained on ``vocab`` (the vocabulary of the run that reads it)."""
        check_vocab(self.vocab, vocab, self.where, f"or drop {self.option}")

    def check_state_dict(self, expected: Mapping[str, Tensor]) -> None:
        """Raise unless a Lightning checkpoint's ``state_dict`` has exactly the keys and shapes of ``expected``
        (a module's ``state_dict()``): the check before resuming from it."""
        self.require_lightning()
        saved = self.contents["state_dict"]
        problems = [f"{k} is missing" for k in expected if k not in saved]
        problems += [f"{k} is not in this model" for k in saved if k not in expected]
        # A layer whose support moves saves its positions; under a global budget its K (the length of coef and
        # positions) differs from a freshly built layer's, and loading takes the saved size.
        moving = {k.removesuffix("positions") for k in expected if k.endswith(".positions") and k in saved}
        problems += [
            f"{k} has shape {tuple(saved[k].shape)}, this model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in saved and tuple(saved[k].shape) != tuple(v.shape) and k.rpartition(".")[0] + "." not in moving
        ]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ConfigError(
                f"{self.where} does not fit this model: {'; '.join(problems[:3])}{more}; use the model options of "
                "the run that wrote it (its hparams.yaml / config.yaml)"
            )

    def require_lightning(self) -> Checkpoint:
        """Raise unless this is a Lightning checkpoint (what ``fit/validate/test/predict --ckpt_path`` restore)."""
        if self.kind != "lightning":
            raise ConfigError(
                f"{self.where} is a {self.kind} export, not a Lightning checkpoint: resuming needs the .ckpt written "
                "by fit; to start a new run from an export's weights use --model.init_from"
            )
        return self

    def check_sizes(self, config: Any) -> None:
        """Raise unless the file's model has the sizes of ``config`` (dropout aside): the check before
        initializing a model of any parameterization from it."""
        source, target = dataclasses.asdict(self.config()), dataclasses.asdict(config)
        differ = [f"{k}: {source[k]} vs {target[k]}" for k in target if k != "dropout" and source[k] != target[k]]
        if differ:
            raise ConfigError(
                f"{self.where} has other sizes than this model (file vs model: {'; '.join(differ)}); set the "
                "model options to the file's"
            )


def check_vocab(saved: str, vocab: str, where: str, remedy: str) -> None:
    """The one tokenizer check: raise unless a file trained on ``saved`` fits a run whose data has ``vocab`` (both
    tokenizer specs: the characters, or a BPE's tokenizer.json)."""
    if saved != vocab:
        raise ConfigError(
            f"{where} was trained on {describe_spec(saved)}, but this run's data has {describe_spec(vocab)}; use the "
            f"text (and tokenizer) it was trained on (--data.path), {remedy}"
        )


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[CausalLM, Tokenizer]:
    """The model (eval mode) and tokenizer of any file kind: Lightning ``.ckpt``, compressed or dense export."""
    ckpt = read_checkpoint(path)
    return ckpt.build_model(map_location), ckpt.tokenizer()


# -- conversions -------------------------------------------------------------------------------------------
@torch.no_grad()
def dense_state_dict(model: CausalLM) -> dict[str, Tensor]:
    """The state dict of the all-dense version of ``model``: every parameterized linear materialized into a plain
    ``nn.Linear`` (``transformers``' ``Conv1D`` where it replaced one), everything else as it is. Its keys are
    those of the architecture built with every linear dense; every tensor is a compact CPU copy."""
    dtype = next(model.parameters()).dtype
    state = densify(copy.deepcopy(model)).to(dtype).state_dict()
    with torch.device("meta"):  # the key order of the all-dense model, without allocating it
        reference = dense_model(architecture_of(model), dataclasses.asdict(model.config)).state_dict()
    return {k: state[k].detach().to("cpu", copy=True).contiguous() for k in reference}


@torch.no_grad()
def transfer_weights(source: CausalLM, target: CausalLM) -> None:
    """Initialize ``target`` from ``source``: the same architecture and sizes, any parameterization on either side.

    Every linear of ``target`` gets the source's materialized weight at the same module name: a parameterized
    layer through ``load_dense_(W, b)`` (a DCT layer keeps the projection of W onto its selected coefficients, a
    low-rank layer its truncated SVD, a dense layer W itself), a plain ``nn.Linear`` or ``Conv1D`` by copy;
    embeddings, norms and everything else are copied.
    """
    src_linears, dst_linears = linear_layers(source), linear_layers(target)
    for name, layer in dst_linears.items():
        src = src_linears[name]
        weight, bias = dense_weight(src), src.bias
        device = next(layer.parameters()).device
        weight, bias = weight.detach().to(device), None if bias is None else bias.detach().to(device)
        if isinstance(layer, ParameterizedLinear):
            layer.load_dense_(weight, bias)
        else:
            layer.weight.copy_(weight if isinstance(layer, nn.Linear) else weight.t())  # Conv1D: (in, out)
            if layer.bias is not None and bias is not None:
                layer.bias.copy_(bias)
    merged = target.state_dict()
    for key, value in source.state_dict().items():
        if key.rpartition(".")[0] not in src_linears:
            merged[key] = value
    target.load_state_dict(merged)
