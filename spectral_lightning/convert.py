"""Bring your own model: store the linear weights of any PyTorch model in a parameterization, and back.

The project's GPT builds its parameterized linears itself; any other model (a ``transformers`` GPT-2 or
Llama, a litgpt model, an ``nn.Sequential`` of your own) is converted after it is built:

============================  ================================================================================
function                      does
============================  ================================================================================
:func:`parameterize`          replaces, in place, the ``nn.Linear`` layers whose qualified names match fnmatch
                              patterns (and ``transformers``' ``Conv1D``, whose weight is stored transposed) by
                              the layers a parameterization builds for their shapes
:func:`densify`               turns every parameterized layer back into ``nn.Linear`` (or ``Conv1D``) with
                              identical outputs, so the model saves and loads with its own library again
:func:`parameterized_names`   the qualified names of the parameterized layers (for tables and dashboards)
============================  ================================================================================

A typical round trip::

    model = GPT2LMHeadModel(GPT2Config())                         # or from_pretrained(...)
    parameterize(model, {"class_path": "dct", "init_args": {"compression": 4}})
    ...                                                           # train: coefficients instead of weights
    densify(model).save_pretrained("out")                         # a plain GPT-2 checkpoint again

Rules, each checked before anything is replaced (a call that fails, here or while building a layer, leaves
the model as it was):

* ``patterns`` are fnmatch patterns over module names (``"*.attn.*"``, ``"transformer.h.*.mlp.c_fc"``); the
  default (``None``) is every linear except the output head (the module ``model.get_output_embeddings()``
  returns, and any module named ``lm_head`` or ``*.lm_head``). A pattern that matches no linear raises a
  :class:`~spectral_lightning.errors.ConfigError` that lists the model's linears.
* A linear whose weight (or bias) is the same Parameter as another module's (tied weights, e.g. GPT-2's
  ``lm_head`` and ``transformer.wte``) is never parameterized: replacing it would silently untie the pair, so it
  is an error naming both.
* Layers that are already parameterized are left as they are, so a model can be converted in several calls
  (attention with one parameterization, the MLP with another); to change a layer's parameterization, densify
  it first.

Only torch and the package's parameterizations are imported here: ``transformers`` is imported lazily by
:func:`densify`, and only when a model had ``Conv1D`` layers.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations import Parameterization, ParameterizedLinear, resolve

Init = Literal["keep", "fresh"]
INITS: tuple[str, ...] = ("keep", "fresh")
# Names of output heads that stay dense by default, whatever the model's get_output_embeddings() says.
HEAD_NAMES: tuple[str, ...] = ("lm_head", "*.lm_head")
# The attribute each new layer carries: True where it replaced a transformers Conv1D (weight stored (in, out)).
REPLACED_CONV1D = "replaced_conv1d"
_LISTED = 12  # at most this many (collapsed) layer names in an error message


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a ``transformers`` ``Conv1D`` (GPT-2's linear with a transposed weight), recognised
    by duck typing so that this module never imports ``transformers``: class name ``Conv1D``, an ``nf``
    attribute (the output width) and a 2-D weight of shape (in, out)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


def is_dense_linear(module: nn.Module) -> bool:
    """Whether :func:`parameterize` can replace ``module``: an ``nn.Linear`` (or subclass) or a ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def parameterized_names(model: nn.Module) -> list[str]:
    """The qualified names of the :class:`ParameterizedLinear` layers of ``model``, in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, ParameterizedLinear)]


def parameterize(
    model: nn.Module,
    parameterization: str | dict | Parameterization,
    patterns: Sequence[str] | None = None,
    init: Init = "keep",
) -> nn.Module:
    """Replace, in place, the matching linears of ``model`` by the layers ``parameterization`` builds.

    Each new layer has the old one's shape and bias, sits on the old weight's device and takes its dtype (and
    its ``requires_grad`` and train/eval mode). Everything else of the model (embeddings, norms, biases of
    other modules, buffers) is untouched.

    Args:
        model: any ``nn.Module``.
        parameterization: anything :func:`~spectral_lightning.parameterizations.resolve` accepts: a registered
            name (``"dct"``), a ``{"class_path": ..., "init_args": {...}}`` dict or a :class:`Parameterization`.
        patterns: fnmatch patterns over qualified module names; a linear is replaced when any of them matches.
            ``None``: every linear except the output head (see the module docstring). ``[]``: nothing.
        init: ``"keep"`` initializes each new layer from the old weight and bias with ``load_dense_`` (the
            projection onto the kept DCT coefficients, the truncated SVD for low rank: at full size the
            outputs do not change); ``"fresh"`` keeps the parameterization's own random init (and a zero bias),
            for training from scratch or for loading a state dict saved from a parameterized model.

    Returns:
        ``model`` itself.

    Raises:
        ConfigError: for an ``init`` other than keep/fresh, patterns that are not a list of strings, a pattern
            that matches no linear (the message lists the model's linears), a matched linear whose weight is
            tied to another module (the message names the pair), or a model with no linear at all.
    """
    if init not in INITS:
        raise ConfigError(f"init={init!r} is not valid: expected one of {', '.join(INITS)}")
    spec = resolve(parameterization)
    named = _linear_names(model)
    chosen = _match(model, named, patterns)
    owners: dict[int, list[str]] = {}  # every name each Parameter is reachable under
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for module in chosen:
        _check_untied(owners, module, named[module])
    replaced: list[nn.Module] = []
    try:
        for module in chosen:
            new = _replacement(module, spec, init)  # may raise: e.g. a rank larger than this layer allows
            for name in named[module]:
                _set_submodule(model, name, new)
            replaced.append(module)
    except BaseException:
        for module in replaced:  # put the original layers back: a failed call leaves the model as it was
            for name in named[module]:
                _set_submodule(model, name, module)
        raise
    return model


def densify(model: nn.Module) -> nn.Module:
    """Replace, in place, every :class:`ParameterizedLinear` of ``model`` by a dense layer with identical outputs.

    The dense layer is an ``nn.Linear`` holding the materialized weight (the layer's ``weight``, in the dtype of
    its stored values: what its forward multiplies by), or a ``transformers`` ``Conv1D`` holding the transpose
    where the layer replaced one (``transformers`` is imported only then). It takes the layer's device, bias,
    ``requires_grad`` and train/eval mode. Afterwards the model has
    only its own classes again: ``save_pretrained``, ``torch.save`` and its library's loaders work as for the
    original model.

    Args:
        model: a model with parameterized layers (from :func:`parameterize`).

    Returns:
        ``model`` itself.
    """
    layers: dict[ParameterizedLinear, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, ParameterizedLinear):
            layers.setdefault(module, []).append(name)
    for layer, names in layers.items():
        dense = _dense(layer)
        for name in names:
            _set_submodule(model, name, dense)
    return model


# -- selection -----------------------------------------------------------------------------------------------


def _linear_names(model: nn.Module) -> dict[nn.Module, list[str]]:
    """Every replaceable linear of ``model`` with all the names it is reachable under (a module shared by
    two parents has two), in module order."""
    named: dict[nn.Module, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name and is_dense_linear(module):
            named.setdefault(module, []).append(name)
    return named


def _match(model: nn.Module, named: dict[nn.Module, list[str]], patterns: Sequence[str] | None) -> list[nn.Module]:
    """The linears to replace, in module order; raises ConfigError for patterns that match nothing."""
    if patterns is None:
        heads = _output_heads(model, named)
        chosen = [module for module in named if module not in heads]
        if not chosen and not parameterized_names(model):
            listed = _listing(_all_linear_names(model))
            raise ConfigError(
                f"the model has no linear layer to parameterize besides its output head (its linears: {listed}); "
                "expected a model with nn.Linear or transformers Conv1D layers"
            )
        return chosen
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(
            f"patterns={patterns!r} is not valid: expected a list of fnmatch patterns such as ['*.attn.*']"
        )
    patterns = list(patterns)
    all_names = _all_linear_names(model)
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in all_names)]
    if unused:
        raise ConfigError(
            f"parameterize pattern(s) {', '.join(map(repr, unused))} match no linear layer; "
            f"the model's linears are: {_listing(all_names)}"
        )
    return [
        module for module, names in named.items() if any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)
    ]


def _all_linear_names(model: nn.Module) -> list[str]:
    """Qualified names of every linear, dense or already parameterized (what a pattern may match)."""
    return [
        name
        for name, module in model.named_modules()
        if name and (is_dense_linear(module) or isinstance(module, ParameterizedLinear))
    ]


def _output_heads(model: nn.Module, named: dict[nn.Module, list[str]]) -> set[nn.Module]:
    """The linears the default patterns leave dense: ``get_output_embeddings()`` and any ``lm_head``."""
    heads = set()
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        head = getter()
        if isinstance(head, nn.Module):
            heads.add(head)
    for module, names in named.items():
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in HEAD_NAMES):
            heads.add(module)
    return heads


def _check_untied(owners: dict[int, list[str]], module: nn.Module, names: list[str]) -> None:
    """Raise when the weight or bias of ``module`` (reachable under ``names``) is also a Parameter of another
    module (tied weights); ``owners`` maps each Parameter's id to all its qualified names in the model."""
    own = {f"{n}.{attr}" for n in names for attr in ("weight", "bias")}
    for attr in ("weight", "bias"):
        param = getattr(module, attr, None)
        if not isinstance(param, nn.Parameter):
            continue
        others = [n for n in owners.get(id(param), []) if n not in own]
        if others:
            raise ConfigError(
                f"{names[0]}.{attr} is tied to {others[0]} (the same Parameter), so {names[0]} cannot be "
                "parameterized without untying them; leave it out of the patterns (the default patterns skip "
                "the output head) or untie the weights first"
            )


def _listing(names: list[str]) -> str:
    """Layer names for a message, with layer indices collapsed (``h.0.attn.c_attn``, ``h.1.attn.c_attn`` ->
    ``h.*.attn.c_attn``) and at most ``_LISTED`` entries."""
    collapsed = list(dict.fromkeys(re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "*", n) for n in names))
    if not collapsed:
        return "(none)"
    shown = ", ".join(collapsed[:_LISTED])
    more = len(collapsed) - _LISTED
    return f"{shown}, ... ({more} more)" if more > 0 else shown


