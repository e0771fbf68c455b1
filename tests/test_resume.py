"""Interrupted runs resume exactly; a non-finite loss stops training and keeps the last good checkpoint;
checkpoints are written through a temporary file and a rename.

A test-only callback (:class:`SignalAtStep`, passed with ``--trainer.callbacks+=``) sends SIGTERM or SIGINT to
its own process at the end of a chosen step, so the interruption lands at a known point. An interrupted run
resumed with ``--ckpt_path`` must end with exactly the weights, optimizer state, LR schedule and validation
loss of an uninterrupted run (32-bit CPU, dropout on, interrupted mid-epoch and at an epoch boundary).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers import REPO, make_text
from lightning.pytorch.callbacks import Callback

from spectral_lightning.cli import cli_main
from spectral_lightning.safety import AtomicCheckpointIO

# The CLI subprocess imports this module (for SignalAtStep), so it imports helpers, never conftest: conftest's
# thread setting would change the subprocess's float reductions and break the match with the in-process resume.

pytestmark = pytest.mark.filterwarnings(
    "ignore:LightningCLI's args parameter",
    "ignore:.*logging interval",
    "ignore:.*could not find the monitored key",
    "ignore:The dirpath has changed",  # an explicit --ckpt_path resumes into a new version folder
)

CONFIG = """\
seed_everything: 1
model: {n_layer: 1, n_head: 2, n_embd: 32, dropout: 0.1, lr: 3.0e-3, warmup_steps: 3, min_lr: 1.0e-4}
data: {path: tiny.txt, block_size: 16, batch_size: 4, batches_per_epoch: 5, val_fraction: 0.03}
trainer:
  accelerator: cpu
  precision: 32-true
  max_steps: 15
  enable_progress_bar: false
  enable_model_summary: false
  logger: {class_path: lightning.pytorch.loggers.TensorBoardLogger, init_args: {save_dir: runs, name: exp}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/loss, save_last: true, filename: "best-{step}"}
