"""torch.compile for every registered strategy: compiled outputs equal eager ones, a compiled model trains,
and the parameterized linears trace as one graph (no graph break).

On CPU the compiled model runs through the ``aot_eager`` backend (Dynamo tracing plus AOTAutograd, the parts
this project's layers must get through); Inductor's C++ code generation takes minutes on a small CPU. With a
GPU present the default backend (Inductor) is used.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import strategy_cases

from spectral_lightning import GPT, GPTConfig, SpectralLM
from spectral_lightning.parameterizations import ReconstructedLinear, resolve

BACKEND = "inductor" if torch.cuda.is_available() else "aot_eager"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

ROWS = strategy_cases()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_gpt(spec: dict) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32), resolve(spec)).to(DEVICE)


@pytest.mark.parametrize("case", ROWS, ids=[c[0] for c in ROWS])
def test_compiled_model_matches_eager_and_trains(case: tuple[str, dict]) -> None:
    model = tiny_gpt(case[1])
    compiled = torch.compile(model, backend=BACKEND)
    idx = torch.randint(20, (4, 16), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), model(idx), atol=1e-5, rtol=1e-5)
    # Gradients through the compiled graph equal eager ones, and two optimizer steps lower the loss.
    target = torch.roll(idx, -1, dims=1)
    loss_c = F.cross_entropy(compiled(idx).flatten(0, 1), target.flatten())
    grads_c = torch.autograd.grad(loss_c, list(model.parameters()))
    loss_e = F.cross_entropy(model(idx).flatten(0, 1), target.flatten())
    grads_e = torch.autograd.grad(loss_e, list(model.parameters()))
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge, atol=1e-5, rtol=1e-4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(compiled(idx).flatten(0, 1), target.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # After the steps the compiled model still follows the (updated) parameters.
    with torch.no_grad():
        torch.testing.assert_close(compiled(idx), model(idx), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ROWS, ids=[c[0] for c in ROWS])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_parameterized_linear_compiles_without_graph_break(case: tuple[str, dict], autocast: bool) -> None:
    layer = resolve(case[1]).build(32, 48).to(DEVICE)
    x = torch.randn(5, 32, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        explanation = torch._dynamo.explain(layer)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
        # fullgraph=True raises on any graph break; the weight property's eval cache is bypassed while compiling.
        y = torch.compile(layer, backend="eager", fullgraph=True)(x)
        with torch.no_grad():
            y_eval = torch.compile(layer, backend="eager", fullgraph=True)(x)
    expected = F.linear(x, layer.weight.detach(), layer.bias)
    tol = 2e-2 if autocast else 1e-6
    torch.testing.assert_close(y.float(), expected, atol=tol, rtol=tol)
    torch.testing.assert_close(y_eval.float(), expected, atol=tol, rtol=tol)
    # With autograd off the materialized weight is cached: it stays float32 when first built under autocast, and
    # an in-place update of the stored values (what an optimizer step does) is seen by the next call, eager and
    # compiled alike (a stale cache would still give the old outputs).
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        assert layer.weight.dtype == torch.float32
        old_weight = layer.weight.clone()
        for p in layer.weight_parameters():
            p.mul_(-1.5)  # any change of the stored values changes W (for B·A too: 2.25 W)
        eager = layer(x)
        compiled = torch.compile(layer, backend="eager", fullgraph=True)(x)
    with torch.enable_grad():  # autograd on: rebuilt from the stored values, never cached
        updated = F.linear(x, layer.weight.detach(), layer.bias)
    assert not torch.allclose(updated, F.linear(x, old_weight, layer.bias), atol=1e-3)
    torch.testing.assert_close(eager.float(), updated, atol=tol, rtol=tol)
    torch.testing.assert_close(compiled.float(), updated, atol=tol, rtol=tol)


def test_spectral_lm_compile_option_wraps_the_built_model() -> None:
    module = SpectralLM("abcdefgh", block_size=8, n_layer=1, n_head=2, n_embd=16, parameterization="dct", compile=True)
    keys = set(module.state_dict())
    module.configure_model()
    assert module._compiled is not None and module._compiled._orig_mod is module.model
    assert any(isinstance(m, ReconstructedLinear) for m in module._compiled._orig_mod.modules())  # swapped first
    assert set(module.state_dict()) == keys  # checkpoints keep plain `model.*` names


@pytest.mark.parametrize("batched", [False, True], ids=["per-layer", "batch_reconstruction"])
def test_whole_model_compiles_as_one_graph(batched: bool) -> None:
    """The GPT traces without a graph break, also with ``batch_reconstruction`` (the compiled graph rebuilds
    the weights layer by layer and leaves the fusing to the compiler)."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config, resolve("dct"), batch_reconstruction=batched).to(DEVICE)
    idx = torch.randint(20, (2, 16), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    explanation = torch._dynamo.explain(model)(idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend=BACKEND)
    torch.testing.assert_close(compiled(idx), model(idx), atol=1e-5, rtol=1e-5)
    assert all(layer._batched is None for group in model._batch_groups for layer in group)
