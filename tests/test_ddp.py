"""Two-process CPU DDP (gloo) through cli.py: the stacked ddp.yaml add-on runs, ranks draw different
batches and end with identical parameters, with find_unused_parameters off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO

TINY = [
    "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32", "--model.warmup_steps", "0",
    "--data.block_size", "16", "--data.batch_size", "4", "--data.batches_per_epoch", "3",
    "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
]  # fmt: skip


def run_ddp(tmp_path: Path, text_file: Path, config: str, extra: list[str]) -> list[dict]:
    out = tmp_path / "ranks"
    cmd = [
        sys.executable, "cli.py", "fit", "--config", config, "--config", "configs/ddp.yaml",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--data.path", str(text_file), *TINY, *extra,
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.callbacks+=helpers_ddp.RecordBatches", f"--trainer.callbacks.out_dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}  # ranks import helpers_ddp
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize(
    "config, extra",
    [
        ("configs/dct4x.yaml", []),
        ("configs/dct2x.yaml", ["--model.parameterization.init_args.selection", "random"]),
    ],
    ids=["dct-lowpass", "dct-random"],
)
def test_two_rank_ddp_keeps_coefficients_identical_and_batches_different(
    tmp_path: Path, text_file: Path, config: str, extra: list[str]
) -> None:
    rank0, rank1 = run_ddp(tmp_path, text_file, config, extra)
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["strategy"] == "DDPStrategy"
    assert not rank0["ddp_kwargs"].get("find_unused_parameters", False)
    assert rank0["global_step"] == rank1["global_step"] == 3
    # Different data on each rank, every step.
    b0, b1 = rank0["batches"], rank1["batches"]
    assert b0.shape == b1.shape == (3, 4, 17)
    assert all(not torch.equal(b0[i], b1[i]) for i in range(3))
    # Identical parameters at the end, after 3 optimizer steps on different batches.
    assert rank0["params"].keys() == rank1["params"].keys()
    coef = [k for k in rank0["params"] if k.endswith(".coef")]
    assert len(coef) == 4
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name


@pytest.mark.parametrize("name", ["monarch", "sparse_lowrank", "kronecker"])
def test_structured_baselines_train_under_ddp_with_identical_parameters(
    tmp_path: Path, text_file: Path, name: str
) -> None:
    """Every parameter of the structured baselines receives a gradient on every rank (find_unused_parameters
    stays off), and the ranks end identical after steps on different batches."""
    rank0, rank1 = run_ddp(tmp_path, text_file, "configs/dct4x.yaml", ["--model.parameterization", name])
    assert rank0["global_step"] == rank1["global_step"] == 3
    assert not rank0["ddp_kwargs"].get("find_unused_parameters", False)
    own = {"monarch": (".L", ".R"), "sparse_lowrank": (".A", ".B", ".S"), "kronecker": (".A", ".B")}[name]
    assert sum(k.endswith(own) for k in rank0["params"]) == 4 * len(own)  # the 4 block linears' factors
    for key, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][key]), key
