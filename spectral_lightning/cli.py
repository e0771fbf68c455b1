"""The LightningCLI behind ``cli.py``: links data to model, picks hardware defaults, and keeps runs safe.

* User errors (options, files, checkpoints, output folders) are one line, ``error: ...``, exit status 2
  (parsing errors too: :mod:`spectral_lightning.parse_errors`),
  raised before anything is written: output folders and ``--ckpt_path`` are checked before the run starts.
* SIGINT (Ctrl-C) or SIGTERM during ``fit`` finishes the current optimizer step, writes ``last.ckpt`` and
  exits with status 130 / 143; a second signal stops at once without saving (:class:`SaveOnInterrupt`).
* ``fit --ckpt_path last`` resumes from the newest ``last.ckpt`` of the experiment (the logger's
  ``save_dir/name/*/checkpoints``) and keeps logging into that run's version folder, with the same step,
  LR schedule, data stream and dropout RNG.
* Checkpoints are written to a temporary file in their folder and renamed into place
  (:class:`AtomicCheckpointIO`), so a crash mid-write never leaves a truncated ``last.ckpt``.
"""

from __future__ import annotations

import glob
import os
import pickle
import signal
import sys
import threading
import warnings
import zipfile
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from spectral_lightning.data import CharDataModule
from spectral_lightning.errors import ConfigError, TrainingInterrupted, exit_on_user_error
from spectral_lightning.files import atomic_write
from spectral_lightning.module import NonFiniteLossError, SpectralLM
from spectral_lightning.parameterizations import find_class
from spectral_lightning.parse_errors import SpectralArgumentParser


