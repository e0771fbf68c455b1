"""``parameterize`` and ``densify`` on models the project did not build: tiny ``transformers`` GPT-2 (``Conv1D``
layers, an LM head tied to the token embedding) and Llama (``nn.Linear``, no biases, grouped-query attention)
built offline from their configs, and a plain ``nn.Sequential``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from helpers import REPO
from torch import nn

from spectral_lightning import ConfigError, ParameterizedLinear, densify, parameterize, parameterized_names
from spectral_lightning.analysis import parameter_report

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402 (after the importorskip)

VOCAB, CONTEXT = 50, 32
GPT2_BLOCK = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
LLAMA_BLOCK = [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
]  # fmt: skip


def gpt2(seed: int = 0) -> nn.Module:
    """A 2-layer, 32-wide GPT-2 (28,096 parameters) with its LM head tied to ``transformer.wte``."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=CONTEXT, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


def llama(seed: int = 0, kv_heads: int = 2) -> nn.Module:
    """A 2-layer, 32-wide Llama; with 2 key/value heads for 4 query heads, k_proj and v_proj are 16×32."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, vocab_size=VOCAB, max_position_embeddings=CONTEXT, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


MODELS = {"gpt2": gpt2, "llama": llama}
BLOCK_NAMES = {
    "gpt2": [f"transformer.h.{i}.{name}" for i in range(2) for name in GPT2_BLOCK],
    "llama": [f"model.layers.{i}.{name}" for i in range(2) for name in LLAMA_BLOCK],
}
TOKENS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def logits(model: nn.Module, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    return model(tokens).logits  # (B, T, V)


def dense_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(m, n) = (out_features, in_features) of every nn.Linear / Conv1D (Conv1D stores its weight as (n, m))."""
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            shapes[name] = tuple(module.weight.shape)
        elif isinstance(module, Conv1D):
            shapes[name] = tuple(module.weight.t().shape)
    return shapes


# -- the default patterns and the logits -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_default_patterns_take_every_block_linear_but_not_the_head(arch: str) -> None:
    model = MODELS[arch]()
    assert parameterize(model, "dct") is model
    assert parameterized_names(model) == BLOCK_NAMES[arch]
    assert isinstance(model.lm_head, nn.Linear)  # get_output_embeddings() stays dense
    assert model.lm_head is model.get_output_embeddings()


@pytest.mark.parametrize(
    ("arch", "spec"),
    [
        ("gpt2", {"class_path": "dct", "init_args": {"compression": 1}}),
        ("llama", {"class_path": "dct", "init_args": {"compression": 1}}),
        ("gpt2", {"class_path": "dct", "init_args": {"compression": 1, "selection": "random"}}),
        ("gpt2", {"class_path": "lowrank", "init_args": {"rank": 32}}),  # every GPT-2 linear has min(m, n) = 32
        ("gpt2", {"class_path": "random_basis", "init_args": {"compression": 1}}),
        ("gpt2", {"class_path": "monarch", "init_args": {"width": 32}}),  # full-rank blocks
        ("gpt2", {"class_path": "kronecker", "init_args": {"m1": 8, "n1": 4, "terms": 32}}),  # min(32, m2·n2)
        ("gpt2", {"class_path": "sparse_lowrank", "init_args": {"rank": 32}}),  # full rank plus S
    ],
    ids=[
        "gpt2-dct",
        "llama-dct",
        "gpt2-dct-random",
        "gpt2-lowrank-full",
        "gpt2-random_basis",
        "gpt2-monarch-full",
        "gpt2-kronecker-full",
        "gpt2-sparse_lowrank-full",
    ],
)
def test_full_size_parameterization_keeps_the_logits(arch: str, spec: dict) -> None:
    """At compression 1 (or full rank) ``init="keep"`` represents every weight exactly: the logits change by
    float32 rounding only, although every block linear is now a different class storing different numbers."""
    model = MODELS[arch]()
    before = logits(model)
    parameterize(model, spec, init="keep")
    assert len(parameterized_names(model)) == len(BLOCK_NAMES[arch])
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=0)


def test_lowrank_at_full_rank_keeps_llama_logits() -> None:
    model = llama(kv_heads=4)  # every linear then has min(m, n) = 32
    before = logits(model)
    parameterize(model, {"class_path": "lowrank", "init_args": {"rank": 32}})
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=0)


