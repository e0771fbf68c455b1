"""Dashboard callbacks: parameter counts, spectra, and what a tiny fit writes to TensorBoard."""

from __future__ import annotations

import math
import types
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from spectral_lightning import DCT, GPT, CharDataModule, Dense, GPTConfig, LowRank, SpectralLM, callbacks
from spectral_lightning.callbacks import (
    HParamsSummary,
    ParameterTable,
    ScalarLayout,
    SpectrumMonitor,
    TextSamples,
    ThroughputMonitor,
    parameter_report,
    parameter_table,
    stable_rank,
)
from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations import dct_matrix
from tests.conftest import REPO

STRATEGIES = {
    "dense": Dense(),
    "dct-lowpass": DCT(compression=4.0),
    "dct-random": DCT(compression=2.0, selection="random", seed=3),
    "lowrank": LowRank(rank=4),
}


# -- parameter report --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(STRATEGIES))
def test_parameter_report_totals_equal_model_counts(kind: str) -> None:
    config = GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)
    gpt = GPT(config, STRATEGIES[kind])
    rows, totals = parameter_report(gpt)
    assert [r.name for r in rows] == gpt.parameterized and len(rows) == 8
    assert totals.stored == sum(p.numel() for p in gpt.parameters())
    assert totals.dense == GPT(config, Dense()).num_parameters()
    assert totals.linear_stored == sum(gpt.linears()[r.name].stored for r in rows)
    assert totals.linear_dense == 2 * (32 * 96 + 32 * 32 + 2 * 32 * 128)
    assert totals.ratio == pytest.approx(totals.stored / totals.dense)
    if kind == "dense":
        assert totals.stored == totals.dense and all(r.ratio == 1.0 for r in rows)
    else:
        assert totals.stored < totals.dense


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [(Dense(), 826_368), (DCT(compression=4.0), 236_544), (LowRank(rank=16), 171_008)],
)
def test_parameter_table_of_the_paper_model(strategy, expected: int) -> None:
    gpt = GPT(GPTConfig(), strategy)
    rows, totals = parameter_report(gpt)
    assert totals.stored == expected == gpt.num_parameters()
    assert totals.dense == 826_368
    console = Console(record=True, width=200)
    console.print(parameter_table(rows, totals))
    text = console.export_text()
    assert "blocks.3.mlp.proj" in text and "128×512" in text
    assert f"{expected:,}" in text and "826,368" in text and f"{expected / 826_368:.1%}" in text


def test_parameter_table_callback_prints_totals(capsys) -> None:
    module = SpectralLM(vocab="abcdefgh", block_size=16, n_layer=1, n_head=2, n_embd=32, parameterization="dct")
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    ParameterTable(width=200).on_fit_start(trainer, module)
    out = capsys.readouterr().out
    _, totals = parameter_report(module.model)
    assert "dct lowpass" in out and "blocks.0.attn.qkv" in out and "96×32" in out
    assert f"{totals.stored:,}" in out and f"{totals.dense:,}" in out


# -- spectra -----------------------------------------------------------------------------------------------


def test_stable_rank_bounds() -> None:
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(12, 1, generator=gen), torch.randn(1, 7, generator=gen)
    assert stable_rank(u @ v) == pytest.approx(1.0)
    assert stable_rank(torch.eye(7)) == pytest.approx(7.0)
    w = torch.randn(12, 7, generator=gen)
    assert 1.0 < stable_rank(w) < 7.0
    assert stable_rank(torch.zeros(3, 3)) == 0.0


@pytest.mark.parametrize("kind", ["dct-lowpass", "dct-random", "lowrank", "dense"])
def test_frequency_plane_is_the_2d_dct_of_the_weight(kind: str) -> None:
    torch.manual_seed(0)
    layer = STRATEGIES[kind].build(24, 40)  # W is 40×24
    plane = SpectrumMonitor().frequency_plane(layer)
    assert plane.shape == (40, 24)
    w = layer.weight.detach().double()
    expected = dct_matrix(40) @ w @ dct_matrix(24).t()
    torch.testing.assert_close(plane.double(), expected, atol=1e-5, rtol=1e-4)
    if kind.startswith("dct"):  # exactly the stored coefficients, zero elsewhere
        assert int((plane != 0).sum()) == layer.stored


def test_energy_image_scales_to_uint8() -> None:
    monitor = SpectrumMonitor(dynamic_range=4.0)
    x = torch.tensor([[1.0, 0.1], [0.0, 1e-3]])  # powers 1, 1e-2, 0, 1e-6 -> 0, -2, floor, -6 decades
    image = monitor.energy_image(x)
    assert image.dtype == torch.uint8 and image.shape == (1, 2, 2)
    assert image[0].tolist() == [[255, 128], [0, 0]]


