"""The LightningCLI behind ``cli.py``: links data to model, picks hardware defaults, and checks before it writes.

* User errors (options, files, checkpoints, output folders) are one line, ``error: ...``, exit status 2
  (parsing errors too: :mod:`spectral_lightning.parse_errors`),
  raised before anything is written: output folders and ``--ckpt_path`` are checked before the run starts
  (checkpoints through :mod:`spectral_lightning.checkpoints`, the reader every entry point shares).
* SIGINT (Ctrl-C) or SIGTERM during ``fit`` finishes the current optimizer step, writes ``last.ckpt`` and
  exits with status 130 / 143; checkpoints are written atomically (:mod:`spectral_lightning.safety`).
* ``fit --ckpt_path last`` resumes from the newest ``last.ckpt`` of the experiment (the logger's
  ``save_dir/name/*/checkpoints``) and keeps logging into that run's version folder, with the same step,
  LR schedule, data stream and dropout RNG.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from spectral_lightning.checkpoints import read_checkpoint
from spectral_lightning.data import WindowDataModule
from spectral_lightning.errors import ConfigError, TrainingInterrupted, exit_on_user_error
from spectral_lightning.module import NonFiniteLossError, SpectralLM
from spectral_lightning.parameterizations import find_class
from spectral_lightning.parse_errors import SpectralArgumentParser, command_line
from spectral_lightning.progress import drop_tips
from spectral_lightning.safety import AtomicCheckpointIO, SaveOnInterrupt


def default_precision(accelerator: object = "auto") -> str:
    """The precision of a run that does not set ``trainer.precision``: bf16 autocast when it trains on a GPU that
    supports it (``accelerator`` ``auto`` with such a GPU present, or ``gpu``/``cuda``), full float32 elsewhere
    (CPU, older GPUs, other accelerators)."""
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    on_gpu = name in ("auto", "gpu", "cuda", "cudaaccelerator")
    if on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def find_last_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest ``last*.ckpt`` this trainer's run would resume from: in the ModelCheckpoint's ``dirpath``
    when one is set, else in any version of the logger's ``save_dir/name`` (a new run gets a new version
    folder, so Lightning alone would look only in the new, empty one)."""
    ckpt = trainer.checkpoint_callback
    if ckpt is None:
        return None
    if ckpt.dirpath is not None:
        folders = glob.escape(str(ckpt.dirpath))
    elif trainer.loggers:
        logger = trainer.loggers[0]
        root = os.path.join(str(logger.save_dir or trainer.default_root_dir), str(logger.name or ""))
        folders = os.path.join(glob.escape(root), "*", "checkpoints")
    else:
        folders = os.path.join(glob.escape(str(trainer.default_root_dir)), "checkpoints")
    found = [p for p in glob.glob(os.path.join(folders, "last*.ckpt")) if os.path.isfile(p)]
    return max(found, key=os.path.getmtime) if found else None


def _special_ckpt_path(ckpt_path: str) -> bool:
    """Values of ``--ckpt_path`` that Lightning resolves itself (or that are remote)."""
    text = str(ckpt_path)
    return text in ("last", "best", "hpc") or text.startswith("registry") or "://" in text


def check_writable(option: str, path: str | Path) -> None:
    """Raise :class:`ConfigError` unless the folder ``path`` exists and is writable or can be created.
    Nothing is created: the nearest existing ancestor must be a writable folder."""
    target = Path(path).absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"cannot write to {option}={path}: {probe} is a file, not a folder; choose a writable folder "
            f"with --{option}"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write to {option}={path}: the folder {probe} is not writable; choose a writable folder "
            f"with --{option}"
        )


def check_fsdp(strategy: Any, accelerator: Any) -> None:
    """Stop at start-up, in one line, when the FSDP strategy is asked for where it cannot run: Lightning's
    ``FSDPStrategy`` needs CUDA GPUs (it refuses ``accelerator='cpu'``; enabling it on CPU is an open request
    upstream, Lightning-AI/pytorch-lightning#21812)."""
    name = strategy if isinstance(strategy, str) else getattr(strategy, "class_path", type(strategy).__name__)
    if "fsdp" not in str(name).lower():
        return
    on_cpu = str(accelerator).lower() == "cpu" or not torch.cuda.is_available()
    if on_cpu:
        raise ConfigError(
            f"trainer.strategy={str(name).rpartition('.')[2]} (configs/fsdp.yaml) needs CUDA GPUs: Lightning's FSDP "
            "does not run on the CPU; drop --config configs/fsdp.yaml (or the strategy) to train here"
        )


