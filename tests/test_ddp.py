"""Two-process CPU DDP (gloo) through cli.py: the stacked ddp.yaml add-on runs, ranks draw different
batches and end with identical parameters, with find_unused_parameters off, for every parameterization at once
(a test callback swaps single layers: one run instead of one per parameterization, each run costing two fresh
processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


# Layers of a 2-layer model swapped to other parameterizations (the rest stay the config's low-pass DCT): one
# two-rank run covers DCT low-pass and random, Monarch, sparse + low-rank and Kronecker.
MIXED = {
    "blocks.0.attn.proj": {
        "class_path": "spectral_lightning.DCT",
        "init_args": {"compression": 2, "selection": "random"},
    },
    "blocks.0.mlp.fc": "monarch",
    "blocks.0.mlp.proj": "sparse_lowrank",
    "blocks.1.attn.qkv": "kronecker",
}
# the parameters each class defines its weight with
OWN = {"DCTLinear": (".coef",), "MonarchLinear": (".L", ".R"), "SparseLowRankLinear": (".A", ".B", ".S"),
       "KroneckerLinear": (".A", ".B")}  # fmt: skip


def test_two_rank_ddp_keeps_every_parameterization_identical_and_batches_different(
    tmp_path: Path, text_file: Path
) -> None:
    """Every parameter of every parameterization receives a gradient on every rank (find_unused_parameters stays
    off), the ranks draw different batches and end identical after steps on them."""
    extra = ["--model.n_layer", "2", "--trainer.callbacks+=helpers_ddp.Reparameterize",
             f"--trainer.callbacks.layers={json.dumps(MIXED)}"]  # fmt: skip
    rank0, rank1 = run_ddp(tmp_path, text_file, "configs/dct4x.yaml", extra)
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["strategy"] == "DDPStrategy"
    assert not rank0["ddp_kwargs"].get("find_unused_parameters", False)
    assert rank0["global_step"] == rank1["global_step"] == 3
    # The layers are what the run asked for, on both ranks.
    kinds = {"blocks.0.attn.proj": "DCTLinear", "blocks.0.mlp.fc": "MonarchLinear",
             "blocks.0.mlp.proj": "SparseLowRankLinear", "blocks.1.attn.qkv": "KroneckerLinear"}  # fmt: skip
    for name in ("blocks.0.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc", "blocks.1.mlp.proj"):
        kinds[name] = "DCTLinear"
    assert {k: v for k, v in rank0["layers"].items() if k != "lm_head"} == kinds
    assert rank1["layers"] == rank0["layers"]
    for name, kind in kinds.items():
        assert all(f"{name}{suffix}" in rank0["params"] for suffix in OWN[kind]), name
    # Different data on each rank, every step.
    b0, b1 = rank0["batches"], rank1["batches"]
    assert b0.shape == b1.shape == (3, 4, 17)
    assert all(not torch.equal(b0[i], b1[i]) for i in range(3))
    # Identical parameters at the end, after 3 optimizer steps on different batches.
    assert rank0["params"].keys() == rank1["params"].keys()
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name