"""


class SignalAtStep(Callback):
    """Test-only: send ``signum`` to this process when training reaches ``step`` (at the end of that batch).

    Args:
        step: global step after which the signal is sent.
        signum: signal number (2 = SIGINT, 15 = SIGTERM).
    """

    def __init__(self, step: int = 7, signum: int = 15) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def interrupt_at(step: int, signum: int) -> list[str]:
    return ["--trainer.callbacks+=test_resume.SignalAtStep", f"--trainer.callbacks.step={step}",
            f"--trainer.callbacks.signum={signum}"]  # fmt: skip


def prepare(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.txt").write_text(make_text(), encoding="utf-8")
    (folder / "config.yaml").write_text(CONFIG, encoding="utf-8")
    return folder


def fit(folder: Path, *extra: str) -> int:
    """``fit`` in ``folder`` through ``cli_main``; returns the exit status."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cli_main(["fit", "--config", "config.yaml", *extra])
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    finally:
        os.chdir(cwd)
    return 0


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_run(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    """Bit-identical weights, optimizer state, LR schedule and last validation loss."""
    assert actual["global_step"] == expected["global_step"]
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(tensor, actual["state_dict"][name]), name
    for state_e, state_a in zip(expected["optimizer_states"][0]["state"].values(),
                                actual["optimizer_states"][0]["state"].values(), strict=True):  # fmt: skip
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state_e[key], state_a[key]), key
    assert actual["lr_schedulers"] == expected["lr_schedulers"]
    (score_e,) = [s["current_score"] for s in expected["callbacks"].values() if "current_score" in s]
    (score_a,) = [s["current_score"] for s in actual["callbacks"].values() if "current_score" in s]
    assert torch.isfinite(score_e) and torch.equal(score_e, score_a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The final ``last.ckpt`` of the uninterrupted 15-step run."""
    folder = prepare(tmp_path_factory.mktemp("uninterrupted"))
    assert fit(folder) == 0
    ckpt = load(folder / "runs/exp/version_0/checkpoints/last.ckpt")
    assert ckpt["global_step"] == 15
    return ckpt


def test_sigterm_mid_epoch_saves_and_resume_last_is_exact(
    uninterrupted: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = prepare(tmp_path)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    # Step 7 is mid-epoch (5 batches per epoch): the data stream must continue inside the epoch.
    assert fit(folder, *interrupt_at(7, signal.SIGTERM)) == 128 + signal.SIGTERM
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    saved = folder / "runs/exp/version_0/checkpoints/last.ckpt"
    err = capsys.readouterr().err
    assert f"interrupted by SIGTERM at step 7; saved {saved.relative_to(folder)}" in err
    assert "Traceback" not in err
    assert load(saved)["global_step"] == 7
    assert not list(saved.parent.glob(".*.tmp"))

    # `last` finds the newest last.ckpt of the experiment and carries on in its version folder.
    assert fit(folder, "--ckpt_path", "last") == 0
    assert f"resuming from {saved.relative_to(folder)}" in capsys.readouterr().err
    assert [p.name for p in (folder / "runs/exp").iterdir()] == ["version_0"]
    assert_same_run(uninterrupted, load(saved))


def test_sigint_in_the_cli_process_saves_and_resume_is_exact(uninterrupted: dict[str, Any], tmp_path: Path) -> None:
    folder = prepare(tmp_path)
    # Step 5 ends the first epoch, before its validation: the resumed run starts with a fresh epoch.
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "fit", "--config", "config.yaml", *interrupt_at(5, signal.SIGINT)],
        cwd=folder,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "interrupted by SIGINT at step 5; saved runs/exp/version_0/checkpoints/last.ckpt" in proc.stderr
    saved = folder / "runs/exp/version_0/checkpoints/last.ckpt"
    assert load(saved)["global_step"] == 5

    # Resumed under another seed_everything: the dropout masks follow the run's seed saved in the checkpoint
    # (data.seed is fixed), so the result is still bit-identical; a seed taken afresh would change it.
    assert fit(folder, "--ckpt_path", str(saved), "--seed_everything", "2") == 0
    assert_same_run(uninterrupted, load(folder / "runs/exp/version_1/checkpoints/last.ckpt"))


def test_late_dropout_trains_without_dropout_until_its_step_and_resumes_exactly(tmp_path: Path) -> None:
    """``dropout_from_step``: no dropout before the step (the same weights as a dropout-0 run), dropout after it,
    and a run interrupted before the switch and resumed after it matches the uninterrupted one bit for bit."""
    late = ["--model.dropout_from_step", "9"]
    before = prepare(tmp_path / "before")
    assert fit(before, *late, "--trainer.max_steps", "9") == 0
    without = prepare(tmp_path / "without")
    assert fit(without, "--model.dropout", "0", "--trainer.max_steps", "9") == 0
    weights = [load(f / "runs/exp/version_0/checkpoints/last.ckpt")["state_dict"] for f in (before, without)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    whole = prepare(tmp_path / "whole")
    assert fit(whole, *late) == 0
    expected = load(whole / "runs/exp/version_0/checkpoints/last.ckpt")
    # From step 9 on dropout is on: the 15-step run parts from both the dropout-0 run and the dropout-from-0 run.
    assert fit(without, "--model.dropout", "0", "--trainer.logger.init_args.version", "longer") == 0
    full = prepare(tmp_path / "full")
    assert fit(full) == 0
    head = "model.lm_head.weight"
    for other in (without / "runs/exp/longer", full / "runs/exp/version_0"):
        ckpt = load(other / "checkpoints/last.ckpt")
        assert ckpt["global_step"] == 15
        assert not torch.equal(ckpt["state_dict"][head], expected["state_dict"][head])

    resumed = prepare(tmp_path / "resumed")
    assert fit(resumed, *late, *interrupt_at(7, signal.SIGTERM)) == 128 + signal.SIGTERM
    assert fit(resumed, *late, "--ckpt_path", "last") == 0
    assert_same_run(expected, load(resumed / "runs/exp/version_0/checkpoints/last.ckpt"))


# -- numerical faults --------------------------------------------------------------------------------------------

HUGE_LR = ["--model.lr=1e30", "--model.min_lr=0", "--model.warmup_steps=0", "--model.dropout=0",
           "--trainer.max_steps=3", "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=1",
           "--trainer.callbacks.save_last=true", "--trainer.callbacks.filename=step-{step}"]  # fmt: skip


def _all_finite(ckpt: dict[str, Any]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ckpt["state_dict"].values())


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # lr = 1e30: step 0 is finite, its update overflows the weights, so the loss of step 1 is NaN.
    guarded = prepare(tmp_path / "guarded")
    capsys.readouterr()
    assert fit(guarded, *HUGE_LR) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "training loss is nan at step 1" in line and "lower model.lr" in line
    last = load(guarded / "runs/exp/version_0/checkpoints/last.ckpt")
    assert last["global_step"] == 1 and _all_finite(last)

    # Without the guard the same run trains on garbage and last.ckpt ends up non-finite.
    unguarded = prepare(tmp_path / "unguarded")
    assert fit(unguarded, *HUGE_LR, "--model.check_finite=false") == 0
    last = load(unguarded / "runs/exp/version_0/checkpoints/last.ckpt")
    assert last["global_step"] == 3 and not _all_finite(last)


# -- atomic checkpoint writes -------------------------------------------------------------------------------------


def test_cli_trainer_writes_checkpoints_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(prepare(tmp_path))
    cli = cli_main(["--config", "config.yaml"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_failed_checkpoint_write_keeps_the_previous_file_and_no_temp(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 (pickling a lambda fails part-way through the write)
        io.save_checkpoint({"w": torch.zeros(1000), "bad": lambda: 0}, path)
    assert torch.equal(load(path)["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