def test_invalid_options_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="prompt"):
        TextSamples(prompt="")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        TextSamples(max_new_tokens=0)
    with pytest.raises(ConfigError, match="interval"):
        ThroughputMonitor(interval=0)
    with pytest.raises(ConfigError, match="dynamic_range"):
        SpectrumMonitor(dynamic_range=0)
    module = SpectralLM(vocab="abc\n", block_size=8, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(ConfigError, match="'xy'.*not in the training vocabulary"):
        TextSamples(prompt="axy").on_fit_start(None, module)


def test_throughput_monitor_rate_with_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """B·T tokens per (B, T + 1) batch, times the world size, over the interval's time; restarted after
    validation so evaluation time is not charged; logged at Lightning's logging step."""
    clock = iter([10.0, 12.0, 100.0, 100.5])  # start, end of interval 1; start, end of interval 2
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    logged, bar = [], []
    logger = types.SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics)))
    loop = types.SimpleNamespace(_batches_that_stepped=4)
    trainer = types.SimpleNamespace(
        world_size=2,
        is_global_zero=True,
        loggers=[logger],
        fit_loop=types.SimpleNamespace(epoch_loop=loop),
        global_step=-1,
    )
    module = types.SimpleNamespace(
        device=torch.device("cpu"), log=lambda name, value, **kw: bar.append((name, value, kw["prog_bar"]))
    )
    monitor = ThroughputMonitor(interval=2)
    batch = torch.zeros(8, 17, dtype=torch.long)  # B = 8 windows of T + 1 = 17: 8·16 = 128 trained tokens
    for i in range(2):
        monitor.on_train_batch_start(trainer, module, batch, i)
        monitor.on_train_batch_end(trainer, module, None, batch, i)
    monitor.on_validation_end(trainer, module)  # 88 s of validation pass here, uncounted
    loop._batches_that_stepped = 6
    for i in range(2):
        monitor.on_train_batch_start(trainer, module, batch, i)
        monitor.on_train_batch_end(trainer, module, None, batch, i)
    rate1, rate2 = 2 * 128 * 2 / 2.0, 2 * 128 * 2 / 0.5  # two batches × 128 tokens × 2 devices / seconds
    assert logged == [(4, {"train/tokens_per_sec": rate1}), (6, {"train/tokens_per_sec": rate2})]
    assert bar == [("train/tokens_per_sec", rate1, True), ("train/tokens_per_sec", rate2, True)]


# -- tiny fits ---------------------------------------------------------------------------------------------


def dashboard(interval: int = 2) -> list[L.Callback]:
    return [
        ThroughputMonitor(interval=interval),
        ParameterTable(),
        ScalarLayout(),
        HParamsSummary(),
        TextSamples(prompt="the ", max_new_tokens=40, num_samples=2),
        SpectrumMonitor(at_start=True),
    ]


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(outputs["loss"].item())


