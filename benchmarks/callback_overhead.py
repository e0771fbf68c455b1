"""Cost of the dashboard callbacks: the same CPU training run with and without them.

    python benchmarks/callback_overhead.py                       # paper-size dct4x, 500 steps, 2 validations
    # what was measured on a shared 2-core machine: paper shapes, batch 8 instead of 64 (the held-out share
    # scaled by the same 1/8 so validation keeps its share of the run), 3 alternating pairs, 1 thread:
    python benchmarks/callback_overhead.py --batch-size 8 --val-fraction 0.0125 --threads 1 --repeats 3

Use ``--threads 1`` on a machine shared with other jobs: two threads on two busy cores ran ~10x slower here.

Both runs train the paper's dct4x model (4 layers, d = 128, context 128, K = mn/4) with the configs' budget
and cadence: batch 64, validation every ``batches_per_epoch`` steps (250, so a 500-step run validates twice,
as the configs do every 500 of 5,000 steps), a TensorBoardLogger and a LearningRateMonitor, no progress bar
and no checkpoints. "with" adds every callback of ``spectral_lightning.callbacks`` with the configs' options.
Runs alternate (without, with, without, with, ...) so slow drift of a shared machine hits both alike.

Printed per run: wall time of ``trainer.fit`` (sanity check and validations included) and, for the runs with
callbacks, the time spent inside the callbacks' hooks (a direct measure that machine noise does not blur).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger

from spectral_lightning import DCT, CharDataModule, SpectralLM
from spectral_lightning.callbacks import (
    HParamsSummary,
    ParameterTable,
    ScalarLayout,
    SpectrumMonitor,
    TextSamples,
    ThroughputMonitor,
)

REPO = Path(__file__).resolve().parents[1]
HOOKS = (
    "on_fit_start",
    "on_train_start",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_validation_end",
)


def dashboard() -> list[L.Callback]:
    """The callbacks with the options the configs set."""
    return [
        ThroughputMonitor(interval=20),
        ParameterTable(log_text=True),
        ScalarLayout(),
        HParamsSummary(),
        TextSamples(prompt="\n", max_new_tokens=200, temperature=0.8, seed=1337),
        SpectrumMonitor(every_n_validations=2),
    ]


def timed(callbacks: list[L.Callback], spent: dict[str, float]) -> list[L.Callback]:
    """Wrap each callback's hooks so the seconds spent inside them add up in ``spent``."""
    for cb in callbacks:
        for hook in HOOKS:
            if getattr(type(cb), hook) is getattr(L.Callback, hook):
                continue  # not overridden
            original = getattr(cb, hook)

            def wrapper(*args, _original=original, _key=f"{type(cb).__name__}.{hook}"):  # noqa: ANN002, ANN202
                start = time.perf_counter()
                try:
                    return _original(*args)
                finally:
                    spent[_key] += time.perf_counter() - start

            setattr(cb, hook, wrapper)
    return callbacks


def run(args: argparse.Namespace, with_callbacks: bool, root: Path) -> tuple[float, dict[str, float], float]:
    """One fit; returns (wall seconds, seconds per callback hook, final val loss)."""
    L.seed_everything(1337, verbose=False)
    data_kwargs = {"path": args.text} if args.text else {"dataset": "tinyshakespeare", "data_dir": str(REPO / "data")}
    data = CharDataModule(
        **data_kwargs,
        block_size=args.block_size,
        batch_size=args.batch_size,
        batches_per_epoch=args.batches_per_epoch,
        val_fraction=args.val_fraction,
        seed=1337,
    )
    model = SpectralLM(
        vocab=data.vocab,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        parameterization=DCT(compression=4.0),
    )
    spent: dict[str, float] = defaultdict(float)
    callbacks: list[L.Callback] = [LearningRateMonitor(logging_interval="step")]
    if with_callbacks:
        callbacks += timed(dashboard(), spent)
    logger = TensorBoardLogger(
        save_dir=str(root), name="with" if with_callbacks else "without", default_hp_metric=False
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        max_epochs=-1,
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - start
    return wall, dict(spent), float(trainer.callback_metrics["val/loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps per run")
    parser.add_argument("--batches-per-epoch", type=int, default=250, help="steps between validations")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="held-out share of the text; scale it with batch x context to keep validation's share of the run",
    )
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (without, with)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--text", default=None, help="a local text file (default: data/tinyshakespeare)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"dct4x K=mn/4, {args.n_layer} layers, d={args.n_embd}, context {args.block_size}, batch {args.batch_size}, "
        f"{args.steps} steps, validation every {args.batches_per_epoch} steps (val_fraction {args.val_fraction}), "
        f"{args.threads} CPU threads, "
        f"torch {torch.__version__}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for with_callbacks in (False, True):
                wall, spent, val = run(args, with_callbacks, Path(tmp) / f"rep{r}")
                rows.append((with_callbacks, wall, spent, val))
                label = "with" if with_callbacks else "without"
                print(f"  repeat {r}: {label:<7} {wall:8.1f} s  val/loss {val:.4f}", flush=True)

    without = [w for c, w, _, _ in rows if not c]
    with_ = [w for c, w, _, _ in rows if c]
    hooks: dict[str, float] = defaultdict(float)
    for _, _, spent, _ in rows:
        for k, v in spent.items():
            hooks[k] += v / args.repeats
    base, full = statistics.median(without), statistics.median(with_)
    in_hooks = sum(hooks.values())

    print()
    print("| run | wall time (s, median) | per step (ms) | overhead |")
    print("|---|---:|---:|---:|")
    print(f"| without dashboard callbacks | {base:.1f} | {1000 * base / args.steps:.1f} | |")
    overhead = 100 * (full - base) / base
    print(f"| with dashboard callbacks | {full:.1f} | {1000 * full / args.steps:.1f} | {overhead:+.2f}% |")
    print(f"| time inside the callbacks' hooks | {in_hooks:.2f} | {1000 * in_hooks / args.steps:.2f} | "
          f"{100 * in_hooks / base:.2f}% of the run |")  # fmt: skip
    print()
    print("| hook | seconds per run |")
    print("|---|---:|")
    for k, v in sorted(hooks.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.3f} |")


if __name__ == "__main__":
    main()
