"""How much of a trained model each parameterization keeps when it is initialized from it (``--model.init_from``).

For every config, the model is built with that config's parameterization and initialized from ``--ckpt_path``
(any checkpoint or export) through the same ``SpectralLM.initialize_from`` that ``cli.py ... --model.init_from``
uses. The table gives, over the parameterized linears, the share of the
source weights' energy the projection keeps (‖W_projected‖_F² / ‖W_source‖_F²: DCT keeps its selected
coefficients, low-rank the top singular values) and, with ``--val``, the val loss right after projection on
the validation split of the text (``--data-path``, default the tiny Shakespeare cache).

    python benchmarks/projection.py --ckpt_path runs/dense/version_0/checkpoints/last.ckpt --val
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import warnings
from pathlib import Path

import lightning as L
import torch
from jsonargparse import Namespace, capture_parser

from spectral_lightning import GPT, CharDataModule, SpectralLM
from spectral_lightning.analysis import parameter_report
from spectral_lightning.checkpoints import load_model
from spectral_lightning.cli import cli_main

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = ("dense", "dct2x", "dct4x", "lowrank", "lowrank48")


def config_model_options(config: Path) -> dict:
    """The ``model`` options of a config file that choose the parameterization (the rest follows the source),
    read by ``cli.py``'s own parser, so that what the config loads (``config: shared/paper.yaml``) counts."""
    model = capture_parser(lambda: cli_main([])).parse_args(["fit", "--config", str(config)]).fit.model
    spec = model.parameterization  # a registered name, or class_path + init_args
    spec = spec.as_dict() if isinstance(spec, Namespace) else spec
    return {"parameterization": spec, "parameterize": model.parameterize}


def projected(ckpt_path: str, source: GPT, vocab: str, config: Path) -> tuple[SpectralLM, list[float]]:
    """The config's model initialized from ``ckpt_path`` (whose model is ``source``), and the energy share each
    parameterized linear kept."""
    sizes = dataclasses.asdict(source.config)
    sizes.pop("vocab_size")
    module = SpectralLM(vocab, **sizes, **config_model_options(config), init_from=ckpt_path)
    module.configure_model()  # runs the init_from projection, as fit/validate do
    src = source.linears()
    kept = []
    with torch.no_grad():
        for name in module.model.parameterized:
            w_src = src[name].weight.double()
            w_new = module.model.get_submodule(name).weight.double()
            kept.append((w_new.square().sum() / w_src.square().sum()).item())
    return module, kept


def val_loss(module: SpectralLM, data_path: str | None, data_dir: str) -> float:
    data = CharDataModule(path=data_path, data_dir=data_dir, block_size=module.hparams.block_size)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():  # the Trainer writes nothing we keep
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging intervals
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp,
        )  # fmt: skip
        return trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="trained checkpoint or export (any parameterization)")
    parser.add_argument(
        "--configs", nargs="+", default=list(PAPER_CONFIGS), help="config names in configs/ or YAML paths"
    )
    parser.add_argument("--val", action="store_true", help="also the val loss right after projection")
    parser.add_argument("--data-path", default=None, help="text for --val (default: the tiny Shakespeare cache)")
    parser.add_argument("--data-dir", default="data", help="data cache folder for --val (default data/)")
    args = parser.parse_args(argv)
    configs = [Path(c) if c.endswith((".yaml", ".yml")) else REPO / "configs" / f"{c}.yaml" for c in args.configs]
    for config in configs:
        if not config.is_file():
            parser.error(f"--configs: {config} does not exist; expected a name in configs/ or a YAML file")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-config Trainer banner
    source, tokenizer = load_model(args.ckpt_path)
    header = "| config | stored (% of dense model) | energy kept: mean | min | max |"
    print(header + (" val loss after projection |" if args.val else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|" if args.val else ""))
    for config in configs:
        module, kept = projected(args.ckpt_path, source, tokenizer.vocab, config)
        totals = parameter_report(module.model)[1]  # the console table's totals
        mean = sum(kept) / len(kept)
        row = f"| {config.stem} | {totals.ratio:.1%} | {mean:.3f} | {min(kept):.3f} | {max(kept):.3f} |"
        if args.val:
            row += f" {val_loss(module, args.data_path, args.data_dir):.3f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
