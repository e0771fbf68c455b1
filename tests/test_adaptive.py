"""Supports that move during training (``update_every``): the update maths on hand-built cases, the schedule,
fixed supports left as they were, exact resume, identical supports on two DDP ranks, exports, and option checks.

The CLI subprocess of the DDP test imports this module (for :class:`RecordSupports`), so it imports helpers, never
conftest."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from helpers import REPO, make_text, quiet_trainer
from lightning.pytorch.loggers.logger import Logger

from spectral_lightning import CharDataModule, ConfigError, SpectralLM, densify
from spectral_lightning.analysis import frequency_plane
from spectral_lightning.checkpoints import load_model, read_checkpoint
from spectral_lightning.cli import cli_main
from spectral_lightning.export import compressed_export, dense_export, save_atomic
from spectral_lightning.parameterizations import DCT, RandomBasis, dct_matrix
from spectral_lightning.parameterizations.adaptive import SupportSchedule, moving_layers, update_supports
from spectral_lightning.parameterizations.dct import select_positions
from spectral_lightning.support import AdaptiveSupport

pytestmark = pytest.mark.filterwarnings("ignore:.*logging interval", "ignore:The dirpath has changed")

TINY = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32}


def hand_built(coef: list[float], grad: dict[int, float], **options: Any) -> torch.nn.Module:
    """A 4×4 DCT layer with K = 6 zigzag positions [0, 1, 2, 4, 5, 8], the given coefficients and a captured
    Ĝ that is 0.1 everywhere except at ``grad``'s flat positions."""
    layer = DCT(k=6, selection="zigzag", update_every=1, update_until=1.0, **options).build(4, 4, bias=False)
    assert layer.positions.tolist() == [0, 1, 2, 4, 5, 8]
    with torch.no_grad():
        layer.coef.copy_(torch.tensor(coef))
    layer.arm_gradient_probe()
    g = torch.full((16,), 0.1)
    for position, value in grad.items():
        g[position] = value
    layer._probe.grad = g
    return layer


def adamw_with_moments(layers: list[torch.nn.Module]) -> torch.optim.AdamW:
    """AdamW over the layers' coefficients after one step, so its moments are non-zero."""
    params = [layer.coef for layer in layers]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for i, p in enumerate(params):
        p.grad = torch.linspace(1.0, 2.0, p.numel()) * (i + 1)
    saved = [p.detach().clone() for p in params]
    opt.step()
    with torch.no_grad():
        for p, value in zip(params, saved, strict=True):
            p.copy_(value)  # keep the hand-set coefficients
    return opt


