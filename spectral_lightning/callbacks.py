"""Console and TensorBoard extras: what compression saved, how the spectra evolve, what the model writes.

Every callback here is cheap enough to leave on (the default configs list them all) and is switched off by
deleting its entry from ``trainer.callbacks`` in the YAML. None of them draws from the global random number
generators, so a run's data stream and dropout masks are the same with or without them.

=====================  ==========================================================================================
callback               writes
=====================  ==========================================================================================
ThroughputMonitor      ``train/tokens_per_sec`` (progress bar and logger), measured over ``interval`` steps
ParameterTable         at fit start: a rich table of every parameterized linear and the model totals (console),
                       and the same table as TensorBoard text (``model/parameters``)
ScalarLayout           TensorBoard custom-scalars layout: train and val loss on one chart, val ppl, lr, tokens/s,
                       stable ranks
HParamsSummary         the hparams tab: every hyperparameter plus ``hparams/val_loss``, ``hparams/val_ppl``,
                       ``hparams/stored_ratio`` and ``hparams/stored_params``, rewritten after each validation
TextSamples            ``samples`` text: continuations of a fixed prompt with a fixed seed after each validation
SpectrumMonitor        per parameterized layer, every N validations: ``spectrum/<layer>`` image of the 2-D DCT
                       energy over the m×n frequency plane, ``stable_rank/<layer>`` scalar, ``coefficients/<layer>``
                       histogram of the stored values
=====================  ==========================================================================================

Open the dashboard with ``tensorboard --logdir runs``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from rich.console import Console
from rich.table import Table
from torch import Tensor

from spectral_lightning.errors import ConfigError
from spectral_lightning.model import GPT
from spectral_lightning.parameterizations import (
    DCTLinear,
    Parameterization,
    ParameterizedLinear,
    dct_matrix,
)

# -- parameter counting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRow:
    """One parameterized linear: its weight is m×n (``out_features`` × ``in_features``)."""

    name: str
    m: int
    n: int
    strategy: str
    stored: int
    dense: int

    @property
    def ratio(self) -> float:
        return self.stored / self.dense


@dataclass(frozen=True)
class ParameterTotals:
    """Model totals.

    Attributes:
        stored: every Parameter value of the model (embeddings, norms, biases, head, layers' stored values).
        dense: the same count for the dense model of the same shape (every linear stores m·n values).
        linear_stored: stored weight values of the parameterized linears (biases excluded).
        linear_dense: m·n summed over the parameterized linears.
    """

    stored: int
    dense: int
    linear_stored: int
    linear_dense: int

    @property
    def ratio(self) -> float:
        return self.stored / self.dense

    @property
    def linear_ratio(self) -> float:
        return self.linear_stored / self.linear_dense if self.linear_dense else 1.0


def parameter_report(gpt: GPT) -> tuple[list[LayerRow], ParameterTotals]:
    """Rows for every parameterized linear of ``gpt`` and the model totals.

    ``totals.stored`` is ``sum(p.numel() for p in gpt.parameters())``; ``totals.dense`` is that count for
    ``GPT(gpt.config, Dense())``: each linear's stored values are replaced by m·n, everything else is shared.
    """
    linears = gpt.linears()
    rows = []
    for name in gpt.parameterized:
        layer = linears[name]
        m, n = layer.out_features, layer.in_features
        rows.append(LayerRow(name, m, n, layer.describe(), layer.stored, m * n))
    stored = sum(p.numel() for p in gpt.parameters())
    # Every linear (parameterized or not) would hold m·n weight values in the dense model.
    extra = sum(layer.out_features * layer.in_features - layer.stored for layer in linears.values())
    totals = ParameterTotals(
        stored=stored,
        dense=stored + extra,
        linear_stored=sum(r.stored for r in rows),
        linear_dense=sum(r.dense for r in rows),
    )
    return rows, totals


def parameter_table(rows: list[LayerRow], totals: ParameterTotals, title: str = "parameterized linears") -> Table:
    """A rich table of the rows, with subtotal (parameterized linears) and model-total footer rows."""
    table = Table(title=title, show_footer=False, header_style="bold")
    for header, justify in (
        ("layer", "left"),
        ("shape (m×n)", "right"),
        ("strategy", "left"),
        ("stored", "right"),
        ("dense", "right"),
        ("ratio", "right"),
    ):
        table.add_column(header, justify=justify)
    for r in rows:
        table.add_row(r.name, f"{r.m}×{r.n}", r.strategy, f"{r.stored:,}", f"{r.dense:,}", f"{r.ratio:.1%}")
    table.add_section()
    table.add_row(
        "parameterized linears", "", "", f"{totals.linear_stored:,}", f"{totals.linear_dense:,}",
        f"{totals.linear_ratio:.1%}", style="bold",
    )  # fmt: skip
    table.add_row(
        "model total (all parameters)", "", "vs dense model", f"{totals.stored:,}", f"{totals.dense:,}",
        f"{totals.ratio:.1%}", style="bold",
    )  # fmt: skip
    return table


def markdown_table(rows: list[LayerRow], totals: ParameterTotals) -> str:
    """The same table as Markdown (TensorBoard's text tab renders it)."""
    lines = ["| layer | shape (m×n) | strategy | stored | dense | ratio |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.m}×{r.n} | {r.strategy} | {r.stored:,} | {r.dense:,} | {r.ratio:.1%} |")
    lines.append(
        f"| **parameterized linears** | | | {totals.linear_stored:,} | {totals.linear_dense:,} | "
        f"{totals.linear_ratio:.1%} |"
    )
    lines.append(f"| **model total** | | vs dense model | {totals.stored:,} | {totals.dense:,} | {totals.ratio:.1%} |")
    return "\n".join(lines)


# -- helpers -----------------------------------------------------------------------------------------------


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The trainer's first TensorBoardLogger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger
    return None


def log_step(trainer: L.Trainer) -> int:
    """The step Lightning's own logger uses for the metrics logged now (validation metrics after 500 steps are
    logged at step 499), so images, text and scalars written here line up with ``val/loss``."""
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def _check_positive(option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option}={value!r} is not valid: expected a positive integer")
    return value


def _gpt(pl_module: L.LightningModule) -> GPT:
    model = getattr(pl_module, "model", None)
    if not isinstance(model, GPT):
        raise ConfigError(
            f"this callback needs a LightningModule with a GPT in `.model` (SpectralLM); got {type(pl_module).__name__}"
        )
    return model


# -- console -----------------------------------------------------------------------------------------------


class ThroughputMonitor(L.Callback):
    """Log training throughput as ``train/tokens_per_sec`` (progress bar and logger).

    Tokens are counted from batch shapes (no device sync) and timed over ``interval`` training batches; on GPU
    the device is synchronized once per interval so the time covers the queued work. The interval restarts
    after each validation, so evaluation time is not charged to training. The value is the total over all
    devices (per-device rate × world size).

    Args:
        interval: training batches per measurement (≥ 1); each measurement is logged once and stays in the bar.
        prog_bar: also show it in the progress bar.
    """

    def __init__(self, interval: int = 20, prog_bar: bool = True) -> None:
        super().__init__()
        self.interval = _check_positive("ThroughputMonitor.interval", interval)
        self.prog_bar = prog_bar
        self._start: float | None = None
        self._tokens = 0
        self._steps = 0

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            self._start, self._tokens, self._steps = self._now(pl_module), 0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Next-token prediction on (B, T + 1) windows trains on B·T tokens.
        self._tokens += batch.shape[0] * (batch.shape[1] - 1) if isinstance(batch, Tensor) else 0
        self._steps += 1
        if self._steps < self.interval or self._start is None:
            return
        now = self._now(pl_module)
        rate = self._tokens * trainer.world_size / max(now - self._start, 1e-9)
        self._start, self._tokens, self._steps = now, 0, 0
        # Once per interval: the progress bar keeps the last value; loggers get it at this step directly
        # (pl_module.log would drop it unless the step happened to be a log_every_n_steps step).
        if self.prog_bar:
            pl_module.log("train/tokens_per_sec", rate, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"train/tokens_per_sec": rate}, log_step(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = None  # restart the interval at the next training batch


class ParameterTable(L.Callback):
    """At fit start, print a rich table of every parameterized linear and the model totals (rank 0 only).

    Columns: layer name, weight shape m×n, strategy, stored values, dense values (m·n), ratio. Footer rows:
    the parameterized linears' sum, and the whole model's parameters against the dense model of the same
    shape (embeddings, norms, biases and the LM head included).

    Args:
        log_text: also write the table as Markdown to TensorBoard text (``model/parameters``).
        width: console width in characters (None: the terminal's width, or 120 when writing to a file).
    """

    def __init__(self, log_text: bool = True, width: int | None = None) -> None:
        super().__init__()
        self.log_text = log_text
        self.width = width

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rows, totals = parameter_report(_gpt(pl_module))
        console = Console(width=self.width)
        if self.width is None and not console.is_terminal:
            console = Console(width=120)  # logs and pipes: wide enough that no layer name is cut
        console.print(parameter_table(rows, totals))
        tb = tensorboard_logger(trainer)
        if self.log_text and tb is not None:
            tb.experiment.add_text("model/parameters", markdown_table(rows, totals), log_step(trainer))


# -- TensorBoard ---------------------------------------------------------------------------------------------


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
                "learning rate": ["Multiline", [r"^lr-"]],
                "tokens/s": ["Multiline", [r"^train/tokens_per_sec$"]],
            },
            "spectra": {"stable rank": ["Multiline", [r"^stable_rank/"]]},
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = tensorboard_logger(trainer)
        if tb is not None and trainer.is_global_zero:
            tb.experiment.add_custom_scalars(self.layout())


def _plain(value: Any) -> Any:
    """A Parameterization as its class_path/init_args mapping (what YAML holds); anything else unchanged."""
    if isinstance(value, Parameterization):
        return {"class_path": type(value).__name__, "init_args": value.options()}
    return value


class HParamsSummary(L.Callback):
    """Fill TensorBoard's HPARAMS tab so runs of different configs compare in one table.

    After every validation (not the sanity check) the run's hyperparameters (model and data options, the
    parameterization's options, ``trainer/max_steps``, ``trainer/precision``, ``trainer/world_size``) are
    written with four metrics: ``hparams/val_loss`` and ``hparams/val_ppl`` (the latest validation, hence
    the final one once training ends), ``hparams/stored_ratio`` (model parameters / dense model
    parameters) and ``hparams/stored_params`` (model parameters). Configs set ``default_hp_metric: false``
    so no ``hp_metric = -1`` placeholder is written.

    Args:
        loss_key: the validation loss metric to report.
        ppl_key: the validation perplexity metric to report.
    """

    def __init__(self, loss_key: str = "val/loss", ppl_key: str = "val/ppl") -> None:
        super().__init__()
        self.loss_key = loss_key
        self.ppl_key = ppl_key

    def params(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Every hyperparameter of the run (nested dicts are flattened by the logger)."""
        params: dict[str, Any] = {k: _plain(v) for k, v in pl_module.hparams_initial.items()}
        if trainer.datamodule is not None:
            params.update({k: _plain(v) for k, v in trainer.datamodule.hparams_initial.items()})
        params = {k: v for k, v in params.items() if not k.startswith("_")}  # LightningCLI's internals
        params["trainer"] = {
            "max_steps": trainer.max_steps,
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
        }
        return params

    def metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        _, totals = parameter_report(_gpt(pl_module))
        out = {"hparams/stored_ratio": totals.ratio, "hparams/stored_params": float(totals.stored)}
        for key, tag in ((self.loss_key, "hparams/val_loss"), (self.ppl_key, "hparams/val_ppl")):
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


class TextSamples(L.Callback):
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
        super().__init__()
        if not prompt:
            raise ConfigError("TextSamples.prompt='' is not valid: expected at least one character (e.g. '\\n')")
        if isinstance(temperature, bool) or not temperature >= 0:
            raise ConfigError(f"TextSamples.temperature={temperature!r} is not valid: expected a number >= 0")
        if top_k is not None:
            _check_positive("TextSamples.top_k", top_k)
        self.prompt = prompt
        self.max_new_tokens = _check_positive("TextSamples.max_new_tokens", max_new_tokens)
        self.temperature = float(temperature)
        self.top_k = top_k
        self.num_samples = _check_positive("TextSamples.num_samples", num_samples)
        self.seed = seed
        self.every_n_validations = _check_positive("TextSamples.every_n_validations", every_n_validations)
        self._validations = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        vocab = pl_module.tokenizer.vocab
        unknown = sorted(set(self.prompt) - set(vocab))
        if unknown:
            raise ConfigError(
                f"TextSamples.prompt={self.prompt!r} has characters {''.join(unknown)!r} that are not in the "
                f"training vocabulary {vocab!r}; choose a prompt made of those characters"
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations or not trainer.is_global_zero:
            return
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

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))


def stable_rank(weight: Tensor) -> float:
    """‖W‖_F² / ‖W‖₂² (in [1, rank W]; 0 for an all-zero W), computed in float64."""
    w = weight.detach().double()
    top = torch.linalg.matrix_norm(w, ord=2)
    if top == 0:
        return 0.0
    return float(w.square().sum() / top.square())


class SpectrumMonitor(L.Callback):
    """Every N validations, per parameterized layer: its DCT spectrum, stable rank and stored values.

    * ``spectrum/<layer>``: a (1, m, n) grayscale image of log10 |X|² over the full m×n frequency plane
      (row 0, column 0 = the lowest frequencies, top-left). For DCT layers X holds the stored coefficients at
      their positions (zero, shown black, elsewhere); for any other layer X = C_m W C_nᵀ is the 2-D DCT of
      the materialized weight. Brightness spans the top ``dynamic_range`` decades of each image.
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
        super().__init__()
        self.every_n_validations = _check_positive("SpectrumMonitor.every_n_validations", every_n_validations)
        if isinstance(dynamic_range, bool) or not (isinstance(dynamic_range, (int, float)) and dynamic_range > 0):
            raise ConfigError(f"SpectrumMonitor.dynamic_range={dynamic_range!r} is not valid: expected a number > 0")
        self.at_start = at_start
        self.images = images
        self.histograms = histograms
        self.dynamic_range = float(dynamic_range)
        self._validations = 0
        self._bases: dict[tuple[int, torch.device], Tensor] = {}

    def _basis(self, n: int, device: torch.device) -> Tensor:
        key = (n, device)
        if key not in self._bases:
            self._bases[key] = dct_matrix(n, torch.float32, device)
        return self._bases[key]

    @torch.no_grad()
    def frequency_plane(self, layer: ParameterizedLinear) -> Tensor:
        """The m×n coefficient matrix X of ``layer`` (float32)."""
        m, n = layer.out_features, layer.in_features
        if isinstance(layer, DCTLinear):
            corner = layer.coefficient_matrix().detach()  # (ra, cb)
            x = corner.new_zeros(m, n)
            x[: corner.shape[0], : corner.shape[1]] = corner
            return x
        w = layer.weight.detach().float()  # (m, n)
        return self._basis(m, w.device) @ w @ self._basis(n, w.device).t()  # (m, n)

    def energy_image(self, x: Tensor) -> Tensor:
        """log10 |X|² scaled to uint8 [0, 255] over the top ``dynamic_range`` decades, shape (1, m, n)."""
        power = torch.log10(x.double().square().clamp_min(1e-300))
        top = float(power.max())
        scaled = ((power - (top - self.dynamic_range)) / self.dynamic_range).clamp(0.0, 1.0)
        return (scaled * 255.0).round().to(torch.uint8).unsqueeze(0).cpu()

    @torch.no_grad()
    def log_layers(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write every parameterized layer's image, stable rank and histogram at the current step."""
        tb = tensorboard_logger(trainer)
        step = log_step(trainer)
        gpt = _gpt(pl_module)
        linears = gpt.linears()
        ranks = {}
        for name in gpt.parameterized:
            layer = linears[name]
            ranks[f"stable_rank/{name}"] = stable_rank(layer.weight)
            if tb is None:
                continue
            if self.images:
                image = self.energy_image(self.frequency_plane(layer))
                tb.experiment.add_image(f"spectrum/{name}", image, step, dataformats="CHW")
            if self.histograms:
                values = torch.cat([p.detach().flatten().float() for p in layer.weight_parameters()]).cpu()
                tb.experiment.add_histogram(f"coefficients/{name}", values, step)
        for logger in trainer.loggers:
            logger.log_metrics(ranks, step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start and trainer.global_step == 0 and trainer.is_global_zero:
            self.log_layers(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_validations == 0 and trainer.is_global_zero:
            self.log_layers(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))


__all__ = [
    "HParamsSummary",
    "LayerRow",
    "ParameterTable",
    "ParameterTotals",
    "ScalarLayout",
    "SpectrumMonitor",
    "TextSamples",
    "ThroughputMonitor",
    "markdown_table",
    "parameter_report",
    "parameter_table",
    "stable_rank",
    "tensorboard_logger",
]
