"""Every config in configs/: it parses, holds the shared budget, and a debug-size copy of it trains through
``cli.py`` in a subprocess, writes checkpoints and TensorBoard events, then validates and tests from them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, make_text
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spectral_lightning.cli import cli_main, default_precision

ALL_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Add-ons (ddp.yaml, fast.yaml, ...) open with "# Add-on:" and are stacked after an experiment config.
ADDONS = [c for c in ALL_CONFIGS if c.read_text(encoding="utf-8").startswith("# Add-on")]
CONFIGS = [c for c in ALL_CONFIGS if c not in ADDONS]
BLOCK_NAMES = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
PAPER_CONFIGS = {"dct2x", "dct4x", "dense", "lowrank", "lowrank48"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def debug_args(config: Path, text: Path, save_dir: Path) -> list[str]:
    """The config at debug size: 1 layer, d = 32, context 32, batch 8, 20 steps (two validations)."""
    args = [
        "--config", str(config), "--data.path", str(text),
        "--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2",
        "--data.block_size", "32", "--data.batch_size", "8", "--data.batches_per_epoch", "10",
        "--trainer.max_steps", "20", "--trainer.accelerator", "cpu",
        "--trainer.logger.init_args.save_dir", str(save_dir),
    ]  # fmt: skip
    if config.stem == "lowrank48":  # rank 48 does not fit a 32-wide layer; the override a user would make
        args += ["--model.parameterization.init_args.rank", "8"]
    return args


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"cli.py {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(make_text(6_000, seed=1), encoding="utf-8")
    return path


def test_every_paper_config_is_present() -> None:
    assert {c.stem for c in CONFIGS} >= PAPER_CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_config_parses_and_holds_the_shared_budget(
    config: Path, tiny_text: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = config.read_text(encoding="utf-8").splitlines()
    assert head[0].startswith("#") and any(f"python cli.py fit --config configs/{config.name}" in h for h in head)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", str(config), "--data.path", str(tiny_text), "--print_config"])
    assert exit_.value.code in (None, 0)
    cfg = yaml.safe_load(capsys.readouterr().out)
    if config.stem not in PAPER_CONFIGS:
        return
    model, data, trainer = cfg["model"], cfg["data"], cfg["trainer"]
    assert (model["n_layer"], model["n_head"], model["n_embd"]) == (4, 4, 128)
    assert (model["lr"], list(model["betas"]), model["weight_decay"]) == (1e-3, [0.9, 0.99], 0.1)
    assert (model["warmup_steps"], model["min_lr"]) == (100, 1e-4)
    assert (data["batch_size"], data["block_size"], data["path"]) == (64, 128, str(tiny_text))
    assert isinstance(cfg["seed_everything"], int) and not isinstance(cfg["seed_everything"], bool)
    assert trainer["max_steps"] == 5000
    assert data["batches_per_epoch"] * trainer["check_val_every_n_epoch"] == 500  # validation every 500 steps
    assert trainer["precision"] is None  # left to cli.py, which follows the accelerator (below)
    assert trainer["logger"]["class_path"].endswith("TensorBoardLogger")
    (ckpt,) = [c for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert ckpt["init_args"]["monitor"] == "val/loss" and ckpt["init_args"]["mode"] == "min"
    assert ckpt["init_args"]["save_last"] is True and ckpt["init_args"]["save_top_k"] >= 1


@pytest.mark.parametrize(
    ("accelerator", "bf16_gpu", "expected"),
    [("auto", True, "bf16-mixed"), ("gpu", True, "bf16-mixed"), ("cpu", True, "32-true"), ("auto", False, "32-true")],
)
def test_unset_precision_follows_the_accelerator(
    accelerator: str, bf16_gpu: bool, expected: str, tiny_text: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bf16_gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    assert default_precision(accelerator) == expected
    if accelerator == "cpu":  # a CPU run on a bf16-capable GPU machine stays float32 unless asked otherwise
        base = ["--config", str(REPO / "configs" / "dct4x.yaml"), "--data.path", str(tiny_text)]
        cli = cli_main([*base, "--trainer.accelerator", "cpu", "--trainer.logger", "false"], run=False)
        assert cli.trainer.precision == "32-true" and cli.config.trainer.precision == "32-true"
        args = [*base, "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.precision", "bf16-mixed"]
        assert cli_main(args, run=False).trainer.precision == "bf16-mixed"  # an explicit choice is kept


def test_disabling_the_progress_bar_drops_the_configs_bar(tiny_text: Path) -> None:
    # The configs list RichProgressBar; `--trainer.enable_progress_bar false` must mean "no bar", not a
    # Lightning error about the conflict. The other callbacks stay.
    args = ["--config", str(REPO / "configs" / "dct4x.yaml"), "--data.path", str(tiny_text)]
    args += ["--trainer.accelerator", "cpu", "--trainer.logger", "false"]
    with_bar = cli_main(args, run=False).trainer
    without = cli_main([*args, "--trainer.enable_progress_bar", "false"], run=False).trainer
    assert isinstance(with_bar.progress_bar_callback, RichProgressBar) and without.progress_bar_callback is None
    assert not any(isinstance(cb, ProgressBar) for cb in without.callbacks)
    kept = {type(cb) for cb in with_bar.callbacks if not isinstance(cb, ProgressBar)}
    assert kept == {type(cb) for cb in without.callbacks} and len(kept) >= 8


def test_appending_lm_head_extends_the_default_patterns(tiny_text: Path) -> None:
    args = ["--config", str(REPO / "configs" / "dct4x.yaml"), "--data.path", str(tiny_text)]
    args += ["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--model.parameterize+", "lm_head"]
    gpt = cli_main(args, run=False).model.model
    assert gpt.parameterized == [f"blocks.{i}.{n}" for i in range(4) for n in BLOCK_NAMES] + ["lm_head"]


@pytest.mark.parametrize("addon", ADDONS, ids=lambda c: c.stem)
def test_addon_config_stacks_on_an_experiment(addon: Path, tiny_text: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = addon.read_text(encoding="utf-8").splitlines()
    assert head[0].startswith("#") and any(f"--config configs/{addon.name}" in h for h in head)
    base = REPO / "configs" / "dct4x.yaml"
    with pytest.raises(SystemExit) as exit_:
        cli_main(
            ["fit", "--config", str(base), "--config", str(addon), "--data.path", str(tiny_text), "--print_config"]
        )
    assert exit_.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)
    for section, values in yaml.safe_load(addon.read_text(encoding="utf-8")).items():
        for key, value in values.items():
            assert printed[section][key] == value, f"{section}.{key}"
    assert printed["model"]["parameterization"]["class_path"].endswith("DCT")  # the experiment is kept


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def fitted(tiny_text: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], tuple[list[str], Path]]:
    """``fitted(config)`` runs the debug-size ``fit`` of a config through ``cli.py`` in a subprocess (once per
    config) and returns the arguments used and the run folder."""
    runs: dict[Path, tuple[list[str], Path]] = {}

    def fit(config: Path) -> tuple[list[str], Path]:
        if config not in runs:
            root = tmp_path_factory.mktemp(config.stem)
            args = debug_args(config, tiny_text, root / "runs")
            run_cli(["fit", *args], cwd=root)
            (run_dir,) = (root / "runs").glob("*/version_0")
            runs[config] = args, run_dir
        return runs[config]

    return fit


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_debug_fit_writes_checkpoints_and_events_then_validates_and_tests(config: Path, fitted) -> None:  # noqa: ANN001
    args, run_dir = fitted(config)
    logger = yaml.safe_load(config.read_text(encoding="utf-8"))["trainer"]["logger"]
    assert run_dir.parent.name == logger["init_args"]["name"]
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in names and len(names) == 2, names  # last + the best by val/loss
    best = run_dir / "checkpoints" / next(n for n in names if n != "last.ckpt")
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 20
    assert (run_dir / "config.yaml").is_file() and (run_dir / "hparams.yaml").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["trainer"]["precision"] == "32-true"  # the precision the CPU run used, not null
    assert list(run_dir.glob("events.out.tfevents.*"))
    logged = scalars(run_dir)
    assert {"train/loss", "val/loss", "val/ppl"} <= logged.keys(), sorted(logged)
    assert any(tag.startswith("lr") for tag in logged), sorted(logged)
    assert [step for step, _ in logged["val/loss"]] == [9, 19]  # after each 10-batch epoch
    best_score = min(v for _, v in logged["val/loss"])

    # validate and test in this process, from the checkpoints the subprocess wrote
    val = cli_main(["validate", *args, "--ckpt_path", str(best)]).trainer.callback_metrics
    assert float(val["val/loss"]) == pytest.approx(best_score, rel=1e-6)
    test = cli_main(["test", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]).trainer
    assert torch.isfinite(test.callback_metrics["test/loss"]) and "test/ppl" in test.callback_metrics


def test_validate_and_test_through_cli_script(fitted) -> None:  # noqa: ANN001
    args, run_dir = fitted(REPO / "configs" / "dct4x.yaml")
    last = run_dir / "checkpoints" / "last.ckpt"
    out = run_cli(["validate", *args, "--ckpt_path", str(last)], cwd=run_dir).stdout
    assert "val/loss" in out
    out = run_cli(["test", *args, "--ckpt_path", str(last)], cwd=run_dir).stdout
    assert "test/loss" in out


def test_refit_into_the_same_log_folder(tiny_text: Path, tmp_path: Path) -> None:
    args = debug_args(REPO / "configs" / "dense.yaml", tiny_text, tmp_path / "runs")
    args += ["--trainer.max_steps", "2", "--trainer.logger.init_args.version", "same"]
    for max_steps in ("2", "3"):  # the second run finds config.yaml from the first in its folder
        cli = cli_main(["fit", *args, "--trainer.max_steps", max_steps])
        assert cli.trainer.global_step == int(max_steps)
    run_dir = tmp_path / "runs" / "dense" / "same"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["trainer"]["max_steps"] == 3  # overwritten by the second run
