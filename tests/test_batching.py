"""Batched reconstruction (``batch_reconstruction``): the same-shaped parameterized linears of all blocks are
rebuilt with one batched product per shape. It must change nothing but the number of kernels: the same
logits, gradients and training losses as layer-by-layer reconstruction, for every registered strategy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import REPO, quiet_trainer, strategy_cases

from spectral_lightning import GPT, CharDataModule, GPTConfig, SpectralLM
from spectral_lightning.parameterizations import (
    DCT,
    ReconstructedLinear,
    batch_groups,
    batched_weights,
    resolve,
)

CASES = strategy_cases()
N_LAYER = 3


def tiny(spec: dict, batched: bool, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=20, block_size=16, n_layer=N_LAYER, n_head=2, n_embd=32)
    return GPT(config, resolve(spec), batch_reconstruction=batched)


def logits_and_grads(model: GPT) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = torch.randint(20, (3, 16), generator=torch.Generator().manual_seed(1))
    logits = model(x)
    logits.square().mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_batched_reconstruction_gives_the_same_logits_and_gradients(case: tuple[str, dict]) -> None:
    plain = tiny(case[1], batched=False)
    batched = tiny(case[1], batched=True)
    reconstructed = [m for m in plain.modules() if isinstance(m, ReconstructedLinear)]
    # One group per block-linear shape (qkv, proj, fc, mlp.proj), each holding that linear of every block.
    expected_groups = 4 if reconstructed else 0
    assert len(batched._batch_groups) == expected_groups
    assert all(len(group) == N_LAYER for group in batched._batch_groups)
    ref_logits, ref_grads = logits_and_grads(plain)
    logits, grads = logits_and_grads(batched)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # The per-forward weights are released afterwards: nothing holds the autograd graph of the step.
    assert all(layer._batched is None for group in batched._batch_groups for layer in group)


def test_groups_keep_layers_with_different_options_apart() -> None:
    layers = [DCT(compression=2.0, selection=sel).build(32, 64) for sel in ("lowpass", "zigzag", "lowpass")]
    layers.append(DCT(compression=4.0, selection="lowpass").build(32, 64))  # another K
    layers.append(DCT(compression=2.0, selection="lowpass").build(64, 32))  # another shape
    groups = batch_groups(layers)
    assert groups == [[layers[0], layers[2]]]  # singletons are left to the per-layer path


def test_weights_are_released_when_the_forward_fails() -> None:
    model = tiny({"class_path": "dct"}, batched=True)
    block = model.blocks[1]
    handle = block.register_forward_pre_hook(lambda mod, args: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.zeros(1, 4, dtype=torch.long))
    handle.remove()
    assert all(layer._batched is None for group in model._batch_groups for layer in group)


def test_no_batching_without_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """In evaluation the per-layer cache already makes weights free: the batched path is not taken."""
    model = tiny({"class_path": "dct"}, batched=True)
    calls = []
    monkeypatch.setattr(
        type(model.blocks[0].attn.qkv), "reconstruct_batch", classmethod(lambda cls, layers: calls.append(1))
    )
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))
    assert calls == []


def test_fallback_reconstruct_batch_stacks_the_layers() -> None:
    """A strategy that declares a batch key but no batched product still gets correct weights."""
    layers = [DCT(compression=2.0, selection="random").build(16, 24) for _ in range(3)]
    for i, layer in enumerate(layers):
        torch.nn.init.normal_(layer.coef, generator=torch.Generator().manual_seed(i))
    stacked = ReconstructedLinear.reconstruct_batch.__func__(type(layers[0]), layers)
    with batched_weights([layers]):
        for layer, w in zip(layers, stacked, strict=True):
            torch.testing.assert_close(layer.weight, w)
            torch.testing.assert_close(layer.weight, layer.reconstruct())


class Record(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("spec", [{"class_path": "dct", "init_args": {"selection": "zigzag"}}, "lowrank"])
def test_training_losses_match_per_layer_reconstruction(tmp_path: Path, spec: object) -> None:
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 400, encoding="utf-8")
    losses = {}
    for batched in (False, True):
        L.seed_everything(0, verbose=False)
        data = CharDataModule(path=str(text), block_size=16, batch_size=4, batches_per_epoch=100)
        model = SpectralLM(
            data.vocab, block_size=16, n_layer=2, n_head=2, n_embd=32, parameterization=spec,
            warmup_steps=0, batch_reconstruction=batched,
        )  # fmt: skip
        record = Record()
        quiet_trainer(max_steps=8, callbacks=[record]).fit(model, datamodule=data)
        losses[batched] = record.losses
    assert len(losses[True]) == 8 and losses[True][-1] < losses[True][0]
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-5, atol=1e-6)


def test_batching_dispatches_fewer_matrix_products() -> None:
    """``benchmarks/op_count.py``'s count at the paper's size: rebuilding a lowpass DCT weight takes 4 matrix
    products per step (2 forward, 2 backward). Per layer that is 16 linears x 4; batched, 4 shapes x 4."""
    spec = importlib.util.spec_from_file_location("op_count", REPO / "benchmarks" / "op_count.py")
    op_count = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(op_count)
    products = {
        (name, batched): sum(op_count.count(op_count.CONFIGS[name], batched)[k] for k in op_count.PRODUCTS)
        for name in ("dense", "dct4x")
        for batched in (False, True)
    }
    assert products[("dense", True)] == products[("dense", False)]  # nothing to batch
    extra = products[("dct4x", False)] - products[("dense", False)]
    assert extra == 16 * 4  # 16 parameterized linears x 2 products x (forward + backward)
    assert products[("dct4x", True)] - products[("dense", False)] == 4 * 4  # 4 shapes, the same 4 each


@pytest.mark.parametrize("skips", [True, False])
def test_layers_that_skip_w_are_not_rebuilt(monkeypatch: pytest.MonkeyPatch, skips: bool) -> None:
    """path=auto low-pass DCT layers that take the transform path for this many tokens never need W, so the
    batched rebuild leaves them out; the others get their batched weights as before."""
    import spectral_lightning.parameterizations.dct as dct

    seen = []

    def decide(m, n, ra, cb, strips, tokens, device, dtype):  # noqa: ANN001, ANN202
        seen.append(tokens)
        return skips

    monkeypatch.setattr(dct, "choose_transform", decide)
    layers = [DCT(compression=4.0, selection="lowpass").build(32, 48) for _ in range(3)]
    with batched_weights([layers], tokens=4096):
        assert all((layer._batched is None) == skips for layer in layers)
        if not skips:
            for layer in layers:
                torch.testing.assert_close(layer._batched, layer.reconstruct())
    assert seen == [4096] * 3
    assert all(layer._batched is None for layer in layers)


def test_a_model_forward_skips_the_rebuild_of_transform_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPT passes B·T to the batched rebuild: with every layer on the transform path nothing is rebuilt,
    and the logits are those of per-layer execution."""
    import spectral_lightning.parameterizations.dct as dct

    monkeypatch.setattr(dct, "choose_transform", lambda *args: True)
    spec = {"class_path": "dct", "init_args": {"selection": "lowpass"}}
    batched, plain = tiny(spec, batched=True), tiny(spec, batched=False)
    calls = []
    cls = type(batched.blocks[0].attn.qkv)
    original = cls.reconstruct_batch.__func__
    monkeypatch.setattr(cls, "reconstruct_batch", classmethod(lambda c, ls: calls.append(len(ls)) or original(c, ls)))
    ref_logits, ref_grads = logits_and_grads(plain)
    logits, grads = logits_and_grads(batched)
    assert calls == []
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