def _is_progress_bar(callback: Any) -> bool:
    """Whether a callback entry of a parsed config (``class_path`` namespace or instance) is a progress bar."""
    if isinstance(callback, Callback):
        return isinstance(callback, ProgressBar)
    class_path = getattr(callback, "class_path", None)
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    try:
        cls = find_class(class_path)  # a dotted path: imports its module
    except ConfigError:
        return False  # not importable: left for instantiation to report
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def logger_save_dir(default_root_dir: str | None, logger: Any) -> str | None:
    """The ``save_dir`` of the configured logger: the one it was given, else ``trainer.default_root_dir``, so that
    ``--trainer.default_root_dir X`` moves the whole run (events, checkpoints, config.yaml) as in plain Lightning.
    Several loggers (a list) all write under ``trainer.default_root_dir``."""
    init_args = getattr(logger, "init_args", None)
    given = getattr(init_args, "save_dir", None)
    return default_root_dir if given is None else given


class SpectralCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (LightningArgumentParser)
        # The vocabulary exists right after the DataModule's __init__; it travels into the model's hparams.
        # data: any WindowDataModule; plain keys without a class_path (every config written before there was a
        # choice) are CharDataModule's.
        parser.set_defaults({"data": {"class_path": "spectral_lightning.CharDataModule"}})
        parser.link_arguments("data.vocab", "model.vocab", apply_on="instantiate")
        parser.link_arguments("data.block_size", "model.block_size", apply_on="instantiate")
        parser.link_arguments(
            ("trainer.default_root_dir", "trainer.logger"), "trainer.logger.init_args.save_dir", logger_save_dir
        )

    def before_instantiate_classes(self) -> None:
        # trainer.precision left unset (null) follows the accelerator the run uses: a CPU run on a GPU machine
        # stays in float32. Resolved here, so the config.yaml saved with the run names the precision it used.
        trainer = self.config.get(str(self.subcommand), self.config).get("trainer")
        if trainer is not None and trainer.get("precision") is None:
            trainer["precision"] = default_precision(trainer.get("accelerator", "auto"))
        # The configs list a progress bar among their callbacks; `--trainer.enable_progress_bar false` (e.g. for
        # a run logged to a file) means "no bar", not Lightning's error about the conflict, so drop it here.
        if trainer is not None and trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            trainer["callbacks"] = [cb for cb in trainer["callbacks"] if not _is_progress_bar(cb)]
        if trainer is not None:
            check_fsdp(trainer.get("strategy"), trainer.get("accelerator", "auto"))

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # SpectralArgumentParser reports a bad option in one line naming where it was given: it needs the args.
        with command_line(args if isinstance(args, (list, tuple)) else sys.argv[1:]):
            super().parse_arguments(parser, args)
        # LightningCLI reads an explicit --ckpt_path right after parsing (to take the model's options from it):
        # check first that it exists and is readable, so a damaged file is one sentence, not a traceback.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None and not _special_ckpt_path(ckpt_path):
            read_checkpoint(ckpt_path).require_lightning()

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # jsonargparse wraps a strategy's ConfigError (e.g. compression=0.5) in a long ValueError that
            # lists every Union member; the user needs only the original sentence.
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, ConfigError):
                cause = cause.__cause__ or cause.__context__
            if cause is None or cause is err:
                raise
            raise cause from None

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = (config.get("trainer") or {}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if "plugins" not in kwargs and not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)

    # -- checks before a subcommand writes anything -----------------------------------------------------
    def _check_outputs(self) -> None:
        trainer = self.trainer
        targets: list[tuple[str, str]] = []
        if not trainer.loggers or any(getattr(lg, "save_dir", None) is None for lg in trainer.loggers):
            targets.append(("trainer.default_root_dir", str(trainer.default_root_dir)))
        for logger in trainer.loggers:
            save_dir = getattr(logger, "save_dir", None)
            if save_dir is not None:
                same = os.path.abspath(save_dir) == os.path.abspath(trainer.default_root_dir)
                targets.append(("trainer.default_root_dir" if same else "trainer.logger.init_args.save_dir", save_dir))
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "dirpath", None) is not None:
                targets.append(("trainer.callbacks ModelCheckpoint.dirpath", str(cb.dirpath)))
        for option, path in targets:
            if "://" not in str(path):
                check_writable(option, path)

    def _check_ckpt_path(self, subcommand: str) -> None:
        init_from = self.model.hparams.get("init_from")
        if init_from:  # read and checked now, applied when the trainer configures the model
            self.model.check_source(init_from)
        config = self.config_init[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None or (ckpt_path != "last" and _special_ckpt_path(ckpt_path)):
            return
        if ckpt_path == "last":
            ckpt_path = find_last_checkpoint(self.trainer)
            config.ckpt_path = ckpt_path
            if ckpt_path is None:
                print("--ckpt_path last: no last.ckpt found for this run; starting from scratch", file=sys.stderr)
                return
            print(f"--ckpt_path last: resuming from {ckpt_path}", file=sys.stderr)
            self._continue_in_run_folder(ckpt_path)
        ckpt = read_checkpoint(ckpt_path)
        ckpt.check_vocab(self.model.hparams.vocab)
        ckpt.check_state_dict(self.model.state_dict())

    def _continue_in_run_folder(self, ckpt_path: str) -> None:
        """Log a run resumed with ``last`` into the version folder it continues (one TensorBoard run, and
        ModelCheckpoint restores its best-k state), unless the logger's version was set explicitly: the logger of
        the config is built again with that version. (Several loggers, or none from the config: a new version.)"""
        trainer, folder = self.trainer, Path(ckpt_path).parent  # <save_dir>/<name>/<version>/checkpoints
        ckpt = trainer.checkpoint_callback
        spec = self.config[self.subcommand].get("trainer", {}).get("logger")
        if ckpt is None or ckpt.dirpath is not None or folder.name != "checkpoints" or not trainer.loggers:
            return
        if not isinstance(getattr(spec, "class_path", None), str):
            return
        init_args = spec.init_args.as_dict() if spec.get("init_args") is not None else {}
        if init_args.get("version") is not None:
            return
        trainer.loggers = [type(trainer.loggers[0])(**{**init_args, "version": folder.parent.name})]
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

    def before_fit(self) -> None:
        self._check_outputs()
        self._check_ckpt_path("fit")
        if not any(isinstance(cb, SaveOnInterrupt) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(SaveOnInterrupt())

    def before_validate(self) -> None:
        self._check_outputs()
        self._check_ckpt_path("validate")

    def before_test(self) -> None:
        self._check_outputs()
        self._check_ckpt_path("test")

    def before_predict(self) -> None:
        self._check_outputs()
        self._check_ckpt_path("predict")


def cli_main(args: list[str] | None = None, run: bool = True) -> SpectralCLI:
    """Entry point; ``args`` lets tests drive it (``cli_main(["fit", "--config", ...])``).

    Errors in the user's options, files, checkpoints or output folders (:class:`ConfigError`), a non-finite
    loss and Lightning's configuration errors are printed as one line and exit with status 2, like argument
    errors. A run stopped by SIGINT/SIGTERM prints where it saved and exits with 128 + the signal number.
    """
    torch.set_float32_matmul_precision("high")
    # The training stream is a function of (seed, rank, step) and resumes mid-epoch exactly (data.py); Lightning
    # cannot see that and warns on every mid-epoch resume.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    # A normal run's console shows the run, not notices about its dependencies:
    # - torch's deprecation of the pytree API that Lightning itself calls (nothing a user of this project can
    #   change; it goes when Lightning updates).
    leaf_spec = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
    warnings.filterwarnings("ignore", message=leaf_spec, category=FutureWarning)
    # - ModelCheckpoint's note that val/loss is missing when a run ends before its first validation: last.ckpt is
    #   written anyway, and once a validation has run a missing key is an error, not this warning.
    warnings.filterwarnings("ignore", message=r"`ModelCheckpoint\(monitor=.*\)` could not find the monitored key")
    # - Lightning's product tips, logged on every run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(drop_tips)
    try:
        with exit_on_user_error(NonFiniteLossError, MisconfigurationException):
            return SpectralCLI(
                SpectralLM,
                WindowDataModule,
                subclass_mode_data=True,  # data: CharDataModule by default, or class_path: ...TokenDataModule
                args=args,
                run=run,
                save_config_kwargs={"overwrite": True},
                parser_class=SpectralArgumentParser,
            )
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(err.exit_code) from None