# -- options and schedule ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [DCT, RandomBasis])
@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("update_every", 0, "update_every=0 is out of range: expected an integer >= 1"),
        ("update_every", 2.5, "update_every=2.5 is not valid: expected an integer >= 1"),
        ("update_until", 0.0, "update_until=0.0 is not valid: expected a number in (0, 1]"),
        ("update_until", 1.5, "update_until=1.5 is not valid: expected a number in (0, 1]"),
        ("drop_fraction", -0.1, "drop_fraction=-0.1 is not valid: expected a number in (0, 1]"),
        ("drop_fraction", True, "drop_fraction=True is not valid: expected a number in (0, 1]"),
        ("grow", "magnitude", "grow='magnitude' is not valid: expected one of gradient, random"),
        ("budget", "layer", "budget='layer' is not valid: expected one of per_layer, global, global_relative"),
        ("grow_window", 0, "grow_window=0 is out of range for update_every=10: expected an integer in [1, 10]"),
        ("grow_window", 11, "grow_window=11 is out of range for update_every=10: expected an integer in [1, 10]"),
        ("grow_window", 2.5, "grow_window=2.5 is not valid for update_every=10: expected an integer in [1, 10]"),
    ],
)
def test_bad_options_give_one_line_naming_option_and_range(cls: type, option: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        cls(**{"update_every": 10, option: value})
    assert str(err.value) == expected


def test_drop_fraction_follows_a_cosine_and_updates_stop_at_update_until() -> None:
    s = SupportSchedule(update_every=10, update_until=0.5, drop_fraction=0.3)
    total = 100  # updates at steps 10, 20, 30, 40; none from 50 = 0.5 · 100 on
    assert [t for t in range(total) if s.is_update_step(t, total)] == [10, 20, 30, 40]
    for t in (10, 20, 30, 40):
        assert s.fraction(t, total) == pytest.approx(0.15 * (1 + math.cos(math.pi * t / 50)), abs=1e-12)
    assert s.fraction(10, total) > s.fraction(20, total) > s.fraction(30, total) > s.fraction(40, total) > 0
    assert s.fraction(0, total) == s.fraction(15, total) == s.fraction(50, total) == s.fraction(60, total) == 0.0
    assert SupportSchedule.of(DCT()) is None
    assert SupportSchedule.of(DCT(update_every=7, grow="random")) == SupportSchedule(7, 0.75, 0.3, "random")
    assert SupportSchedule.of(RandomBasis(update_every=7, grow_window=3)).grow_window == 3


def test_grow_window_probes_the_steps_that_end_with_each_update() -> None:
    total = 100  # updates at 10, 20, 30, 40 (update_until 0.5)
    windowed = SupportSchedule(update_every=10, update_until=0.5, grow_window=3)
    assert [t for t in range(total) if windowed.is_probe_step(t, total)] == [
        8,
        9,
        10,
        18,
        19,
        20,
        28,
        29,
        30,
        38,
        39,
        40,
    ]
    whole = SupportSchedule(update_every=10, update_until=0.5, grow_window=10)  # every step from 1 to 40
    assert [t for t in range(total) if whole.is_probe_step(t, total)] == list(range(1, 41))
    for one in (SupportSchedule(10, 0.5), SupportSchedule(10, 0.5, grow="random", grow_window=3)):
        assert [t for t in range(total) if one.is_probe_step(t, total)] == [10, 20, 30, 40]  # the update steps
    assert windowed.fraction(9, total) == 0.0  # a window step does not update
    assert "grow gradient over 3 steps" in repr(DCT(selection="random", update_every=10, grow_window=3).build(8, 8))
    # The option is validated for a fixed support too, and has no effect there.
    assert DCT(grow_window=5).grow_window == 5
    with pytest.raises(ConfigError, match=r"grow_window=0 is out of range: expected an integer >= 1"):
        DCT(grow_window=0)


# -- fixed supports are what they were ----------------------------------------------------------------------
@pytest.mark.parametrize("selection", ["lowpass", "zigzag", "random"])
def test_fixed_support_layers_are_unchanged(selection: str) -> None:
    torch.manual_seed(0)
    fixed = DCT(selection=selection).build(48, 32)
    assert not fixed.support_moves and fixed.support is None
    assert list(fixed.state_dict()) == ["bias", "coef"]  # positions are derived, not saved
    assert fixed.coef.dim() == (2 if selection == "lowpass" else 1)
    x = torch.zeros(32 * 48)
    x[select_positions(32, 48, fixed.k, selection, 0)] = fixed.coef.detach().flatten().double().float()
    reference = dct_matrix(32).t() @ x.double().view(32, 48) @ dct_matrix(48)
    torch.testing.assert_close(fixed.weight.double(), reference, rtol=0, atol=1e-6)
    # The same options with a moving support start from the same positions and the same W.
    torch.manual_seed(0)
    moving = DCT(selection=selection, update_every=5).build(48, 32)
    assert moving.support_moves and list(moving.state_dict()) == ["bias", "coef", "positions"]
    assert moving.coef.shape == (moving.k,) and moving.k == fixed.k
    assert moving.positions.tolist() == select_positions(32, 48, fixed.k, selection, 0).tolist()
    with torch.no_grad():
        moving.coef.copy_(fixed.coef.flatten())
    torch.testing.assert_close(moving.weight, fixed.weight, rtol=0, atol=1e-6)


def test_only_models_with_moving_supports_get_the_callback() -> None:
    fixed = SpectralLM(vocab="abcdefgh", **TINY, parameterization=DCT(selection="random"))
    assert fixed.configure_callbacks() == []
    assert not any(k.endswith("positions") for k in fixed.state_dict())
    moving = SpectralLM(vocab="abcdefgh", **TINY, parameterization=DCT(selection="random", update_every=5))
    (callback,) = moving.configure_callbacks()
    assert isinstance(callback, AdaptiveSupport)
    assert len(moving_layers(moving)) == 4


# -- the update ----------------------------------------------------------------------------------------------
def test_update_drops_smallest_grows_largest_gradient_and_zeroes_new_moments() -> None:
    # Positions [0, 1, 2, 4, 5, 8]; the two smallest |x| sit at positions 1 and 4. The largest |Ĝ| are at the stored
    # positions 0 and 5 (never candidates), then at the unstored 15 and 7.
    layer = hand_built([0.5, -0.01, 0.3, 0.02, -0.4, 0.1], {0: 100.0, 5: -100.0, 15: -3.0, 7: 2.0, 3: 1.0})
    opt = adamw_with_moments([layer])
    before = {k: v.clone() for k, v in opt.state[layer.coef].items()}
    coef = layer.coef
    update = update_supports([layer], step=1, total_steps=1000, optimizers=[opt])  # d = round(6 · 0.333) = 2
    assert layer.coef is coef and layer.k == 6 and layer.coef.shape == (6,)
    assert layer.positions.tolist() == [0, 2, 5, 7, 8, 15]
    assert torch.equal(layer.coef.detach(), torch.tensor([0.5, 0.3, -0.4, 0.0, 0.1, 0.0]))  # moved, grown at 0
    assert layer.coef[3].item() == 0.0 and layer.coef[5].item() == 0.0  # exactly zero
    old = [0, 2, 4, -1, 5, -1]  # where each new coefficient came from (-1: grown)
    for key in ("exp_avg", "exp_avg_sq"):
        expected = torch.tensor([0.0 if i < 0 else before[key][i].item() for i in old])
        assert torch.equal(opt.state[layer.coef][key], expected), key
    assert torch.equal(opt.state[layer.coef]["step"], before["step"])
    assert update is not None and update.changed == pytest.approx(2 / 6) and update.k == [6]
    assert layer.coefficient_gradient() is None  # the probe is disarmed
    opt.step()  # the optimizer runs on with the remapped state


def test_random_growth_is_seeded_by_step_and_layer_and_lands_on_free_positions() -> None:
    def grown(step: int, index: int) -> list[int]:
        layers = [hand_built([0.5, -0.01, 0.3, 0.02, -0.4, 0.1], {}, grow="random") for _ in range(index + 1)]
        update_supports(layers, step=step, total_steps=1000)
        return layers[index].positions.tolist()

    first = grown(1, 0)
    assert len(first) == 6 and {0, 2, 5, 8} <= set(first) and not {1, 4} & set(first)
    assert first == grown(1, 0)
    assert len({tuple(first), tuple(grown(2, 0)), tuple(grown(1, 1)), tuple(grown(3, 0))}) > 1


def test_global_budget_moves_k_between_layers_keeps_the_total_and_reloads() -> None:
    options = {"budget": "global", "drop_fraction": 1 / 3}  # D = round(12 · 0.333) = 4
    small = hand_built([0.01, -0.02, 0.03, 0.04, -0.05, 0.06], {3: 1.0, 6: 2.0}, **options)
    large = hand_built([1.0, -2.0, 3.0, 4.0, -5.0, 6.0], {3: 10.0, 6: 20.0, 7: 30.0, 9: 40.0, 10: 50.0}, **options)
    model = torch.nn.ModuleList([small, large])
    opt = adamw_with_moments([small, large])
    update = update_supports(list(model), step=1, total_steps=1000, optimizers=[opt])
    # The 4 smallest |x| are all in `small` (which keeps its largest, 0.06 at position 8 ...); the 4 largest |Ĝ|
    # at free positions are all in `large`.
    assert small.k == 2 and large.k == 10 and small.k + large.k == 12
    assert small.positions.tolist() == [5, 8] and torch.equal(small.coef.detach(), torch.tensor([-0.05, 0.06]))
    assert large.positions.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert torch.equal(large.coef.detach(), torch.tensor([1.0, -2.0, 3.0, 4.0, -5.0, 0.0, 0.0, 6.0, 0.0, 0.0]))
    assert opt.state[large.coef]["exp_avg"].shape == (10,) and opt.state[small.coef]["exp_avg_sq"].shape == (2,)
    assert opt.state[large.coef]["exp_avg"][[5, 6, 8, 9]].abs().sum() == 0
    assert update is not None and update.k == [2, 10] and update.changed == pytest.approx(4 / 12)
    opt.step()

    # A freshly built model (K = 6 each) loads the state dict with the moved K.
    fresh = torch.nn.ModuleList([hand_built([0.0] * 6, {}, **options) for _ in range(2)])
    fresh.load_state_dict(model.state_dict())
    assert [layer.k for layer in fresh] == [2, 10] and fresh[1].coef.shape == (10,)
    for a, b in zip(fresh, model, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.positions, b.positions)


@pytest.mark.parametrize(
    "budget, small_after, large_after",
    [
        # Raw magnitudes: the 4 smallest |x| are all in `small`, the 4 largest |Ĝ| all in `large`.
        ("global", [5, 8], [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]),
        # Over each layer's mean: |x| / mean drops small's 0.001 (0.02) and large's 1, 2, 3 (0.29, 0.57, 0.86; small's
        # next is 0.96); |Ĝ| / mean grows small's 6 and 3 (4.7, 3.5) and large's 10 and 9 (3.8, 3.1; its 7: 2.3).
        ("global_relative", [1, 2, 3, 4, 5, 6, 8], [4, 5, 8, 9, 10]),
    ],
)
def test_global_budgets_compare_raw_or_relative_magnitudes(budget, small_after, large_after) -> None:
    options = {"budget": budget, "drop_fraction": 1 / 3}  # D = round(12 · 0.333) = 4
    small = hand_built([0.001, 0.040, -0.045, 0.050, -0.055, 0.060], {3: 1.5, 6: 2.0}, **options)
    large = hand_built([1.0, -2.0, 3.0, 4.0, -5.0, 6.0], {3: 10.0, 7: 30.0, 9: 40.0, 10: 50.0}, **options)
    old = [dict(zip(layer.positions.tolist(), layer.coef.detach().tolist(), strict=True)) for layer in (small, large)]
    opt = adamw_with_moments([small, large])
    update = update_supports([small, large], step=1, total_steps=1000, optimizers=[opt])
    assert small.positions.tolist() == small_after and large.positions.tolist() == large_after
    assert small.k + large.k == 12 and update is not None and update.k == [small.k, large.k]
    assert update.changed == pytest.approx(4 / 12)
    for layer, before in zip([small, large], old, strict=True):  # kept entries keep their value, grown ones are 0
        assert layer.coef.detach().tolist() == [before.get(p, 0.0) for p in layer.positions.tolist()]
        assert opt.state[layer.coef]["exp_avg"].shape == (layer.k,)


def test_probe_gradient_is_the_coefficient_space_gradient_with_and_without_batching() -> None:
    """Ĝ = C_m (∂L/∂W) C_nᵀ at every unstored position, and the batched reconstruction captures the same."""
    grads = {}
    for batched in (False, True):
        torch.manual_seed(0)
        module = SpectralLM(
            vocab="abcdefgh", **{**TINY, "n_layer": 2}, batch_reconstruction=batched,
            parameterization=DCT(selection="random", update_every=5),
        )  # fmt: skip
        layers = moving_layers(module)
        assert bool(module.model._batch_groups) == batched
        for layer in layers:
            layer.arm_gradient_probe()
        idx = torch.randint(8, (2, 17), generator=torch.Generator().manual_seed(1))
        logits = module(idx[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
        grads[batched] = [layer.coefficient_gradient().clone() for layer in layers]
    # Reference for the first layer: ∂L/∂W from a dense copy of the model, transformed.
    torch.manual_seed(0)
    module = SpectralLM(
        vocab="abcdefgh", **{**TINY, "n_layer": 2}, parameterization=DCT(selection="random", update_every=5)
    )
    layer = moving_layers(module)[0]
    dense = densify(copy.deepcopy(module.model))
    logits = dense(idx[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    g_w = dense.blocks[0].attn.qkv.weight.grad
    expected = dct_matrix(layer.out_features, torch.float32) @ g_w @ dct_matrix(layer.in_features, torch.float32).t()
    expected.view(-1)[layer.positions] = 0.0
    torch.testing.assert_close(grads[False][0], expected, rtol=1e-4, atol=1e-6)
    assert grads[False][0].abs().sum() > 0
    for a, b in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("budget", ["per_layer", "global"])
def test_compiled_model_captures_the_same_gradient_and_follows_moved_supports(budget: str) -> None:
    """Under ``torch.compile`` (aot_eager on the CPU: Dynamo and AOTAutograd, the parts the layers must get
    through) the armed probe captures the eager Ĝ, and after an update (new positions; under a global budget new
    sizes) the compiled model computes with the moved supports, not a stale graph."""
    torch._dynamo.reset()
    try:
        torch.manual_seed(0)
        parameterization = DCT(selection="random", update_every=1, update_until=1.0, budget=budget)
        module = SpectralLM(vocab="abcdefgh", **{**TINY, "n_layer": 2}, parameterization=parameterization)
        model = module.model
        compiled = torch.compile(model, backend="aot_eager")
        layers = moving_layers(module)
        idx = torch.randint(8, (2, 17), generator=torch.Generator().manual_seed(1))

        def probe(net: torch.nn.Module) -> list[torch.Tensor]:
            for layer in layers:
                layer.disarm_gradient_probe()
                layer.arm_gradient_probe()
            logits = net(idx[:, :-1])
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
            model.zero_grad()
            return [layer.coefficient_gradient().clone() for layer in layers]

        eager, traced = probe(model), probe(compiled)
        for a, b in zip(eager, traced, strict=True):
            assert a.abs().sum() > 0
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
        before = [layer.positions.clone() for layer in layers]
        update_supports(layers, step=1, total_steps=10)
        assert any(not torch.equal(b, layer.positions) for b, layer in zip(before, layers, strict=True))
        for layer in layers:
            layer.disarm_gradient_probe()
        with torch.no_grad():
            torch.testing.assert_close(compiled(idx[:, :-1]), model(idx[:, :-1]), rtol=1e-5, atol=1e-6)
    finally:
        torch._dynamo.reset()


# -- through Lightning: exports, logging ---------------------------------------------------------------------
class MetricsRecorder(Logger):
    """A logger that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))


@pytest.fixture(scope="module")
def trained_global(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[SpectralLM, CharDataModule, MetricsRecorder, Path]:
    """A tiny model with a global budget trained 8 steps (updates at steps 2, 4), saved as a .ckpt."""
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    dm = CharDataModule(path=str(path), block_size=16, batch_size=8, batches_per_epoch=4)
    L.seed_everything(0)
    spec = DCT(selection="random", update_every=2, budget="global", drop_fraction=0.5)
    module = SpectralLM(vocab=dm.vocab, **TINY, parameterization=spec, lr=1e-2, warmup_steps=0)
    recorder = MetricsRecorder()
    trainer = quiet_trainer(max_steps=8, logger=recorder)
    trainer.fit(module, dm)
    ckpt = path.parent / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return module.eval(), dm, recorder, ckpt


def test_trainer_updates_log_and_keep_the_total_k(trained_global) -> None:
    module, _, recorder, _ = trained_global
    layers = moving_layers(module)
    built = [layer.out_features * layer.in_features // 4 for layer in layers]
    assert [layer.k for layer in layers] != built and sum(layer.k for layer in layers) == sum(built)
    for layer in layers:
        assert layer.positions.shape == layer.coef.shape == (layer.k,)
        assert (
            torch.equal(layer.positions, layer.positions.sort().values) and layer.positions.unique().numel() == layer.k
        )
    updates = [(step, m) for step, m in recorder.metrics if "support/changed" in m]
    assert [step for step, _ in updates] == [2, 4]  # update steps 2 and 4 < 0.75 · 8
    assert all(0 < m["support/changed"] <= 0.5 for _, m in updates)
    last = updates[-1][1]
    assert [last[f"support/k/{name}"] for name in ("blocks.0.attn.qkv", "blocks.0.mlp.proj")] == [
        layers[0].k, layers[3].k,
    ]  # fmt: skip


class ProbeRecorder(L.Callback):
    """After each backward pass (micro-batch): the step, the first moving layer's probe (kept alive) and its Ĝ."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, torch.Tensor | None, torch.Tensor | None]] = []

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layer = moving_layers(pl_module)[0]
        probe = layer._probe
        grad = layer.coefficient_gradient()
        self.seen.append((trainer.global_step, probe, None if grad is None else grad.clone()))


def test_gradient_accumulation_captures_every_micro_batch_of_the_update_step(trained_global) -> None:
    _, dm, _, _ = trained_global
    L.seed_everything(0)
    module = SpectralLM(vocab=dm.vocab, **TINY, parameterization=DCT(selection="random", update_every=2))
    probes, recorder = ProbeRecorder(), MetricsRecorder()
    quiet_trainer(max_steps=6, accumulate_grad_batches=2, callbacks=[probes], logger=recorder).fit(module, dm)
    assert [step for step, m in recorder.metrics if "support/changed" in m] == [2, 4]
    armed = {}
    for step, probe, grad in probes.seen:
        assert (probe is not None) == (step in (2, 4)), step
        if probe is not None:
            armed.setdefault(step, []).append((probe, grad))
    for step, ((first, g1), (second, g2)) in armed.items():
        assert first is second, step  # one probe for both micro-batches: Ĝ adds up over them
        assert g1.abs().sum() > 0 and not torch.equal(g1, g2)


def windowed_probes(dm: CharDataModule, window: int) -> tuple[ProbeRecorder, SpectralLM]:
    """A tiny model with updates every 4 steps (at 4 and 8 < 0.75 · 12), Ĝ summed over ``window`` steps."""
    L.seed_everything(0)
    spec = DCT(selection="random", update_every=4, grow_window=window)
    module = SpectralLM(vocab=dm.vocab, **TINY, parameterization=spec, lr=1e-2, warmup_steps=0)
    probes = ProbeRecorder()
    quiet_trainer(max_steps=12, callbacks=[probes], logger=False).fit(module, dm)
    return probes, module


def test_grow_window_sums_the_gradients_of_its_steps_and_changes_the_decision(trained_global) -> None:
    _, dm, _, _ = trained_global
    runs = {w: windowed_probes(dm, w) for w in (1, 2, 3)}
    armed = {
        w: [(step, probe, grad) for step, probe, grad in p.seen if probe is not None] for w, (p, _) in runs.items()
    }
    assert [step for step, *_ in armed[1]] == [4, 8]
    assert [step for step, *_ in armed[3]] == [2, 3, 4, 6, 7, 8]
    three = dict((step, (probe, grad)) for step, probe, grad in armed[3])
    assert three[2][0] is three[3][0] is three[4][0] and three[4][0] is not three[6][0]  # one probe per window
    # Until the first update the three runs train identically (the probe leaves the forward unchanged), so the
    # window's sum at step 4 is step 2's Ĝ (window 3's first) + step 3's (window 2's first) + step 4's (window 1's).
    g2 = three[2][1]
    g3 = next(grad for step, _, grad in armed[2] if step == 3)
    g4 = next(grad for step, _, grad in armed[1] if step == 4)
    assert g2.abs().sum() > 0 and not torch.equal(g3, g4)
    torch.testing.assert_close(three[4][1], g2 + g3 + g4, rtol=1e-6, atol=1e-9)
    # The window's sum grows elsewhere than the last step's gradient alone.
    positions = {w: [layer.positions.clone() for layer in moving_layers(module)] for w, (_, module) in runs.items()}
    assert not all(torch.equal(a, b) for a, b in zip(positions[1], positions[3], strict=True))
    for layer in moving_layers(runs[3][1]):
        assert layer.positions.unique().numel() == layer.k == layer.out_features * layer.in_features // 4


def test_exports_and_checkpoints_round_trip_moved_supports(trained_global, tmp_path: Path) -> None:
    module, _, _, ckpt = trained_global
    x = torch.randint(len(module.tokenizer), (3, 16), generator=torch.Generator().manual_seed(0))
    expected = module(x)
    # Lightning checkpoint: a fresh model (every K as built) passes the resume check and loads the moved K.
    fresh = SpectralLM(**read_checkpoint(ckpt).hparams())
    read_checkpoint(ckpt).check_state_dict(fresh.state_dict())
    assert torch.equal(SpectralLM.load(ckpt)(x), expected)
    # Compressed export: positions travel in the state dict.
    save_atomic(compressed_export(module), tmp_path / "compressed.pt")
    raw = torch.load(tmp_path / "compressed.pt", weights_only=True)
    assert sum(k.endswith(".positions") for k in raw["state_dict"]) == 4
    assert torch.equal(SpectralLM.load(tmp_path / "compressed.pt")(x), expected)
    # Dense export and densify: the materialized weights.
    save_atomic(dense_export(module.model, module.hparams.vocab), tmp_path / "dense.pt")
    model, _ = load_model(tmp_path / "dense.pt")
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(densify(copy.deepcopy(module.model))(x), expected, rtol=1e-6, atol=0)
    # The spectrum image shows the current support: non-zero exactly at the layer's positions.
    for layer in moving_layers(module):
        plane = frequency_plane(layer)
        assert plane.shape == (layer.out_features, layer.in_features)
        assert torch.equal(plane.flatten().nonzero().squeeze(1), layer.positions[layer.coef != 0])


@pytest.mark.parametrize("name, budget", [("dct4x", "per_layer"), ("dct4x-global", "global")])
def test_adaptive_configs_parse_with_the_paper_budget(
    name: str, budget: str, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = REPO / "configs" / "adaptive" / f"{name}.yaml"
    assert f"python cli.py fit --config configs/adaptive/{name}.yaml" in config.read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", str(config), "--data.path", str(text_file), "--print_config"])
    assert exit_.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)
    options = printed["model"]["parameterization"]["init_args"]
    assert options["selection"] == "random" and options["update_every"] == 100 and options["budget"] == budget
    assert printed["trainer"]["max_steps"] == 5000 and printed["model"]["n_embd"] == 128  # shared/paper.yaml


# -- exact resume (CLI, as tests/test_resume.py) -----------------------------------------------------------------
RESUME_CONFIG = """\
seed_everything: 1
model:
  n_layer: 1
  n_head: 2
  n_embd: 32
  dropout: 0.1
  lr: 3.0e-3
  warmup_steps: 3
  min_lr: 1.0e-4
  parameterization:
    class_path: spectral_lightning.DCT
    init_args: {{compression: 4, selection: random, update_every: {every}, budget: {budget}, grow_window: {window}}}
data: {{path: tiny.txt, block_size: 16, batch_size: 4, batches_per_epoch: 5, val_fraction: 0.03}}
trainer:
  accelerator: cpu
  precision: 32-true
  max_steps: 12
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: ckpts, every_n_train_steps: 4, save_top_k: -1, filename: "s{{step}}",
                  auto_insert_metric_name: false}}
"""


def fit(folder: Path, budget: str, *extra: str, every: int = 3, window: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.txt").write_text(make_text(), encoding="utf-8")
    (folder / "config.yaml").write_text(
        RESUME_CONFIG.format(budget=budget, every=every, window=window), encoding="utf-8"
    )
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cli_main(["fit", "--config", "config.yaml", *extra])
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("budget", ["per_layer", "global", "global_relative"])
@pytest.mark.parametrize("every, window", [(3, 1), (5, 4)])
def test_resume_after_an_update_is_bit_exact(tmp_path: Path, budget: str, every: int, window: int) -> None:
    # (3, 1): updates at steps 3 and 6 (< 0.75 · 12); the checkpoint s4 is written at the end of update step 3 and
    # the resumed run crosses the update at step 6. (5, 4): one update, at step 5, from Ĝ summed over steps 2-5;
    # s4 is written inside that window (after step 3), so it holds the sum of steps 2 and 3, and the resumed run
    # adds steps 4 and 5 to it.
    fit(tmp_path / "full", budget, every=every, window=window)
    fit(tmp_path / "resumed", budget, "--ckpt_path", str(tmp_path / "full/ckpts/s4.ckpt"), every=every, window=window)
    start = torch.load(tmp_path / "full/ckpts/s4.ckpt", weights_only=True)
    window_state = start["callbacks"].get("AdaptiveSupport", {})
    assert (window_state.get("next_step"), len(window_state.get("gradients", []))) == (
        (4, 4) if window > 1 else (None, 0)
    )
    expected = torch.load(tmp_path / "full/ckpts/s12.ckpt", weights_only=True)
    actual = torch.load(tmp_path / "resumed/ckpts/s12.ckpt", weights_only=True)
    assert expected["global_step"] == actual["global_step"] == 12
    keys = [k for k in expected["state_dict"] if k.endswith(".positions")]
    assert len(keys) == 4 and not all(torch.equal(start["state_dict"][k], expected["state_dict"][k]) for k in keys)
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(tensor, actual["state_dict"][name]), name
    states_e, states_a = expected["optimizer_states"][0]["state"], actual["optimizer_states"][0]["state"]
    assert states_e.keys() == states_a.keys()
    for i, state in states_e.items():
        for key, value in state.items():
            assert torch.equal(value, states_a[i][key]), (i, key)
    assert actual["lr_schedulers"] == expected["lr_schedulers"]


# -- two DDP ranks -------------------------------------------------------------------------------------------
class RecordSupports(L.Callback):
    """Test-only (DDP subprocess): each rank saves its model's state dict at fit start and end to ``DIR/rank<r>.pt``.

    Args:
        out_dir: folder for the files.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.start: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        end = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        torch.save({"start": self.start, "end": end}, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


@pytest.mark.parametrize("budget, window", [("per_layer", 1), ("global", 1), ("global", 2), ("global_relative", 1)])
def test_two_ddp_ranks_hold_identical_supports(tmp_path: Path, text_file: Path, budget: str, window: int) -> None:
    out = tmp_path / "ranks"
    cmd = [
        sys.executable, "cli.py", "fit", "--config", "configs/adaptive/dct4x.yaml", "--config", "configs/ddp.yaml",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--data.path", str(text_file), "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32",
        "--model.warmup_steps", "0", "--data.block_size", "16", "--data.batch_size", "4",
        "--data.batches_per_epoch", "3", "--trainer.max_steps", "6", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--model.parameterization.init_args.update_every", "2",
        "--model.parameterization.init_args.budget", budget,
        "--model.parameterization.init_args.grow_window", str(window),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=test_adaptive.RecordSupports", f"--trainer.callbacks.out_dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    positions = [k for k in rank0["end"] if k.endswith(".positions")]
    assert len(positions) == 4
    assert not all(torch.equal(rank0["start"][k], rank0["end"][k]) for k in positions)  # the supports moved
    for name, value in rank0["end"].items():
        assert torch.equal(value, rank1["end"][name]), name
    total = sum(rank0["end"][k].numel() for k in positions)
    assert total == sum(rank0["start"][k].numel() for k in positions)