def test_keep_initializes_from_the_old_weight_and_fresh_does_not() -> None:
    reference = gpt2()
    keep = parameterize(gpt2(), {"class_path": "dct", "init_args": {"compression": 1}}, init="keep")
    fresh = parameterize(gpt2(), {"class_path": "dct", "init_args": {"compression": 1}}, init="fresh")
    old = reference.transformer.h[0].attn.c_attn
    for model, equal in ((keep, True), (fresh, False)):
        layer = model.transformer.h[0].attn.c_attn
        assert torch.allclose(layer.weight, old.weight.t(), atol=1e-6) is equal
    # fresh: the parameterization's own init, a zero bias; keep: the old bias.
    assert torch.equal(keep.transformer.h[0].attn.c_attn.bias, old.bias)
    assert not fresh.transformer.h[0].attn.c_attn.bias.any()


# -- exact stored counts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("selection", ["lowpass", "zigzag", "random"])
def test_compression_4_stores_a_quarter_of_every_matched_weight(arch: str, selection: str) -> None:
    """K = round(mn/4) per layer (lowpass: the m/2 × n/2 block, also mn/4 since every width here is even); the
    model's parameter count drops by exactly Σ(mn − K) over the matched linears, and every other tensor
    (embeddings, norms, biases, the head) is the one it was."""
    model = MODELS[arch]()
    original = {name: t.clone() for name, t in model.state_dict().items()}
    total_before = sum(p.numel() for p in model.parameters())
    shapes = dense_shapes(model)
    spec = {"class_path": "dct", "init_args": {"compression": 4, "selection": selection}}
    parameterize(model, spec)

    names = BLOCK_NAMES[arch]
    expected = {name: round(shapes[name][0] * shapes[name][1] / 4) for name in names}
    layers = {name: model.get_submodule(name) for name in names}
    assert {name: layer.stored for name, layer in layers.items()} == expected
    assert {name: layer.coef.numel() for name, layer in layers.items()} == expected
    saved = sum(shapes[name][0] * shapes[name][1] - expected[name] for name in names)
    assert sum(p.numel() for p in model.parameters()) == total_before - saved

    state = model.state_dict()
    weights = {f"{name}.weight" for name in names}
    for key, value in original.items():
        if key not in weights:
            assert torch.equal(state[key], value), key
    assert not weights & set(state)

    rows, totals = parameter_report(model)  # the analysis report works on a third-party model too
    assert [row.name for row in rows] == names
    assert (totals.stored, totals.dense) == (total_before - saved, total_before)
    assert totals.linear_stored == sum(expected.values())