# -- replacement ---------------------------------------------------------------------------------------------


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (out_features, in_features) weight of any linear: materialized for a parameterized layer, as stored
    for an ``nn.Linear``, transposed back for a ``Conv1D`` (whose weight is (in, out))."""
    return module.weight.t() if is_conv1d(module) else module.weight


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear of ``model`` by qualified name: parameterized layers, ``nn.Linear`` and ``Conv1D``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ParameterizedLinear) or is_dense_linear(m)}


@torch.no_grad()
def _replacement(module: nn.Module, spec: Parameterization, init: str) -> ParameterizedLinear:
    """The parameterized layer that takes the place of the dense ``module``."""
    weight = dense_weight(module)
    out_features, in_features = weight.shape
    bias = getattr(module, "bias", None)
    layer = spec.build(in_features, out_features, bias is not None)
    layer.to(device=weight.device)  # float32 still: load_dense_ projects in float64 and stores in float32
    if init == "keep":
        layer.load_dense_(weight, bias)
    layer.to(dtype=weight.dtype)
    for param in layer.weight_parameters():
        param.requires_grad_(module.weight.requires_grad)
    if layer.bias is not None and bias is not None:
        layer.bias.requires_grad_(bias.requires_grad)
    layer.train(module.training)
    setattr(layer, REPLACED_CONV1D, is_conv1d(module))
    return layer


@torch.no_grad()
def _dense(layer: ParameterizedLinear) -> nn.Module:
    """An ``nn.Linear`` (or ``Conv1D``, where ``layer`` replaced one) with ``layer``'s outputs."""
    params = layer.weight_parameters()
    dtype = params[0].dtype if params else layer.weight.dtype
    requires_grad = params[0].requires_grad if params else True
    weight = layer.weight.detach().to(dtype)  # (out, in): what the layer's forward multiplies by
    if getattr(layer, REPLACED_CONV1D, False):
        try:
            from transformers.pytorch_utils import Conv1D
        except ImportError:
            raise ConfigError(
                "densify needs the transformers package to rebuild the Conv1D layers this model had: "
                "pip install transformers"
            ) from None
        dense = Conv1D(layer.out_features, layer.in_features).to(device=weight.device, dtype=dtype)
        dense.weight.copy_(weight.t())
    else:
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        dense = dense.to(device=weight.device, dtype=dtype)
        dense.weight.copy_(weight)
    dense.weight.requires_grad_(requires_grad)
    if layer.bias is not None:
        dense.bias.copy_(layer.bias)
        dense.bias.requires_grad_(layer.bias.requires_grad)
    dense.train(layer.training)
    return dense


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the qualified ``name`` (``transformer.h.0.attn.c_attn``) of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


__all__ = ["densify", "is_conv1d", "parameterize", "parameterized_names"]
