"""Dashboard callbacks: what they print and write to TensorBoard, checked against numbers computed here.

The measurements themselves (parameter report, stable rank, frequency planes) are pinned in test_analysis.py;
these tests check that each callback shows the right ones, so a number is never compared with itself.
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import REPO
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from spectral_lightning import DCT, CharDataModule, SpectralLM
from spectral_lightning.callbacks import (
    HParamsSummary,
    ParameterTable,
    ScalarLayout,
    SpectrumMonitor,
    TextSamples,
    ThroughputMonitor,
    console,
)
from spectral_lightning.errors import ConfigError

# The tiny fit's model: vocabulary 17 (helpers.make_text), context 16, one block, n_embd 32, DCT K = mn/4.
#   dense model: wte 17·32 + wpe 16·32 + 2 LayerNorms 2·64 + qkv 32·96+96 + proj 32·32+32 + fc 32·128+128
#                + proj 128·32+32 + ln_f 64 + lm_head 32·17 = 14,368
#   stored: the four block linears keep 3,072 of their 12,288 weights: 14,368 - 12,288 + 3,072 = 5,152
TINY_STORED, TINY_DENSE = 5_152, 14_368
DCT_SPEC = "spectral_lightning.parameterizations.dct.DCT"


# -- console ------------------------------------------------------------------------------------------------


def test_parameter_table_callback_prints_the_counts(capsys) -> None:
    """Vocabulary 8 instead of 17: 2·9·32 = 576 fewer values than the tiny fit's model in both counts."""
    module = SpectralLM(vocab="abcdefgh", block_size=16, n_layer=1, n_head=2, n_embd=32, parameterization="dct")
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    ParameterTable(width=200).on_fit_start(trainer, module)
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:1] in ("┃", "│")]  # header, rows
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line[1:-1].split(line[0])] for line in lines)}
    assert rows["layer"] == ["shape (m×n)", "parameterization", "stored", "dense", "ratio"]
    assert rows["blocks.0.attn.qkv"] == ["96×32", "dct lowpass", "768", "3,072", "25.0%"]  # K = 96·32/4
    assert rows["blocks.0.mlp.proj"] == ["32×128", "dct lowpass", "1,024", "4,096", "25.0%"]
    assert rows["parameterized linears"] == ["", "", "3,072", "12,288", "25.0%"]
    assert rows["model total (all parameters)"] == ["", "vs dense model", "4,576", "13,792", "33.2%"]


