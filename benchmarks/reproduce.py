"""Reproduce the paper's table, its compression sweep and the experiments beside them through ``cli.py``.

Every run is ``python cli.py fit --config configs/<name>.yaml <overrides>`` in a subprocess, with one shared
budget (``--steps``) and seeds (``--seeds``); its TensorBoard logs and checkpoints land in
``<out>/runs/<run>/seed<S>-steps<N>/``. When a run ends, its numbers are read back from its event file and
last checkpoint and written to ``metrics.json`` there and, as one line, to the ledger ``<out>/runs.jsonl``. A run
that either holds is not redone, so an interrupted grid resumes where it stopped (an unfinished run restarts from
its ``last.ckpt``). The repository keeps the ledger and ignores ``<out>/runs/`` (logs, checkpoints, metrics.json),
so a grid can span clones and machines: a fresh clone skips what has been run and reports on all of it.

Groups:

* ``paper``: dense, dct2x (K = mn/2), dct4x (K = mn/4), lowrank (rank 16), lowrank48 (rank 48);
* ``sweep``: K ∈ {mn/2, mn/4, mn/10, mn/20} (``--compressions``) × {DCT lowpass, DCT zigzag, DCT random,
  random orthonormal basis}, plus low-rank at the matched count (``compression`` c gives the largest rank r
  with r·(m + n) ≤ mn/c). The sweep's DCT zigzag at mn/2 and lowpass at mn/4 are the paper's dct2x and dct4x
  runs, shared rather than trained twice.
* ``baselines``: dense, DCT lowpass, DCT random, low-rank, Monarch, sparse + low-rank (SLTrain's W = B·A + S) and
  Kronecker at compressions 4 and 10 (``--baseline-compressions``), each layer storing about mn/c values. Runs
  that are also paper or sweep runs (dense, dct4x, the DCT random and low-rank points) are shared.
* ``tuning``: dense and dct4x with model dropout 0, 0.1 and 0.2 (``dense_do0.1``, ``dct4x_do0.2``, ...); the
  dropout-0 runs are the paper's ``dense`` and ``dct4x`` (shared/paper.yaml trains without dropout), shared.
* ``adaptive``: at compressions 4, 10 and 20 (``--adaptive-compressions``), DCT with a fixed lowpass support (the
  sweep's ``dct_lowpass_c<c>``, at c = 4 the paper's dct4x), a fixed random one (``dct_random_c<c>``) and supports
  that move from a random start, every layer keeping its K (``adaptive_c<c>``, configs/adaptive/dct4x.yaml) or
  the layers sharing one total (``adaptive_global_c<c>``, configs/adaptive/dct4x-global.yaml), plus the paper's
  dense as the reference. The fixed runs are shared with the sweep and paper groups.
* ``tries``: one-option variants of the adaptive group's runs (or of another try), each a knob for closing the gap
  to dense: at c = 4 the coefficients at twice the learning rate (``model.parameterized_lr_scale 2``; √c = 2 makes
  a step move W as far, in Frobenius norm, as a dense step does) with moving supports, per layer
  (``adaptive_lr2_c4``) or global (``adaptive_global_lr2_c4``; × 4 = c: ``adaptive_global_lr4_c4``), and fixed
  random ones (``dct_random_lr2_c4``); moving supports from a low-pass start (``adaptive_lowpass_c4``); the global
  lr × 2 and lr × 4 runs with model dropout 0.1, the tuned dense model's (``adaptive_global_lr2_do0.1_c4``,
  ``adaptive_global_lr4_do0.1_c4``) or growing by Ĝ summed over the 20 steps before each update
  (``adaptive_global_lr2_gw20_c4``, option ``grow_window``); the global lr × 4 run at c = 3.79, the budget nearest
  30% of the dense parameters (``adaptive_global_lr4_c3.79``: 29.9%); at c = 10 and 20 the global run with the lr
  scaled by √c (``adaptive_global_lrsqrt_c10``, ``_c20``), at c = 10 also with dropout 0.1, and by c
  (``adaptive_global_lr10_c10``), and the decay variants of lr × c (``..._wd_...``, ``..._wd2_...``,
  ``..._wd4_...``, see TRIES), and late dropout (``adaptive_global_lr4_late0.1_c4``: dropout 0.1 from step 2,000,
  where the lr × 4 run falls behind the tuned dense model), and the lr × 4 run with the global budget comparing
  each layer's |x| and |Ĝ| over that layer's mean (``adaptive_global_lr4_rel_c4``, ``budget: global_relative``) or
  growing by Ĝ summed over 20 steps (``adaptive_global_lr4_gw20_c4``) or with its support frozen at half of
  training instead of three quarters (``adaptive_global_lr4_uu0.5_c4``).
  The runs they vary (the adaptive group's, the fixed random one) join them as references, with dense and dct4x.

Outputs (each written through a temporary file and a rename):

* ``<out>/runs.jsonl``: the ledger, every finished run (all budgets) as one JSON line, the ``metrics.json``
  of its run folder (validation curve and final budgets included), sorted by run, budget and seed;
* ``<out>/runs.csv``: the ledger's runs as a table, one row per run and seed;
* ``<out>/summary.md``: mean ± std over seeds per config at this ``--steps`` budget, beside the paper's numbers
  (and, once baselines runs exist, a baselines table: share of the dense model stored, val loss, bpb, stable
  rank and training tokens/s relative to dense, per parameterization and compression; once tuning runs exist, a
  table of val loss per model and dropout with the best-tuned dense and dct4x compared; once adaptive runs exist,
  a table of fixed against moving supports per compression, with the gap to the best-tuned dense, and the final K
  of each layer under the global budget as a share of its starting K; once tries exist, each beside the run it
  varies);
* ``<out>/summary.png``: final validation loss against % of dense parameters stored, one line per parameterization
  (the adaptive runs included, the dropout variants left out; needs matplotlib);
* ``<out>/summary-curves.png``: once an adaptive run or a try at c = 4 has finished, validation loss against step
  of the c = 4 supports (fixed, moving, the tries) and the dense references.

The two summaries keep these names for the paper's budget (5,000 steps, 100 warm-up steps, no size overrides);
any other budget writes ``summary-<tag>.md`` and ``.png`` (``<tag>`` as in the run folders, e.g.
``steps500-warmup50``), so a short or debug-size grid never overwrites the full-budget report.

Examples::

    # the paper table and the full sweep, 5,000 steps, 3 seeds, 4 runs at a time on one GPU
    python benchmarks/reproduce.py --steps 5000 --seeds 0 1 2 --device gpu --jobs 4
    # a reduced CPU budget: the paper table only, one seed
    OMP_NUM_THREADS=1 python benchmarks/reproduce.py --groups paper --steps 300 --seeds 0 --device cpu
    # the sweep at the two strongest compressions only
    python benchmarks/reproduce.py --groups sweep --compressions 10 20 --steps 5000 --seeds 0 1
    # the structured baselines at c = 4 and 10, two seeds
    python benchmarks/reproduce.py --groups baselines --steps 5000 --seeds 0 1 --device gpu --jobs 4
    # dropout 0, 0.1, 0.2 for dense and dct4x, two seeds on the CPU
    python benchmarks/reproduce.py --groups tuning --steps 5000 --seeds 0 1 --device cpu --jobs 2
    # fixed against moving DCT supports at c = 4, 10, 20, two seeds on the CPU
    python benchmarks/reproduce.py --groups adaptive --steps 5000 --seeds 0 1 --device cpu --jobs 2
    # one knob at a time on the c = 4 adaptive run (coefficient learning rate, starting selection)
    python benchmarks/reproduce.py --groups tries --steps 5000 --seeds 0 --device cpu --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from spectral_lightning.files import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"
CONFIGS = REPO / "configs"

RANDOM_BASIS = "spectral_lightning.parameterizations.random_basis.RandomBasis"
# Parameterizations given to a run as a class path with only ``compression`` set (no config of their own).
CLASS_PATHS: dict[str, str] = {
    "random_basis": RANDOM_BASIS,
    "monarch": "spectral_lightning.parameterizations.monarch.Monarch",
    "sparse_lowrank": "spectral_lightning.parameterizations.sparse_lowrank.SparseLowRank",
    "kronecker": "spectral_lightning.parameterizations.kronecker.Kronecker",
}

# The paper's numbers (4 layers, d = 128, tiny Shakespeare). v1 reports validation perplexity, v2 validation loss.
PAPER_V1_PPL: dict[str, str] = {
    "dense": "6.1 (100%)",
    "dct2x": "6.1 (52%)",
    "dct4x": "6.9 (29%)",
    "lowrank": "8.8 (21%)",
}
PAPER_V2_LOSS: dict[str, str] = {"dense": "1.580", "dct2x": "1.604", "lowrank48": "1.801"}

PAPER_RUNS: tuple[tuple[str, str, float | None, str], ...] = (
    # (run name = config file, parameterization line in the plot, sweep compression c it also stands for, description)
    ("dense", "dense", None, "dense"),
    ("dct2x", "dct zigzag", 2.0, "DCT, K = mn/2 (zigzag)"),
    ("dct4x", "dct lowpass", 4.0, "DCT, K = mn/4 (lowpass)"),
    ("lowrank", "lowrank", None, "low-rank, r = 16"),
    ("lowrank48", "lowrank", None, "low-rank, r = 48"),
)

# Sweep parameterizations: (key used in run names, plot/table label, base config, parameterization overrides for c).
SWEEP_PARAMETERIZATIONS: tuple[str, ...] = ("dct_lowpass", "dct_zigzag", "dct_random", "random_basis", "lowrank")
PARAMETERIZATION_LABEL: dict[str, str] = {
    "dct_lowpass": "dct lowpass",
    "dct_zigzag": "dct zigzag",
    "dct_random": "dct random",
    "random_basis": "random_basis",
    "lowrank": "lowrank",
    "monarch": "monarch",
    "sparse_lowrank": "sparse_lowrank",
    "kronecker": "kronecker",
}
# A sweep point that is exactly a paper run is not trained twice.
SHARED_WITH_PAPER: dict[tuple[str, float], str] = {("dct_zigzag", 2.0): "dct2x", ("dct_lowpass", 4.0): "dct4x"}
DEFAULT_COMPRESSIONS: tuple[float, ...] = (2.0, 4.0, 10.0, 20.0)
# The baselines group: every parameterization at the same compressions (dense joins as the reference).
BASELINE_PARAMETERIZATIONS: tuple[str, ...] = (
    "dct_lowpass",
    "dct_random",
    "lowrank",
    "monarch",
    "sparse_lowrank",
    "kronecker",
)
BASELINE_COMPRESSIONS: tuple[float, ...] = (4.0, 10.0)
# The tuning group: the paper's dense and dct4x at each model dropout (dropout 0 is the paper run itself).
TUNING_MODELS: tuple[str, ...] = ("dense", "dct4x")
TUNING_DROPOUTS: tuple[float, ...] = (0.0, 0.1, 0.2)
# The adaptive group: per support budget, (run-name prefix, plot/table label, config under configs/).
ADAPTIVE_RUNS: dict[str, tuple[str, str, str]] = {
    "per_layer": ("adaptive", "dct adaptive", "adaptive/dct4x.yaml"),
    "global": ("adaptive_global", "dct adaptive global", "adaptive/dct4x-global.yaml"),
}
ADAPTIVE_COMPRESSIONS: tuple[float, ...] = (4.0, 10.0, 20.0)
# The tries group: (run name, table label, the run it varies, its compression, its one change as options). The run
# it varies is a support budget of the adaptive group ("per_layer", "global"), "random" for the fixed random support,
# or an earlier try (a change stacked on that try; a compression other than that try's is the change, set last).
# Coefficient lr scales are √c: an AdamW step then moves W as far, in Frobenius norm, as a dense step does. AdamW's
# decoupled decay shrinks by lr × weight_decay per step, so a scaled rate also scales the decay; the "decay ÷ s"
# tries set the coefficients' weight_decay to 0.1 / s, which keeps it, and "decay × 2" and "× 4" double and quadruple
# it (0.2 and 0.4: the coefficients then shrink 8 and 16 times as fast per step as the dense weights).
TRIES: tuple[tuple[str, str, str, float, tuple[str, ...]], ...] = (
    (
        "adaptive_lr2_c4",
        "adaptive, per layer, coefficient lr × 2",
        "per_layer",
        4.0,
        ("--model.parameterized_lr_scale", "2"),
    ),
    (
        "adaptive_global_lr2_c4",
        "adaptive, global, coefficient lr × 2",
        "global",
        4.0,
        ("--model.parameterized_lr_scale", "2"),
    ),
    (
        "adaptive_global_lr4_c4",
        "adaptive, global, coefficient lr × 4",
        "global",
        4.0,
        ("--model.parameterized_lr_scale", "4"),
    ),
    ("dct_random_lr2_c4", "fixed random, coefficient lr × 2", "random", 4.0, ("--model.parameterized_lr_scale", "2")),
    (
        "adaptive_lowpass_c4",
        "adaptive, per layer, low-pass start",
        "per_layer",
        4.0,
        ("--model.parameterization.init_args.selection", "lowpass"),
    ),
    (
        "adaptive_global_lr2_do0.1_c4",
        "adaptive, global, coefficient lr × 2, dropout 0.1",
        "adaptive_global_lr2_c4",
        4.0,
        ("--model.dropout", "0.1"),
    ),
    (
        "adaptive_global_lr2_gw20_c4",
        "adaptive, global, coefficient lr × 2, Ĝ summed over 20 steps",
        "adaptive_global_lr2_c4",
        4.0,
        ("--model.parameterization.init_args.grow_window", "20"),
    ),
    (
        "adaptive_global_lrsqrt_c10",
        "adaptive, global, coefficient lr × √10",
        "global",
        10.0,
        ("--model.parameterized_lr_scale", "3.162"),
    ),
    (
        "adaptive_global_lrsqrt_do0.1_c10",
        "adaptive, global, coefficient lr × √10, dropout 0.1",
        "adaptive_global_lrsqrt_c10",
        10.0,
        ("--model.dropout", "0.1"),
    ),
    (
        "adaptive_global_lr10_c10",
        "adaptive, global, coefficient lr × 10",
        "global",
        10.0,
        ("--model.parameterized_lr_scale", "10"),
    ),
    (
        "adaptive_global_lr4_wd_c4",
        "adaptive, global, coefficient lr × 4, their decay ÷ 4",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterized_weight_decay", "0.025"),
    ),
    (
        "adaptive_global_lr10_wd_c10",
        "adaptive, global, coefficient lr × 10, their decay ÷ 10",
        "adaptive_global_lr10_c10",
        10.0,
        ("--model.parameterized_weight_decay", "0.01"),
    ),
    (
        "adaptive_global_lr4_wd2_c4",
        "adaptive, global, coefficient lr × 4, their decay × 2",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterized_weight_decay", "0.2"),
    ),
    (
        "adaptive_global_lr4_do0.1_c4",
        "adaptive, global, coefficient lr × 4, dropout 0.1",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.dropout", "0.1"),
    ),
    (
        "adaptive_global_lr4_c3.79",
        "adaptive, global, coefficient lr × 4, c = 3.79",
        "adaptive_global_lr4_c4",
        3.79,
        (),  # the change is the compression itself
    ),
    (
        "adaptive_global_lr4_df0.1_c4",
        "adaptive, global, coefficient lr × 4, drop fraction 0.1",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.drop_fraction", "0.1"),
    ),
    (
        "adaptive_global_lr4_floor_c4",
        "adaptive, global, coefficient lr × 4, annealed to min_lr",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterized_min_lr", "1e-4"),
    ),
    (
        "adaptive_global_lr4_df0.5_c4",
        "adaptive, global, coefficient lr × 4, drop fraction 0.5",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.drop_fraction", "0.5"),
    ),
    (
        "adaptive_global_lr4_do0.05_c4",
        "adaptive, global, coefficient lr × 4, dropout 0.05",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.dropout", "0.05"),
    ),
    (
        "adaptive_global_lr4_wd4_c4",
        "adaptive, global, coefficient lr × 4, their decay × 4",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterized_weight_decay", "0.4"),
    ),
    (
        "adaptive_global_lr4_late0.1_c4",
        "adaptive, global, coefficient lr × 4, dropout 0.1 from step 2,000",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.dropout", "0.1", "--model.dropout_from_step", "2000"),
    ),
    (
        "adaptive_global_lr4_rel_c4",
        "adaptive, global, coefficient lr × 4, layers compared relative to their mean",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.budget", "global_relative"),
    ),
    (
        "adaptive_global_lr4_gw20_c4",
        "adaptive, global, coefficient lr × 4, Ĝ summed over 20 steps",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.grow_window", "20"),
    ),
    (
        "adaptive_global_lr4_uu0.5_c4",
        "adaptive, global, coefficient lr × 4, support frozen at 50% of training",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.update_until", "0.5"),
    ),
    (
        "adaptive_global_lrsqrt_c20",
        "adaptive, global, coefficient lr × √20",
        "global",
        20.0,
        ("--model.parameterized_lr_scale", "4.472"),
    ),
)

CSV_COLUMNS: tuple[str, ...] = (
    "run",
    "parameterization",
    "config",
    "compression",
    "seed",
    "steps",
    "stored_params",
    "pct_of_dense",
    "final_val_loss",
    "best_val_loss",
    "final_val_ppl",
    "mean_stable_rank",
    "tokens_per_s",
    "wall_s",
    "machine",
    "accelerator",
    "resumed",
    "command",
    "run_dir",
)


@dataclass(frozen=True)
class RunSpec:
    """One configuration of the grid (trained once per seed)."""

    name: str
    parameterization: str  # plot/table label
    config: str  # YAML under configs/
    overrides: tuple[str, ...] = ()
    compression: float | None = None  # the sweep's c (K = mn/c), None for rank-specified runs
    description: str = ""
    groups: tuple[str, ...] = field(default=(), compare=False)


def sweep_spec(key: str, c: float) -> RunSpec:
    """The sweep run for parameterization ``key`` at compression ``c``."""
    label = PARAMETERIZATION_LABEL[key]
    name = f"{key}_c{c:g}"
    if key.startswith("dct_"):
        selection = key.removeprefix("dct_")
        overrides = (
            "--model.parameterization.init_args.compression",
            f"{c:g}",
            "--model.parameterization.init_args.selection",
            selection,
        )
        return RunSpec(name, label, "dct4x.yaml", overrides, c, f"DCT {selection}, K = mn/{c:g}")
    if key in CLASS_PATHS:
        spec = json.dumps({"class_path": CLASS_PATHS[key], "init_args": {"compression": c}})
        description = {
            "random_basis": f"random basis, K = mn/{c:g}",
            "monarch": f"Monarch, k·(m+n) ≤ mn/{c:g}",
            "sparse_lowrank": f"sparse + low-rank (S ≥ 3%), r·(m+n) + nnz = ⌊mn/{c:g}⌋",
            "kronecker": f"Kronecker, t terms: t·(m1·n1 + m2·n2) ≤ mn/{c:g}",
        }[key]
        return RunSpec(name, label, "dct4x.yaml", ("--model.parameterization", spec), c, description)
    if key == "lowrank":
        overrides = (
            "--model.parameterization.init_args.rank",
            "null",
            "--model.parameterization.init_args.compression",
            f"{c:g}",
        )
        return RunSpec(name, label, "lowrank.yaml", overrides, c, f"low-rank, r·(m+n) ≤ mn/{c:g}")
    raise ValueError(f"unknown sweep parameterization {key!r}")


def baseline_spec(key: str, c: float) -> RunSpec:
    """The baselines run of parameterization ``key`` at compression ``c`` (a paper run where one is the same)."""
    shared = SHARED_WITH_PAPER.get((key, float(c)))
    if shared:
        return paper_spec(shared)
    return sweep_spec(key, float(c))


def paper_spec(name: str) -> RunSpec:
    """The paper run ``name`` (its config is ``configs/<name>.yaml``, unchanged)."""
    _, label, c, description = next(r for r in PAPER_RUNS if r[0] == name)
    return RunSpec(name, label, f"{name}.yaml", (), c, description)


def tuning_spec(model: str, dropout: float) -> RunSpec:
    """The tuning run of paper config ``model`` at model dropout ``dropout``: the paper run itself at dropout 0
    (shared/paper.yaml trains without dropout), else ``<model>_do<dropout>``."""
    paper = paper_spec(model)
    if dropout == 0:
        return paper
    return RunSpec(
        f"{model}_do{dropout:g}",
        f"{paper.parameterization} (dropout {dropout:g})",  # its own label: the plot leaves these runs out
        paper.config,
        ("--model.dropout", f"{dropout:g}"),
        paper.compression,
        f"{paper.description}, dropout {dropout:g}",
    )


def adaptive_spec(budget: str, c: float) -> RunSpec:
    """The run whose DCT supports move (from a random start, every 100 steps: the adaptive configs' defaults) at
    compression ``c``, with ``budget`` ``per_layer`` (each layer keeps K = mn/c) or ``global`` (ΣK fixed)."""
    prefix, label, config = ADAPTIVE_RUNS[budget]
    what = "each layer keeps K = mn/" if budget == "per_layer" else "one total ΣK = Σmn/"
    return RunSpec(
        f"{prefix}_c{c:g}",
        label,
        config,
        ("--model.parameterization.init_args.compression", f"{c:g}"),
        c,
        f"DCT, moving support ({what}{c:g})",
    )


def try_base(base: str, c: float) -> RunSpec:
    """The run a try at compression ``c`` varies: the fixed random support (``random``), the adaptive run of
    support budget ``base`` (``per_layer``, ``global``) or the try named ``base``."""
    if base == "random":
        return sweep_spec("dct_random", c)
    return adaptive_spec(base, c) if base in ADAPTIVE_RUNS else try_spec(base)


def try_spec(name: str) -> RunSpec:
    """The tries group's run ``name``: the run it varies, with its one change; its own label (the plot leaves
    these runs out: the Tries table holds them)."""
    _, label, base, c, change = next(t for t in TRIES if t[0] == name)
    spec = try_base(base, c)
    if c != spec.compression:  # a try of another try may change its compression: set last, so it wins
        change = (*change, "--model.parameterization.init_args.compression", f"{c:g}")
    return replace(
        spec,
        name=name,
        compression=c,
        parameterization=label,
        overrides=spec.overrides + change,
        description=f"{spec.description}, {label.rsplit(', ', 1)[-1]}",
    )


def build_grid(
    groups: Sequence[str],
    compressions: Sequence[float],
    baseline_compressions: Sequence[float] = BASELINE_COMPRESSIONS,
    adaptive_compressions: Sequence[float] = ADAPTIVE_COMPRESSIONS,
) -> list[RunSpec]:
    """The runs of ``groups`` (``paper``, ``sweep``, ``baselines``, ``tuning``, ``adaptive``, ``tries``), each
    once, in a stable order; ``compressions`` are the sweep's, ``baseline_compressions`` the baselines',
    ``adaptive_compressions`` the adaptive group's (each try names its own compression)."""
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec, group: str) -> None:
        old = runs.get(spec.name)
        groups = old.groups if old else ()
        runs[spec.name] = replace(spec, groups=groups if group in groups else groups + (group,))

    paper = {name: paper_spec(name) for name, *_ in PAPER_RUNS}
    if "paper" in groups:
        for spec in paper.values():
            add(spec, "paper")
    if "sweep" in groups:
        for c in compressions:
            for key in SWEEP_PARAMETERIZATIONS:
                shared = SHARED_WITH_PAPER.get((key, float(c)))
                add(paper[shared] if shared else sweep_spec(key, float(c)), "sweep")
    if "baselines" in groups:
        add(paper["dense"], "baselines")
        for c in baseline_compressions:
            for key in BASELINE_PARAMETERIZATIONS:
                add(baseline_spec(key, c), "baselines")
    if "tuning" in groups:
        for model in TUNING_MODELS:
            for dropout in TUNING_DROPOUTS:
                add(tuning_spec(model, dropout), "tuning")
    if "adaptive" in groups:
        add(paper["dense"], "adaptive")
        for c in adaptive_compressions:
            add(baseline_spec("dct_lowpass", c), "adaptive")  # the paper's dct4x at c = 4
            add(sweep_spec("dct_random", float(c)), "adaptive")
            for budget in ADAPTIVE_RUNS:
                add(adaptive_spec(budget, float(c)), "adaptive")
    if "tries" in groups:
        add(paper["dense"], "tries")
        add(paper["dct4x"], "tries")
        for _, _, base, c, _ in TRIES:  # the runs the tries vary join as references (a try's own base is a try)
            if base == "random" or base in ADAPTIVE_RUNS:
                add(try_base(base, c), "tries")
        for name, *_ in TRIES:
            add(try_spec(name), "tries")
    return list(runs.values())


