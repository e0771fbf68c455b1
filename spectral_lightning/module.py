"""SpectralLM: the LightningModule that trains a causal language model (``gpt``, ``llama`` or a ``transformers``
model: :mod:`spectral_lightning.architectures`) on characters.

Every option is a plain typed value (LightningCLI turns the docstring into ``--help``), and
``save_hyperparameters()`` records all of them, the vocabulary included, so a checkpoint alone rebuilds the
model and its tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from spectral_lightning import optim
from spectral_lightning.architectures import build_model
from spectral_lightning.checkpoints import Checkpoint, check_vocab, read_checkpoint, transfer_weights
from spectral_lightning.errors import ConfigError
from spectral_lightning.model import BLOCK_LINEARS
from spectral_lightning.parameterizations import Parameterization, dct_cost, resolve
from spectral_lightning.seeds import derive_seed
from spectral_lightning.support import AdaptiveSupport, has_moving_supports
from spectral_lightning.tokenization import tokenizer_from_spec


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class SpectralLM(L.LightningModule):
    """Next-character language model whose linears are stored by a chosen parameterization.

    Args:
        vocab: the tokenizer of the training data, linked from ``data.vocab``: the characters of the text in
            token order (character data), or a BPE's tokenizer.json text (``spectral_lightning.tokenization``).
        block_size: context length (linked from ``data.block_size``).
        n_layer: transformer blocks (≥ 1).
        n_head: attention heads (≥ 1, must divide ``n_embd``).
        n_embd: model width d (≥ 1).
        dropout: dropout probability in [0, 1).
        dropout_from_step: the step from which ``dropout`` is on (≥ 0); a later step than 0 trains without it until
            then ("late dropout", ``gpt`` and ``llama``; logged as ``train/dropout``).
        bias: biases in linears and LayerNorms (``gpt``; ``llama`` has none).
        architecture: ``gpt`` (the paper's character GPT), ``llama`` (RMSNorm, rotary positions, SwiGLU, no
            biases) or ``hf`` (a ``transformers`` causal LM built from ``hf_config``; needs ``transformers``).
        mlp_hidden: ``llama``: the SwiGLU hidden width (None: 8·n_embd/3 rounded up to a multiple of 32).
        tie_embeddings: ``llama``: the LM head shares the token embedding's weight (the head then stays dense).
        rope_theta: ``llama``: base of the rotary position frequencies.
        hf_config: ``hf``: ``{class_path: transformers.GPT2Config, init_args: {...}}`` or ``{model_type: gpt2,
            ...}``; its vocabulary size and context length are set from the data, the other sizes are its own
            (``n_layer``, ``n_head``, ``n_embd``, ``dropout`` and ``bias`` do not apply).
        parameterization: how the selected linears store their weights: a registered name (``dense``,
            ``dct``, ``lowrank``, ``random_basis``, or your own) or ``class_path``/``init_args`` with options
            (``--model.parameterization.help DCT`` lists a parameterization's options; it takes the class name).
        parameterize: module-name patterns (fnmatch) of the linears to parameterize; the rest stay dense.
            Default (or None): the linears of every block (``gpt``: four, ``llama``: seven, ``hf``: every linear
            but the output head); ``--model.parameterize+ lm_head`` adds the LM head to them.
        lr: peak learning rate of AdamW (> 0).
        betas: AdamW betas.
        weight_decay: decoupled weight decay on weights/coefficients/factors (not biases, norms, embeddings).
        warmup_steps: linear warm-up steps from 0 to ``lr`` (≥ 0).
        min_lr: floor of the cosine decay, reached at the trainer's ``max_steps``.
        parameterized_lr_scale: learning-rate multiplier (> 0) for the weight-defining Parameters of the
            parameterized linears (DCT coefficients, low-rank factors, ...), warm-up, decay and floor included;
            they then form an AdamW group of their own. 1 (the default): the same rate as every other Parameter.
        parameterized_weight_decay: decoupled weight decay (≥ 0) of those Parameters, in their own group; None (the
            default): ``weight_decay``. AdamW shrinks by lr × decay per step, so a group with ``parameterized_lr_scale``
            s decays s times as fast as the rest unless this is ``weight_decay / s``.
        parameterized_min_lr: floor of those Parameters' cosine decay, in their own group; None (the default):
            ``min_lr × parameterized_lr_scale`` (the floor keeps its ratio to the group's peak). Set it to ``min_lr``
            to anneal a scaled group as far down as the rest.
        compile: run the model through ``torch.compile`` (parameterized layers are built first, then the
            whole GPT is compiled; the state dict keeps its plain names).
        compile_mode: ``torch.compile`` mode when ``compile`` is on: ``default``, ``reduce-overhead`` (CUDA
            graphs: the whole step replayed with few launches) or ``max-autotune``; None = default.
        check_finite: stop training with an error naming the step as soon as the training loss is NaN/inf,
            before the optimizer applies it (one host sync per step).
        batch_reconstruction: in eager training, rebuild the weights of the same-shaped parameterized
            linears of all blocks with one batched product per shape instead of one per layer (same weights;
            fewer kernel launches on a GPU). No effect under ``compile`` or outside training.
        init_from: a trained checkpoint or export (any parameterization) whose weights initialize this model when a
            Trainer first configures it: every linear via ``load_dense_`` of the source's materialized weight
            (DCT: projection onto the selected coefficients; low-rank: truncated SVD), everything else copied.
            Sizes and vocabulary must match. Weights restored from ``--ckpt_path`` take precedence.
    """

    def __init__(
        self,
        vocab: str,
        block_size: int = 128,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        dropout_from_step: int = 0,
        bias: bool = True,
        architecture: Literal["gpt", "llama", "hf"] = "gpt",
        mlp_hidden: int | None = None,
        tie_embeddings: bool = False,
        rope_theta: float = 10000.0,
        hf_config: dict[str, Any] | None = None,
        parameterization: Parameterization | str = "dense",
        parameterize: list[str] | None = list(BLOCK_LINEARS),  # noqa: B006 (copied below, never mutated)
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.1,
        warmup_steps: int = 100,
        min_lr: float = 1e-4,
        parameterized_lr_scale: float = 1.0,
        parameterized_weight_decay: float | None = None,
        parameterized_min_lr: float | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        check_finite: bool = True,
        batch_reconstruction: bool = False,
        init_from: str | None = None,
    ) -> None:
        parameterize = list(BLOCK_LINEARS if parameterize is None else parameterize)
        super().__init__()
        self.save_hyperparameters()
        if isinstance(parameterization, Parameterization):
            # Kept as plain class_path/init_args, as LightningCLI stores it, so that checkpoints of models built
            # in Python also load with torch.load(weights_only=True) (the default of load_from_checkpoint).
            self.hparams.parameterization = parameterization.spec()
        if not lr > 0 or not 0 <= min_lr <= lr:
            raise ConfigError(
                f"model.lr={lr} / model.min_lr={min_lr} are not valid: expected 0 <= min_lr <= lr, lr > 0"
            )
        if dropout_from_step < 0 or (dropout_from_step > 0 and not (dropout > 0 and architecture in ("gpt", "llama"))):
            raise ConfigError(
                f"model.dropout_from_step={dropout_from_step} is not valid: expected a step >= 0; a later step than 0"
                f" needs model.dropout > 0 (it is {dropout}) and model.architecture gpt or llama (it is"
                f" {architecture!r}); or set it to 0"
            )
        if warmup_steps < 0 or weight_decay < 0:
            raise ConfigError("model.warmup_steps and model.weight_decay must be >= 0")
        if not parameterized_lr_scale > 0:
            raise ConfigError(
                f"model.parameterized_lr_scale={parameterized_lr_scale} is not valid: expected a number > 0"
            )
        if parameterized_weight_decay is not None and not parameterized_weight_decay >= 0:
            raise ConfigError(
                f"model.parameterized_weight_decay={parameterized_weight_decay} is not valid: expected a number >= 0"
                " or null (the same as model.weight_decay)"
            )
        if parameterized_min_lr is not None and not 0 <= parameterized_min_lr <= lr * parameterized_lr_scale:
            raise ConfigError(
                f"model.parameterized_min_lr={parameterized_min_lr} is not valid: expected a number between 0 and"
                f" model.lr × model.parameterized_lr_scale = {lr * parameterized_lr_scale:g}, or null (model.min_lr ×"
                " model.parameterized_lr_scale)"
            )
        self.tokenizer = tokenizer_from_spec(vocab)
        self.parameterization = resolve(parameterization)
        self.model = build_model(self.hparams, self.parameterization)
        self.val_loss, self.val_ppl, self.val_bpb = MeanMetric(), Perplexity(), MeanMetric()
        self.test_loss, self.test_ppl, self.test_bpb = MeanMetric(), Perplexity(), MeanMetric()
        # Bytes of text per token id, for bits per byte: derived from the vocabulary, never saved.
        self.register_buffer("token_bytes", torch.tensor(self.tokenizer.token_bytes()), persistent=False)
        self._compiled: torch.nn.Module | None = None
        self._dropout_seed: int | None = None  # set at fit start, or restored from a checkpoint
        self._initialized_from: str | None = None  # the init_from source already applied to these weights

    # -- loading -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> SpectralLM:
        """The module of a Lightning checkpoint or a compressed export (same parameterization and weights, eval
        mode). A dense export holds no parameterization: read it with ``checkpoints.load_model``.

        Raises:
            ConfigError: the file is missing, damaged, or a dense export.
        """
        ckpt = read_checkpoint(path)
        module = cls(**ckpt.hparams())
        module._initialized_from = module.hparams.get("init_from")  # the file's weights replace the source's
        module.model.load_state_dict(ckpt.model_state_dict())
        return module.to(map_location).eval()

    @torch.no_grad()
    def initialize_from(self, path: str | Path, option: str = "model.init_from") -> None:
        """Initialize this model's weights from a trained checkpoint or export of any parameterization.

        Every linear gets ``load_dense_(W, b)`` with the source's materialized W (DCT: projection onto the
        selected coefficients; low-rank: truncated SVD; dense: W itself); embeddings and norms are copied.

        Raises:
            ConfigError: the file is missing or unreadable, or its vocabulary or sizes differ from this model's.
        """
        transfer_weights(self.check_source(path, option).build_model(), self.model)

    def check_source(self, path: str | Path, option: str = "model.init_from") -> Checkpoint:
        """Read a file to initialize from and check its vocabulary and sizes against this model (nothing is
        changed: ``cli.py`` calls this before a run writes anything)."""
        ckpt = read_checkpoint(path, option)
        ckpt.check_vocab(self.hparams.vocab)
        ckpt.check_sizes(self.model.config)
        return ckpt

    def configure_model(self) -> None:
        # Applied once per module: later calls (validate after fit) keep the trained weights; weights restored
        # from --ckpt_path afterwards take precedence.
        source = self.hparams.get("init_from")
        if source and self._initialized_from != source:
            self.initialize_from(source)
            self._initialized_from = source
        if self.hparams.compile and self._compiled is None:
            # Kept outside the module tree so checkpoints hold `model.*` keys, not `_orig_mod.*`.
            object.__setattr__(self, "_compiled", torch.compile(self.model, mode=self.hparams.get("compile_mode")))

    def forward(self, idx: Tensor) -> Tensor:
        model = self._compiled if self._compiled is not None else self.model
        return model(idx)  # (B, T) -> (B, T, V)

    # -- steps -------------------------------------------------------------------------------------------
    def _step(self, batch: Tensor, stage: str) -> Tensor:
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T), (B, T)
        logits = self(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True)
        else:
            mean, ppl, bpb = (getattr(self, f"{stage}_{name}") for name in ("loss", "ppl", "bpb"))
            mean.update(loss, weight=y.numel())
            ppl.update(logits.float(), y)
            # Bits per byte = total nats / total UTF-8 bytes / ln 2: comparable across tokenizers (a character
            # model of ASCII text has one byte per token, so there it is the loss / ln 2).
            n_bytes = self.token_bytes[y].sum()
            bpb.update(loss * y.numel() / n_bytes / math.log(2), weight=n_bytes)
            self.log(f"{stage}/loss", mean, prog_bar=stage == "val")
            self.log(f"{stage}/ppl", ppl)
            self.log(f"{stage}/bpb", bpb)
        return loss

    def on_fit_start(self) -> None:
        if self._dropout_seed is None:
            self._dropout_seed = torch.initial_seed()  # the run's seed (seed_everything)

    def on_train_batch_start(self, batch: Tensor, batch_idx: int) -> None:
        # Dropout draws from the global RNG, which Lightning does not checkpoint and DataLoader iterators also
        # draw from. Reseeding it from (run seed, rank, step) makes each step's masks a function of the step,
        # so a resumed run draws exactly what an uninterrupted one does. Without dropout nothing draws from it.
        if self.hparams.dropout > 0:
            torch.manual_seed(derive_seed("dropout", self._dropout_seed, self.global_rank, self.global_step))
        start = self.hparams.get("dropout_from_step", 0)  # late dropout: set from the step alone, so resume is exact
        if start > 0:
            p = self.hparams.dropout if self.global_step >= start else 0.0
            self.model.set_dropout(p)
            self.log("train/dropout", p)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        if self.hparams.check_finite and not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.global_step}; stopped before applying it. The "
                "last good state is in the run's checkpoints (last.ckpt); lower model.lr or check the data"
            )
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """Per-window mean next-character loss, shape (B,)."""
        x, y = batch[:, :-1], batch[:, 1:]
        logits = self(x).float()  # (B, T, V)
        return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)

    # -- optimization (spectral_lightning/optim.py) ------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups by role (``optim.parameter_groups``): decayed weights, undecayed biases / norms /
        embeddings and, with ``parameterized_lr_scale`` ≠ 1, a ``parameterized_weight_decay`` or a
        ``parameterized_min_lr``, a third group for the parameterized linears' Parameters."""
        hp = self.hparams
        return optim.parameter_groups(
            self.model,
            set(self.model.parameterized),  # the linears built by the parameterization (the rest: dense)
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            lr_scale=hp.get("parameterized_lr_scale", 1.0),
            own_weight_decay=hp.get("parameterized_weight_decay"),
            own_min_lr=hp.get("parameterized_min_lr"),
        )

    def lr_floors(self, groups: list[dict[str, Any]] | None = None) -> list[float]:
        """The floor of each AdamW group (default: ``parameter_groups()``) as a fraction of its peak rate: its own
        ``min_lr / lr`` where the group sets one (``parameterized_min_lr``), else the model's ``min_lr / lr``."""
        groups = self.parameter_groups() if groups is None else groups
        return optim.lr_floors(groups, self.hparams.lr, self.hparams.min_lr)

    def lr_factor(self, step: int, total_steps: int, floor: float | None = None) -> float:
        """Linear warm-up to 1, then cosine decay to ``floor`` (default ``min_lr / lr``) at ``total_steps``."""
        hp = self.hparams
        return optim.lr_factor(step, total_steps, hp.warmup_steps, hp.min_lr / hp.lr if floor is None else floor)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.parameter_groups()
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=self.device.type == "cuda")
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        schedule = optim.warmup_cosine(optimizer, int(total), hp.warmup_steps, self.lr_floors(groups))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        # A resumed run follows this run's max_steps from its first step (optim.reapply_schedules).
        optim.reapply_schedules([config.scheduler for config in self.trainer.lr_scheduler_configs])

    def configure_callbacks(self) -> list[L.Callback]:
        # Supports that move (the parameterization's update_every) need the callback that moves them: added here,
        # so a config sets only the parameterization's options.
        return [AdaptiveSupport()] if has_moving_supports(self.model) else []

    # -- checkpoints -------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dropout_seed"] = self._dropout_seed
        # The measured costs behind path="auto" (DCT layers): a resumed run reuses them, so every layer takes the
        # path it took before the interruption and the run resumes bit for bit.
        checkpoint["dct_calibration"] = dct_cost.calibration_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._dropout_seed = checkpoint.get("dropout_seed", self._dropout_seed)
        dct_cost.load_calibration_state(checkpoint.get("dct_calibration", {}))
        saved = checkpoint.get("hyper_parameters", {}).get("vocab")
        if saved is not None:
            check_vocab(saved, self.hparams.vocab, "the checkpoint", "or start a new run without it")

    # -- sampling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        num_samples: int = 1,
        seed: int | None = None,
    ) -> list[str]:
        """Sample ``num_samples`` continuations of ``prompt`` (which must use the training vocabulary)."""
        ids = self.tokenizer.encode(prompt) if prompt else self.tokenizer.start_ids()
        idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        was_training = self.training
        self.eval()
        try:
            new = [t for t in self.model.generate(idx, max_new_tokens, temperature, top_k, gen)]
        finally:
            self.train(was_training)
        out = torch.cat(new, dim=1) if new else idx[:, :0]
        return [prompt + self.tokenizer.decode(row) for row in out]
