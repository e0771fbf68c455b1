"""The built-in LLaMA-style architecture: parameter counts at the papers' 60M and 130M shapes against the formula,
the maths of RMSNorm, rotary positions and SwiGLU, causality, the equivalence of full-capacity parameterizations
with the dense model, training, and torch.compile."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from spectral_lightning.checkpoints import transfer_weights
from spectral_lightning.errors import ConfigError
from spectral_lightning.llama import (
    LLAMA_LINEARS,
    Llama,
    LlamaConfig,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
)
from spectral_lightning.model import LinearFactory
from spectral_lightning.parameterizations import DCT, Dense, LowRank, Parameterization


def tiny_config(**overrides: object) -> LlamaConfig:
    sizes: dict[str, object] = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, mlp_hidden=64)
    return LlamaConfig(**{**sizes, **overrides})


def tiny_llama(parameterization: Parameterization | None = None, seed: int = 0, **overrides: object) -> Llama:
    torch.manual_seed(seed)
    return Llama(tiny_config(**overrides), parameterization)


def tokens(batch: int = 3, length: int = 16, vocab: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- parameter counts at the papers' shapes -----------------------------------------------------------------
# Stored weight values of one m×n (out × in) linear under each parameterization, written from the definitions.
STORED: dict[str, Callable[[int, int], int]] = {
    "dense": lambda m, n: m * n,
    "dct4x-random": lambda m, n: round(m * n / 4),  # K = round(mn / c) coefficients
    "lowrank-r128": lambda m, n: 128 * (m + n),  # B (m×r) and A (r×n)
    "lowrank-4x": lambda m, n: math.floor(m * n / (4 * (m + n))) * (m + n),  # the largest r with r(m+n) ≤ mn/4
}
SPECS: dict[str, Parameterization] = {
    "dense": Dense(),
    "dct4x-random": DCT(compression=4, selection="random"),
    "lowrank-r128": LowRank(rank=128),
    "lowrank-4x": LowRank(compression=4),
}
# (vocab V, width d, layers L, heads, SwiGLU width h), context 256.
SHAPES = {
    "60M": (32000, 512, 8, 8, 1376),
    "60M-chars": (65, 512, 8, 8, 1376),
    "130M": (32000, 768, 12, 12, 2048),
}


def llama_count(shape: str, parameterization: str, tied: bool) -> int:
    """V·d embedding + per block (q, k, v, o: d×d; gate, up: h×d; down: d×h; two RMSNorm gains of d)
    + the final norm's d + the V×d head unless it is the embedding itself."""
    vocab, d, n_layer, _, h = SHAPES[shape]
    stored = STORED[parameterization]
    block = 4 * stored(d, d) + 2 * stored(h, d) + stored(d, h) + 2 * d
    return vocab * d + n_layer * block + d + (0 if tied else vocab * d)


# DCT layers compute their coefficient positions when built, which the meta device cannot do: they are built
# on the CPU (a few seconds), every other row on the meta device (shapes only, no memory, no time).
COUNT_ROWS = [
    (shape, name, tied, "meta")
    for shape in SHAPES
    for name in ("dense", "lowrank-r128", "lowrank-4x")
    for tied in (False, True)
] + [
    ("60M", "dct4x-random", False, "cpu"),
    ("60M-chars", "dct4x-random", True, "cpu"),
    ("130M", "dct4x-random", False, "cpu"),
]


@pytest.mark.parametrize(
    ("shape", "name", "tied", "device"), COUNT_ROWS, ids=[f"{r[0]}-{r[1]}-tied{r[2]}" for r in COUNT_ROWS]
)
def test_parameter_count_matches_the_formula(shape: str, name: str, tied: bool, device: str) -> None:
    vocab, d, n_layer, n_head, _ = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=vocab, block_size=256, n_layer=n_layer, n_head=n_head, n_embd=d, tie_embeddings=tied
    )
    with torch.device(device):
        model = Llama(config, SPECS[name])
    assert config.mlp_hidden == SHAPES[shape][4]  # the default width 8d/3 rounded up to a multiple of 32
    assert model.num_parameters() == llama_count(shape, name, tied)
    assert len(model.parameterized) == 7 * n_layer
    assert (model.lm_head.weight is model.wte.weight) == tied


