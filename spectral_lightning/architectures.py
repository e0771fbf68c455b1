"""The architectures a run can train, built from the training module's plain options.

=============  =============================================================================================
``gpt``        :class:`~spectral_lightning.model.GPT`: the paper's character GPT (LayerNorm, learned positions,
               fused qkv, GELU MLP, biases). The default; every earlier config and checkpoint is this.
``llama``      :class:`~spectral_lightning.llama.Llama`: RMSNorm, rotary positions, SwiGLU MLP, no biases,
               optionally tied embeddings: the model family compressed-training papers report on.
``hf``         any ``transformers`` causal LM built with ``from_config`` (random weights, no download) from
               ``hf_config``, then parameterized by :func:`~spectral_lightning.convert.parameterize`.
=============  =============================================================================================

All three take ``parameterization`` and ``parameterize`` patterns the same way. The default patterns
(:data:`~spectral_lightning.model.BLOCK_LINEARS`, the four linears of a GPT block) stand for *the block linears
of the chosen architecture*: the seven of a LLaMA block, or every linear but the output head of a
``transformers`` model. Extra patterns given after them (``--model.parameterize+ lm_head``) are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from spectral_lightning.errors import ConfigError
from spectral_lightning.hf import HFCausalLM, HFConfig
from spectral_lightning.llama import LLAMA_LINEARS, Llama, LlamaConfig
from spectral_lightning.model import BLOCK_LINEARS, GPT, CausalLM, GPTConfig
from spectral_lightning.parameterizations import Dense, Parameterization, resolve
from spectral_lightning.tokenization import tokenizer_from_spec

ARCHITECTURES: dict[str, tuple[type[CausalLM], type]] = {
    "gpt": (GPT, GPTConfig),
    "llama": (Llama, LlamaConfig),
    "hf": (HFCausalLM, HFConfig),
}


def _architecture(hparams: Mapping[str, Any]) -> str:
    name = hparams.get("architecture") or "gpt"
    if name not in ARCHITECTURES:
        raise ConfigError(f"model.architecture={name!r} is not valid: expected one of {', '.join(ARCHITECTURES)}")
    return name


def model_config(hparams: Mapping[str, Any]) -> Any:
    """The config dataclass of the architecture that ``hparams`` (a training module's options) name; sizes it
    does not name keep the dataclass defaults, the vocabulary size comes from ``hparams["vocab"]``."""
    config_cls = ARCHITECTURES[_architecture(hparams)][1]
    sizes = {f.name: hparams[f.name] for f in dataclasses.fields(config_cls) if f.name in hparams}
    sizes["vocab_size"] = len(tokenizer_from_spec(hparams["vocab"]))
    return config_cls(**sizes)


def patterns_for(architecture: str, patterns: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """The module-name patterns to parameterize: the default block patterns become the architecture's own."""
    patterns = list(BLOCK_LINEARS if patterns is None else patterns)
    if architecture == "gpt" or patterns[: len(BLOCK_LINEARS)] != list(BLOCK_LINEARS):
        return patterns
    extra = patterns[len(BLOCK_LINEARS) :]
    if architecture == "llama":
        return [*LLAMA_LINEARS, *extra]
    return extra or None  # hf: None = every linear but the output head


def build_model(hparams: Mapping[str, Any], parameterization: Parameterization | str | dict | None = None) -> CausalLM:
    """A freshly initialized model as the training module builds it from its options.

    Args:
        hparams: the module's options (``vocab``, sizes, ``architecture``, ``parameterization``, ``parameterize``,
            ``batch_reconstruction``, ...).
        parameterization: overrides ``hparams["parameterization"]`` (e.g. an instance already resolved).
    """
    architecture = _architecture(hparams)
    chosen = resolve(parameterization if parameterization is not None else hparams.get("parameterization", "dense"))
    patterns = patterns_for(architecture, hparams.get("parameterize"))
    model_cls = ARCHITECTURES[architecture][0]
    return model_cls(model_config(hparams), chosen, patterns, bool(hparams.get("batch_reconstruction", False)))


def dense_model(architecture: str, config: Mapping[str, Any]) -> CausalLM:
    """The all-dense model of a dense export (``architecture`` and the fields of its config dataclass)."""
    model_cls, config_cls = ARCHITECTURES[_architecture({"architecture": architecture})]
    if architecture == "hf":
        return model_cls(config_cls(**config), Dense(), [])
    return model_cls(config_cls(**config), Dense())


def architecture_of(model: CausalLM) -> str:
    """The name of ``model``'s architecture (what a dense export records to rebuild it)."""
    for name, (model_cls, _) in ARCHITECTURES.items():
        if type(model) is model_cls:
            return name
    raise ConfigError(f"{type(model).__name__} is not one of the architectures {', '.join(ARCHITECTURES)}")