# -- spectra -----------------------------------------------------------------------------------------------


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
    with pytest.raises(ConfigError, match=r"^SpectrumMonitor.every_n_validations=0 is not valid"):
        SpectrumMonitor(every_n_validations=0)
    with pytest.raises(ConfigError, match=r"^TextSamples.every_n_validations=True is not valid"):
        TextSamples(every_n_validations=True)
    module = SpectralLM(vocab="abc\n", block_size=8, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(ConfigError, match="'xy'.*not in the training vocabulary"):
        TextSamples(prompt="axy").on_fit_start(None, module)


def test_throughput_monitor_rate_with_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """B·T tokens per (B, T + 1) batch, times the world size, over the interval's time; restarted after
    validation so evaluation time is not charged; logged at Lightning's logging step."""
    clock = iter([10.0, 12.0, 100.0, 100.5])  # start, end of interval 1; start, end of interval 2
    monkeypatch.setattr(console.time, "perf_counter", lambda: next(clock))
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


@pytest.mark.parametrize("cls", [TextSamples, SpectrumMonitor])
def test_every_n_validations_cadence_survives_a_resume(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes at validations 3 and 6 (not at the sanity check, not on other ranks); a copy restored from the
    first one's state after validation 4 writes at 6 too, as an uninterrupted run does."""
    written: list[int] = []
    monkeypatch.setattr(cls, "write", lambda self, trainer, module: written.append(trainer.n))
    trainer = types.SimpleNamespace(sanity_checking=True, is_global_zero=True, n=0)
    first = cls(every_n_validations=3)
    first.on_validation_end(trainer, None)  # the sanity check: not counted
    trainer.sanity_checking = False
    for trainer.n in range(1, 5):
        first.on_validation_end(trainer, None)
    assert written == [3]
    resumed = cls(every_n_validations=3)
    resumed.load_state_dict(first.state_dict())
    for trainer.n in range(5, 8):
        resumed.on_validation_end(trainer, None)
    assert written == [3, 6]
    trainer.is_global_zero = False
    for trainer.n in range(8, 11):
        resumed.on_validation_end(trainer, None)  # validation 9 on another rank: counted, nothing written
    assert written == [3, 6]
    assert resumed.state_dict() == {"validations": 10}


@pytest.mark.parametrize("given", ["dct", DCT(), {"class_path": "spectral_lightning.DCT"}])
def test_hparams_write_the_parameterization_in_one_form(given) -> None:
    """A registered name, an instance or a YAML mapping with a short path: one class path, every option."""
    module = SpectralLM(vocab="abcdefgh", block_size=16, n_layer=1, n_head=2, n_embd=32, parameterization=given)
    trainer = L.Trainer(logger=False, max_steps=5, enable_progress_bar=False, enable_model_summary=False)
    params = HParamsSummary().params(trainer, module)
    options = {"compression": 4.0, "k": None, "selection": "lowpass", "seed": 0, "init_std": 0.02}
    options |= {"update_every": None, "update_until": 0.75, "drop_fraction": 0.3, "grow": "gradient"}
    options |= {"budget": "per_layer", "path": "auto", "grow_window": 1}
    assert params["parameterization"] == {"class_path": DCT_SPEC, "init_args": options}
    assert params["trainer"]["max_steps"] == 5 and params["n_embd"] == 32 and params["vocab"] == "abcdefgh"


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
        s = torch.linalg.svdvals(layer.weight.detach().double())  # ‖W‖_F² / ‖W‖₂² from the singular values
        assert ranks[-1][1] == pytest.approx(float(s.square().sum() / s[0].square()), rel=1e-6)
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
    markdown = table[0].tensor_proto.string_val[0].decode().splitlines()
    total = "| **model total (all parameters)** |  | **vs dense model** | **5,152** | **14,368** | **35.9%** |"
    assert total in markdown  # 5,152 / 14,368 = 35.9%
    assert "| blocks.0.attn.qkv | 96×32 | dct random seed=1 | 768 | 3,072 | 25.0% |" in markdown
    layouts = [
        layout_pb2.Layout.FromString(e.tensor_proto.string_val[0])
        for a in accs
        if "custom_scalars__config__" in a.Tags()["tensors"]
        for e in a.Tensors("custom_scalars__config__")
    ]
    charts = {chart.title: list(chart.multiline.tag) for lay in layouts for cat in lay.category for chart in cat.chart}
    assert charts["loss (train vs val)"] == ["^train/loss$", "^val/loss$"]
    assert charts["val bits per byte"] == ["^val/bpb$"]

    # HPARAMS tab: the hyperparameters and the metrics, whose values are the last validation's.
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in plugin_content(accs, "hparams").items()}
    experiment = next(d.experiment for d in data.values() if d.HasField("experiment"))
    metric_names = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/val_loss", "hparams/val_ppl", "hparams/val_bpb", "hparams/stored_ratio"} <= metric_names
    session = next(d.session_start_info for d in data.values() if d.HasField("session_start_info"))
    hp = dict(session.hparams)
    assert hp["n_layer"].number_value == 1 and hp["n_embd"].number_value == 32
    assert hp["parameterization/class_path"].string_value == DCT_SPEC  # Parameterization.spec()'s full path
    assert hp["parameterization/init_args/selection"].string_value == "random"
    assert hp["parameterization/init_args/compression"].number_value == 4.0
    assert hp["parameterization/init_args/seed"].number_value == 1
    assert hp["batches_per_epoch"].number_value == 4 and hp["trainer/max_steps"].number_value == 8
    assert scalars(accs, "hparams/val_loss")[-1] == pytest.approx(val_loss[-1])
    assert scalars(accs, "hparams/stored_params")[-1][1] == TINY_STORED
    assert scalars(accs, "hparams/stored_ratio")[-1][1] == pytest.approx(TINY_STORED / TINY_DENSE)


def test_callbacks_leave_training_bit_identical(text_file: Path, tmp_path: Path) -> None:
    """Samples, spectra and the rest use no global random state: dropout and data are unchanged."""
    plain, full = LossRecorder(), LossRecorder()
    tiny_fit(text_file, tmp_path / "plain", [plain], dropout=0.2, steps=6)
    tiny_fit(text_file, tmp_path / "full", [*dashboard(), full], dropout=0.2, steps=6)
    assert len(plain.losses) == 6
    assert full.losses == plain.losses  # exact float equality, step by step


# The paper's configs on conftest's 17-character text instead of Shakespeare's 65 characters: the embedding and
# the LM head each hold (65 - 17)·128 = 6,144 fewer values, so every count is the README's minus 12,288.
CONFIG_STORED = {"dense": 814_080, "dct2x": 420_864, "dct4x": 224_256, "lowrank": 158_720, "lowrank48": 420_864}


@pytest.mark.parametrize("name", list(CONFIG_STORED))
def test_configs_wire_the_dashboard(name: str, text_file: Path, tmp_path: Path, monkeypatch) -> None:
    from spectral_lightning.cli import cli_main

    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", str(REPO / "configs" / f"{name}.yaml"), "--data.path", str(text_file)], run=False)
    kinds = {type(c) for c in cli.trainer.callbacks}
    assert {ThroughputMonitor, ParameterTable, ScalarLayout, HParamsSummary, TextSamples, SpectrumMonitor} <= kinds
    samples = next(c for c in cli.trainer.callbacks if isinstance(c, TextSamples))
    assert samples.prompt == "\n" and samples.seed == 1337  # YAML's "\n" is a newline, in every text's vocab
    summary = next(c for c in cli.trainer.callbacks if isinstance(c, HParamsSummary))
    stored = CONFIG_STORED[name]
    metrics = summary.metrics(cli.trainer, cli.model)
    assert metrics == pytest.approx({"hparams/stored_params": stored, "hparams/stored_ratio": stored / 814_080})
    logger = cli.trainer.logger
    assert isinstance(logger, TensorBoardLogger)
    logger.log_hyperparams(summary.params(cli.trainer, cli.model))  # as Lightning does at fit start
    logger.finalize("success")
    assert "hp_metric" not in read_events(Path(logger.log_dir))[0].Tags()["scalars"]  # default_hp_metric: false