def test_the_quoted_counts() -> None:
    # The numbers in llama.py's docstring and the README's table of the 60M shape.
    assert llama_count("60M", "dense", tied=False) == 58_073_600
    assert llama_count("130M", "dense", tied=False) == 134_105_856
    assert llama_count("60M", "dct4x-random", tied=False) == 39_100_928
    assert llama_count("60M", "lowrank-4x", tied=False) == 39_087_872
    assert llama_count("60M", "lowrank-r128", tied=False) == 42_770_944


def test_default_mlp_hidden_and_linear_names() -> None:
    assert LlamaConfig(n_embd=512).mlp_hidden == 1376
    assert LlamaConfig(n_embd=768, n_head=12).mlp_hidden == 2048
    assert LlamaConfig(n_embd=512, mlp_hidden=1000).mlp_hidden == 1000
    model = tiny_llama(DCT(compression=2))
    block = [
        "attn.q_proj",
        "attn.k_proj",
        "attn.v_proj",
        "attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    assert model.parameterized == [f"blocks.{i}.{n}" for i in range(2) for n in block]
    assert list(model.linears()) == [*model.parameterized, "lm_head"]
    assert type(model.linears()["lm_head"]).__name__ == "DenseLinear"  # the head stays dense by default


# -- the pieces against their formulas ----------------------------------------------------------------------
def test_rmsnorm_matches_its_formula() -> None:
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(0)) * 3
    expected = x / torch.sqrt((x**2).mean(dim=-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=1e-6)
    # bf16 in, bf16 out, computed in float32: equal to the float32 result rounded once.
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, norm(x.bfloat16().float()).bfloat16(), atol=0, rtol=0)


def test_swiglu_matches_its_formula() -> None:
    torch.manual_seed(0)
    mlp = SwiGLU(tiny_config(), LinearFactory(Dense(), []), "mlp")
    x = torch.randn(2, 5, 32)
    gate, up = x @ mlp.gate_proj.weight.T, x @ mlp.up_proj.weight.T  # (2, 5, 64) each
    expected = (gate * torch.sigmoid(gate) * up) @ mlp.down_proj.weight.T  # silu(g) = g·σ(g)
    torch.testing.assert_close(mlp(x), expected, atol=1e-6, rtol=1e-5)


