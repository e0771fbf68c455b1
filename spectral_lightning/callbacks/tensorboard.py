"""TensorBoard callbacks: the custom-scalars layout, the HPARAMS tab, text samples and the spectra."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from spectral_lightning.analysis import (
    frequency_plane,
    parameter_report,
    stable_rank,
)
from spectral_lightning.callbacks.base import EveryNValidations, log_step, model_of, tensorboard_logger
from spectral_lightning.errors import ConfigError, check_positive_int
from spectral_lightning.parameterizations import Parameterization, resolve


class ScalarLayout(L.Callback):
    """Write TensorBoard's custom-scalars layout (the CUSTOM SCALARS tab) at fit start.

    Charts: "loss" with ``train/loss`` and ``val/loss`` on one plot; "val perplexity"; "learning rate" (every
    ``lr-*`` tag of LearningRateMonitor); "tokens/s"; "stable rank" (every layer's ``stable_rank/*``).

    Args:
        title: the category name shown in the tab.
    """

    def __init__(self, title: str = "training") -> None:
        super().__init__()
        self.title = title

    def layout(self) -> dict[str, dict[str, list]]:
        """The layout in ``SummaryWriter.add_custom_scalars`` form; tags are regular expressions."""
        return {
            self.title: {
                "loss (train vs val)": ["Multiline", [r"^train/loss$", r"^val/loss$"]],
                "val perplexity": ["Multiline", [r"^val/ppl$"]],
                "val bits per byte": ["Multiline", [r"^val/bpb$"]],
                "learning rate": ["Multiline", [r"^lr-"]],
                "tokens/s": ["Multiline", [r"^train/tokens_per_sec$"]],
            },
            "spectra": {"stable rank": ["Multiline", [r"^stable_rank/"]]},
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = tensorboard_logger(trainer)
        if tb is not None and trainer.is_global_zero:
            tb.experiment.add_custom_scalars(self.layout())


class HParamsSummary(L.Callback):
    """Fill TensorBoard's HPARAMS tab so runs of different configs compare in one table.

    After every validation (not the sanity check) the run's hyperparameters (model and data options, the
    parameterization as ``parameterization/class_path`` and ``parameterization/init_args/*`` in the form of
    :meth:`~spectral_lightning.parameterizations.Parameterization.spec`, ``trainer/max_steps``,
    ``trainer/precision``, ``trainer/world_size``) are written with five metrics: ``hparams/val_loss``,
    ``hparams/val_ppl`` and ``hparams/val_bpb`` (the latest validation, hence the final one once training ends),
    ``hparams/stored_ratio`` (model parameters / dense model parameters) and ``hparams/stored_params`` (model
    parameters). Configs set ``default_hp_metric: false`` so no ``hp_metric = -1`` placeholder is written.

    Args:
        loss_key: the validation loss metric to report.
        ppl_key: the validation perplexity metric to report.
        bpb_key: the validation bits-per-byte metric to report (comparable across tokenizers).
    """

    def __init__(self, loss_key: str = "val/loss", ppl_key: str = "val/ppl", bpb_key: str = "val/bpb") -> None:
        super().__init__()
        self.loss_key = loss_key
        self.ppl_key = ppl_key
        self.bpb_key = bpb_key

    def params(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Every hyperparameter of the run (nested dicts are flattened by the logger)."""
        params: dict[str, Any] = dict(pl_module.hparams_initial)
        if trainer.datamodule is not None:
            params.update(trainer.datamodule.hparams_initial)
        params = {k: v for k, v in params.items() if not k.startswith("_")}  # LightningCLI's internals
        # A name ("dct"), a YAML mapping or an instance: written in the one serialized form, so runs compare.
        if "parameterization" in params:
            params["parameterization"] = resolve(params["parameterization"]).spec()
        params = {k: v.spec() if isinstance(v, Parameterization) else v for k, v in params.items()}
        params["trainer"] = {
            "max_steps": trainer.max_steps,
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
        }
        return params

    def metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The five ``hparams/*`` metrics (the validation ones only once a validation has logged them)."""
        _, totals = parameter_report(model_of(pl_module))
        out = {"hparams/stored_ratio": totals.ratio, "hparams/stored_params": float(totals.stored)}
        keys = (self.loss_key, "hparams/val_loss"), (self.ppl_key, "hparams/val_ppl"), (self.bpb_key, "hparams/val_bpb")
        for key, tag in keys:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                out[tag] = float(value)
        return out

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        tb = tensorboard_logger(trainer)
        if tb is None:
            return
        tb.log_hyperparams(self.params(trainer, pl_module), self.metrics(trainer, pl_module), step=log_step(trainer))


class TextSamples(EveryNValidations):
    """After each validation, write continuations of a fixed prompt to TensorBoard text (``samples``).

    Sampling uses a private generator seeded with ``seed`` (rank 0 only), so the same checkpoint always
    writes the same text and the global random state (data order, dropout) is left untouched.

    Args:
        prompt: the text to continue; every character must be in the training vocabulary.
        max_new_tokens: characters generated per sample (≥ 1).
        temperature: softmax temperature (≥ 0; 0 = greedy: always the most likely character).
        top_k: sample among the k most likely characters only (None: all).
        num_samples: continuations written per validation (≥ 1).
        seed: seed of the sampling generator.
        every_n_validations: write samples at validations N, 2N, 3N, ... (≥ 1).
    """

    def __init__(
        self,
        prompt: str = "\n",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = None,
        num_samples: int = 1,
        seed: int = 1337,
        every_n_validations: int = 1,
    ) -> None:
        super().__init__(every_n_validations)
        if not prompt:
            raise ConfigError("TextSamples.prompt='' is not valid: expected at least one character (e.g. '\\n')")
        if isinstance(temperature, bool) or not temperature >= 0:
            raise ConfigError(f"TextSamples.temperature={temperature!r} is not valid: expected a number >= 0")
        if top_k is not None:
            check_positive_int("TextSamples.top_k", top_k)
        self.prompt = prompt
        self.max_new_tokens = check_positive_int("TextSamples.max_new_tokens", max_new_tokens)
        self.temperature = float(temperature)
        self.top_k = top_k
        self.num_samples = check_positive_int("TextSamples.num_samples", num_samples)
        self.seed = seed

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        vocab = getattr(pl_module.tokenizer, "vocab", None)  # a character vocabulary; a BPE encodes any text
        unknown = sorted(set(self.prompt) - set(vocab)) if vocab is not None else []
        if unknown:
            raise ConfigError(
                f"TextSamples.prompt={self.prompt!r} has characters {''.join(unknown)!r} that are not in the "
                f"training vocabulary {vocab!r}; choose a prompt made of those characters"
            )

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Generate the samples and write them as TensorBoard text (nothing without a TensorBoardLogger)."""
        tb = tensorboard_logger(trainer)
        if tb is None:
            return
        texts = pl_module.generate(
            self.prompt,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            num_samples=self.num_samples,
            seed=self.seed,
        )
        # Four-space indentation makes Markdown keep the newlines and spacing (a code block).
        body = "\n\n".join("\n".join("    " + line for line in t.split("\n")) for t in texts)
        tb.experiment.add_text("samples", f"step {trainer.global_step}, seed {self.seed}:\n\n{body}", log_step(trainer))


class SpectrumMonitor(EveryNValidations):
    """Every N validations, per parameterized layer: its DCT spectrum, stable rank and stored values.

    * ``spectrum/<layer>``: a (1, m, n) grayscale image of log10 |X|² over the layer's
      :func:`~spectral_lightning.analysis.frequency_plane` X (row 0, column 0 = the lowest frequencies,
      top-left; a DCT layer's unstored coefficients are zero, shown black). Brightness spans the top
      ``dynamic_range`` decades of each image.
    * ``stable_rank/<layer>``: ‖W‖_F² / ‖W‖₂² of the materialized weight (between 1 and min(m, n)).
    * ``coefficients/<layer>``: a histogram of the layer's stored values (DCT coefficients, low-rank factor
      entries, or dense weights).

    Args:
        every_n_validations: log at validations N, 2N, 3N, ... (≥ 1); with validation every 500 steps and N = 2,
            at steps 1000, 2000, ... (the last validation of a 5,000-step run included).
        at_start: also log everything at fit start (step 0: the random initialization).
        images: write the spectrum images.
        histograms: write the histograms.
        dynamic_range: decades of |X|² mapped to the image's gray levels (> 0).
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        at_start: bool = False,
        images: bool = True,
        histograms: bool = True,
        dynamic_range: float = 6.0,
    ) -> None:
        super().__init__(every_n_validations)
        if isinstance(dynamic_range, bool) or not (isinstance(dynamic_range, (int, float)) and dynamic_range > 0):
            raise ConfigError(f"SpectrumMonitor.dynamic_range={dynamic_range!r} is not valid: expected a number > 0")
        self.at_start = at_start
        self.images = images
        self.histograms = histograms
        self.dynamic_range = float(dynamic_range)

    def energy_image(self, x: Tensor) -> Tensor:
        """log10 |X|² scaled to uint8 [0, 255] over the top ``dynamic_range`` decades, shape (1, m, n)."""
        power = torch.log10(x.double().square().clamp_min(1e-300))
        top = float(power.max())
        scaled = ((power - (top - self.dynamic_range)) / self.dynamic_range).clamp(0.0, 1.0)
        return (scaled * 255.0).round().to(torch.uint8).unsqueeze(0).cpu()

    @torch.no_grad()
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write every parameterized layer's image, stable rank and histogram at the current step."""
        tb = tensorboard_logger(trainer)
        step = log_step(trainer)
        gpt = model_of(pl_module)
        linears = gpt.linears()
        ranks = {}
        for name in gpt.parameterized:
            layer = linears[name]
            ranks[f"stable_rank/{name}"] = stable_rank(layer.weight)
            if tb is None:
                continue
            if self.images:
                image = self.energy_image(frequency_plane(layer))
                tb.experiment.add_image(f"spectrum/{name}", image, step, dataformats="CHW")
            if self.histograms:
                values = torch.cat([p.detach().flatten().float() for p in layer.weight_parameters()]).cpu()
                tb.experiment.add_histogram(f"coefficients/{name}", values, step)
        for logger in trainer.loggers:
            logger.log_metrics(ranks, step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start and trainer.global_step == 0 and trainer.is_global_zero:
            self.write(trainer, pl_module)
