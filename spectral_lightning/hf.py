"""A ``transformers`` causal LM as a training architecture (``--model.architecture hf``).

The model is built with ``AutoModelForCausalLM.from_config`` from ``hf_config`` (random weights, nothing is
downloaded), its vocabulary size and context length set from the data, and then parameterized in place by
:func:`~spectral_lightning.convert.parameterize` (``init="fresh"``: the parameterization's own init). In YAML::

    model:
      architecture: hf
      hf_config:                       # a transformers config class and its options ...
        class_path: transformers.GPT2Config
        init_args: {n_layer: 4, n_head: 4, n_embd: 128}
      # hf_config: {model_type: llama, hidden_size: 128, ...}   # ... or a model_type and options
      parameterization: {class_path: spectral_lightning.DCT, init_args: {compression: 4}}
      parameterize: [transformer.h.*.attn.*, transformer.h.*.mlp.*]   # default: every linear but the head

``transformers`` is an optional dependency (``pip install spectral-lightning[hf]``); the built-in architectures
never import it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from spectral_lightning.convert import parameterize as parameterize_model
from spectral_lightning.errors import ConfigError
from spectral_lightning.model import CausalLM
from spectral_lightning.parameterizations import Parameterization, ParameterizedLinear

#: Config attributes that bound the context length, by the names different model families use.
_POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx")


@dataclass
class HFConfig:
    """Sizes of a ``transformers`` model as the training module sees them.

    Attributes:
        vocab_size: from the data (overrides the config's).
        block_size: context length; the config's position limits are set to it.
        hf_config: ``{"class_path": "transformers.GPT2Config", "init_args": {...}}`` or ``{"model_type": "gpt2",
            ...options}``.
    """

    vocab_size: int = 65
    block_size: int = 128
    hf_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = self.hf_config
        if not isinstance(spec, dict) or not ("class_path" in spec or "model_type" in spec):
            raise ConfigError(
                f"model.hf_config={self.hf_config!r} is not valid for model.architecture=hf: expected a mapping with "
                "class_path (e.g. transformers.GPT2Config) and init_args, or with model_type (e.g. gpt2) and options"
            )

    def transformers_config(self) -> Any:
        """The ``transformers`` config object, vocabulary and context length set from this config."""
        transformers = _transformers()
        spec = dict(self.hf_config)
        if "class_path" in spec:
            module, _, name = str(spec["class_path"]).rpartition(".")
            try:
                config_cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError):
                raise ConfigError(
                    f"model.hf_config.class_path={spec['class_path']!r} cannot be imported; expected a transformers "
                    "config class such as transformers.GPT2Config or transformers.LlamaConfig"
                ) from None
            config = config_cls(**dict(spec.get("init_args") or {}))
        else:
            try:
                config = transformers.AutoConfig.for_model(**spec)
            except ValueError as err:
                raise ConfigError(f"model.hf_config: {err}") from None
        config.vocab_size = self.vocab_size
        for name in _POSITION_FIELDS:
            if hasattr(config, name):
                setattr(config, name, self.block_size)
        return config


class HFCausalLM(CausalLM):
    """A ``transformers`` causal LM (in ``self.hf``) whose matched linears are parameterized.

    Args:
        config: the sizes and the ``transformers`` config.
        parameterization: how the matched linears store their weights.
        parameterize: fnmatch patterns over the ``transformers`` model's module names (``transformer.h.*.mlp.*``);
            None: every linear except the output head; ``[]``: none (the plain model, e.g. a dense export).
        batch_reconstruction: not supported for this architecture (each layer rebuilds its own weight).
    """

    def __init__(
        self,
        config: HFConfig,
        parameterization: Parameterization | None = None,
        parameterize: list[str] | None = None,
        batch_reconstruction: bool = False,
    ) -> None:
        super().__init__()
        if batch_reconstruction:
            raise ConfigError("model.batch_reconstruction is not supported with model.architecture=hf; set it false")
        self.config = config
        self.hf = _transformers().AutoModelForCausalLM.from_config(config.transformers_config())
        if parameterization is not None and parameterize != []:
            parameterize_model(self.hf, parameterization, parameterize, init="fresh")
        self.parameterized = [n for n, m in self.named_modules() if isinstance(m, ParameterizedLinear)]

    def _forward(self, idx: Tensor) -> Tensor:
        return self.hf(input_ids=idx, use_cache=False).logits  # (B, T) -> (B, T, V)


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError(
            "model.architecture=hf needs the transformers package: pip install 'spectral-lightning[hf]' "
            "(or pip install transformers)"
        ) from None
