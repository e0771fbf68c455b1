"""Training and evaluation throughput of every paper configuration, through the project's own training loop.

For each configuration (dense, dct2x, dct4x, dct random 2x, lowrank r16 and r48 at the paper's size: 4 layers,
d = 128, batch 64, context 128) one subprocess trains a :class:`SpectralLM` with a Lightning ``Trainer`` (no
logger, checkpoint or progress bar; gradient clipping 1.0 as in ``configs/``) and reports:

* training tokens/s over the steps after ``--warmup`` (wall clock from the end of the last warm-up step to the
  end of the last step: data, forward, backward, clipping, AdamW and the LR schedule all included);
* the share of that step time spent reconstructing weights: a separate micro-measurement of ``reconstruct()``
  of every parameterized layer, forward and backward, divided by the measured step time;
* peak memory: CUDA ``torch.cuda.max_memory_allocated`` during training; on CPU the growth of the process's
  peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) from just before ``fit`` to its
  end (each configuration runs in its own process, so the high-water marks do not mix);
* evaluation tokens/s through ``Trainer.validate`` (inference mode; reconstructed weights are cached).

A bare PyTorch loop (the same dense GPT, AdamW, the same batches, clipping and autocast) is the reference
for the framework's overhead. One markdown table prints each figure and its ratio to dense from this run.

    python benchmarks/throughput.py --device cpu --threads 1 --warmup 20 --steps 40
    python benchmarks/throughput.py --device cuda --precision bf16-mixed --compile
    # the structured baselines of `reproduce.py --groups baselines`, at mn/4, against dense on one machine
    python benchmarks/throughput.py --device cpu --threads 1 --configs dense dct4x dct_random_c4 lowrank_c4 \
        monarch_c4 sparse_lowrank_c4 kronecker_c4

The machine is named above the table. Pass ``--repeats 2`` or more on a busy machine: configurations are
then run round-robin and each figure is the median over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name -> (parameterization spec for SpectralLM, label)
CONFIGS: dict[str, dict] = {
    "dense": {"class_path": "dense"},
    "dct2x": {"class_path": "dct", "init_args": {"compression": 2.0, "selection": "zigzag"}},
    "dct4x": {"class_path": "dct", "init_args": {"compression": 4.0, "selection": "lowpass"}},
    "dct_random2x": {"class_path": "dct", "init_args": {"compression": 2.0, "selection": "random"}},
    "lowrank16": {"class_path": "lowrank", "init_args": {"rank": 16}},
    "lowrank48": {"class_path": "lowrank", "init_args": {"rank": 48}},
}
PAPER_CONFIGS: tuple[str, ...] = tuple(CONFIGS)  # the default set
# The structured baselines at the compressions of `reproduce.py --groups baselines` (pass them with --configs):
# <key>_c<c> as that grid names its runs.
CONFIGS |= {
    f"{name}_c{c}": {"class_path": class_path, "init_args": {"compression": float(c), **extra}}
    for c in (4, 10)
    for name, class_path, extra in (
        ("dct_random", "dct", {"selection": "random"}),
        ("dct_lowpass", "dct", {}),
        *((key, key, {}) for key in ("lowrank", "monarch", "sparse_lowrank", "kronecker")),
    )
}
BARE = "bare_pytorch_dense"
BATCH, CONTEXT, VOCAB = 64, 128, 65


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _text_file(folder: Path, n_chars: int) -> Path:
    """A random text over 65 characters (the paper's vocabulary size); content does not affect speed."""
    import torch

    alphabet = "".join(chr(c) for c in range(48, 48 + VOCAB))
    ids = torch.randint(VOCAB, (n_chars,), generator=torch.Generator().manual_seed(0))
    ids[:VOCAB] = torch.arange(VOCAB)  # every character occurs in the training split
    path = folder / "bench.txt"
    path.write_text("".join(alphabet[i] for i in ids.tolist()), encoding="utf-8")
    return path


def _peak_rss_mb() -> float:
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0  # Linux: KiB, macOS: bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _reconstruct_seconds(model, device: str, reps: int) -> float:
    """Mean seconds to rebuild every parameterized weight and back-propagate through the rebuild (batched per
    shape when the model was built with ``batch_reconstruction``)."""
    import torch

    from spectral_lightning.parameterizations import ReconstructedLinear, batched_weights

    layers = [m for m in model.modules() if isinstance(m, ReconstructedLinear)]
    if not layers:
        return 0.0

    def once() -> None:
        with batched_weights(model._batch_groups):
            weights = [layer.weight for layer in layers]
        torch.autograd.backward(weights, [torch.ones_like(w) for w in weights])

    for _ in range(3):
        once()
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        once()
    _sync(device)
    model.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / reps


def _worker(args: argparse.Namespace) -> dict:
    """Measure one configuration in this process; returns the figures as a dict."""
    import lightning as L
    import torch

    torch.set_float32_matmul_precision("high")
    if args.threads:
        torch.set_num_threads(args.threads)
    from spectral_lightning import CharDataModule, SpectralLM

    total = args.warmup + args.steps
    eval_batches = args.eval_warmup + args.eval_steps
    with tempfile.TemporaryDirectory() as tmp:
        n_val = eval_batches * BATCH * CONTEXT + CONTEXT + 1
        path = _text_file(Path(tmp), 2 * n_val)
        data = CharDataModule(
            path=str(path), block_size=CONTEXT, batch_size=BATCH, batches_per_epoch=10**6, val_fraction=0.5
        )
        if args.config == BARE:
            return _bare_loop(args, data)
        model = SpectralLM(
            data.vocab,
            block_size=CONTEXT,
            parameterization=CONFIGS[args.config],
            compile=args.compile,
            compile_mode=args.compile_mode,
            check_finite=not args.no_check_finite,
            batch_reconstruction=args.batch_reconstruction,
        )
        timer = _StepTimer(args.warmup, args.eval_warmup, eval_batches, args.device)
        trainer = L.Trainer(
            accelerator=args.device,
            devices=1,
            precision=args.precision,
            max_steps=total,
            max_epochs=-1,
            limit_val_batches=0,  # no validation inside fit; measured separately below
            num_sanity_val_steps=0,
            gradient_clip_val=1.0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rss_before = _peak_rss_mb()
        trainer.fit(model, datamodule=data)
        peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else _peak_rss_mb() - rss_before
        step_s = timer.train_seconds / args.steps
        recon_s = _reconstruct_seconds(model.model, args.device, reps=max(5, args.steps // 2))
        trainer.limit_val_batches = eval_batches
        trainer.validate(model, datamodule=data, verbose=False)
        return {
            "config": args.config,
            "params": sum(p.numel() for p in model.model.parameters()),
            "train_tok_s": args.steps * BATCH * CONTEXT / timer.train_seconds,
            "recon_share": recon_s / step_s,
            "peak_mb": peak,
            "eval_tok_s": args.eval_steps * BATCH * CONTEXT / timer.eval_seconds,
        }


class _StepTimer:
    """Lightning callback recording wall time after warm-up (built lazily so importing stays cheap)."""

    def __new__(cls, warmup: int, eval_warmup: int, eval_batches: int, device: str):  # noqa: ANN204
        import lightning as L

        class StepTimer(L.Callback):
            def __init__(self) -> None:
                self.train_start = self.train_end = self.eval_start = self.eval_end = 0.0

            # The GPU is synchronised only at the two ends of each timed span: a wait after every step would
            # stop the host from queueing the next step ahead and under-state asynchronous (fast-mode) steps.
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
                if trainer.global_step in (warmup, trainer.max_steps):
                    _sync(device)
                    now = time.perf_counter()
                    if trainer.global_step == warmup:
                        self.train_start = now
                    self.train_end = now

            def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # noqa: ANN001
                if batch_idx in (eval_warmup - 1, eval_batches - 1):
                    _sync(device)
                    now = time.perf_counter()
                    if batch_idx == eval_warmup - 1:
                        self.eval_start = now
                    self.eval_end = now

            @property
            def train_seconds(self) -> float:
                return self.train_end - self.train_start

            @property
            def eval_seconds(self) -> float:
                return self.eval_end - self.eval_start

        return StepTimer()


def _bare_loop(args: argparse.Namespace, data) -> dict:  # noqa: ANN001
    """The reference: a plain PyTorch loop over the same dense GPT, batches, AdamW, clipping and autocast."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from spectral_lightning import GPT, Dense, GPTConfig
    from spectral_lightning.data import RandomWindowBatches

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(GPTConfig(data.vocab_size, CONTEXT), Dense()).to(device)
    if args.precision == "bf16-true":
        model = model.to(torch.bfloat16)
    forward = torch.compile(model, mode=args.compile_mode) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=args.device == "cuda")
    batches = RandomWindowBatches(data.train_data, CONTEXT, BATCH, seed=1337)
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)

    def step(i: int) -> None:
        batch = batches[i].to(device, non_blocking=True)
        x, y = batch[:, :-1], batch[:, 1:]
        ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            logits = forward(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _peak_rss_mb()
    for i in range(args.warmup):
        step(i)
    _sync(args.device)
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    _sync(args.device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else _peak_rss_mb() - rss_before
    return {
        "config": BARE,
        "params": sum(p.numel() for p in model.parameters()),
        "train_tok_s": args.steps * BATCH * CONTEXT / seconds,
        "recon_share": 0.0,
        "peak_mb": peak,
        "eval_tok_s": float("nan"),
    }


def _machine(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        name = models[0] if models else name
    return f"{name}, {os.cpu_count()} CPU cores (torch {torch.__version__})"


def _ratio(value: float, base: float) -> str:
    if value != value or base != base or base == 0:  # NaN
        return "–"
    return f"{value / base:.2f}×"


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    base = next((r for r in rows if r["config"] == "dense"), None)
    mem = "peak CUDA memory (MiB)" if args.device == "cuda" else "peak RSS growth (MiB)"
    lines = [
        f"| config | parameters | train tokens/s | × dense | reconstruction share | {mem} | × dense "
        "| eval tokens/s | × dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b = base or r
        eval_cell = "–" if r["eval_tok_s"] != r["eval_tok_s"] else f"{r['eval_tok_s']:,.0f}"
        train_ratio = _ratio(r["train_tok_s"], b["train_tok_s"])
        lines.append(
            f"| {r['config']} | {r['params']:,} | {r['train_tok_s']:,.0f} | {train_ratio} "
            f"| {r['recon_share']:.1%} | {r['peak_mb']:,.0f} | {_ratio(r['peak_mb'], b['peak_mb'])} "
            f"| {eval_cell} | {_ratio(r['eval_tok_s'], b['eval_tok_s'])} |"
        )
    return "\n".join(lines)


def _median_rows(runs: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for results in runs.values():
        row = dict(results[0])
        for key in ("train_tok_s", "recon_share", "peak_mb", "eval_tok_s"):
            row[key] = statistics.median(r[key] for r in results)
        rows.append(row)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--precision", default=None, help="Lightning precision; default 32-true on CPU, bf16-mixed on CUDA"
    )
    parser.add_argument("--steps", type=int, default=40, help="measured training steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=20, help="training steps before timing starts")
    parser.add_argument("--eval-steps", type=int, default=20, help="measured validation batches")
    parser.add_argument("--eval-warmup", type=int, default=3, help="validation batches before timing starts")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (model.compile=true)")
    parser.add_argument(
        "--no-check-finite", action="store_true", help="model.check_finite=false: no host sync per step (fast.yaml)"
    )
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument(
        "--batch-reconstruction",
        action="store_true",
        help="model.batch_reconstruction=true: one batched rebuild per weight shape (eager training)",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[*PAPER_CONFIGS, BARE],
        choices=[*CONFIGS, BARE],
        help="configurations to run (default: the paper's and the bare loop; also the baselines' <key>_c4/_c10)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration, round-robin; median")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    if args.steps < 1 or args.warmup < 1 or args.eval_steps < 1 or args.eval_warmup < 1:
        parser.error("--steps, --warmup, --eval-steps and --eval-warmup must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        args.config = args.worker
        print("RESULT " + json.dumps(_worker(args)), flush=True)
        return
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    runs: dict[str, list[dict]] = {name: [] for name in args.configs}
    failed: list[str] = []
    for repeat in range(args.repeats):
        for name in args.configs:
            if name in failed:
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--worker", name]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            result = next((ln[7:] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or result is None:
                # One broken configuration (e.g. a compiler error) must not cost the others' measurements.
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                print(f"configuration {name} failed (exit status {proc.returncode})", file=sys.stderr)
                failed.append(name)
                continue
            runs[name].append(json.loads(result))
            print(f"[{repeat + 1}/{args.repeats}] {name}: {result}", file=sys.stderr, flush=True)
    runs = {name: results for name, results in runs.items() if results}
    import torch

    print(
        f"\nMachine: {_machine(args.device)}; precision {args.precision}; compile {args.compile} "
        f"(mode {args.compile_mode or 'default'}); batch_reconstruction {args.batch_reconstruction}; "
        f"threads {args.threads or torch.get_num_threads()}; batch {BATCH} x context {CONTEXT}; "
        f"{args.warmup} warm-up + {args.steps} measured steps; {args.eval_steps} eval batches; "
        f"median of {args.repeats}\n"
    )
    print(format_table(_median_rows(runs), args))
    if failed:
        raise SystemExit(f"failed configurations (see the output above): {', '.join(failed)}")


if __name__ == "__main__":
    main()
