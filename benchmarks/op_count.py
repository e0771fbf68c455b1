"""Operators per training step, with and without ``batch_reconstruction``.

At the paper's size an eager GPU step is launch-bound: its time follows the number of operators dispatched
more than their flops. This script counts them with ``torch.profiler`` on the CPU (the count does not depend on
the device): every ``aten::`` operator of one forward + backward of the paper's GPT (4 layers, d = 128; a
small batch, since sizes do not change the count), and among them the matrix products (``mm``, ``bmm``,
``addmm``) and the copies that stack or scatter weights (``cat``, ``index_copy``, ``index_select``). The DCT rows
pin ``path: materialize``: batching concerns the path that rebuilds W, which ``auto`` need not choose.

    python benchmarks/op_count.py
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from spectral_lightning import GPT, GPTConfig
from spectral_lightning.parameterizations import resolve

CONFIGS: dict[str, object] = {
    "dense": "dense",
    "dct2x": {"class_path": "dct", "init_args": {"compression": 2.0, "selection": "zigzag", "path": "materialize"}},
    "dct4x": {"class_path": "dct", "init_args": {"compression": 4.0, "selection": "lowpass", "path": "materialize"}},
    "dct_random2x": {
        "class_path": "dct",
        "init_args": {"compression": 2.0, "selection": "random", "path": "materialize"},
    },
    "lowrank16": {"class_path": "lowrank", "init_args": {"rank": 16}},
}
PRODUCTS = {"aten::mm", "aten::bmm", "aten::addmm"}
COPIES = {"aten::cat", "aten::index_copy", "aten::index_select"}


def count(spec: object, batched: bool) -> collections.Counter:
    """aten operators of one training forward + backward (after one warm-up step)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(65, 128, 4, 4, 128), resolve(spec), batch_reconstruction=batched)
    idx = torch.randint(65, (2, 16))

    def step() -> None:
        model(idx).float().square().mean().backward()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help; no options
    torch.set_num_threads(1)
    print("| config | reconstruction | aten ops / step | matrix products | stack/scatter copies |")
    print("|---|---|---:|---:|---:|")
    for name, spec in CONFIGS.items():
        for batched in (False, True):
            if name == "dense" and batched:
                continue
            ops = count(spec, batched)
            products = sum(ops[k] for k in PRODUCTS)
            copies = sum(ops[k] for k in COPIES)
            mode = "batched" if batched else "per layer"
            print(f"| {name} | {mode} | {sum(ops.values()):,} | {products} | {copies} |")


if __name__ == "__main__":
    main()
