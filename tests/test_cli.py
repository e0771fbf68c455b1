"""Every config in configs/: it parses, holds the shared budget, and a debug-size copy of it trains (dct4x
through ``cli.py`` in a subprocess, the others through ``cli_main``), writes checkpoints and TensorBoard events
under ``--trainer.default_root_dir``, then validates and tests from them. The console of a short run shows its
steps and nothing from its dependencies."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, make_text, printed_config, quiet_trainer
from lightning.pytorch.callbacks import ProgressBar
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spectral_lightning import CharDataModule, SpectralLM
from spectral_lightning.cli import cli_main, default_precision
from spectral_lightning.progress import StepProgressBar

ALL_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Add-ons (ddp.yaml, fast.yaml, ...) open with "# Add-on:" and are stacked after an experiment config.
ADDONS = [c for c in ALL_CONFIGS if c.read_text(encoding="utf-8").startswith("# Add-on")]
CONFIGS = [c for c in ALL_CONFIGS if c not in ADDONS]
BLOCK_NAMES = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
PAPER_CONFIGS = {"dct2x", "dct4x", "dense", "lowrank", "lowrank48"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def debug_args(config: Path, text: Path, root: Path) -> list[str]:
    """The config at debug size: 1 layer, d = 32, context 32, batch 8, 20 steps (two validations), its run
    folder moved to ``root`` the way a Lightning user moves it."""
    args = [
        "--config", str(config), "--data.path", str(text),
        "--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2",
        "--data.block_size", "32", "--data.batch_size", "8", "--data.batches_per_epoch", "10",
        "--trainer.max_steps", "20", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(root),
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
def test_config_opens_with_its_command_and_parses(config: Path, tiny_text: Path) -> None:
    head = config.read_text(encoding="utf-8").splitlines()
    assert head[0].startswith("#") and any(f"python cli.py fit --config configs/{config.name}" in h for h in head)
    cfg = printed_config(["--config", str(config), "--data.path", str(tiny_text)])
    assert cfg["trainer"]["logger"]["init_args"]["name"] == config.stem  # runs/<config name>/version_N


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_paper_config_holds_the_shared_budget(name: str, tiny_text: Path) -> None:
    cfg = printed_config(["--config", str(REPO / "configs" / f"{name}.yaml"), "--data.path", str(tiny_text)])
    model, data, trainer = cfg["model"], cfg["data"]["init_args"], cfg["trainer"]
    assert cfg["data"]["class_path"] == "spectral_lightning.CharDataModule"  # plain data keys: the default class
    assert (model["n_layer"], model["n_head"], model["n_embd"]) == (4, 4, 128)
    assert (model["lr"], list(model["betas"]), model["weight_decay"]) == (1e-3, [0.9, 0.99], 0.1)
    assert (model["warmup_steps"], model["min_lr"]) == (100, 1e-4)
    assert (data["batch_size"], data["block_size"], data["path"]) == (64, 128, str(tiny_text))
    assert isinstance(cfg["seed_everything"], int) and not isinstance(cfg["seed_everything"], bool)
    assert trainer["max_steps"] == 5000
    assert data["batches_per_epoch"] * trainer["check_val_every_n_epoch"] == 500  # validation every 500 steps
    assert trainer["precision"] is None  # left to cli.py, which follows the accelerator (below)
    assert trainer["logger"]["class_path"].endswith("TensorBoardLogger") and trainer["default_root_dir"] == "runs"
    (ckpt,) = [c for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert ckpt["init_args"]["monitor"] == "val/loss" and ckpt["init_args"]["mode"] == "min"
    assert ckpt["init_args"]["save_last"] is True and ckpt["init_args"]["save_top_k"] >= 1
    bars = [c["class_path"] for c in trainer["callbacks"] if c["class_path"].endswith("ProgressBar")]
    assert bars == ["spectral_lightning.progress.StepProgressBar"] and trainer["enable_model_summary"] is False


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
    assert isinstance(with_bar.progress_bar_callback, StepProgressBar) and without.progress_bar_callback is None
    assert not any(isinstance(cb, ProgressBar) for cb in without.callbacks)
    kept = {type(cb) for cb in with_bar.callbacks if not isinstance(cb, ProgressBar)}
    assert kept == {type(cb) for cb in without.callbacks} and len(kept) >= 8


def test_appending_lm_head_extends_the_default_patterns(tiny_text: Path) -> None:
    args = ["--config", str(REPO / "configs" / "dct4x.yaml"), "--data.path", str(tiny_text)]
    args += ["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--model.parameterize+", "lm_head"]
    gpt = cli_main(args, run=False).model.model
    assert gpt.parameterized == [f"blocks.{i}.{n}" for i in range(4) for n in BLOCK_NAMES] + ["lm_head"]


@pytest.mark.parametrize("addon", ADDONS, ids=lambda c: c.stem)
def test_addon_config_stacks_on_an_experiment(addon: Path, tiny_text: Path) -> None:
    head = addon.read_text(encoding="utf-8").splitlines()
    assert head[0].startswith("#") and any(f"--config configs/{addon.name}" in h for h in head)
    base = REPO / "configs" / "dct4x.yaml"
    printed = printed_config(["--config", str(base), "--config", str(addon), "--data.path", str(tiny_text)])
    for section, values in yaml.safe_load(addon.read_text(encoding="utf-8")).items():
        for key, value in values.items():
            assert_holds(printed[section][key], value, f"{section}.{key}")
    assert printed["model"]["parameterization"]["class_path"].endswith("DCT")  # the experiment is kept


def assert_holds(printed: object, given: object, where: str) -> None:
    """``printed`` (the merged config) holds what the add-on ``given`` sets: mappings key by key (the printed
    one also lists every default), lists as the same members (a set-typed option prints sorted)."""
    if isinstance(given, dict):
        for key, value in given.items():
            assert_holds(printed[key], value, f"{where}.{key}")
    elif isinstance(given, list):
        assert sorted(map(str, printed)) == sorted(map(str, given)), where
    else:
        assert printed == given, where


def test_fsdp_addon_stops_on_a_machine_without_gpus_in_one_line(
    tiny_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the FSDP add-on runs here (benchmarks/gpu_checks.sh checks it)")
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(REPO / "configs" / "dct4x.yaml"), "--config", str(REPO / "configs" / "fsdp.yaml"),
            "--data.path", str(tiny_text)]  # fmt: skip
    for extra in ([], ["--trainer.accelerator", "cpu"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main([*args, *extra])
        assert exit_.value.code == 2
        (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
        assert "trainer.strategy=FSDPStrategy (configs/fsdp.yaml) needs CUDA GPUs" in line
    assert list(tmp_path.iterdir()) == []


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def fitted(tiny_text: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], tuple[list[str], Path]]:
    """``fitted(config)`` runs the debug-size ``fit`` of a config (once per config) and returns the arguments
    used and the run folder. The main config, dct4x, trains through ``cli.py`` in a subprocess, as a user runs
    it; the others through ``cli_main`` in this process (the same code behind the script, without the seconds
    a fresh interpreter spends importing Lightning)."""
    runs: dict[Path, tuple[list[str], Path]] = {}

    def fit(config: Path) -> tuple[list[str], Path]:
        if config not in runs:
            cwd = tmp_path_factory.mktemp(config.stem)
            args = debug_args(config, tiny_text, cwd / "out")
            if config.stem == "dct4x":
                run_cli(["fit", *args], cwd=cwd)
            else:
                with pytest.MonkeyPatch.context() as patch:
                    patch.chdir(cwd)
                    cli_main(["fit", *args])
            assert sorted(p.name for p in cwd.iterdir()) == ["out"]  # nothing written outside the run folder
            (run_dir,) = (cwd / "out").glob("*/version_0")
            runs[config] = args, run_dir
        return runs[config]

    return fit


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_debug_fit_writes_checkpoints_and_events_then_validates_and_tests(config: Path, fitted) -> None:  # noqa: ANN001
    args, run_dir = fitted(config)
    assert run_dir.parent.name == config.stem
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


def test_saved_config_alone_reproduces_the_run(fitted) -> None:  # noqa: ANN001
    """The config.yaml a run writes holds every option it ran with, the shared ones included: parsed alone it
    gives the run's configuration (with the precision the run resolved)."""
    args, run_dir = fitted(REPO / "configs" / "dct4x.yaml")
    original = printed_config(args)
    original["trainer"]["precision"] = "32-true"  # null in the config: the CPU run resolved it
    assert printed_config(["--config", str(run_dir / "config.yaml")]) == original


