"""Characters in, windows out: the tokenizer, the tiny Shakespeare download, and the DataModule.

Training batches are a pure function of (seed, rank, batch index): batch g draws ``batch_size`` random
windows of ``block_size + 1`` characters from a generator seeded with those three numbers. A run that is
stopped and resumed therefore sees exactly the batches an uninterrupted run sees, every DDP rank draws
different windows, and any number of loader workers gives the same stream. Validation reads every
non-overlapping window of the held-out tail once, in order.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from spectral_lightning.errors import ConfigError, DataError, check_positive_int
from spectral_lightning.files import atomic_write_bytes
from spectral_lightning.seeds import derive_seed
from spectral_lightning.tokenization import CharTokenizer, Tokenizer

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DATASETS = {"tinyshakespeare": (TINY_SHAKESPEARE_URL, TINY_SHAKESPEARE_SHA256)}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``dest`` unless a copy with the right checksum is already there.

    The file is verified before it is renamed into place, so ``dest`` either holds the verified file or
    does not exist; no partial or corrupt file is ever left behind.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256_of(dest) == sha256:
            return dest
        raise DataError(f"cached file {dest} does not match the expected SHA-256 {sha256}; delete it to download again")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as err:
        raise DataError(
            f"could not download {url} ({getattr(err, 'reason', err)}) and no cached copy exists at {dest}; "
            f"put the file there, or pass a local text file with --data.path"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataError(f"download of {url} has SHA-256 {digest}, expected {sha256}; nothing was saved")
    try:
        atomic_write_bytes(dest, data)
    except OSError as err:
        raise DataError(f"cannot write the data cache {dest}: {err.strerror}; choose another --data.data_dir") from None
    return dest


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file, with one clear error for a missing, empty or non-UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist (or is not a file); --data.path expects a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data file {path} is not UTF-8 text (byte {err.start} cannot be decoded)") from None
    if not text:
        raise DataError(f"data file {path} is empty; --data.path expects a non-empty UTF-8 text file")
    return text


def _stream_seed(seed: int, rank: int, index: int) -> int:
    return derive_seed(seed, rank, index)


class RandomWindowBatches(Dataset):
    """Item ``g`` is training batch number ``g``: (batch_size, block_size + 1) random windows, seeded by
    (seed, rank, g). Indexing by batch number makes the stream independent of workers and resumable."""

    def __init__(self, data: Tensor, block_size: int, batch_size: int, seed: int, rank: int = 0) -> None:
        self.data, self.block_size, self.batch_size, self.seed, self.rank = data, block_size, batch_size, seed, rank

    def __len__(self) -> int:  # nominal; the sampler decides which batch numbers are read
        return 1 << 62

    def __getitem__(self, index: int) -> Tensor:
        gen = torch.Generator().manual_seed(_stream_seed(self.seed, self.rank, index))
        starts = torch.randint(len(self.data) - self.block_size, (self.batch_size,), generator=gen)
        offsets = torch.arange(self.block_size + 1)
        return self.data[starts.unsqueeze(1) + offsets]  # (B, T + 1)


class BatchStreamSampler(DistributedSampler):
    """Yields training batch numbers, one epoch (``batches_per_epoch`` numbers) per ``iter()``.

    Each ``iter()`` continues the stream from where the last one ended, up to the end of the current epoch:
    a run resumed from batch ``start`` finishes that epoch, then carries on with whole epochs. It is a
    ``DistributedSampler`` only so that Lightning does not replace it under DDP; ranks are told apart by the
    dataset's seed instead of by splitting indices.
    """

    def __init__(self, batches_per_epoch: int, start: int = 0) -> None:
        # num_replicas/rank are unused: every rank reads the same batch numbers from its own stream.
        super().__init__(dataset=[], num_replicas=1, rank=0, shuffle=False)
        self.batches_per_epoch, self.position = batches_per_epoch, start

    def __iter__(self):
        # The position advances as numbers are drawn, not when iter() is called: a multi-worker DataLoader
        # calls iter() twice when it starts and discards the first iterator, which must not skip an epoch.
        begin = self.position
        end = (begin // self.batches_per_epoch + 1) * self.batches_per_epoch
        for index in range(begin, end):
            self.position = index + 1
            yield index

    def __len__(self) -> int:
        return self.batches_per_epoch


class ValWindows(Dataset):
    """Every non-overlapping window of the validation text: item i is chars [iT, iT + T + 1)."""

    def __init__(self, data: Tensor, block_size: int) -> None:
        self.data, self.block_size = data, block_size

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.block_size

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < len(self):  # also ends iteration (list(windows)): slices past the end would be empty
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        return self.data[i * self.block_size : (i + 1) * self.block_size + 1]  # (T + 1,)


class WindowDataModule(L.LightningDataModule):
    """What every data module of the project shares: token ids in ``train_data`` / ``val_data`` (anything
    indexable by a LongTensor of positions, with a length: a tensor, or a memmap of token shards), a
    ``tokenizer`` whose ``spec`` is the ``vocab`` linked into the model, training batches that are a pure
    function of (seed, rank, batch index) and every non-overlapping validation window in order.

    Subclasses call :meth:`check_options` first in ``__init__`` and :meth:`check_windows` once the data is there.
    """

    tokenizer: Tokenizer

    def check_options(self) -> None:
        """One-line errors for the batch options every data module has."""
        for name in ("block_size", "batch_size", "batches_per_epoch"):
            check_positive_int(f"data.{name}", getattr(self.hparams, name))
        workers = self.hparams.num_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"data.num_workers={workers!r} is not valid: expected an integer >= 0")

    def check_windows(self, source: object, unit: str, hint: str) -> None:
        """Raise unless each split holds at least one window of ``block_size + 1`` tokens."""
        block_size = self.hparams.block_size
        for split, part in (("training", self.train_data), ("validation", self.val_data)):
            if len(part) < block_size + 1:
                raise DataError(
                    f"the {split} split of {source} has {len(part):,} {unit}, fewer than one window of "
                    f"data.block_size + 1 = {block_size + 1}; {hint}"
                )

    @property
    def vocab(self) -> str:
        """The tokenizer's spec (the sorted characters, or a BPE's tokenizer.json); linked into the model so
        checkpoints carry it."""
        return self.tokenizer.spec

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def block_size(self) -> int:
        """Context length in tokens; linked into the model."""
        return self.hparams.block_size

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0, **kwargs)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        # Resume: continue the stream at the first batch not yet trained on.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer is not None else 0
        hp = self.hparams
        dataset = RandomWindowBatches(self.train_data, hp.block_size, hp.batch_size, hp.seed, rank)
        return self._loader(dataset, batch_size=None, sampler=BatchStreamSampler(hp.batches_per_epoch, start))

    def val_dataloader(self) -> DataLoader:
        return self._loader(ValWindows(self.val_data, self.hparams.block_size), batch_size=self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class CharDataModule(WindowDataModule):
    """Character-level language modelling data.

    Args:
        dataset: a named corpus that is downloaded, checksummed and cached: ``tinyshakespeare``. Ignored when
            ``path`` is given.
        path: a local UTF-8 text file to train on instead.
        data_dir: cache folder for downloads (the file lands in ``<data_dir>/<dataset>/input.txt``).
        block_size: context length T in characters (≥ 1).
        batch_size: windows per batch and per device (≥ 1).
        batches_per_epoch: training batches that make one epoch (≥ 1); validation runs after each epoch.
        val_fraction: share of the text, taken from its end, held out for validation/test, in (0, 1).
        seed: seed of the training windows (batch g on rank r is drawn from (seed, r, g)).
        num_workers: DataLoader worker processes (0 = load in the main process; batches are cheap).
    """

    def __init__(
        self,
        dataset: str = "tinyshakespeare",
        path: str | None = None,
        data_dir: str = "data",
        block_size: int = 128,
        batch_size: int = 64,
        batches_per_epoch: int = 500,
        val_fraction: float = 0.1,
        seed: int = 1337,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_options()
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction!r} is not valid: expected a value in (0, 1)")

        if path is not None:
            self.source = Path(path)
        elif dataset in DATASETS:
            url, sha = DATASETS[dataset]
            self.source = download(url, Path(data_dir) / dataset / "input.txt", sha)
        else:
            raise ConfigError(
                f"data.dataset={dataset!r} is not a known dataset: expected one of {', '.join(DATASETS)}, "
                "or give --data.path to a local text file"
            )
        text = read_text(self.source)
        self.tokenizer = CharTokenizer.from_text(text)
        data = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        n_train = int(len(data) * (1.0 - val_fraction))
        self.train_data, self.val_data = data[:n_train], data[n_train:]
        self.check_windows(
            self.source, "characters", "use a longer text, a smaller block_size, or another val_fraction"
        )