# -- running -----------------------------------------------------------------------------------------------


def validation_interval(steps: int) -> int:
    """Steps between validations: the largest divisor of ``steps`` that is at most min(500, steps/2), so that
    validation runs at least twice and always at the very last step."""
    cap = max(1, min(500, steps // 2))
    return next(d for d in range(cap, 0, -1) if steps % d == 0)


def debug_overrides(text: str | None) -> list[str]:
    """``n_layer=1,n_embd=32,n_head=2,block=16,batch=8`` -> the matching ``--model.*``/``--data.*`` options."""
    if not text:
        return []
    keys = {
        "n_layer": "--model.n_layer",
        "n_head": "--model.n_head",
        "n_embd": "--model.n_embd",
        "block": "--data.block_size",
        "batch": "--data.batch_size",
    }
    out: list[str] = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in keys or not value.strip().isdigit():
            raise SystemExit(
                f"error: --debug-size item {item!r} is not valid: expected key=positive integer with key in "
                f"{', '.join(keys)}"
            )
        out += [keys[key], value.strip()]
    return out


PAPER_STEPS = 5000  # the paper's budget: the default, and the one whose reports are summary.md / summary.png


@dataclass(frozen=True)
class Budget:
    """What every run shares: steps, accelerator and the extra (debug) options."""

    steps: int
    device: str
    extra: tuple[str, ...]  # options that change the experiment (model size, data), part of the run's identity
    warmup: int = 100

    @property
    def tag(self) -> str:
        """Run-folder suffix: the budget, plus a short hash of the extra options when there are any."""
        tag = f"steps{self.steps}"
        if self.warmup != 100:
            tag += f"-warmup{self.warmup}"
        if self.extra:
            tag += "-" + hashlib.sha1(" ".join(self.extra).encode()).hexdigest()[:8]
        return tag


def summary_stem(budget: Budget) -> str:
    """``summary`` for the paper's budget (5,000 steps, default warm-up, no overrides), else ``summary-<tag>``."""
    paper = Budget(PAPER_STEPS, budget.device, ())
    return "summary" if budget.tag == paper.tag else f"summary-{budget.tag}"


def run_dir(out: Path, spec: RunSpec, seed: int, budget: Budget) -> Path:
    return out / "runs" / spec.name / f"seed{seed}-{budget.tag}"


def command_for(spec: RunSpec, seed: int, budget: Budget, out: Path) -> list[str]:
    """The ``cli.py fit`` command line of one run."""
    directory = run_dir(out, spec, seed, budget)
    interval = validation_interval(budget.steps)
    cmd = [sys.executable, str(CLI), "fit", "--config", str(CONFIGS / spec.config), *spec.overrides]
    cmd += ["--seed_everything", str(seed), "--data.seed", str(seed)]
    cmd += ["--trainer.max_steps", str(budget.steps), "--data.batches_per_epoch", str(interval)]
    cmd += ["--model.warmup_steps", str(budget.warmup)]
    cmd += ["--trainer.log_every_n_steps", str(min(10, interval)), "--trainer.accelerator", budget.device]
    cmd += ["--trainer.logger.init_args.save_dir", str(directory.parent.parent)]
    cmd += ["--trainer.logger.init_args.name", spec.name, "--trainer.logger.init_args.version", directory.name]
    cmd += list(budget.extra)
    return cmd


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def machine_name(accelerator: str) -> str:
    """``platform`` plus the CPU model, and the GPU name when the runs used one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [platform.platform(terse=True), cpu, f"{os.cpu_count()} CPUs"]
    if accelerator in ("gpu", "cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    return ", ".join(parts)


def read_scalars(directory: Path) -> dict[str, list[tuple[float, int, float]]]:
    """Every scalar of the run's TensorBoard event files: tag -> [(wall_time, step, value)] sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: sorted(((e.wall_time, e.step, e.value) for e in acc.Scalars(tag)), key=lambda t: (t[1], t[0]))
        for tag in acc.Tags()["scalars"]
    }


def tokens_per_second(train_loss: list[tuple[float, int, float]], tokens_per_step: int) -> float:
    """Training throughput from the wall times of the logged train losses (startup excluded, periodic
    validation included). Pairs spanning a restart are skipped: a step going backwards, or a gap per step over
    ten times the median one (the time a run spent stopped before it was resumed)."""
    pairs = [
        (s1 - s0, t1 - t0)
        for (t0, s0, _), (t1, s1, _) in zip(train_loss, train_loss[1:], strict=False)
        if s1 > s0 and t1 > t0
    ]
    if not pairs:
        return float("nan")
    typical = statistics.median(dt / ds for ds, dt in pairs)
    kept = [(ds, dt) for ds, dt in pairs if dt / ds <= 10 * typical]
    steps, seconds = sum(ds for ds, _ in kept), sum(dt for _, dt in kept)
    return steps * tokens_per_step / seconds if seconds > 0 else float("nan")


def stable_ranks(checkpoint: Path) -> tuple[int, int, float]:
    """(stored parameters, parameters of the dense model of the same size, mean stable rank ‖W‖_F²/‖W‖₂² of
    the parameterized linears) from a checkpoint."""
    import torch

    from spectral_lightning import SpectralLM
    from spectral_lightning.analysis import parameter_report, stable_rank

    module = SpectralLM.load_from_checkpoint(str(checkpoint), map_location="cpu")
    _, totals = parameter_report(module.model)
    linears = module.model.linears()
    with torch.no_grad():
        ranks = [stable_rank(linears[name].weight) for name in module.model.parameterized]
    return totals.stored, totals.dense, statistics.fmean(ranks)


SUPPORT_K = "support/k/"  # the prefix of the per-layer K a global-budget run logs at each support update


def final_support_k(scalars: dict[str, list[tuple[float, int, float]]]) -> dict[str, int]:
    """Each layer's K after the last support update of a global-budget run (its last ``support/k/<layer>``
    scalar), by layer name; empty for a run that logged none (a fixed support, a per-layer budget, or no update
    within the run)."""
    return {
        tag.removeprefix(SUPPORT_K): round(values[-1][2])
        for tag, values in scalars.items()
        if tag.startswith(SUPPORT_K) and values
    }


def starting_k(checkpoint: Path) -> dict[str, int]:
    """Each parameterized linear's K at the start of training (what the parameterization gives its shape, e.g.
    round(mn/c)), by layer name in model order, from a checkpoint."""
    from spectral_lightning import SpectralLM

    module = SpectralLM.load_from_checkpoint(str(checkpoint), map_location="cpu")
    linears = module.model.linears()
    return {
        name: module.parameterization.num_coefficients(linears[name].in_features, linears[name].out_features)
        for name in module.model.parameterized
    }


def read_row(metrics: Path) -> dict:
    """A finished run's ``metrics.json`` (runs written before the column was renamed call it ``strategy``)."""
    row = json.loads(metrics.read_text())
    if "strategy" in row:
        row["parameterization"] = row.pop("strategy")
    return row


def collect(spec: RunSpec, seed: int, budget: Budget, directory: Path, wall: float, resumed: bool, cmd: list[str]):
    """The run's row: numbers from its event file and its last checkpoint."""
    scalars = read_scalars(directory)
    val = scalars.get("val/loss", [])
    if not val:
        raise RuntimeError(f"run {directory} logged no val/loss; see {directory / 'train.log'}")
    ppl = scalars.get("val/ppl", [])
    bpb = scalars.get("val/bpb", [])
    checkpoint = directory / "checkpoints" / "last.ckpt"
    stored, dense, rank = stable_ranks(checkpoint)
    config = (directory / "config.yaml").read_text()
    block = batch = None
    for line in config.splitlines():  # the saved config holds the effective data sizes
        key, _, value = line.strip().partition(":")
        if key == "block_size" and block is None:
            block = int(value)
        elif key == "batch_size" and batch is None:
            batch = int(value)
    row = {
        "run": spec.name,
        "parameterization": spec.parameterization,
        "config": spec.config,
        "compression": "" if spec.compression is None else spec.compression,
        "seed": seed,
        "steps": budget.steps,
        "stored_params": stored,
        "pct_of_dense": round(100.0 * stored / dense, 2),
        "final_val_loss": round(val[-1][2], 5),
        "best_val_loss": round(min(v for _, _, v in val), 5),
        "final_val_ppl": round(ppl[-1][2], 4) if ppl else round(math.exp(val[-1][2]), 4),
        "final_val_bpb": round(bpb[-1][2], 4) if bpb else None,  # metrics.json only (runs.csv keeps its columns)
        "mean_stable_rank": round(rank, 3),
        "tokens_per_s": round(tokens_per_second(scalars.get("train/loss", []), (block or 0) * (batch or 0)), 1),
        "wall_s": round(wall, 1),
        "machine": machine_name(budget.device),
        "accelerator": budget.device,
        "resumed": resumed,
        "command": shlex.join(os.path.relpath(a, REPO) if a.startswith(str(REPO)) else a for a in cmd[1:]),
        "run_dir": str(directory),
        "description": spec.description,
        "tag": budget.tag,
        # every validation as [step, val loss], the latest where a resumed run logged a step twice (metrics.json
        # only): the curve outlives the event files, which are not kept
        "val_curve": [list(point) for point in {step: round(value, 5) for _, step, value in val}.items()],
    }
    # Runs whose supports move: the mean share of positions changed per update, and under a global budget each
    # layer's [starting K, final K] (metrics.json only; a fixed-support run's row gains no key).
    changed = scalars.get("support/changed", [])
    if changed:
        row["mean_support_changed"] = round(statistics.fmean(v for _, _, v in changed), 4)
    final = final_support_k(scalars)
    if final:
        start = starting_k(checkpoint)
        row["support_k"] = {name: [start[name], final[name]] for name in start if name in final}
    return row


def finished_row(out: Path, spec: RunSpec, seed: int, budget: Budget) -> dict | None:
    """The row of a finished run: its ``metrics.json`` if the run folder holds one, else its ledger line."""
    metrics = run_dir(out, spec, seed, budget) / "metrics.json"
    if metrics.is_file():
        return read_row(metrics)
    return read_ledger(out).get((spec.name, budget.tag, seed))


def train(spec: RunSpec, seed: int, budget: Budget, out: Path, jobs: int = 1) -> tuple[str, dict | None]:
    """Train one run unless it has finished (``finished_row``); returns ("skipped" | "done" | "failed", row).

    With ``jobs`` concurrent runs and no ``OMP_NUM_THREADS`` set, each run gets an equal share of the CPU
    threads, so concurrent CPU runs do not oversubscribe the cores.
    """
    done = finished_row(out, spec, seed, budget)
    if done is not None:
        return "skipped", done
    directory = run_dir(out, spec, seed, budget)
    metrics = directory / "metrics.json"
    cmd = command_for(spec, seed, budget, out)
    last = directory / "checkpoints" / "last.ckpt"
    resumed = last.is_file()
    if resumed:
        cmd += ["--ckpt_path", str(last)]
    directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    start = time.perf_counter()
    with open(directory / "train.log", "ab") as log:
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        log.flush()
        code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    if code != 0:
        return "failed", None
    row = collect(spec, seed, budget, directory, wall, resumed, cmd)
    atomic_write_text(metrics, json.dumps(row, indent=2) + "\n")
    all_rows(out)  # records the run in the ledger
    return "done", row


# -- the ledger --------------------------------------------------------------------------------------------

_LEDGER_LOCK = threading.Lock()  # concurrent runs of one invocation (--jobs) record in turn


def row_key(row: dict) -> tuple[str, str, int]:
    return row["run"], row["tag"], row["seed"]


def read_ledger(out: Path) -> dict[tuple[str, str, int], dict]:
    """``<out>/runs.jsonl`` by (run, budget tag, seed); empty when there is none."""
    path = out / "runs.jsonl"
    if not path.is_file():
        return {}
    rows = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[row_key(row)] = row
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise SystemExit(
                f"error: {path} line {number} is not a finished run's record ({type(err).__name__}: {err}); "
                "expected one JSON object with run, tag and seed per line"
            ) from None
    return rows


def all_rows(out: Path) -> list[dict]:
    """Every finished run, in a stable order: the ledger's lines and the ``metrics.json`` under ``<out>/runs``.

    The run folders' files win over the ledger's copy, and the ledger is rewritten (through a temporary file) as the
    union whenever it gains or changes a line: a run that another process finished while this one read the ledger
    is recorded again the next time, from its ``metrics.json``.
    """
    with _LEDGER_LOCK:
        ledger = read_ledger(out)
        rows = dict(ledger)
        for path in sorted((out / "runs").glob("*/*/metrics.json")):
            row = read_row(path)
            if {"run", "tag", "seed"} <= row.keys():
                rows[row_key(row)] = row
        ordered = [rows[key] for key in sorted(rows)]
        if rows != ledger:
            text = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in ordered)
            atomic_write_text(out / "runs.jsonl", text)
    return ordered