# -- training ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_training_lowers_the_loss_and_changes_only_the_models_parameters(arch: str) -> None:
    """20 AdamW steps on one batch: the loss falls; what changed is the coefficients and the model's other
    parameters; the DCT bases and positions (non-persistent buffers) are unchanged."""
    model = MODELS[arch]()
    parameterize(model, {"class_path": "dct", "init_args": {"compression": 4, "selection": "random"}})
    params = dict(model.named_parameters())
    before = {name: t.detach().clone() for name, t in [*params.items(), *model.named_buffers()]}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(20):
        loss = model(TOKENS, labels=TOKENS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses

    after = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    changed = {name for name, value in before.items() if not torch.equal(after[name], value)}
    assert changed <= set(params)
    assert {f"{name}.coef" for name in BLOCK_NAMES[arch]} <= changed
    buffers = {name for name, _ in model.named_buffers()}
    assert {f"{BLOCK_NAMES[arch][0]}.{b}" for b in ("basis_out", "basis_in", "positions")} <= buffers
    assert not buffers & changed


# -- densify -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "dense_class"), [("gpt2", Conv1D), ("llama", nn.Linear)])
def test_densify_gives_the_same_logits_and_the_models_own_classes(arch: str, dense_class: type, tmp_path: Path) -> None:
    model = MODELS[arch]()
    parameterize(model, {"class_path": "dct", "init_args": {"compression": 4, "selection": "zigzag"}})
    with torch.no_grad():  # move away from the projection so that densify has trained-looking weights to keep
        for name in parameterized_names(model):
            model.get_submodule(name).coef.mul_(1.5)
    parameterized = logits(model)

    assert densify(model) is model
    assert parameterized_names(model) == []
    assert {type(model.get_submodule(name)) for name in BLOCK_NAMES[arch]} == {dense_class}
    torch.testing.assert_close(logits(model), parameterized, atol=1e-6, rtol=0)

    model.save_pretrained(tmp_path / "saved")
    reloaded = type(model).from_pretrained(tmp_path / "saved").eval()
    torch.testing.assert_close(logits(reloaded), parameterized, atol=1e-6, rtol=0)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = MODELS[arch](seed=1)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"), strict=True)
    torch.testing.assert_close(logits(fresh), parameterized, atol=1e-6, rtol=0)


def test_densify_keeps_dtype_and_frozen_parameters() -> None:
    model = llama().to(torch.bfloat16)
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(False)
    parameterize(model, "dct", ["model.layers.0.mlp.*"])
    down = model.model.layers[0].mlp.down_proj
    assert down.coef.dtype == torch.bfloat16 and not down.coef.requires_grad
    assert model.model.layers[0].mlp.up_proj.coef.requires_grad
    assert down.basis_in.dtype == torch.float32  # the bases are rebuilt in float32, not rounded to bf16
    densify(model)
    down = model.model.layers[0].mlp.down_proj
    assert type(down) is nn.Linear and down.weight.dtype == torch.bfloat16 and not down.weight.requires_grad


# -- state-dict round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "spec", "patterns"),
    [
        ("gpt2", {"class_path": "dct", "init_args": {"compression": 4, "selection": "random", "seed": 3}}, None),
        ("llama", {"class_path": "dct", "init_args": {"compression": 2}}, ["*.self_attn.*", "*.mlp.up_proj"]),
        ("llama", {"class_path": "lowrank", "init_args": {"rank": 4}}, ["*_proj", "lm_head"]),
        ("llama", {"class_path": "kronecker", "init_args": {"compression": 4}}, None),
    ],
    ids=["gpt2-dct-random", "llama-dct-some", "llama-lowrank-with-head", "llama-kronecker"],
)
def test_state_dict_holds_trainable_values_only_and_reloads_into_a_fresh_conversion(
    arch: str, spec: dict, patterns: list[str] | None
) -> None:
    model = parameterize(MODELS[arch](), spec, patterns)
    state = model.state_dict()
    assert not [k for k in state if re.search(r"basis|positions", k)]
    stored = {k.rsplit(".", 1)[1] for name in parameterized_names(model) for k in state if k.startswith(f"{name}.")}
    assert stored <= {"coef", "A", "B", "bias"} and stored & {"coef", "A"}
    expected = logits(model)

    other = parameterize(MODELS[arch](seed=1), spec, patterns, init="fresh")
    assert not torch.allclose(logits(other), expected, atol=1e-3)
    other.load_state_dict(state, strict=True)
    assert parameterized_names(other) == parameterized_names(model)
    torch.testing.assert_close(logits(other), expected, atol=0, rtol=0)


# -- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patterns", [["lm_head"], ["*"], ["transformer.h.0.attn.c_attn", "lm_head"]])
def test_a_tied_weight_is_an_error_naming_the_pair_and_nothing_is_replaced(patterns: list[str]) -> None:
    model = gpt2()
    with pytest.raises(ConfigError) as err:
        parameterize(model, "dct", patterns)
    message = str(err.value)
    assert "\n" not in message
    assert "lm_head.weight is tied to transformer.wte.weight" in message
    assert parameterized_names(model) == []  # checked before any layer is replaced


def test_a_pattern_that_matches_nothing_lists_the_models_linears() -> None:
    with pytest.raises(ConfigError) as err:
        parameterize(gpt2(), "dct", ["transformer.h.*.attn.c_attn", "*.q_proj"])
    assert str(err.value) == (
        "parameterize pattern(s) '*.q_proj' match no linear layer; the model's linears are: "
        "transformer.h.*.attn.c_attn, transformer.h.*.attn.c_proj, transformer.h.*.mlp.c_fc, "
        "transformer.h.*.mlp.c_proj, lm_head"
    )


