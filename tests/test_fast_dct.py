"""The fast DCTs and the DCT layer's transform path: transforms against the DCT matrix, the layer against its own
materialized path (outputs and gradients), the staircase of a zigzag support, the cost model's choices, the
``path`` option, torch.compile and the state_dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from spectral_lightning import GPT, GPTConfig
from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations import DCT, DCTLinear, dct_cost, dct_matrix, fast_dct, resolve
from spectral_lightning.parameterizations.dct import select_positions
from spectral_lightning.parameterizations.dct_cost import Calibration, transform_pays
from spectral_lightning.parameterizations.fast_dct import dct_ii, dct_iii, staircase, staircase_heights

# Powers of two, 7-smooth, odd and prime lengths (Makhoul's reordering differs for odd n).
LENGTHS = [1, 2, 3, 4, 5, 7, 8, 12, 13, 16, 17, 31, 40, 64, 97, 128]


def keeps(n: int) -> list[int]:
    """Every branch of the transforms: keep ≤ n/2 + 1 (real parts only) and above it (imaginary parts too)."""
    return sorted({1, max(1, n // 2), min(n, n // 2 + 1), min(n, (n + 1) // 2 + 1), max(1, n - 1), n})


# -- the transforms ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", LENGTHS)
def test_dct_ii_equals_the_matrix(n: int) -> None:
    x = torch.randn(2, 3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    c = dct_matrix(n)
    for keep in keeps(n):
        got = dct_ii(x, keep)
        assert got.shape == (2, 3, keep) and got.dtype == torch.float64
        torch.testing.assert_close(got, x @ c[:keep].t(), atol=1e-10, rtol=0)
    torch.testing.assert_close(dct_ii(x), x @ c.t(), atol=1e-10, rtol=0)  # keep defaults to n


@pytest.mark.parametrize("n", LENGTHS)
def test_dct_iii_inverts_from_leading_coefficients(n: int) -> None:
    c = dct_matrix(n)
    for keep in keeps(n):
        y = torch.randn(4, keep, dtype=torch.float64, generator=torch.Generator().manual_seed(keep))
        torch.testing.assert_close(dct_iii(y, n), y @ c[:keep], atol=1e-10, rtol=0)
    x = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(dct_iii(dct_ii(x), n), x, atol=1e-10, rtol=0)  # orthonormal: an exact round trip


def test_transforms_run_in_float32_and_return_the_input_dtype() -> None:
    x = torch.randn(5, 24)
    c = dct_matrix(24, torch.float32)
    torch.testing.assert_close(dct_ii(x, 10), x @ c[:10].t(), atol=1e-5, rtol=1e-5)
    half = x.to(torch.bfloat16)
    out = dct_ii(half, 10)
    assert out.dtype == torch.bfloat16  # computed in float32 (no bf16 FFT), cast back
    torch.testing.assert_close(out.float(), half.float() @ c[:10].t(), atol=2e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dct_iii(x[:, :10], 24).dtype == torch.float32


def test_transforms_are_differentiable() -> None:
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dct_ii(t, 5), (x,))
    y = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dct_iii(t, 9), (y,))


@pytest.mark.parametrize(
    "call, fragments",
    [
        pytest.param(lambda: dct_ii(torch.randn(2, 8), 0), ["keep=0", "[1, 8]"], id="keep<1"),
        pytest.param(lambda: dct_ii(torch.randn(2, 8), 9), ["keep=9", "[1, 8]"], id="keep>n"),
        pytest.param(lambda: dct_iii(torch.randn(2, 9), 8), ["=9", "[1, 8]"], id="k>n"),
    ],
)
def test_bad_lengths_raise(call, fragments: list[str]) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as err:
        call()
    assert all(f in str(err.value) for f in fragments), str(err.value)


# -- the staircase of a zigzag support ---------------------------------------------------------------------------


def test_staircase_trades_covered_zeros_against_strips() -> None:
    heights = (3, 3, 2, 2, 1)
    assert staircase(heights, strip_cost=0.0) == ((3, 0, 2), (2, 2, 4), (1, 4, 5))  # exact: one strip per step
    assert staircase(heights, strip_cost=100.0) == ((3, 0, 5),)  # strips dear: the whole corner
    with pytest.raises(ConfigError):
        staircase((2, 3))  # rising


@pytest.mark.parametrize("m, n, c", [(96, 40, 2), (40, 96, 4), (384, 128, 2), (128, 512, 16), (2048, 768, 4)])
def test_zigzag_strips_cover_each_coefficient_once_with_few_products(m: int, n: int, c: int) -> None:
    k = round(m * n / c)
    positions = select_positions(m, n, k, "zigzag", 0)
    rows, cols = positions // n, positions % n
    ra, cb = int(rows.max()) + 1, int(cols.max()) + 1
    heights = staircase_heights(rows, cols, cb)
    assert heights is not None
    strips = staircase(heights)
    # The strips partition the columns [0, cb), the first is the full height, each is as tall as its columns.
    assert strips[0][0] == ra and strips[0][1] == 0 and strips[-1][2] == cb
    assert all(prev[2] == nxt[1] for prev, nxt in zip(strips, strips[1:], strict=False))
    covered = torch.zeros(ra, cb, dtype=torch.long)
    for a, s, e in strips:
        covered[:a, s:e] += 1
    assert bool((covered[rows, cols] == 1).all())  # every stored coefficient in exactly one strip
    area = int(covered.sum())
    assert len(strips) <= 8 and area < 1.25 * k < ra * cb  # a few products, far less than the full corner


def test_staircase_heights_rejects_a_random_support() -> None:
    positions = select_positions(32, 32, 256, "random", 0)
    assert staircase_heights(positions // 32, positions % 32, int((positions % 32).max()) + 1) is None


# -- the layer: the same function on both paths ------------------------------------------------------------------

LAYER_CASES = [
    pytest.param(sel, m, n, c, id=f"{sel}-{m}x{n}-c{c}")
    for sel in ("lowpass", "zigzag")
    for m, n, c in [(96, 40, 2), (96, 40, 16), (40, 96, 4), (1376, 512, 4)]
]


def layer_pair(selection: str, m: int, n: int, c: float, dtype: torch.dtype) -> tuple[DCTLinear, DCTLinear]:
    """A transform-path layer and a materializing one with the same coefficients and a non-zero bias."""
    torch.manual_seed(0)
    fast = DCT(compression=c, selection=selection, path="transform").build(n, m).to(dtype)
    slow = DCT(compression=c, selection=selection, path="materialize").build(n, m).to(dtype)
    with torch.no_grad():
        fast.bias.normal_()
    slow.load_state_dict(fast.state_dict())
    return fast, slow


def outputs_and_grads(layer: DCTLinear, x: Tensor, g: Tensor) -> list[Tensor]:
    x = x.detach().requires_grad_()
    y = layer(x)
    return [y, *torch.autograd.grad(y, (x, layer.coef, layer.bias), g)]


@pytest.mark.parametrize("selection, m, n, c", LAYER_CASES)
def test_transform_path_equals_materialized_in_float64(selection: str, m: int, n: int, c: float) -> None:
    fast, slow = layer_pair(selection, m, n, c, torch.float64)
    x = torch.randn(2, 3, n, dtype=torch.float64)
    g = torch.randn(2, 3, m, dtype=torch.float64)
    for got, want in zip(outputs_and_grads(fast, x, g), outputs_and_grads(slow, x, g), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("selection, m, n, c", LAYER_CASES)
def test_transform_path_equals_materialized_in_float32(selection: str, m: int, n: int, c: float) -> None:
    fast, slow = layer_pair(selection, m, n, c, torch.float32)
    x, g = torch.randn(7, n), torch.randn(7, m)
    for got, want in zip(outputs_and_grads(fast, x, g), outputs_and_grads(slow, x, g), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5 * float(want.detach().abs().max()), rtol=1e-5)


@pytest.mark.parametrize("selection", ["lowpass", "zigzag"])
def test_rows_streamed_in_chunks_give_the_same_result(selection: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = layer_pair(selection, 48, 40, 4, torch.float64)
    x, g = torch.randn(13, 40, dtype=torch.float64), torch.randn(13, 48, dtype=torch.float64)
    expected = outputs_and_grads(slow, x, g)
    monkeypatch.setattr(fast_dct, "chunk_rows", lambda m, n, device: 5)  # 13 rows: chunks of 5, 5 and 3
    for got, want in zip(outputs_and_grads(fast, x, g), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("selection", ["lowpass", "zigzag"])
def test_transform_path_gradcheck(selection: str) -> None:
    layer = DCT(compression=3, selection=selection, path="transform").build(12, 10).double()
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    coef = layer.coef.detach().clone().requires_grad_()
    bias = torch.randn(10, dtype=torch.float64, requires_grad=True)

    def forward(x: Tensor, coef: Tensor, bias: Tensor) -> Tensor:
        return torch.func.functional_call(layer, {"coef": coef, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(forward, (x, coef, bias))


def test_double_rebuilds_exact_float64_bases() -> None:
    layer = DCT(compression=4, selection="zigzag").build(40, 24).double()
    exact = dct_matrix(24)[: layer.ra].t() @ layer.coefficient_matrix() @ dct_matrix(40)[: layer.cb]
    torch.testing.assert_close(layer.weight, exact, atol=1e-14, rtol=0)


def test_bf16_autocast_output_has_autocast_dtype() -> None:
    fast, slow = layer_pair("lowpass", 48, 32, 4, torch.float32)
    x = torch.randn(6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_fast, y_slow = fast(x), slow(x)
    assert y_fast.dtype == y_slow.dtype == torch.bfloat16
    torch.testing.assert_close(y_fast.float(), y_slow.float(), atol=2e-2, rtol=2e-2)


# -- forcing, refusing and the cost model ------------------------------------------------------------------------


def test_forced_paths_take_their_path(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = layer_pair("zigzag", 48, 32, 4, torch.float32)
    x = torch.randn(6, 32)
    expected = F.linear(x, slow.weight.detach(), slow.bias)
    assert fast.uses_transform(x) and not slow.uses_transform(x)

    def no_weight(self: DCTLinear) -> Tensor:
        raise AssertionError("the transform path must not rebuild W")

    def no_transform(*args: object) -> Tensor:
        raise AssertionError("the materializing path must not run the transforms")

    with monkeypatch.context() as patch:
        patch.setattr(DCTLinear, "reconstruct", no_weight)
        torch.testing.assert_close(fast(x), expected, atol=1e-5, rtol=1e-5)
    with monkeypatch.context() as patch:
        patch.setattr(fast_dct._SpectralProduct, "apply", no_transform)
        torch.testing.assert_close(slow(x), expected, atol=1e-6, rtol=1e-6)


def test_transform_refuses_a_random_selection() -> None:
    with pytest.raises(ConfigError) as err:
        DCT(selection="random", path="transform")
    assert all(f in str(err.value) for f in ("path", "random", "lowpass", "zigzag")), str(err.value)
    with pytest.raises(ConfigError, match="path='transform'"):
        DCTLinear(32, 32, k=100, selection="random", path="transform")
    with pytest.raises(ConfigError) as err:
        DCT(path="fast")
    assert all(f in str(err.value) for f in ("path='fast'", "auto", "materialize", "transform")), str(err.value)
    # auto on a random selection is allowed and always materializes.
    layer = DCT(selection="random").build(32, 32)
    assert layer._strips is None and not layer.uses_transform(torch.randn(10_000, 32))


def test_a_moving_support_always_materializes() -> None:
    layer = DCT(path="transform").build(32, 48)
    x = torch.randn(5, 32)
    assert layer.uses_transform(x)
    layer.support_moves = True  # what an adaptive support sets: its strips would go stale
    assert not layer.uses_transform(x)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


CAL = Calibration(fft=2.0, elem=50.0, op=1.5e5)  # fixed constants: the choices below do not depend on a timing


def costs_choice(m: int, n: int, c: float, tokens: int, grad: bool, cached: bool = False) -> bool:
    a, b = round(m / c**0.5), round(n / c**0.5)
    return transform_pays(m, n, a, b, ((a, 0, b),), tokens, grad, cached, CAL)


def test_cost_model_picks_each_path_where_it_pays() -> None:
    assert not costs_choice(16, 16, 4, tokens=4, grad=True)  # tiny: a few launches more than the whole product
    assert costs_choice(4096, 4096, 16, tokens=65_536, grad=True)  # wide, compressed, many tokens
    # One token: training pays a whole rebuild of W, evaluation with a cached W only the m×n product.
    assert costs_choice(768, 768, 4, tokens=1, grad=True)
    assert not costs_choice(768, 768, 4, tokens=1, grad=False, cached=True)


def test_auto_decides_per_token_bucket_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dct_cost.CALIBRATIONS, ("cpu", None, torch.float32), CAL)
    monkeypatch.setattr(dct_cost, "DECISIONS", {})
    layer = DCT(compression=16).build(768, 768)
    many, few = torch.zeros(1).expand(65_536, 768), torch.zeros(1, 768)  # shapes only: no memory
    assert layer.uses_transform(many)
    with torch.no_grad():
        assert not layer.uses_transform(few)  # W is cached in evaluation: one small product is cheaper
    assert len(dct_cost.DECISIONS) == 2
    assert layer.uses_transform(torch.zeros(1).expand(40_000, 768))  # 40,000 < 2¹⁶ ≤ 65,536: another bucket
    assert len(dct_cost.DECISIONS) == 3


def test_calibration_is_measured_once_per_device_and_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dct_cost, "CALIBRATIONS", {})
    first = dct_cost.calibration(torch.device("cpu"), torch.bfloat16)
    assert first.fft > 0 and first.op > 0
    assert list(dct_cost.CALIBRATIONS) == [("cpu", None, torch.float32)]  # bf16 runs the float32 transforms
    assert dct_cost.calibration(torch.device("cpu"), torch.float32) is first


def test_a_checkpoint_carries_the_calibration_and_a_resumed_run_takes_the_same_paths(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two processes measure slightly different costs; near a tie they would choose different paths, and a resumed
    run would then differ from the uninterrupted one in float rounding. The checkpoint keeps what was measured."""
    from spectral_lightning.module import SpectralLM

    key = ("cpu", None, torch.float32)
    slow_fft = dct_cost.Calibration(fft=1e4, elem=1e4, op=CAL.op)  # transforms priced far above any product
    monkeypatch.setattr(dct_cost, "CALIBRATIONS", {key: CAL})
    monkeypatch.setattr(dct_cost, "DECISIONS", {})
    module = SpectralLM(vocab="abcdefgh", block_size=16, n_layer=1, n_head=2, n_embd=32, parameterization="dct")
    layer = DCT(compression=16).build(768, 768)
    many = torch.zeros(1).expand(65_536, 768)
    assert layer.uses_transform(many)  # with the run's measured costs
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["dct_calibration"] == {"cpu:None:torch.float32": {"fft": CAL.fft, "elem": CAL.elem, "op": CAL.op}}

    dct_cost.CALIBRATIONS[key] = slow_fft  # a new process, which measured otherwise
    dct_cost.DECISIONS.clear()
    assert not layer.uses_transform(many)
    module.on_load_checkpoint(checkpoint)  # resuming: the checkpoint's costs, the decisions taken again
    assert dct_cost.CALIBRATIONS[key] == CAL and layer.uses_transform(many)
    module.on_load_checkpoint({})  # an older checkpoint without them: the process keeps its own
    assert dct_cost.CALIBRATIONS[key] == CAL