# -- reporting ---------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``m ± s`` over seeds (``m`` alone for one seed)."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def sweep_cell(rows: Sequence[dict], key: str, digits: int, seeds: int) -> str:
    """One sweep cell: mean ± std of ``key`` over its runs, marked ``(n = k)`` when it has only k < ``seeds``
    runs (a grid still running, or cells trained with fewer seeds); ``–`` when it has none."""
    if not rows:
        return "–"
    cell = mean_std([r[key] for r in rows], digits)
    return cell if len(rows) >= seeds else f"{cell} (n = {len(rows)})"


def by_run(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["run"], []).append(row)
    return out


def summary_markdown(rows: list[dict], grid: list[RunSpec], budget: Budget, command: str) -> str:
    """Markdown tables (paper table, sweep) for the rows of this budget."""
    runs = by_run(rows)
    seeds = sorted({r["seed"] for r in rows})
    machines = sorted({r["machine"] for r in rows})
    lines = [
        "# Reproduction summary",
        "",
        f"Budget: {budget.steps} steps per run ({budget.warmup} warm-up steps, then cosine decay; batch × context "
        "as in each config unless overridden), "
        f"seeds {', '.join(map(str, seeds)) or '–'}; mean ± std over seeds ((n = k): a cell with only k of them). "
        f"Machine: {'; '.join(machines) or '–'}.",
        "",
        f"Command: `{command}`",
        "",
        "Val loss: mean next-character cross-entropy on the held-out 10% (nats); perplexity = exp(val loss). "
        "Stable rank: ‖W‖_F²/‖W‖₂², averaged over the parameterized block linears "
        "(at most min(m, n) for an m×n weight).",
        "",
    ]
    paper = [s for s in grid if "paper" in s.groups and s.name in runs]
    if paper:
        lines += [
            "## Paper table",
            "",
            "| config | what | params | % of dense | final val loss | best val loss | perplexity | stable rank "
            "| tokens/s | seeds | paper v1 ppl | paper v2 val loss |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for spec in paper:
            rs = runs[spec.name]
            lines.append(
                f"| {spec.name} | {spec.description} | {rs[0]['stored_params']:,} | {rs[0]['pct_of_dense']:.1f}% "
                f"| {mean_std([r['final_val_loss'] for r in rs])} | {mean_std([r['best_val_loss'] for r in rs])} "
                f"| {mean_std([r['final_val_ppl'] for r in rs], 2)} "
                f"| {mean_std([r['mean_stable_rank'] for r in rs], 1)} "
                f"| {statistics.fmean(r['tokens_per_s'] for r in rs):,.0f} | {len(rs)} "
                f"| {PAPER_V1_PPL.get(spec.name, '–')} | {PAPER_V2_LOSS.get(spec.name, '–')} |"
            )
        lines.append("")
    sweep = [s for s in grid if "sweep" in s.groups and s.name in runs and s.compression is not None]
    paper_names = {name for name, *_ in PAPER_RUNS}
    if any(s.name not in paper_names for s in sweep):  # not just the two paper runs the sweep shares
        cs = sorted({s.compression for s in sweep})
        cells = {(s.parameterization, s.compression): runs[s.name] for s in sweep}
        parameterizations = [
            PARAMETERIZATION_LABEL[k]
            for k in SWEEP_PARAMETERIZATIONS
            if any(st == PARAMETERIZATION_LABEL[k] for st, _ in cells)
        ]
        header = " | ".join(f"K = mn/{c:g}" for c in cs)
        for title, key, digits in (
            ("final val loss", "final_val_loss", 3),
            ("mean stable rank of the parameterized weights", "mean_stable_rank", 1),
        ):
            lines += [f"## Sweep: {title}", "", f"| parameterization | {header} |", "|---|" + "---:|" * len(cs)]
            for st in parameterizations:
                row = [sweep_cell(cells.get((st, c), []), key, digits, len(seeds)) for c in cs]
                lines.append(f"| {st} | " + " | ".join(row) + " |")
            lines.append("")
        lines += [
            "Stored parameters (% of dense) per cell:",
            "",
            f"| parameterization | {header} |",
            "|---|" + "---:|" * len(cs),
        ]
        for st in parameterizations:
            row = [
                f"{cells[(st, c)][0]['stored_params']:,} ({cells[(st, c)][0]['pct_of_dense']:.1f}%)"
                if (st, c) in cells
                else "–"
                for c in cs
            ]
            lines.append(f"| {st} | " + " | ".join(row) + " |")
        lines.append("")
    lines += baselines_markdown(runs, grid)
    lines += tuning_markdown(runs, grid)
    lines += adaptive_markdown(runs, grid)
    lines += tries_markdown(runs)
    lines += [
        "Paper: v1 reports validation perplexity (dense 6.1; DCT 6.1 at 52% and 6.9 at 29% of the parameters; "
        "low-rank 8.8 at 21%); v2 reports validation loss (dense 1.580; DCT K = mn/2 1.604; rank-48 low-rank "
        "1.801 at the same count).",
        "",
    ]
    return "\n".join(lines)


def hardware(row: dict) -> str:
    """The machine a run's throughput belongs to: its ``machine`` without the OS part (processor, core count and
    GPU; the same hardware keeps its key across kernel updates)."""
    return row.get("machine", "").split(", ", 1)[-1]


def relative_speed(rows: Sequence[dict], reference: Sequence[dict]) -> float | None:
    """Mean over ``rows`` of each run's training tokens/s over the mean of the ``reference`` runs on the same
    machine (throughput compares only within a machine); None when no run has a reference there."""
    by_machine: dict[str, list[float]] = {}
    for r in reference:
        if math.isfinite(r["tokens_per_s"]):
            by_machine.setdefault(hardware(r), []).append(r["tokens_per_s"])
    means = {machine: statistics.fmean(tps) for machine, tps in by_machine.items()}
    ratios = [
        r["tokens_per_s"] / means[hardware(r)]
        for r in rows
        if math.isfinite(r["tokens_per_s"]) and means.get(hardware(r), 0) > 0
    ]
    return statistics.fmean(ratios) if ratios else None


def baselines_markdown(runs: dict[str, list[dict]], grid: list[RunSpec]) -> list[str]:
    """The baselines table (one row per parameterization and compression, dense first), or nothing when no run
    that only the baselines group trains has finished (so reports of the other groups stay as they were).

    Tokens/s are relative to the mean of the dense rows of the same report (same budget and seeds); ``–`` when
    there is no dense run or no throughput."""
    own = [s for s in grid if s.groups == ("baselines",) and s.name in runs]
    if not own:
        return []
    cs = sorted({s.compression for s in own})
    dense = runs.get("dense", [])
    lines = [
        "## Baselines",
        "",
        "Each block linear stores about mn/c values (dense: mn); % of dense counts the whole model (embeddings, "
        "norms and head included). Val loss and stable rank as above, mean ± std over the n seeds; val bpb: bits per "
        "byte of the held-out text at the last validation; tokens/s: mean training throughput, and × dense the "
        "mean ratio of each run's to that of the dense runs on the same machine (–: no dense run there; "
        "benchmarks/throughput.py --configs measures every parameterization on one machine).",
        "",
        "| parameterization | c | params | % of dense | final val loss | best val loss | val bpb | stable rank "
        "| tokens/s | × dense | n |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cells = [("dense", None, dense)] + [
        (PARAMETERIZATION_LABEL[key], c, runs.get(baseline_spec(key, c).name, []))
        for c in cs
        for key in BASELINE_PARAMETERIZATIONS
    ]
    for label, c, rs in cells:
        if not rs:
            continue
        bpb = [r["final_val_bpb"] for r in rs if r.get("final_val_bpb") is not None]
        tps = [r["tokens_per_s"] for r in rs if math.isfinite(r["tokens_per_s"])]
        speed = statistics.fmean(tps) if tps else math.nan
        ratio = relative_speed(rs, dense)
        lines.append(
            f"| {label} | {'–' if c is None else f'{c:g}'} | {rs[0]['stored_params']:,} "
            f"| {rs[0]['pct_of_dense']:.1f}% | {mean_std([r['final_val_loss'] for r in rs])} "
            f"| {mean_std([r['best_val_loss'] for r in rs])} | {mean_std(bpb)} "
            f"| {mean_std([r['mean_stable_rank'] for r in rs], 1)} "
            f"| {'–' if not tps else f'{speed:,.0f}'} | {'–' if ratio is None else f'{ratio:.2f}×'} | {len(rs)} |"
        )
    lines.append("")
    return lines


def tuned(runs: dict[str, list[dict]], model: str) -> tuple[float, list[dict]] | None:
    """The best-tuned ``model`` (one of TUNING_MODELS): (dropout, rows) of the dropout whose finished runs have the
    lowest mean best val loss (the lower dropout on a tie); None when none of its runs finished."""
    cells = [(d, runs[tuning_spec(model, d).name]) for d in TUNING_DROPOUTS if tuning_spec(model, d).name in runs]
    if not cells:
        return None
    return min(cells, key=lambda cell: statistics.fmean(r["best_val_loss"] for r in cell[1]))


def tuning_markdown(runs: dict[str, list[dict]], grid: list[RunSpec]) -> list[str]:
    """The tuning table (val loss per model and dropout) and the best-tuned models compared, or nothing when no
    run that only the tuning group trains (dropout > 0) has finished."""
    paper_names = {name for name, *_ in PAPER_RUNS}
    if not any("tuning" in s.groups and s.name in runs and s.name not in paper_names for s in grid):
        return []
    lines = [
        "## Tuning: model dropout",
        "",
        "The paper's dense and dct4x with model dropout 0 (the paper runs themselves), 0.1 and 0.2; val loss as "
        "above, mean ± std over the n seeds.",
        "",
        "| model | dropout | final val loss | best val loss | n |",
        "|---|---:|---:|---:|---:|",
    ]
    for model in TUNING_MODELS:
        for dropout in TUNING_DROPOUTS:
            rs = runs.get(tuning_spec(model, dropout).name, [])
            if rs:
                lines.append(
                    f"| {model} | {dropout:g} | {mean_std([r['final_val_loss'] for r in rs])} "
                    f"| {mean_std([r['best_val_loss'] for r in rs])} | {len(rs)} |"
                )
    lines.append("")
    best: dict[str, tuple[float, float, float]] = {}  # model -> (dropout, mean best, mean final)
    for model in TUNING_MODELS:
        cell = tuned(runs, model)
        if cell:
            dropout, rs = cell
            best[model] = (
                dropout,
                statistics.fmean(r["best_val_loss"] for r in rs),
                statistics.fmean(r["final_val_loss"] for r in rs),
            )
    parts = [f"{m} at dropout {d:g} (best {b:.3f}, final {f:.3f})" for m, (d, b, f) in best.items()]
    sentence = f"Best-tuned (lowest mean best val loss): {'; '.join(parts)}."
    reference, compressed = TUNING_MODELS
    if reference in best and compressed in best:
        (_, b0, f0), (_, b1, f1) = best[reference], best[compressed]
        sentence += (
            f" Gap {compressed} − {reference}, best-tuned against best-tuned: {b1 - b0:+.3f} best vs best, "
            f"{f1 - f0:+.3f} final vs final."
        )
    return [*lines, sentence, ""]


ADAPTIVE_SELECTIONS: tuple[tuple[str, str, str], ...] = (
    # (table label, how the spec is found: sweep key or support budget, kind)
    ("fixed lowpass", "dct_lowpass", "fixed"),
    ("fixed random", "dct_random", "fixed"),
    ("adaptive, per layer", "per_layer", "adaptive"),
    ("adaptive, global", "global", "adaptive"),
)


def adaptive_selection_spec(key: str, kind: str, c: float) -> RunSpec:
    """The adaptive group's run of one row of ADAPTIVE_SELECTIONS at compression ``c``."""
    return baseline_spec(key, c) if kind == "fixed" else adaptive_spec(key, c)


def adaptive_markdown(runs: dict[str, list[dict]], grid: list[RunSpec]) -> list[str]:
    """The adaptive table (fixed against moving supports per compression) and the final K per layer of the
    global-budget runs, or nothing when no run whose support moves has finished.

    The gap is the cell's mean best val loss minus the best-tuned dense's (the tuning group's runs) when dense
    runs with dropout exist, else minus the paper dense run's; tokens/s are relative to the fixed random runs of
    the same c (same K, same scattered positions, so the ratio is the cost of moving them)."""
    labels = {label for _, label, _ in ADAPTIVE_RUNS.values()}
    own = [s for s in grid if "adaptive" in s.groups and s.name in runs and s.parameterization in labels]
    if not own:
        return []
    cs = sorted({s.compression for s in own})
    reference, which = dense_reference(runs)
    lines = [
        "## Adaptive frequency support",
        "",
        "DCT with K = mn/c coefficients per layer at fixed positions (lowpass block, random) or moving ones (random "
        "start, drop the smallest and grow where the gradient is largest every 100 steps until 75% of training; "
        "per layer: each layer keeps its K; global: the layers share one total). Val loss and stable rank as above, "
        f"mean ± std over the n seeds; gap: mean best val loss minus that of {which}; × random: tokens/s over the "
        "fixed random runs' of the same c on the same machine (each run's own average, so it also carries how "
        "busy the machine was: the cost of the updates alone is measured by benchmarks/adaptive_overhead.py); "
        "changed: mean share of positions changed per support update.",
        "",
        "| selection | c | % of dense | best val loss | final val loss | gap | stable rank | tokens/s | × random "
        "| changed | n |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tuned_dense = tuned(runs, "dense")
    dense_rows = [("dense", None, runs.get("dense", []))]
    if tuned_dense and tuned_dense[0]:  # the reference is a dropout variant: its row too
        dense_rows.append((f"dense, dropout {tuned_dense[0]:g}", None, tuned_dense[1]))
    cells = dense_rows + [
        (label, c, runs.get(adaptive_selection_spec(key, kind, c).name, []))
        for c in cs
        for label, key, kind in ADAPTIVE_SELECTIONS
    ]
    for label, c, rs in cells:
        if not rs:
            continue
        best = statistics.fmean(r["best_val_loss"] for r in rs)
        gap = best - reference
        tps = [r["tokens_per_s"] for r in rs if math.isfinite(r["tokens_per_s"])]
        speed = statistics.fmean(tps) if tps else math.nan
        random = runs.get(sweep_spec("dct_random", c).name, []) if c is not None else []
        ratio = relative_speed(rs, random)
        changed = [r["mean_support_changed"] for r in rs if r.get("mean_support_changed") is not None]
        lines.append(
            f"| {label} | {'–' if c is None else f'{c:g}'} | {rs[0]['pct_of_dense']:.1f}% "
            f"| {mean_std([r['best_val_loss'] for r in rs])} | {mean_std([r['final_val_loss'] for r in rs])} "
            f"| {'–' if math.isnan(gap) else f'{gap:+.3f}'} | {mean_std([r['mean_stable_rank'] for r in rs], 1)} "
            f"| {'–' if not tps else f'{speed:,.0f}'} | {'–' if ratio is None else f'{ratio:.2f}×'} "
            f"| {mean_std(changed)} | {len(rs)} |"
        )
    lines.append("")
    return lines + support_k_markdown(runs, cs)


def dense_reference(runs: dict[str, list[dict]]) -> tuple[float, str]:
    """The dense best val loss the gaps are measured from, and a phrase that names it: the best-tuned dense's mean
    (the tuning group's runs) once a dense run with dropout has finished, else the paper dense run's; NaN with
    no dense run."""
    tuning_ran = any(tuning_spec("dense", d).name in runs for d in TUNING_DROPOUTS if d)
    cell = tuned(runs, "dense") if tuning_ran else ((0.0, runs["dense"]) if "dense" in runs else None)
    if not cell:
        return math.nan, "no dense run has finished: no gap"
    dropout, rs = cell
    reference = statistics.fmean(r["best_val_loss"] for r in rs)
    which = (
        f"the best-tuned dense (`{tuning_spec('dense', dropout).name}`, dropout {dropout:g})"
        if tuning_ran
        else "the paper's dense run (dropout 0; no tuning run has finished)"
    )
    return reference, f"{which}, best val loss {reference:.3f}"


def tries_markdown(runs: dict[str, list[dict]]) -> list[str]:
    """The tries table: each one-option variant beside the run it varies (same seeds only, so the difference is
    paired), with the gap to the dense reference; nothing when no try has finished."""
    done = [(name, label, try_base(base, c).name) for name, label, base, c, _ in TRIES if name in runs]
    if not done:
        return []
    reference, which = dense_reference(runs)
    lines = [
        "## Tries",
        "",
        "One option changed on a run (the adaptive group's per-layer or global run, the fixed random one, or "
        "another try). Best val loss, mean over the n seeds; base: the unchanged run's best val loss on the same "
        f"seeds; Δ: try minus base (negative: the change helped); gap: best val loss minus that of {which}.",
        "",
        "| try | % of dense | best val loss | final val loss | base | Δ | gap | stable rank | n |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label, base_name in done:
        rs = runs[name]
        base_by_seed = {r["seed"]: r for r in runs.get(base_name, [])}
        paired = [(r, base_by_seed[r["seed"]]) for r in rs if r["seed"] in base_by_seed]
        best = statistics.fmean(r["best_val_loss"] for r in rs)
        if paired:
            base_best = statistics.fmean(b["best_val_loss"] for _, b in paired)
            delta = statistics.fmean(r["best_val_loss"] - b["best_val_loss"] for r, b in paired)
            base_cell, delta_cell = f"{base_best:.3f} (`{base_name}`)", f"{delta:+.3f}"
        else:
            base_cell, delta_cell = f"– (`{base_name}`)", "–"
        gap = best - reference
        lines.append(
            f"| {label} | {rs[0]['pct_of_dense']:.1f}% | {mean_std([r['best_val_loss'] for r in rs])} "
            f"| {mean_std([r['final_val_loss'] for r in rs])} | {base_cell} | {delta_cell} "
            f"| {'–' if math.isnan(gap) else f'{gap:+.3f}'} | {mean_std([r['mean_stable_rank'] for r in rs], 1)} "
            f"| {len(rs)} |"
        )
    lines.append("")
    return lines


def support_k_markdown(runs: dict[str, list[dict]], cs: Sequence[float]) -> list[str]:
    """Under the global budget, each layer's final K as a share of its starting K, one column per compression
    (mean over the seeds whose metrics hold ``support_k``); nothing when no global-budget run has finished."""
    finished = [(c, runs.get(adaptive_spec("global", c).name, [])) for c in cs]
    if not any(rs for _, rs in finished):
        return []
    columns = [(c, [r for r in rs if r.get("support_k")]) for c, rs in finished]
    columns = [(c, rs) for c, rs in columns if rs]
    if not columns:
        return ["Final K per layer (global budget): the global-budget runs logged no support update.", ""]
    layers = list(dict.fromkeys(layer for _, rs in columns for r in rs for layer in r["support_k"]))
    lines = [
        "Final K per layer (global budget), as a share of the layer's starting K (mn/c), mean over the n seeds: "
        "above 100% the layer took coefficients from the others, below it gave them up.",
        "",
        "| layer | " + " | ".join(f"c = {c:g} (n = {len(rs)})" for c, rs in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for layer in layers:
        row = []
        for _, rs in columns:
            shares = [r["support_k"][layer][1] / r["support_k"][layer][0] for r in rs if layer in r["support_k"]]
            row.append(f"{100 * statistics.fmean(shares):.0f}%" if shares else "–")
        lines.append(f"| {layer} | " + " | ".join(row) + " |")
    lines.append("")
    return lines


def plot_points(rows: list[dict]) -> dict[str, list[tuple[float, float, float]]]:
    """The plot's lines: per parameterization label, (% of dense, mean, std of final val loss over seeds) per run,
    by increasing share. The tuning group's dropout variants and the tries are left out: the plot compares
    parameterizations at the paper's settings (the Tuning and Tries tables hold them)."""
    variants = {tuning_spec(m, d).parameterization for m in TUNING_MODELS for d in TUNING_DROPOUTS if d}
    variants |= {label for _, label, *_ in TRIES}
    points: dict[str, dict[float, list[float]]] = {}
    for run in by_run(rows).values():
        if run[0]["parameterization"] in variants:
            continue
        points.setdefault(run[0]["parameterization"], {})[run[0]["pct_of_dense"]] = [r["final_val_loss"] for r in run]
    return {
        label: [
            (x, statistics.fmean(pts[x]), statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0.0) for x in sorted(pts)
        ]
        for label, pts in sorted(points.items())
    }


def summary_plot(path: Path, rows: list[dict], budget: Budget) -> None:
    """Final val loss (mean ± std over seeds) against % of dense parameters, one line per parameterization."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "error: the summary plot needs matplotlib (pip install matplotlib); runs.csv and summary.md are written"
        ) from None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for parameterization, pts in plot_points(rows).items():
        xs, ys, err = (list(column) for column in zip(*pts, strict=True))
        if parameterization == "dense":
            ax.axhline(ys[0], color="black", linestyle="--", linewidth=1, label="dense (100%)")
            continue
        moving = parameterization in {label for _, label, _ in ADAPTIVE_RUNS.values()}
        ax.errorbar(xs, ys, yerr=err, marker="s" if moving else "o", capsize=3, label=parameterization)
    labels = ("stored parameters (% of dense model)", "final validation loss (nats/char)")
    save_figure(path, fig, ax, labels, f"Compression vs. loss ({budget.steps} steps per run)", legend_size=8)


def save_figure(path: Path, fig, ax, labels: tuple[str, str], title: str, *, legend_size: int) -> None:  # noqa: ANN001
    """Label, grid and legend ``ax``, then write ``fig`` to ``path`` as PNG (through a temporary file) and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def curve_lines(rows: list[dict], c: float = 4.0) -> dict[str, list[tuple[int, float]]]:
    """The curves plot's lines, by run name: validation loss against step (steps to the nearest ten; mean over the
    seeds whose metrics.json hold a ``val_curve``, older ones do not) for the runs that compare supports at
    compression ``c``: the paper's dense and the best-tuned dense, the fixed lowpass and random supports, the
    adaptive runs and every try at ``c``. A run without a curve is left out."""
    runs = by_run(rows)
    names = ["dense"]
    best_dense = tuned(runs, "dense")
    if best_dense and best_dense[0]:
        names.append(tuning_spec("dense", best_dense[0]).name)
    names += [baseline_spec("dct_lowpass", c).name, sweep_spec("dct_random", c).name]
    names += [adaptive_spec(budget, c).name for budget in ADAPTIVE_RUNS]
    names += [name for name, _, _, try_c, _ in TRIES if try_c == c]
    lines = {}
    for name in names:
        points: dict[int, list[float]] = {}
        for row in runs.get(name, []):
            for step, value in row.get("val_curve") or ():
                # To the nearest ten: the end-of-training validation is logged at step 4,999 by some runs and 5,000
                # by others (a resumed run), which is one point.
                points.setdefault(10 * round(int(step) / 10), []).append(float(value))
        if points:
            lines[name] = [(step, statistics.fmean(values)) for step, values in sorted(points.items())]
    return lines


def curves_plot(path: Path, rows: list[dict], budget: Budget) -> bool:
    """Validation loss against step of :func:`curve_lines` (dense dashed); False (nothing written) when no
    adaptive run or try has a curve."""
    lines = curve_lines(rows)
    if not set(lines) - {"dense", "dct4x", *(tuning_spec("dense", d).name for d in TUNING_DROPOUTS)}:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = {name: len({r["seed"] for r in rows if r["run"] == name and r.get("val_curve")}) for name in lines}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, points in lines.items():
        steps, values = zip(*points, strict=True)
        style = {"color": "black", "linestyle": "--"} if name.startswith("dense") else {"marker": "o", "markersize": 3}
        ax.plot(steps, values, label=f"{name} (n = {seeds[name]})", linewidth=1.2, **style)
    finals = [points[-1][1] for points in lines.values()]
    ax.set_ylim(min(finals) - 0.03, max(finals) + 0.35)  # the last two thirds of training, where the runs part
    title = f"Supports at c = 4: validation curves ({budget.steps} steps per run)"
    save_figure(path, fig, ax, ("step", "validation loss (nats/char)"), title, legend_size=7)
    return True


# -- entry point -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=PAPER_STEPS, help=f"training steps of every run (default {PAPER_STEPS})"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="learning-rate warm-up steps (default: the configs' 100, capped at steps/10 for short budgets)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (seed_everything and data.seed)")
    parser.add_argument(
        "--groups",
        nargs="+",
        choices=("paper", "sweep", "baselines", "tuning", "adaptive", "tries"),
        default=["paper", "sweep"],
    )
    parser.add_argument(
        "--compressions", type=float, nargs="+", default=list(DEFAULT_COMPRESSIONS), help="sweep's c in K = mn/c"
    )
    parser.add_argument(
        "--baseline-compressions",
        type=float,
        nargs="+",
        default=list(BASELINE_COMPRESSIONS),
        help="the baselines group's compressions (default 4 10)",
    )
    parser.add_argument(
        "--adaptive-compressions",
        type=float,
        nargs="+",
        default=list(ADAPTIVE_COMPRESSIONS),
        help="the adaptive group's compressions (default 4 10 20)",
    )
    parser.add_argument("--only", nargs="+", default=None, help="train only these run names (e.g. dense dct4x)")
    parser.add_argument("--device", default="auto", help="trainer.accelerator: auto, cpu, gpu (default auto)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default 1)")
    parser.add_argument("--out", type=Path, default=REPO / "results", help="output folder (default results/)")
    parser.add_argument(
        "--debug-size",
        default=None,
        help="shrink every run for tests, e.g. n_layer=1,n_embd=32,n_head=2,block=16,batch=8",
    )
    parser.add_argument("--data-path", default=None, help="train on this local text file (data.path)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the commands of the runs left to train (finished: a comment) and exit",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write runs.csv, summary.md and summary.png from the runs already finished under --out",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps={args.steps} is not valid: expected a positive integer")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup={args.warmup} is not valid: expected an integer >= 0")
    if args.jobs < 1:
        parser.error(f"--jobs={args.jobs} is not valid: expected a positive integer")
    if any(not math.isfinite(c) or c < 1 for c in args.compressions):
        parser.error(f"--compressions={args.compressions} is not valid: expected numbers >= 1")
    if any(not math.isfinite(c) or c < 1 for c in args.baseline_compressions):
        parser.error(f"--baseline-compressions={args.baseline_compressions} is not valid: expected numbers >= 1")
    if any(not math.isfinite(c) or c < 1 for c in args.adaptive_compressions):
        parser.error(f"--adaptive-compressions={args.adaptive_compressions} is not valid: expected numbers >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    extra = debug_overrides(args.debug_size)
    if args.data_path:
        extra += ["--data.path", str(Path(args.data_path).resolve())]
    warmup = min(100, args.steps // 10) if args.warmup is None else args.warmup
    budget = Budget(args.steps, args.device, tuple(extra), warmup)
    grid = build_grid(args.groups, args.compressions, args.baseline_compressions, args.adaptive_compressions)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in grid})
        if unknown:
            raise SystemExit(
                f"error: --only {' '.join(unknown)} not in the selected groups; runs: {', '.join(s.name for s in grid)}"
            )
        grid = [s for s in grid if s.name in args.only]
    out = args.out.resolve()
    jobs = [(spec, seed) for spec in grid for seed in args.seeds]
    if args.dry_run:  # what is left to train: the commands, the finished runs as comments
        left = 0
        for spec, seed in jobs:
            if finished_row(out, spec, seed, budget) is not None:
                print(f"# finished: {spec.name} seed {seed}")
            else:
                left += 1
                print(shlex.join(command_for(spec, seed, budget, out)))
        print(f"# {left} of {len(jobs)} runs left to train")
        return 0

    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/reproduce.py", *(a for a in given if a != "--report-only")])
    if args.report_only:
        write_reports(out, budget, args.seeds, command)
        return 0

    print(f"{len(jobs)} runs ({len(grid)} configs x {len(args.seeds)} seeds), {args.steps} steps each -> {out}")
    failed = []

    def one(job: tuple[RunSpec, int]) -> None:
        spec, seed = job
        where = run_dir(out, spec, seed, budget)
        try:
            status, row = train(spec, seed, budget, out, args.jobs)
        except Exception as err:  # reading the results back failed: report it, keep the other runs going
            status, row = "failed", None
            print(f"[failed ] {spec.name} seed {seed}: {type(err).__name__}: {err}", flush=True)
        if status == "failed":
            failed.append(where)
            print(f"[failed ] {spec.name} seed {seed}: see {where / 'train.log'}", flush=True)
        else:
            print(
                f"[{status:7s}] {spec.name} seed {seed}: val loss {row['final_val_loss']:.4f} "
                f"(best {row['best_val_loss']:.4f}), {row['pct_of_dense']:.1f}% of dense, "
                f"{row['tokens_per_s']:,.0f} tok/s",
                flush=True,
            )

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, jobs))

    write_reports(out, budget, args.seeds, command)
    if failed:
        print(f"{len(failed)} run(s) failed", file=sys.stderr)
        return 1
    return 0


def write_reports(out: Path, budget: Budget, seeds: Sequence[int], command: str) -> None:
    """``runs.csv`` (every finished run), the summary markdown and plot (this budget's runs of ``seeds``)."""
    rows = all_rows(out)
    current = [r for r in rows if r["tag"] == budget.tag and r["seed"] in seeds]
    if not current:
        raise SystemExit(
            f"error: no finished run of budget {budget.tag} and seeds {list(seeds)} in {out / 'runs.jsonl'} "
            f"or under {out / 'runs'}"
        )
    write_csv(out / "runs.csv", rows)
    md, png = (out / f"{summary_stem(budget)}{ext}" for ext in (".md", ".png"))
    grid = build_grid(("paper", "sweep", "baselines", "tuning", "adaptive"), _cs(rows), _cs(rows), _cs(rows))
    atomic_write_text(md, summary_markdown(current, grid, budget, command))
    summary_plot(png, current, budget)
    curves = out / f"{summary_stem(budget)}-curves.png"
    written = [out / "runs.jsonl", out / "runs.csv", md, png]
    written += [curves] if curves_plot(curves, current, budget) else []
    print(f"wrote {', '.join(map(str, written))}")


def _cs(rows: list[dict]) -> list[float]:
    """Every compression present in ``rows`` (so the summary covers runs from earlier invocations too)."""
    return sorted({float(r["compression"]) for r in rows if r["compression"] != ""} | set(DEFAULT_COMPRESSIONS))


if __name__ == "__main__":
    sys.exit(main())
