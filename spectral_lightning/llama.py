"""A LLaMA-style decoder whose linear layers come from the same factory as the GPT's.

Reads top-down: RMSNorm -> rotary positions -> attention -> SwiGLU MLP -> Block -> Llama. This is the model
family the compressed-training papers (GaLore, SLTrain, CoLA, ReLoRA) report on; it differs from
:class:`~spectral_lightning.model.GPT` in four places:

* **RMSNorm** instead of LayerNorm: y = x / √(mean(x²) + ε) · g, a learned gain g and no bias or centring.
* **Rotary positions** instead of a learned position table: q and k of position t are rotated, pair by pair,
  by the angles t·θ_i with θ_i = rope_theta^(-2i/D) (D the head size), so the score q_s·k_t depends on the
  positions only through s − t.
* **SwiGLU MLP**: down(silu(gate(x)) ⊙ up(x)), three d×h linears instead of two d×4d ones.
* **No biases** anywhere, and the LM head optionally shares the token embedding's matrix (``tie_embeddings``).

Parameters (dense; d = n_embd, h = mlp_hidden, L = n_layer, V = vocab_size):
V·d (embedding) + L·(4d² + 3dh + 2d) + d (final norm) + V·d (the head, when untied). At the 60M shape
(V = 32,000, d = 512, h = 1376, L = 8) that is 58,073,600; at the 130M shape (d = 768, h = 2048, L = 12)
134,105,856.

Every linear is created by :class:`~spectral_lightning.model.LinearFactory` from its module name
(``blocks.0.attn.q_proj``, ..., ``lm_head``); names matching one of the ``parameterize`` patterns are built by
the chosen parameterization, the rest are dense.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spectral_lightning.errors import ConfigError, check_positive_int
from spectral_lightning.model import CausalLM, LinearFactory
from spectral_lightning.parameterizations import Dense, Parameterization, batch_groups

#: The seven linears of every block (q, k, v, o; gate, up, down): the weights a run compresses by default.
LLAMA_LINEARS: tuple[str, ...] = ("blocks.*.attn.*_proj", "blocks.*.mlp.*_proj")


def default_mlp_hidden(n_embd: int) -> int:
    """SwiGLU width h = 8d/3 rounded up to a multiple of 32: three d×h matrices then cost what the two
    d×4d ones of a GELU MLP cost (1376 at d = 512, 2048 at d = 768)."""
    return -(-8 * n_embd // 96) * 32  # ceil(8d / 3 / 32) · 32


@dataclass
class LlamaConfig:
    """Sizes and options of :class:`Llama`.

    Args:
        vocab_size: tokens V (≥ 1).
        block_size: context length (≥ 1); the rotary table covers this many positions.
        n_layer: transformer blocks (≥ 1).
        n_head: attention heads (≥ 1); must divide ``n_embd`` into an even head size (rotary pairs).
        n_embd: model width d (≥ 1).
        mlp_hidden: SwiGLU width h (≥ 1); None: 8d/3 rounded up to a multiple of 32. After construction it
            always holds the width in use.
        dropout: dropout probability in [0, 1) (after the embedding, in attention, after each residual branch).
        tie_embeddings: the LM head reuses the token embedding's V×d matrix (then it must stay dense).
        rope_theta: base of the rotary angles (> 0; 10,000 as in LLaMA).
        norm_eps: ε of every RMSNorm (> 0).
    """

    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 8
    n_head: int = 8
    n_embd: int = 512
    mlp_hidden: int | None = None
    dropout: float = 0.0
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_positive_int(name, getattr(self, name))
        if self.mlp_hidden is None:
            self.mlp_hidden = default_mlp_hidden(self.n_embd)
        check_positive_int("mlp_hidden", self.mlp_hidden, " (or null: 8·n_embd/3 rounded up to a multiple of 32)")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            valid = [h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0 and (self.n_embd // h) % 2 == 0]
            raise ConfigError(
                f"n_embd={self.n_embd}, n_head={self.n_head} do not give an even head size (rotary positions "
                f"rotate pairs of dimensions): choose n_head among {valid}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout!r} is not valid: expected a value in [0, 1)")
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"tie_embeddings={self.tie_embeddings!r} is not valid: expected true or false")
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name}={value!r} is not valid: expected a finite number > 0")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


class RMSNorm(nn.Module):
    """y = x / √(mean(x²) + ε) · g over the last dimension, computed in float32 and cast back to x's dtype
    (the mean of squares loses precision in bf16)."""

    def __init__(self, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))  # g: starts as the identity scale

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()  # (..., C)
        y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., C), unit RMS
        return (y * self.weight.float()).to(x.dtype)  # (..., C)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class RotaryEmbedding(nn.Module):
    """The cos/sin table of rotary position embeddings for positions 0..block_size-1.

    Dimension i of a head (i < D/2) is paired with dimension i + D/2 (the "rotate half" layout of GPT-NeoX and
    the ``transformers`` LLaMA), and the pair of position t is rotated by the angle t·θ_i, θ_i = base^(-2i/D).
    The table holds cos and sin of these angles for both members of each pair: (block_size, D).

    The table is derived from sizes only, so it lives in non-persistent buffers (never saved). It is rebuilt
    whenever the module is moved or cast: a bf16 table would round every cos and sin to about three significant
    digits, so it stays float32 (float64 after ``.double()``), and a model materialized from the ``meta`` device
    (``to_empty``) gets real values back.
    """

    def __init__(self, head_size: int, block_size: int, theta: float) -> None:
        super().__init__()
        self.head_size, self.block_size, self.theta = head_size, block_size, theta
        self._build()

    def _build(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> None:
        half = self.head_size // 2
        inv_freq = self.theta ** (-torch.arange(half, dtype=torch.float64, device=device) / half)  # (D/2,) θ_i
        t = torch.arange(self.block_size, dtype=torch.float64, device=device)  # (block,)
        angles = torch.outer(t, inv_freq).repeat(1, 2)  # (block, D): pair i and i + D/2 share an angle
        self.register_buffer("cos", angles.cos().to(dtype), persistent=False)
        self.register_buffer("sin", angles.sin().to(dtype), persistent=False)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 (nn.Module signature)
        super()._apply(fn, recurse)
        dtype = torch.float64 if self.cos.dtype == torch.float64 else torch.float32
        self._build(self.cos.device, dtype)
        return self

    def forward(self, T: int) -> tuple[Tensor, Tensor]:
        """cos and sin of positions 0..T-1: two (T, D) tensors."""
        return self.cos[:T], self.sin[:T]

    def extra_repr(self) -> str:
        return f"head_size={self.head_size}, block_size={self.block_size}, theta={self.theta}"


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+D/2}) of ``x`` (..., T, D) by the angle whose cos/sin are given (T, D):
    (x_i, x_j) -> (x_i·cos − x_j·sin, x_j·cos + x_i·sin)."""
    xr = x.to(cos.dtype)  # (..., T, D) in the table's precision
    x1, x2 = xr.chunk(2, dim=-1)  # 2 x (..., T, D/2)
    partner = torch.cat((-x2, x1), dim=-1)  # (..., T, D): the other member of each pair, signed
    return (xr * cos + partner * sin).to(x.dtype)  # (..., T, D)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, linear: LinearFactory, prefix: str) -> None:
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        d = config.n_embd
        self.q_proj = linear(f"{prefix}.q_proj", d, d, False)
        self.k_proj = linear(f"{prefix}.k_proj", d, d, False)
        self.v_proj = linear(f"{prefix}.v_proj", d, d, False)
        self.o_proj = linear(f"{prefix}.o_proj", d, d, False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, C = x.shape  # (B, T, C)
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (p(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for p in projections)  # (B, H, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # (B, H, T, D), rotated by position
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))  # (B, T, C)


