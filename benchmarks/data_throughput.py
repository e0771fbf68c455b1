"""Data throughput: how fast a corpus becomes token shards, in how much memory, and how fast training reads them.

For each corpus size (tiny Shakespeare repeated to 10 MB and 100 MB by default) one child process per run calls
:func:`spectral_lightning.prepare.prepare` and reports its wall time and its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in the child, which is what the parent's ``RUSAGE_CHILDREN`` would
read for that child alone; each run has a process of its own so the high-water marks do not mix). Two runs per size:

* ``bpe``: the whole preparation as a user runs it (check pass, BPE training on a sample of at most 50 MB,
  tokenization);
* ``tokenizer.json``: the same corpus with the tokenizer trained above given as a file: the check pass and the
  tokenization alone.

Preparation streams the corpus, so the peak RSS of the 100 MB corpus should be within 1.3x of the 10 MB one.
Then training reads: random windows of ``--block_size + 1`` tokens, ``--batch_size`` per batch, from the memmap of
the largest corpus's ``train.bin`` through :class:`~spectral_lightning.data.RandomWindowBatches` (what the training
DataLoader calls), in windows/s and tokens/s, set beside what training consumes: the tokens/s of a training step
(forward, backward, AdamW) of the dense LLaMA-60M shape (d = 512, 8 layers, SwiGLU 1376, 32,000-token vocabulary,
context ``--block_size``) on the same machine. Reading must outpace it at least 20 times over (windows/s against
the step's tokens/s, the comparison the data module's design asks for: a window is a whole training sample).

    python benchmarks/data_throughput.py                      # 10 MB and 100 MB, vocabulary 2048
    python benchmarks/data_throughput.py --sizes_mb 1 5 --model_steps 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "tinyshakespeare" / "input.txt"


def _corpus(folder: Path, megabytes: float) -> Path:
    """Tiny Shakespeare repeated (written copy by copy) to at least ``megabytes`` MB."""
    text = SHAKESPEARE.read_bytes()
    if not text.endswith(b"\n\n"):
        text = text.rstrip(b"\n") + b"\n\n"  # copies meet at a paragraph boundary
    path = folder / f"shakespeare_{megabytes:g}mb.txt"
    with open(path, "wb") as f:
        written = 0
        while written < megabytes * 1e6:
            f.write(text)
            written += len(text)
    return path


def _child(path: str, out: str, tokenizer: str, vocab_size: int) -> None:
    """Run in a child process: prepare, then print the time and this process's peak RSS as JSON."""
    from spectral_lightning.prepare import prepare

    start = time.perf_counter()
    manifest = prepare(path, out, tokenizer=tokenizer, vocab_size=vocab_size, progress=False)
    seconds = time.perf_counter() - start
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0  # Linux: KiB, macOS: bytes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    tokens = sum(split["tokens"] for split in manifest.splits.values())
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "tokens": tokens}))


def _run_child(path: Path, out: Path, tokenizer: str, vocab_size: int) -> dict:
    command = [sys.executable, __file__, "--child", str(path), str(out), tokenizer, str(vocab_size)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"preparation of {path} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _windows_per_second(out: Path, block_size: int, batch_size: int, batches: int) -> float:
    from spectral_lightning.corpus import Manifest
    from spectral_lightning.data import RandomWindowBatches
    from spectral_lightning.tokens import TokenArray

    manifest = Manifest.read(out)
    shard = TokenArray(out / "train.bin", manifest.dtype, manifest.splits["train"]["tokens"])
    dataset = RandomWindowBatches(shard, block_size, batch_size, seed=0)
    for index in range(10):  # warm-up: opens the memmap
        dataset[index]
    start = time.perf_counter()
    for index in range(10, 10 + batches):
        batch = dataset[index]
    seconds = time.perf_counter() - start
    assert batch.shape == (batch_size, block_size + 1)
    return batches * batch_size / seconds


def _llama60m_tokens_per_second(block_size: int, batch_size: int, steps: int) -> float:
    """Tokens/s of dense LLaMA-60M training steps (forward, backward, AdamW) on this machine's CPU, after one
    warm-up step."""
    import torch

    from spectral_lightning.llama import Llama, LlamaConfig
    from spectral_lightning.parameterizations import Dense

    config = LlamaConfig(vocab_size=32_000, block_size=block_size, n_layer=8, n_head=8, n_embd=512, mlp_hidden=1376)
    model = Llama(config, Dense())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(config.vocab_size, (batch_size, block_size + 1), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size * block_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes_mb", type=float, nargs="+", default=[10, 100])
    parser.add_argument("--vocab_size", type=int, default=2048)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--model_batch_size", type=int, default=8, help="sequences per LLaMA-60M step")
    parser.add_argument("--model_steps", type=int, default=5, help="timed LLaMA-60M steps (0: skip)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, out, tokenizer, vocab_size = args.child
        _child(path, out, tokenizer, int(vocab_size))
        return
    if not SHAKESPEARE.is_file():
        raise SystemExit(
            f"{SHAKESPEARE} is missing: run a training once (it downloads tiny Shakespeare) or put it there"
        )

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for megabytes in args.sizes_mb:
            corpus = _corpus(folder, megabytes)
            size = corpus.stat().st_size / 1e6
            trained = folder / f"out_{megabytes:g}_bpe"
            for label, out, tokenizer in (
                ("bpe", trained, "bpe"),
                ("tokenizer.json", folder / f"out_{megabytes:g}_file", str(trained / "tokenizer.json")),
            ):
                result = _run_child(corpus, out, tokenizer, args.vocab_size)
                rows.append((size, label, result))
                print(f"  {size:.1f} MB {label}: {result['seconds']:.1f} s", file=sys.stderr)
        largest = folder / f"out_{max(args.sizes_mb):g}_bpe"
        windows = _windows_per_second(largest, args.block_size, args.batch_size, args.batches)
    import torch

    step_tokens = (
        _llama60m_tokens_per_second(args.block_size, args.model_batch_size, args.model_steps)
        if args.model_steps
        else None
    )

    print()
    print(f"Preparation (vocabulary {args.vocab_size:,}; tiny Shakespeare repeated; one process per run)")
    print()
    print("| corpus | tokenizer | tokens | time | MB/s | peak RSS |")
    print("|---:|---|---:|---:|---:|---:|")
    for size, label, result in rows:
        print(
            f"| {size:.1f} MB | {label} | {result['tokens']:,} | {result['seconds']:.1f} s | "
            f"{size / result['seconds']:.2f} | {result['peak_rss_mb']:.0f} MB |"
        )
    by_label = {}
    for _, label, result in rows:
        by_label.setdefault(label, []).append(result["peak_rss_mb"])
    for label, peaks in by_label.items():
        print(f"\npeak RSS, largest / smallest corpus ({label}): {max(peaks) / min(peaks):.2f}x", end="")
    print()
    print()
    print(
        f"Training reads ({args.batch_size} x {args.block_size + 1}-token windows from the memmap, one process): "
        f"{windows:,.0f} windows/s = {windows * args.block_size:,.0f} tokens/s"
    )
    if step_tokens is not None:
        print(
            f"Training consumes (dense LLaMA-60M step, batch {args.model_batch_size} x {args.block_size}, "
            f"{torch.get_num_threads()} threads): {step_tokens:,.0f} tokens/s; windows/s read / tokens/s consumed = "
            f"{windows / step_tokens:,.0f}x (target: at least 20x)"
        )


if __name__ == "__main__":
    main()