def test_rotary_rotates_each_pair_by_position_times_frequency() -> None:
    head, block, theta = 8, 12, 10000.0
    rope = RotaryEmbedding(head, block, theta)
    x = torch.randn(2, 3, block, head, generator=torch.Generator().manual_seed(0))  # (B, H, T, D)
    cos, sin = rope(block)
    # Pair i = (x_i, x_{i+D/2}) as the complex number x_i + j·x_{i+D/2}, turned by e^{j·t·θ_i}, θ_i = theta^(-2i/D).
    z = torch.complex(x[..., : head // 2].double(), x[..., head // 2 :].double())  # (B, H, T, D/2)
    angle = torch.arange(block).double().unsqueeze(1) * theta ** (-2 * torch.arange(head // 2).double() / head)
    turned = z * torch.polar(torch.ones_like(angle), angle)  # (B, H, T, D/2)
    expected = torch.cat((turned.real, turned.imag), dim=-1).float()
    torch.testing.assert_close(apply_rotary(x, cos, sin), expected, atol=1e-5, rtol=1e-5)
    # Position 0 is not rotated; every later one is.
    torch.testing.assert_close(apply_rotary(x, cos, sin)[..., 0, :], x[..., 0, :])
    assert not torch.allclose(apply_rotary(x, cos, sin)[..., 1:, :], x[..., 1:, :])


def test_rotary_scores_depend_only_on_relative_position() -> None:
    rope = RotaryEmbedding(16, 64, 10000.0)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 10, 16, generator=gen), torch.randn(2, 10, 16, generator=gen)  # (H, T, D)

    def scores(q_start: int, k_start: int) -> torch.Tensor:
        rq = apply_rotary(q, rope.cos[q_start : q_start + 10], rope.sin[q_start : q_start + 10])
        rk = apply_rotary(k, rope.cos[k_start : k_start + 10], rope.sin[k_start : k_start + 10])
        return rq @ rk.transpose(-1, -2)  # (H, T, T)

    # Moving every query and key by the same offset leaves every score unchanged ...
    for offset in (1, 7, 50):
        torch.testing.assert_close(scores(offset, offset), scores(0, 0), atol=1e-5, rtol=1e-5)
    # ... while moving only the keys changes them, and the rotation is not the identity.
    assert not torch.allclose(scores(0, 3), scores(0, 0), atol=1e-3)
    assert not torch.allclose(scores(0, 0), q @ k.transpose(-1, -2), atol=1e-3)


def test_rotary_table_is_not_saved_and_survives_casts_and_meta() -> None:
    model = tiny_llama()
    fresh = RotaryEmbedding(16, 16, 10000.0)
    assert not any(key.startswith("rope.") for key in model.state_dict())
    model.to(torch.bfloat16)
    assert model.rope.cos.dtype == torch.float32  # rebuilt, not rounded to bf16
    torch.testing.assert_close(model.rope.sin, fresh.sin, atol=0, rtol=0)
    with torch.device("meta"):
        on_meta = Llama(tiny_config())
    on_meta.to_empty(device="cpu")  # fills parameters with garbage, but the table is rebuilt from sizes
    torch.testing.assert_close(on_meta.rope.cos, fresh.cos, atol=0, rtol=0)


# -- the whole model ----------------------------------------------------------------------------------------
def test_output_shape_and_causality() -> None:
    model = tiny_llama().eval()
    idx = tokens()
    logits = model(idx)
    assert logits.shape == (3, 16, 20)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 20
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(after[:, :9], before[:, :9], atol=0, rtol=0)  # the past never sees the future
    assert (after[:, 9:] - before[:, 9:]).abs().amax(dim=-1).min() > 1e-6  # every later position does
    with pytest.raises(ConfigError, match="sequence length 17 exceeds block_size=16"):
        model(tokens(length=17))


def test_tied_embeddings_share_one_matrix() -> None:
    model = tiny_llama(tie_embeddings=True)
    untied = tiny_llama(tie_embeddings=False)
    assert model.lm_head.weight is model.wte.weight
    assert untied.num_parameters() - model.num_parameters() == 20 * 32
    loss = F.cross_entropy(model(tokens()).flatten(0, 1), tokens(seed=2).flatten())
    loss.backward()
    assert model.wte.weight.grad is not None and model.wte.weight.grad.abs().sum() > 0
    # A state dict (which lists the shared matrix under both names) reloads into a fresh tied model.
    other = tiny_llama(tie_embeddings=True, seed=5)
    other.load_state_dict(model.state_dict())
    assert other.lm_head.weight is other.wte.weight
    with torch.no_grad():
        torch.testing.assert_close(other(tokens()), model(tokens()), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("options", "patterns", "message"),
    [
        (
            {},
            ["blocks.*.attn.qkv"],
            r"pattern\(s\) \['blocks.\*.attn.qkv'\] match no linear layer; the model's "
            r"linears are: blocks.0.attn.q_proj, blocks.0.attn.k_proj",
        ),
        (
            {"tie_embeddings": True},
            [*LLAMA_LINEARS, "lm_head"],
            r"pattern\(s\) \['lm_head'\] match lm_head, "
            "whose weight is tied to wte",
        ),
        ({"tie_embeddings": True}, ["*"], r"pattern\(s\) \['\*'\] match lm_head, whose weight is tied to wte"),
    ],
    ids=["matches-nothing", "tied-head", "tied-head-wildcard"],
)
def test_bad_patterns_are_config_errors(options: dict, patterns: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Llama(tiny_config(**options), DCT(compression=2), patterns)
    assert "\n" not in str(info.value)
    Llama(tiny_config(), DCT(compression=2), [*LLAMA_LINEARS, "lm_head"])  # an untied head may be compressed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_head": 3}, r"n_embd=32, n_head=3 do not give an even head size .*choose n_head among \[1, 2, 4, 8, 16\]"),
        ({"n_embd": 30, "n_head": 2}, r"n_embd=30, n_head=2 do not give an even head size"),  # head size 15
        ({"mlp_hidden": 0}, r"mlp_hidden=0 is not valid: expected a positive integer"),
        ({"n_layer": 0}, r"n_layer=0 is not valid: expected a positive integer"),
        ({"dropout": 1.0}, r"dropout=1.0 is not valid: expected a value in \[0, 1\)"),
        ({"rope_theta": 0.0}, r"rope_theta=0.0 is not valid: expected a finite number > 0"),
        ({"norm_eps": -1e-5}, r"norm_eps=-1e-05 is not valid: expected a finite number > 0"),
        ({"tie_embeddings": "yes"}, r"tie_embeddings='yes' is not valid: expected true or false"),
    ],
)
def test_bad_sizes_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(**options)


# -- parameterizations on the Llama -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "equal"),
    [
        (DCT(compression=1), True),  # every coefficient: W itself
        (DCT(compression=1, selection="random"), True),
        (LowRank(rank=32), True),  # full rank: min(m, n) = 32 for every block linear
        (DCT(compression=4), False),  # the guard: a reduced capacity must not pass as equal
        (LowRank(rank=8), False),
    ],
    ids=["dct-1x", "dct-1x-random", "lowrank-full", "dct-4x", "lowrank-8"],
)
def test_full_capacity_reproduces_the_dense_model(spec: Parameterization, equal: bool) -> None:
    dense = tiny_llama(Dense(), seed=0).eval()
    target = tiny_llama(spec, seed=1).eval()
    transfer_weights(dense, target)
    idx = tokens()
    with torch.no_grad():
        expected, got = dense(idx), target(idx)
    if equal:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    else:
        assert (got - expected).abs().max() > 1e-3


@pytest.mark.parametrize("spec", [Dense(), DCT(compression=4, selection="random")], ids=["dense", "dct-4x"])
def test_training_lowers_the_loss(spec: Parameterization) -> None:
    text = "the cat sat on the mat. " * 40
    vocab = sorted(set(text))
    data = torch.tensor([vocab.index(c) for c in text])
    model = tiny_llama(spec, vocab_size=len(vocab))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        starts = torch.randint(len(data) - 17, (8,), generator=gen)
        batch = torch.stack([data[s : s + 17] for s in starts])  # (8, 17)
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.9 * math.log(len(vocab))  # starts near chance ...
    assert sum(losses[-5:]) / 5 < 0.45 * losses[0]  # ... and learns the repeated sentence


def test_batch_reconstruction_gives_the_same_outputs_and_gradients() -> None:
    spec = DCT(compression=2, selection="random")
    plain = tiny_llama(spec, seed=0)
    torch.manual_seed(0)
    batched = Llama(tiny_config(), spec, batch_reconstruction=True)
    # q, k, v, o (32×32) of both blocks; gate and up (64×32) of both blocks; down (32×64) of both blocks.
    assert sorted(len(group) for group in batched._batch_groups) == [2, 4, 8]
    idx, target = tokens(), tokens(seed=2)
    for model in (plain, batched):
        F.cross_entropy(model(idx).flatten(0, 1), target.flatten()).backward()
    for (name, p), q in zip(plain.named_parameters(), batched.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("batch_reconstruction", [False, True], ids=["per-layer", "batched"])
def test_compiled_matches_eager_without_graph_breaks(batch_reconstruction: bool) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Llama(tiny_config(), DCT(compression=2, selection="random"), batch_reconstruction=batch_reconstruction)
    idx, target = tokens(), tokens(seed=2)
    explanation = torch._dynamo.explain(model)(idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    compiled = torch.compile(model, backend="aot_eager")
    loss_c = F.cross_entropy(compiled(idx).flatten(0, 1), target.flatten())
    grads_c = torch.autograd.grad(loss_c, list(model.parameters()))
    loss_e = F.cross_entropy(model(idx).flatten(0, 1), target.flatten())  # eager: batched if asked
    grads_e = torch.autograd.grad(loss_e, list(model.parameters()))
    torch.testing.assert_close(loss_c, loss_e, atol=1e-6, rtol=1e-6)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge, atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), model(idx), atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
