"""A GPT-style character model whose linear layers come from one factory.

Reads top-down: attention -> MLP -> Block -> GPT. The paper's model is the default: 4 layers, 4 heads,
d = 128, context 128, fused qkv, 4x GELU MLP, biases, untied LM head (bias-free, as in nanoGPT).

Every linear is created by :class:`LinearFactory` from its module name (``blocks.0.attn.qkv``, ...). Names
matching one of the ``parameterize`` patterns are built by the chosen parameterization; the rest are dense.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectral_lightning.errors import ConfigError, check_positive_int
from spectral_lightning.parameterizations import (
    Dense,
    Parameterization,
    ParameterizedLinear,
    ReconstructedLinear,
    batch_groups,
    batched_weights,
)

#: The four linears of every block: the weights the paper compresses.
BLOCK_LINEARS: tuple[str, ...] = ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc", "blocks.*.mlp.proj")


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: choose n_head among "
                f"{[h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0]}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout!r} is not valid: expected a value in [0, 1)")


class LinearFactory:
    """Builds every linear of the model: ``parameterization`` for names matching ``patterns``, dense otherwise.

    Args:
        parameterization: how the matched layers store their weights.
        patterns: ``fnmatch`` patterns over module names (e.g. ``blocks.*.mlp.*``, ``lm_head``).
        default: the parameterization of every other linear (dense).
    """

    def __init__(
        self, parameterization: Parameterization, patterns: list[str], default: Parameterization | None = None
    ) -> None:
        self.parameterization = parameterization
        self.patterns = list(patterns)
        self.default = default or Dense()
        self.names: list[str] = []  # every linear built, in order
        self._used: set[str] = set()

    def __call__(self, name: str, in_features: int, out_features: int, bias: bool) -> ParameterizedLinear:
        self.names.append(name)
        matched = [p for p in self.patterns if fnmatch.fnmatchcase(name, p)]
        self._used.update(matched)
        chosen = self.parameterization if matched else self.default
        return chosen.build(in_features, out_features, bias)

    @property
    def matched(self) -> list[str]:
        """The names of the linears built so far that the patterns matched (the parameterized ones), in order."""
        return [n for n in self.names if any(fnmatch.fnmatchcase(n, p) for p in self.patterns)]

    def check_patterns(self) -> None:
        """Raise if a pattern matched no linear (a typo would otherwise silently train a dense model)."""
        unused = [p for p in self.patterns if p not in self._used]
        if unused:
            raise ConfigError(
                f"parameterize pattern(s) {unused} match no linear layer; the model's linears are: "
                f"{', '.join(self.names)}"
            )


class CausalLM(nn.Module):
    """What the training module, the dashboards, exports and generation need from a language model; every
    architecture (:class:`GPT`, ``llama.Llama``, the ``transformers`` adapter) is one.

    A subclass sets ``config`` (a dataclass with at least ``vocab_size`` and ``block_size``) and
    ``parameterized`` (the module names of the linears built by the chosen parameterization), and maps token ids
    (B, T) to logits (B, T, V) in ``forward``.
    """

    config: Any
    parameterized: list[str]
    #: groups of same-shaped layers whose weights are rebuilt together (``batch_reconstruction``); empty: none
    _batch_groups: list[list[ReconstructedLinear]] = []

    def forward(self, idx: Tensor) -> Tensor:
        B, T = idx.shape  # (B, T)
        if T > self.config.block_size:
            raise ConfigError(f"sequence length {T} exceeds block_size={self.config.block_size}")
        # (Checked here, not inside the context manager, so that compiled graphs never trace it.)
        if self._batch_groups and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            with batched_weights(self._batch_groups, tokens=B * T):  # every block linear sees B·T rows
                return self._forward(idx)
        return self._forward(idx)

    def _forward(self, idx: Tensor) -> Tensor:
        """Token ids (B, T) to logits (B, T, V); ``forward`` checks the length and batches reconstruction."""
        raise NotImplementedError

    def set_dropout(self, p: float) -> None:
        """Set every dropout of the model to probability ``p``: its ``nn.Dropout`` layers and the attention
        probabilities' (an attention module's float ``dropout``). The training module's late dropout
        (``dropout_from_step``) switches it on this way; the config keeps the probability the model was built with.
        """
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(getattr(module, "dropout", None), float):
                module.dropout = p

    def linears(self) -> dict[str, ParameterizedLinear]:
        """Every parameterized-linear layer by module name (those of the chosen parameterization and the dense
        ones the factory built)."""
        return {n: m for n, m in self.named_modules() if isinstance(m, ParameterizedLinear)}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[Tensor]:
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T); yields each new (B, 1) token.

        Reconstructed weights are cached while autograd is off, so every layer is materialized once.
        """
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size :]  # (B, ≤block)
            logits = self(ctx)[:, -1, :].float()  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)  # (B, V)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            yield nxt


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, linear: LinearFactory, prefix: str) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.qkv = linear(f"{prefix}.qkv", config.n_embd, 3 * config.n_embd, config.bias)
        self.proj = linear(f"{prefix}.proj", config.n_embd, config.n_embd, config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape  # (B, T, C)
        q, k, v = self.qkv(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, linear: LinearFactory, prefix: str) -> None:
        super().__init__()
        self.fc = linear(f"{prefix}.fc", config.n_embd, 4 * config.n_embd, config.bias)
        self.proj = linear(f"{prefix}.proj", 4 * config.n_embd, config.n_embd, config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, linear: LinearFactory, prefix: str) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, linear, f"{prefix}.attn")
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config, linear, f"{prefix}.mlp")

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(CausalLM):
    """Decoder-only transformer over characters.

    Args:
        config: sizes.
        parameterization: how the linears whose names match ``parameterize`` store their weights.
        parameterize: module-name patterns; default: the four linears of every block. Add ``"lm_head"`` to
            compress the LM head too. A pattern matching nothing raises ``ValueError``.
        batch_reconstruction: in eager training, rebuild the weights of same-shaped parameterized linears
            (one per block) together, one batched product per shape, instead of layer by layer
            (:func:`~spectral_lightning.parameterizations.batched_weights`). Same weights, fewer kernel
            launches per step.
    """

    def __init__(
        self,
        config: GPTConfig,
        parameterization: Parameterization | None = None,
        parameterize: list[str] | tuple[str, ...] = BLOCK_LINEARS,
        batch_reconstruction: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.batch_reconstruction = batch_reconstruction
        linear = LinearFactory(parameterization or Dense(), list(parameterize))
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, linear, f"blocks.{i}") for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = linear("lm_head", config.n_embd, config.vocab_size, False)
        linear.check_patterns()
        self.parameterized = linear.matched
        for emb in (self.wte, self.wpe):
            nn.init.normal_(emb.weight, mean=0.0, std=0.02)
        # Groups of layers rebuilt together (the layers never change after construction).
        self._batch_groups = batch_groups(self.modules()) if batch_reconstruction else []

    def _forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.lm_head(self.ln_f(x))  # (B, T, V)
