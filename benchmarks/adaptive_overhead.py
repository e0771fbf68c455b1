"""Cost of moving supports: training throughput of the paper's dct4x model (random selection) with support updates
every 100 steps against the same model with a fixed support.

    python benchmarks/adaptive_overhead.py                                   # 300 steps, batch 64, 3 pairs
    # on a shared 2-core machine (one thread; batch 16 so a pair of runs takes about a minute):
    OMP_NUM_THREADS=1 python benchmarks/adaptive_overhead.py --batch-size 16 --threads 1
    # the cost of summing Ĝ over the 20 steps before each update (grow_window)
    OMP_NUM_THREADS=1 python benchmarks/adaptive_overhead.py --batch-size 16 --threads 1 --grow-window 20

The issue's target: the adaptive run keeps at least 0.97x the fixed run's tokens/s.

A plain PyTorch loop (no Lightning, no data loading: seeded random token windows of the paper's shape), AdamW, the
paper's model (4 layers, d = 128, context 128, vocabulary 65, K = mn/4 per block linear). "adaptive" sets
``update_every=100`` with the default schedule over ``--steps`` steps, so a 300-step run updates at steps 100 and
200 (< 0.75 · 300); on an update step (and with ``--grow-window`` w on the w − 1 steps before it) the layers capture
Ĝ in the backward pass and
``update_supports`` runs after ``optimizer.step()``, as ``spectral_lightning.support.AdaptiveSupport`` does. Both
models train in one process on the same batches, step by step in alternating order, each step timed on its own, so
the load of a shared machine hits both alike. Printed per pair: tokens/s of each (steps' time summed, update steps
included), their ratio and the seconds the adaptive model spent inside ``update_supports`` (a direct measure that
machine noise does not blur). The last line is the median ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from spectral_lightning import DCT, GPT, GPTConfig
from spectral_lightning.parameterizations.adaptive import moving_layers, update_supports


class Trainee:
    """One model of the comparison, its optimizer and the seconds its steps took."""

    def __init__(self, adaptive: bool, update_every: int, grow_window: int = 1) -> None:
        torch.manual_seed(0)
        self.config = GPTConfig()  # the paper's sizes
        every = update_every if adaptive else None
        spec = DCT(compression=4.0, selection="random", update_every=every, grow_window=grow_window)
        self.model = GPT(self.config, spec)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1)
        self.layers = moving_layers(self.model)
        self.seconds, self.in_updates, self.updates = 0.0, 0.0, 0

    def step(self, batch: torch.Tensor, step: int, steps: int) -> None:
        start = time.perf_counter()
        schedule = self.layers[0].support if self.layers else None
        update = schedule is not None and schedule.is_update_step(step, steps)
        if schedule is not None and schedule.is_probe_step(step, steps):
            for layer in self.layers:
                layer.arm_gradient_probe()  # an armed probe keeps adding up over the window
        logits = self.model(batch[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if update:
            t0 = time.perf_counter()
            self.updates += update_supports(self.layers, step, steps, [self.optimizer]) is not None
            self.in_updates += time.perf_counter() - t0
        self.seconds += time.perf_counter() - start


def run(steps: int, batch_size: int, update_every: int, grow_window: int = 1) -> tuple[Trainee, Trainee]:
    """Train both models ``steps`` steps on the same batches, step by step in alternating order."""
    fixed, adaptive = Trainee(False, update_every), Trainee(True, update_every, grow_window)
    gen = torch.Generator().manual_seed(1)
    vocab, block = fixed.config.vocab_size, fixed.config.block_size
    batches = [torch.randint(vocab, (batch_size, block + 1), generator=gen) for _ in range(8)]
    for step in range(steps):
        batch = batches[step % len(batches)]
        for trainee in (fixed, adaptive) if step % 2 == 0 else (adaptive, fixed):
            trainee.step(batch, step, steps)
    return fixed, adaptive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--update-every", type=int, default=100)
    parser.add_argument(
        "--grow-window", type=int, default=1, help="steps whose gradients are summed for growth (the probe's cost)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (fixed and adaptive together)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ratios = []
    print(
        f"dct4x random, paper shapes, batch {args.batch_size}, {args.steps} steps, "
        f"{torch.get_num_threads()} thread(s), updates every {args.update_every}, grow window {args.grow_window}"
    )
    header = ("pair", "fixed tokens/s", "adaptive tokens/s", "ratio", "in updates (s)", "updates")
    print(f"{header[0]:<5} {header[1]:>15} {header[2]:>18} {header[3]:>6} {header[4]:>15} {header[5]:>8}")
    for i in range(args.repeats):
        fixed, adaptive = run(args.steps, args.batch_size, args.update_every, args.grow_window)
        tokens = args.steps * args.batch_size * fixed.config.block_size
        rate_f, rate_a = tokens / fixed.seconds, tokens / adaptive.seconds
        ratios.append(rate_a / rate_f)
        print(
            f"{i:<5} {rate_f:>15,.0f} {rate_a:>18,.0f} {rate_a / rate_f:>6.3f} {adaptive.in_updates:>15.3f} "
            f"{adaptive.updates:>8}"
        )
    print(f"median adaptive / fixed tokens/s over {args.repeats} pairs: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
