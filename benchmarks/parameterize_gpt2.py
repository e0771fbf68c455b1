"""How long ``parameterize`` takes on a 124M-parameter ``transformers`` GPT-2, and what it stores.

The model is GPT-2 small built from ``GPT2Config()`` (12 layers, width 768, vocabulary 50,257; random weights,
nothing is downloaded). ``parameterize(model, <spec>, init="keep")`` then replaces its 48 block linears
(``Conv1D`` layers of 768×2304, 768×768, 768×3072 and 3072×768) and initializes each from the dense weight:
for the DCT, a projection X = C_m W C_nᵀ onto the kept coefficients in float64. The script prints the wall
time of that call and the parameter table of the converted model (the LM head, tied to the token embedding,
stays dense: the default patterns).

    python benchmarks/parameterize_gpt2.py                                  # DCT, compression 4
    python benchmarks/parameterize_gpt2.py --parameterization lowrank       # truncated SVD instead
    python benchmarks/parameterize_gpt2.py --compression 2 --selection zigzag --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console

from spectral_lightning import parameterize, parameterized_names
from spectral_lightning.analysis import parameter_report, parameter_table, rich_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parameterization", default="dct", help="a registered name (default: dct)")
    parser.add_argument("--compression", type=float, default=4.0, help="c: keep about mn/c values (default: 4)")
    parser.add_argument("--selection", default=None, help="DCT selection: lowpass (default), zigzag or random")
    parser.add_argument("--init", default="keep", choices=["keep", "fresh"], help="default: keep")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)

    from transformers import GPT2Config, GPT2LMHeadModel  # imported here so that --help works without it

    if args.threads:
        torch.set_num_threads(args.threads)
    init_args: dict[str, object] = {"compression": args.compression}
    if args.selection is not None:
        init_args["selection"] = args.selection
    spec = {"class_path": args.parameterization, "init_args": init_args}

    torch.manual_seed(0)
    start = time.perf_counter()
    model = GPT2LMHeadModel(GPT2Config())
    built = time.perf_counter() - start
    dense = sum(p.numel() for p in model.parameters())

    start = time.perf_counter()
    parameterize(model, spec, init=args.init)
    elapsed = time.perf_counter() - start

    console = Console(width=max(Console().width, 110))  # the table's six columns, also when piped to a file
    console.print(rich_table(parameter_table(*parameter_report(model), title=f"GPT-2 small, {spec}")))
    console.print(
        f"GPT-2 small from GPT2Config(): {dense:,} parameters, built in {built:.1f} s\n"
        f"parameterize(model, {spec}, init={args.init!r})\n"
        f"  {len(parameterized_names(model))} linears in {elapsed:.1f} s "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