def tiny_fit(text_file: Path, root: Path, callbacks: list[L.Callback], dropout: float = 0.0, steps: int = 8):
    """1 layer, n_embd 32, context 16, DCT; validation every steps/2 batches (2 validations)."""
    L.seed_everything(7)
    data = CharDataModule(path=str(text_file), block_size=16, batch_size=4, batches_per_epoch=steps // 2)
    model = SpectralLM(
        vocab=data.vocab,
        block_size=16,
        n_layer=1,
        n_head=2,
        n_embd=32,
        dropout=dropout,
        parameterization=DCT(compression=4.0, selection="random", seed=1),
        warmup_steps=2,
    )
    logger = TensorBoardLogger(save_dir=str(root), name="run", version=0, default_hp_metric=False)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=2,
        log_every_n_steps=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    return trainer, model, Path(logger.log_dir)


def read_events(log_dir: Path) -> list[EventAccumulator]:
    """One loaded accumulator per event file of the run (Lightning may write hparams to a separate file)."""
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event files in {log_dir}"
    accs = []
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
        accs.append(acc.Reload())
    return accs


def scalars(accs: list[EventAccumulator], tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for a in accs if tag in a.Tags()["scalars"] for e in a.Scalars(tag)]


def plugin_content(accs: list[EventAccumulator], plugin: str) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    for a in accs:
        try:
            contents.update(a.PluginTagToContent(plugin))
        except KeyError:  # this file has no data of that plugin
            pass
    assert contents, f"no {plugin} data in the run"
    return contents


def test_tiny_fit_writes_the_dashboard(text_file: Path, tmp_path: Path) -> None:
    trainer, model, log_dir = tiny_fit(text_file, tmp_path, dashboard())
    accs = read_events(log_dir)
    tags = {kind: set().union(*(a.Tags()[kind] for a in accs)) for kind in ("scalars", "images", "histograms")}

    train_loss, val_loss = scalars(accs, "train/loss"), scalars(accs, "val/loss")
    assert len(train_loss) == 8 and all(math.isfinite(v) for _, v in train_loss)
    assert [s for s, _ in val_loss] == [3, 7]  # Lightning logs validation after step k at k - 1
    assert all(math.isfinite(v) for _, v in val_loss)
    assert all(v > 1.0 for _, v in scalars(accs, "val/ppl"))
    rates = scalars(accs, "train/tokens_per_sec")
    assert rates and all(v > 0 for _, v in rates)
    assert "hp_metric" not in tags["scalars"]

    layers = model.model.linears()
    for name in model.model.parameterized:
        layer = layers[name]
        m, n = layer.out_features, layer.in_features
        images = [e for a in accs if f"spectrum/{name}" in a.Tags()["images"] for e in a.Images(f"spectrum/{name}")]
        assert [e.step for e in images] == [0, 3, 7]  # initialization + 2 validations
        assert all((e.height, e.width) == (m, n) for e in images)
        ranks = scalars(accs, f"stable_rank/{name}")
        assert [s for s, _ in ranks] == [0, 3, 7]
        assert all(1.0 <= v <= min(m, n) for _, v in ranks)
        assert ranks[-1][1] == pytest.approx(stable_rank(layer.weight), rel=1e-6)
        tag = f"coefficients/{name}"
        hist = [e for a in accs if tag in a.Tags()["histograms"] for e in a.Histograms(tag)]
        assert [e.step for e in hist] == [0, 3, 7] and all(e.histogram_value.num == layer.stored for e in hist)

    samples = [
        e for a in accs if "samples/text_summary" in a.Tags()["tensors"] for e in a.Tensors("samples/text_summary")
    ]
    assert [e.step for e in samples] == [3, 7]
    text = samples[-1].tensor_proto.string_val[0].decode()
    assert text.count("    the ") == 2 and "seed 1337" in text
    expected = model.generate("the ", max_new_tokens=40, temperature=0.8, num_samples=2, seed=1337)
    assert all("    " + "\n    ".join(t.split("\n")) in text for t in expected)  # same seed, same text

    table = [
        e
        for a in accs
        if "model/parameters/text_summary" in a.Tags()["tensors"]
        for e in a.Tensors("model/parameters/text_summary")
    ]
    _, totals = parameter_report(model.model)
    assert f"{totals.stored:,}" in table[0].tensor_proto.string_val[0].decode()
    layouts = [
        layout_pb2.Layout.FromString(e.tensor_proto.string_val[0])
        for a in accs
        if "custom_scalars__config__" in a.Tags()["tensors"]
        for e in a.Tensors("custom_scalars__config__")
    ]
    charts = {chart.title: list(chart.multiline.tag) for lay in layouts for cat in lay.category for chart in cat.chart}
    assert charts["loss (train vs val)"] == ["^train/loss$", "^val/loss$"]

    # HPARAMS tab: the hyperparameters and the metrics, whose values are the last validation's.
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in plugin_content(accs, "hparams").items()}
    experiment = next(d.experiment for d in data.values() if d.HasField("experiment"))
    metric_names = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/val_loss", "hparams/val_ppl", "hparams/stored_ratio"} <= metric_names
    session = next(d.session_start_info for d in data.values() if d.HasField("session_start_info"))
    hp = dict(session.hparams)
    assert hp["n_layer"].number_value == 1 and hp["n_embd"].number_value == 32
    assert hp["parameterization/class_path"].string_value == "DCT"
    assert hp["parameterization/init_args/selection"].string_value == "random"
    assert hp["batches_per_epoch"].number_value == 4 and hp["trainer/max_steps"].number_value == 8
    assert scalars(accs, "hparams/val_loss")[-1] == pytest.approx(val_loss[-1])
    assert scalars(accs, "hparams/stored_ratio")[-1][1] == pytest.approx(totals.ratio)
    assert 0.0 < totals.ratio < 1.0


def test_callbacks_leave_training_bit_identical(text_file: Path, tmp_path: Path) -> None:
    """Samples, spectra and the rest use no global random state: dropout and data are unchanged."""
    plain, full = LossRecorder(), LossRecorder()
    tiny_fit(text_file, tmp_path / "plain", [plain], dropout=0.2, steps=6)
    tiny_fit(text_file, tmp_path / "full", [*dashboard(), full], dropout=0.2, steps=6)
    assert len(plain.losses) == 6
    assert full.losses == plain.losses  # exact float equality, step by step


@pytest.mark.parametrize("name", ["dense", "dct2x", "dct4x", "lowrank", "lowrank48"])
def test_configs_wire_the_dashboard(name: str, text_file: Path, tmp_path: Path, monkeypatch) -> None:
    from spectral_lightning.cli import cli_main

    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", str(REPO / "configs" / f"{name}.yaml"), "--data.path", str(text_file)], run=False)
    kinds = {type(c) for c in cli.trainer.callbacks}
    assert {ThroughputMonitor, ParameterTable, ScalarLayout, HParamsSummary, TextSamples, SpectrumMonitor} <= kinds
    samples = next(c for c in cli.trainer.callbacks if isinstance(c, TextSamples))
    assert samples.prompt == "\n" and samples.seed == 1337  # YAML's "\n" is a newline, in every text's vocab
    logger = cli.trainer.logger
    assert isinstance(logger, TensorBoardLogger) and not logger._default_hp_metric
    assert np.isfinite(parameter_report(cli.model.model)[1].ratio)