class SwiGLU(nn.Module):
    def __init__(self, config: LlamaConfig, linear: LinearFactory, prefix: str) -> None:
        super().__init__()
        d, h = config.n_embd, config.mlp_hidden
        self.gate_proj = linear(f"{prefix}.gate_proj", d, h, False)
        self.up_proj = linear(f"{prefix}.up_proj", d, h, False)
        self.down_proj = linear(f"{prefix}.down_proj", h, d, False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, T, C) -> (B, T, h)
        return self.dropout(self.down_proj(hidden))  # (B, T, h) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config: LlamaConfig, linear: LinearFactory, prefix: str) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = Attention(config, linear, f"{prefix}.attn")
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config, linear, f"{prefix}.mlp")

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)  # (B, T, C)
        return x + self.mlp(self.mlp_norm(x))  # (B, T, C)


class Llama(CausalLM):
    """LLaMA-style decoder: RMSNorm, rotary positions, SwiGLU MLP, no biases.

    Args:
        config: sizes and options.
        parameterization: how the linears whose names match ``parameterize`` store their weights.
        parameterize: module-name patterns; default: the seven linears of every block. Add ``"lm_head"`` to
            compress an untied LM head too. A pattern matching nothing, or one matching a head tied to the
            embedding, raises ``ConfigError``.
        batch_reconstruction: in eager training, rebuild the weights of same-shaped parameterized linears
            together, one batched product per shape, instead of layer by layer (as :class:`GPT` does).
    """

    def __init__(
        self,
        config: LlamaConfig,
        parameterization: Parameterization | None = None,
        parameterize: list[str] | tuple[str, ...] = LLAMA_LINEARS,
        batch_reconstruction: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.batch_reconstruction = batch_reconstruction
        patterns = list(parameterize)
        if config.tie_embeddings:
            tied = [p for p in patterns if fnmatch.fnmatchcase("lm_head", p)]
            if tied:
                raise ConfigError(
                    f"parameterize pattern(s) {tied} match lm_head, whose weight is tied to wte "
                    "(tie_embeddings=true): a shared embedding matrix stays dense; drop the pattern or untie"
                )
        linear = LinearFactory(parameterization or Dense(), patterns)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.rope = RotaryEmbedding(config.head_size, config.block_size, config.rope_theta)
        self.blocks = nn.ModuleList(Block(config, linear, f"blocks.{i}") for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = linear("lm_head", config.n_embd, config.vocab_size, False)
        linear.check_patterns()
        self.parameterized = linear.matched
        # N(0, 0.02²) as GPT-2 and LLaMA initialize embeddings; the linears initialized themselves.
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one V×d matrix: rows embed tokens and score them
        # Groups of layers rebuilt together (the layers never change after construction).
        self._batch_groups = batch_groups(self.modules()) if batch_reconstruction else []

    def _forward(self, idx: Tensor) -> Tensor:
        cos, sin = self.rope(idx.shape[1])  # (T, D) each: positions enter only through the rotation of q and k
        x = self.drop(self.wte(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin)  # (B, T, C)
        return self.lm_head(self.norm(x))  # (B, T, V)