def test_a_long_list_of_linears_is_shortened() -> None:
    model = nn.ModuleDict({f"branch{i}": nn.Linear(2, 2) for i in range(20)})
    with pytest.raises(ConfigError, match=r"branch0, branch1, .*, branch11, \.\.\. \(8 more\)$"):
        parameterize(model, "dense", ["nothing"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init": "dense"}, "init='dense' is not valid: expected one of keep, fresh"),
        ({"patterns": "*.attn.*"}, "patterns='*.attn.*' is not valid: expected a list of fnmatch patterns"),
        ({"patterns": [3]}, "patterns=[3] is not valid: expected a list of fnmatch patterns"),
        ({"parameterization": "dtc"}, "unknown parameterization 'dtc'"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict, message: str) -> None:
    model = gpt2()
    with pytest.raises(ConfigError, match=re.escape(message)):
        parameterize(model, **{"parameterization": "dct", **kwargs})
    assert parameterized_names(model) == []


def test_a_layer_that_cannot_be_built_leaves_the_model_as_it_was() -> None:
    """Rank 32 fits q_proj (32×32) but not k_proj (16×32): the error comes after q_proj was replaced, and the
    original q_proj is put back."""
    model = llama()
    before = logits(model)
    q_proj = model.model.layers[0].self_attn.q_proj
    with pytest.raises(ConfigError, match=r"rank=32 is out of range for a 16x32 weight"):
        parameterize(model, {"class_path": "lowrank", "init_args": {"rank": 32}})
    assert parameterized_names(model) == []
    assert model.model.layers[0].self_attn.q_proj is q_proj
    torch.testing.assert_close(logits(model), before, atol=0, rtol=0)


def test_a_model_without_linears_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no linear layer to parameterize"):
        parameterize(nn.Sequential(nn.Embedding(4, 4), nn.LayerNorm(4)), "dct")


# -- any torch module --------------------------------------------------------------------------------------


def test_a_plain_sequential_of_linears() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    x = torch.randn(5, 8)
    before = model(x).detach()
    parameterize(model, {"class_path": "dct", "init_args": {"compression": 1}})
    assert parameterized_names(model) == ["0", "2"]  # no get_output_embeddings(), no lm_head: every linear
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)
    densify(model)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear] and model[2].bias is None
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)

    parameterize(model, {"class_path": "lowrank", "init_args": {"rank": 2}}, ["2"])
    assert parameterized_names(model) == ["2"] and model[2].stored == 2 * (16 + 4)


def test_parameterized_layers_are_left_as_they_are_so_calls_compose() -> None:
    model = llama()
    parameterize(model, "lowrank", ["*.mlp.*"])
    mlp = model.model.layers[0].mlp.up_proj
    parameterize(model, "dct")  # the default patterns: every other block linear
    assert model.model.layers[0].mlp.up_proj is mlp
    kinds = {type(model.get_submodule(name)).__name__ for name in BLOCK_NAMES["llama"]}
    assert kinds == {"LowRankLinear", "DCTLinear"}
    assert len(parameterized_names(model)) == len(BLOCK_NAMES["llama"])
    parameterize(model, "dct", ["*.mlp.up_proj"])  # matches a linear, already parameterized: no change
    parameterize(model, "dct")  # nothing left to convert: no change, no error
    assert model.model.layers[0].mlp.up_proj is mlp
    assert len(parameterized_names(model)) == len(BLOCK_NAMES["llama"])


def test_a_module_shared_by_two_parents_is_replaced_under_both_names() -> None:
    shared = nn.Linear(6, 6)
    model = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.Sequential(shared)})
    parameterize(model, "dct", ["a.0"])
    assert isinstance(model["a"][0], ParameterizedLinear) and model["a"][0] is model["b"][0]


# -- the README example ------------------------------------------------------------------------------------


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ```python block of the README's "Use it on your own model", run as is in a scratch folder: it trains
    a parameterized GPT-2 and writes a plain ``transformers`` checkpoint that loads with ``from_pretrained``."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Use it on your own model\n(.*?)(?=^## |\Z)", readme, flags=re.S | re.M)
    assert section, "README.md has no section '## Use it on your own model'"
    (code,) = re.findall(r"```python\n(.*?)```", section.group(1), flags=re.S)
    assert len(code.strip().splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)

    (saved,) = [path.parent for path in tmp_path.glob("*/config.json")]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(saved)
    assert not parameterized_names(reloaded)
    model = namespace["model"]
    tokens = torch.randint(0, model.config.vocab_size, (1, 8))
    torch.testing.assert_close(logits(reloaded.eval(), tokens), logits(model.eval(), tokens), atol=1e-6, rtol=0)
    assert math.isfinite(namespace["loss"].item())