def default_precision(accelerator: object = "auto") -> str:
    """The precision of a run that does not set ``trainer.precision``: bf16 autocast when it trains on a GPU that
    supports it (``accelerator`` ``auto`` with such a GPU present, or ``gpu``/``cuda``), full float32 elsewhere
    (CPU, older GPUs, other accelerators)."""
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    on_gpu = name in ("auto", "gpu", "cuda", "cudaaccelerator")
    if on_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes each local checkpoint to a temporary file in the destination folder,
    fsyncs it and renames it into place, so the path holds either the old or the new checkpoint, never a
    partial one. (Lightning's own writer stages the file in the system temp folder and moves it, which is a
    plain copy when that folder is on another filesystem.) Remote paths (``s3://``, ...) use Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))
        return None


class SaveOnInterrupt(Callback):
    """Turns SIGINT (Ctrl-C) and SIGTERM during training into a checkpoint at a step boundary, then a stop.

    The first signal is only recorded. At the end of the current training step (after the optimizer and LR
    scheduler have stepped: the state an uninterrupted run has at that step) ``last.ckpt`` is written into the
    checkpoint folder and :class:`~spectral_lightning.errors.TrainingInterrupted` is raised, so
    ``fit --ckpt_path last`` continues exactly. A second signal stops at once without saving. Under DDP the
    ranks agree on the stop at the same step. ``cli.py`` adds this callback to every ``fit``.
    """

    SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        print(
            f"\nreceived {signal.Signals(signum).name}: saving a checkpoint after the current step "
            "(send it again to stop at once without saving)",
            file=sys.stderr,
            flush=True,
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self.received if self.received is not None else signal.SIGTERM
        path = None
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and ckpt.dirpath is not None:
            path = os.path.join(ckpt.dirpath, f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}")
            trainer.save_checkpoint(path, weights_only=False)
        self._restore()
        raise TrainingInterrupted(signum, trainer.global_step, path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Open a ``--ckpt_path`` the way LightningCLI does (weights-only, tensors memory-mapped rather than read)
    and raise :class:`ConfigError` if it is missing, damaged or not a Lightning checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"--ckpt_path {path} does not exist (or is not a file); expected a checkpoint written by fit, e.g. "
            "runs/<name>/version_0/checkpoints/last.ckpt, or 'last' for the newest one"
        )
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no central directory
        raise ConfigError(f"--ckpt_path {path} is not a complete checkpoint archive; {_CORRUPT_HINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"--ckpt_path {path} holds objects that safe (weights-only) loading refuses ({_first_line(err)}); "
            "use a checkpoint written by this project's fit"
        ) from None
    except Exception as err:  # noqa: BLE001 (torch raises RuntimeError, EOFError, ... for damaged files)
        raise ConfigError(f"--ckpt_path {path} cannot be read: {_first_line(err)}; {_CORRUPT_HINT}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"--ckpt_path {path} is not a Lightning checkpoint (it has no state_dict); {_CORRUPT_HINT}")
    return ckpt


def check_checkpoint(path: str | Path, model: SpectralLM) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a readable checkpoint whose vocabulary and tensors fit
    ``model`` (checked before the run writes anything)."""
    ckpt = read_checkpoint(path)
    saved_vocab = (ckpt.get("hyper_parameters") or {}).get("vocab")
    vocab = model.hparams.get("vocab")
    if saved_vocab is not None and vocab is not None and saved_vocab != vocab:
        raise ConfigError(
            f"--ckpt_path {path} was trained on a vocabulary of {len(saved_vocab)} characters ({saved_vocab!r}), "
            f"but this run's data has {len(vocab)} ({vocab!r}); use the text it was trained on (--data.path), "
            "or start a new run without --ckpt_path"
        )
    saved, expected = ckpt["state_dict"], model.state_dict()
    problems = [f"{k} is missing" for k in expected if k not in saved]
    problems += [f"{k} is not in this model" for k in saved if k not in expected]
    problems += [
        f"{k} has shape {tuple(saved[k].shape)}, this model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(
            f"--ckpt_path {path} does not fit this model: {'; '.join(problems[:3])}{more}; use the model options "
            "of the run that wrote it (its hparams.yaml / config.yaml)"
        )


_CORRUPT_HINT = "the file is truncated, corrupt or not a checkpoint: use another one (e.g. an earlier .ckpt)"


def _special_ckpt_path(ckpt_path: str) -> bool:
    """Values of ``--ckpt_path`` that Lightning resolves itself (or that are remote)."""
    text = str(ckpt_path)
    return text in ("last", "best", "hpc") or text.startswith("registry") or "://" in text


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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


def _is_progress_bar(callback: Any) -> bool:
    """Whether a callback entry of a parsed config (``class_path`` namespace or instance) is a progress bar."""
    if isinstance(callback, Callback):
        return isinstance(callback, ProgressBar)
    class_path = getattr(callback, "class_path", None)
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    try:
        cls = find_class(class_path)  # a dotted path: imports its module
    except (ImportError, AttributeError):
        return False  # not importable: left for instantiation to report
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


class SpectralCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (LightningArgumentParser)
        # The vocabulary exists right after the DataModule's __init__; it travels into the model's hparams.
        parser.link_arguments("data.vocab", "model.vocab", apply_on="instantiate")
        parser.link_arguments("data.block_size", "model.block_size")

    def before_instantiate_classes(self) -> None:
        # trainer.precision left unset (null) follows the accelerator the run uses: a CPU run on a GPU machine
        # stays in float32. Resolved here, so the config.yaml saved with the run names the precision it used.
        trainer = self.config.get(str(self.subcommand), self.config).get("trainer")
        if trainer is not None and trainer.get("precision") is None:
            trainer["precision"] = default_precision(trainer.get("accelerator", "auto"))
        # The configs list RichProgressBar among their callbacks; `--trainer.enable_progress_bar false` (e.g. for
        # a run logged to a file) means "no bar", not Lightning's error about the conflict, so drop it here.
        if trainer is not None and trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            trainer["callbacks"] = [cb for cb in trainer["callbacks"] if not _is_progress_bar(cb)]

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # SpectralArgumentParser reports a bad option in one line naming where it was given: it needs the args.
        given = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:]
        for p in [parser, *getattr(parser._subcommands_action, "_name_parser_map", {}).values()]:
            p.cli_args = given
        super().parse_arguments(parser, args)
        # LightningCLI reads an explicit --ckpt_path right after parsing (to take the model's options from it):
        # check first that it exists and is readable, so a damaged file is one sentence, not a traceback.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None and not _special_ckpt_path(ckpt_path):
            read_checkpoint(ckpt_path)

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
        plugins = (self._get(self.config_init, "trainer", default={}) or {}).get("plugins")
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
        check_checkpoint(ckpt_path, self.model)

    def _continue_in_run_folder(self, ckpt_path: str) -> None:
        """Log a run resumed with ``last`` into the version folder it continues (one TensorBoard run, and
        ModelCheckpoint restores its best-k state), unless the logger's version was set explicitly."""
        trainer = self.trainer
        ckpt = trainer.checkpoint_callback
        if ckpt is None or ckpt.dirpath is not None or not trainer.loggers:
            return
        logger, folder = trainer.loggers[0], Path(ckpt_path).parent  # <save_dir>/<name>/<version>/checkpoints
        # TensorBoardLogger and CSVLogger keep an unset version as `_version = None` until first used.
        if getattr(logger, "_version", "pinned") is None and folder.name == "checkpoints":
            logger._version = folder.parent.name
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
    try:
        with exit_on_user_error(NonFiniteLossError, MisconfigurationException):
            return SpectralCLI(
                SpectralLM,
                CharDataModule,
                args=args,
                run=run,
                save_config_kwargs={"overwrite": True},
                parser_class=SpectralArgumentParser,
            )
    except TrainingInterrupted as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(err.exit_code) from None
