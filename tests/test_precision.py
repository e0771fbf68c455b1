"""Mixed and reduced precision for every registered strategy: 32-true, bf16-mixed and 16-mixed (CPU
autocast) train to the same loss; reconstruction stays float32 under autocast; master copies stay float32;
bf16-true trains with float32 bases."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import strategy_cases
from lightning.pytorch.plugins.precision import MixedPrecision

from spectral_lightning import CharDataModule, SpectralLM
from spectral_lightning.parameterizations import ParameterizedLinear, ReconstructedLinear, resolve

# One row per registered name (DCT once per selection): the strategies every precision must work with.
CASES = strategy_cases()
STEPS = 30
TOLERANCE = 0.02  # relative difference of the final loss to the 32-bit run


def cpu_fp16_autocast() -> bool:
    """Whether CPU autocast computes matmuls in float16 on this build."""
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    except (RuntimeError, AssertionError):
        return False


class Recorder(L.Callback):
    """Training losses and the output dtype of the first parameterized layer at each step."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.out_dtypes: set[torch.dtype] = set()

    def on_fit_start(self, trainer: L.Trainer, pl_module: SpectralLM) -> None:
        layer = pl_module.model.blocks[0].attn.qkv
        layer.register_forward_hook(lambda mod, inp, out: self.out_dtypes.add(out.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(float(outputs["loss"]))


def train(
    text_file: Path, spec: dict, precision: str, steps: int = STEPS, accelerator: str = "cpu"
) -> tuple[SpectralLM, Recorder]:
    L.seed_everything(0, verbose=False)
    data = CharDataModule(path=str(text_file), block_size=16, batch_size=8, batches_per_epoch=1000)
    model = SpectralLM(
        data.vocab, block_size=16, n_layer=1, n_head=2, n_embd=32, parameterization=spec, lr=3e-3, warmup_steps=0
    )
    recorder = Recorder()
    # Lightning maps precision="16-mixed" on CPU to bf16; the plugin asks for float16 autocast explicitly.
    cpu_fp16 = precision == "16-mixed" and accelerator == "cpu"
    kwargs = {"plugins": [MixedPrecision("16-mixed", "cpu")]} if cpu_fp16 else {"precision": precision}
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[recorder],
        **kwargs,
    )
    trainer.fit(model, datamodule=data)
    assert len(recorder.losses) == steps
    return model, recorder


def final_loss(recorder: Recorder) -> float:
    return sum(recorder.losses[-5:]) / 5


_reference: dict[tuple[str, str], float] = {}


def reference_loss(text_file: Path, case: tuple[str, dict], accelerator: str = "cpu") -> float:
    """The 32-true run of a row on ``accelerator`` (trained once per session)."""
    name, spec = case
    if (name, accelerator) not in _reference:
        model, rec = train(text_file, spec, "32-true", accelerator=accelerator)
        assert rec.out_dtypes == {torch.float32}
        assert rec.losses[-1] < 0.8 * rec.losses[0]  # it learns: the comparison below is not between two no-ops
        _reference[(name, accelerator)] = final_loss(rec)
    return _reference[(name, accelerator)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_to_the_32bit_loss(text_file: Path, case: tuple[str, dict], precision: str) -> None:
    if precision == "16-mixed" and not cpu_fp16_autocast():
        pytest.skip("this torch build has no float16 CPU autocast")
    ref = reference_loss(text_file, case)
    model, rec = train(text_file, case[1], precision)
    # Autocast was really on (the layer's output is half precision) ...
    assert rec.out_dtypes == {torch.bfloat16 if precision == "bf16-mixed" else torch.float16}
    # ... the master copies (coefficients, factors, weights, biases) stayed float32 ...
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # ... and the loss matches the 32-bit run.
    loss = final_loss(rec)
    assert abs(loss - ref) <= TOLERANCE * ref, f"{precision} loss {loss:.4f} vs 32-true {ref:.4f}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reconstruction_is_float32_under_autocast(case: tuple[str, dict], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = resolve(case[1]).build(32, 48)
    x = torch.randn(5, 32)
    w32 = layer.weight.detach().clone()
    with torch.autocast("cpu", dtype=dtype):
        w = layer.weight
        y = layer(x)
    assert w.dtype == torch.float32
    assert torch.equal(w.detach(), w32)  # rebuilt in float32, not rounded through half precision
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), x @ w32.t() + layer.bias, atol=2e-2, rtol=2e-2)
    # Gradients land on the float32 master copies.
    y.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bf16_true_trains_with_float32_bases(text_file: Path, case: tuple[str, dict]) -> None:
    model, rec = train(text_file, case[1], "bf16-true", steps=6)
    assert all(torch.isfinite(torch.tensor(rec.losses)))
    assert rec.losses[-1] < rec.losses[0]
    assert rec.out_dtypes == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    for layer in model.model.modules():
        if isinstance(layer, ReconstructedLinear):
            assert layer.weight.dtype == torch.float32  # rebuilt in float32, then cast for the matmul
            for name in layer._basis_buffers:
                assert getattr(layer, name).dtype == torch.float32, name
        elif isinstance(layer, ParameterizedLinear):
            assert layer.weight.dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_cuda_precisions_train_to_the_32bit_loss(text_file: Path, case: tuple[str, dict], precision: str) -> None:
    """The same contract on a GPU, where 16-mixed also scales the loss (GradScaler) and bf16-true runs the
    whole model in bfloat16 with float32 reconstruction."""
    ref = reference_loss(text_file, case, accelerator="cuda")
    model, rec = train(text_file, case[1], precision, accelerator="cuda")
    assert rec.out_dtypes == {torch.float16 if precision == "16-mixed" else torch.bfloat16}
    master = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert {p.dtype for p in model.parameters()} == {master}
    loss = final_loss(rec)
    # bf16-true also rounds the weights and optimizer updates to 8 mantissa bits: a looser bound.
    tolerance = 0.10 if precision == "bf16-true" else TOLERANCE
    assert abs(loss - ref) <= tolerance * ref, f"{precision} loss {loss:.4f} vs 32-true {ref:.4f}"
