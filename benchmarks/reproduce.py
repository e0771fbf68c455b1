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
  ``..._wd4_...``, see TRIES in reproduce_grid.py), and late dropout (``adaptive_global_lr4_late0.1_c4``: dropout
  0.1 from step 2,000, where the lr × 4 run falls behind the tuned dense model), and the lr × 4 run with the global
  budget comparing each layer's |x| and |Ĝ| over that layer's mean (``adaptive_global_lr4_rel_c4``, ``budget:
  global_relative``) or growing by Ĝ summed over 20 steps (``adaptive_global_lr4_gw20_c4``) or with its support
  frozen at half of training instead of three quarters (``adaptive_global_lr4_uu0.5_c4``).
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
from pathlib import Path

from reproduce_grid import (
    ADAPTIVE_COMPRESSIONS,
    BASELINE_COMPRESSIONS,
    DEFAULT_COMPRESSIONS,
    PAPER_STEPS,
    Budget,
    RunSpec,
    build_grid,
    summary_stem,
)
from reproduce_report import atomic_write_text, curves_plot, summary_markdown, summary_plot, write_csv

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"
CONFIGS = REPO / "configs"


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
    sync_ledger(out)
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


def sync_ledger(out: Path) -> list[dict]:
    """Record every ``metrics.json`` under ``<out>/runs`` in the ledger; returns every finished run, in a stable order.

    The run folders' files win over the ledger's copy, and the ledger is rewritten (through a temporary file) as the
    union only when it gains or changes a line: a run that another process finished while this one read the ledger
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
        help="train nothing: write runs.csv, summary.md and summary.png from the runs already finished (the ledger "
        "--out/runs.jsonl, updated from any metrics.json under --out/runs)",
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
    rows = sync_ledger(out)
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