def test_validate_through_cli_script(fitted) -> None:  # noqa: ANN001
    """The script's other subcommands: ``validate`` prints the metrics of a checkpoint (``test`` runs the same way
    through ``cli_main`` in the debug-fit test above; one fresh process is enough to show the script's path)."""
    args, run_dir = fitted(REPO / "configs" / "dct4x.yaml")
    last = run_dir / "checkpoints" / "last.ckpt"
    out = run_cli(["validate", *args, "--ckpt_path", str(last)], cwd=run_dir).stdout
    assert "val/loss" in out


def test_refit_into_the_same_log_folder(tiny_text: Path, tmp_path: Path) -> None:
    args = debug_args(REPO / "configs" / "dense.yaml", tiny_text, tmp_path / "runs")
    args += ["--trainer.max_steps", "2", "--trainer.logger.init_args.version", "same"]
    for max_steps in ("2", "3"):  # the second run finds config.yaml from the first in its folder
        cli = cli_main(["fit", *args, "--trainer.max_steps", max_steps])
        assert cli.trainer.global_step == int(max_steps)
    run_dir = tmp_path / "runs" / "dense" / "same"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["trainer"]["max_steps"] == 3  # overwritten by the second run


def test_default_root_dir_moves_the_run_and_last_finds_it_there(
    tiny_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--trainer.default_root_dir`` moves the whole run (the configs leave the logger's save_dir to follow it),
    and ``fit --ckpt_path last`` with the same folder resumes the run there, in its version folder."""
    monkeypatch.chdir(tmp_path)  # where the configs' default folder, runs/, would appear
    args = [*debug_args(REPO / "configs" / "dense.yaml", tiny_text, tmp_path / "moved"), "--trainer.max_steps", "2"]
    cli_main(["fit", *args])
    capsys.readouterr()
    resumed = cli_main(["fit", *args, "--trainer.max_steps", "3", "--ckpt_path", "last"])
    run_dir = tmp_path / "moved" / "dense" / "version_0"
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().err
    assert resumed.trainer.global_step == 3 and resumed.trainer.logger.log_dir == str(run_dir)
    assert sorted(p.name for p in (tmp_path / "moved" / "dense").iterdir()) == ["version_0"]  # no second version
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert {"config.yaml", "hparams.yaml", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert not (tmp_path / "runs").exists()


def test_an_explicit_logger_save_dir_is_kept(tiny_text: Path, tmp_path: Path) -> None:
    args = ["--config", str(REPO / "configs" / "dct4x.yaml"), "--data.path", str(tiny_text)]
    args += ["--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "root")]
    assert cli_main(args, run=False).trainer.logger.save_dir == str(tmp_path / "root")
    given = cli_main([*args, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")], run=False).trainer
    assert given.logger.save_dir == str(tmp_path / "logs") and given.default_root_dir == str(tmp_path / "root")


def test_console_of_a_short_run_shows_steps_and_nothing_from_dependencies(tiny_text: Path, tmp_path: Path) -> None:
    """The console of a fit as a user runs it (a fresh process, Python's default warning filters), ending before
    its first validation: the bar counts steps of max_steps, and there is no epoch counter, no logger version,
    no FLOPs line, no product tip, no deprecation warning, no note about the missing val/loss."""
    args = [*debug_args(REPO / "configs" / "dct4x.yaml", tiny_text, tmp_path / "out"), "--trainer.max_steps", "3"]
    env = {k: v for k, v in ENV.items() if k != "PYTHONWARNINGS"} | {"COLUMNS": "160"}  # a wide, plain console
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "fit", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    assert re.search(r"^step 3/3 .* train/loss: \d", console, flags=re.M), console[-3000:]
    for noise in ("Epoch", "v_num", "FLOPs", "Tip:", "LeafSpec", "could not find the monitored key"):
        assert noise not in console, f"{noise!r} in the console:\n{console[-3000:]}"
    assert not re.search(r"deprecat", console, flags=re.I), console[-3000:]
    assert (tmp_path / "out" / "dct4x" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_step_bar_counts_the_optimizer_steps_of_the_whole_run(tiny_text: Path, tmp_path: Path) -> None:
    """4 optimizer steps of 2 accumulated batches each, 3 batches per epoch: the bar is not restarted at the
    epoch boundaries and ends at ``step 4/4`` (Lightning's own bar would end at the last epoch's batch count)."""
    data = CharDataModule(path=str(tiny_text), block_size=16, batch_size=4, batches_per_epoch=3)
    model = SpectralLM(data.vocab, block_size=16, n_layer=1, n_head=2, n_embd=32)
    bar = StepProgressBar()
    trainer = quiet_trainer(
        max_steps=4, max_epochs=-1, accumulate_grad_batches=2, callbacks=[bar], enable_progress_bar=True,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, data)
    assert trainer.current_epoch >= 2  # the run crossed epoch boundaries
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.description, task.completed, task.total) == ("step", 4, 4)