# -- the option, checkpoints, batching, torch.compile ------------------------------------------------------------


def test_path_is_an_option_but_not_state() -> None:
    assert DCT().path == "auto" and DCT() == DCT(path="auto") != DCT(path="materialize")
    spec = DCT(path="transform").spec()
    assert spec["init_args"]["path"] == "transform" and resolve(spec) == DCT(path="transform")
    layers = {p: DCT(selection="zigzag", path=p).build(40, 24) for p in ("auto", "materialize", "transform")}
    keys = {p: set(layer.state_dict()) for p, layer in layers.items()}
    assert keys["auto"] == keys["materialize"] == keys["transform"] == {"coef", "bias"}
    # A checkpoint of any path loads into any other (strictly) and gives the same outputs.
    layers["transform"].load_state_dict(layers["materialize"].state_dict())
    x = torch.randn(3, 40)
    torch.testing.assert_close(layers["transform"](x), layers["materialize"](x), atol=1e-6, rtol=1e-5)


def test_a_forced_transform_layer_is_left_out_of_batched_rebuilds() -> None:
    assert DCT(path="transform").build(32, 32).batch_key() is None
    assert DCT().build(32, 32).batch_key() is not None


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("path", ["transform", "auto"])
@pytest.mark.parametrize("selection", ["lowpass", "zigzag"])
def test_compiled_model_matches_eager_without_graph_break(selection: str, path: str) -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = GPT(config, DCT(selection=selection, path=path))
    idx = torch.randint(20, (2, 16), generator=torch.Generator().manual_seed(1))
    explanation = torch._dynamo.explain(model)(idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a break would raise
    out_c, out_e = compiled(idx), model(idx)
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-5)
    params = list(model.parameters())
    grads_c = torch.autograd.grad(out_c.square().mean(), params)
    grads_e = torch.autograd.grad(out_e.square().mean(), params)
    for gc, ge in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(gc, ge, atol=1e-6, rtol=1e-4)
