"""Subword tokens from memory-mapped shards: :class:`TokenDataModule`, for corpora of any size.

The corpus is prepared once (:mod:`spectral_lightning.prepare`) into ``train.bin`` / ``val.bin`` token shards and
read through ``np.memmap``: a batch reads only its own windows from disk, so no copy of the corpus is ever made in
memory and any number of loader workers or ranks share the page cache. The batches are those of
:class:`~spectral_lightning.data.CharDataModule`, by the same code: training batch ``g`` on rank ``r`` is
``batch_size`` random windows of ``block_size + 1`` tokens drawn from a generator seeded with ``(seed, r, g)``
(:class:`~spectral_lightning.data.RandomWindowBatches` over the memmap), so a resumed run continues exactly and DDP
ranks draw different windows; validation reads every non-overlapping window of ``val.bin`` once, in order.

**Where preparation runs.** The vocabulary must exist right after ``__init__`` (LightningCLI links
``data.vocab`` into the model before the trainer starts), so the shards are prepared in ``__init__`` when they
are missing, and only there. Under DDP one process per node prepares: the one whose ``LOCAL_RANK`` (else
``RANK``) environment variable is 0 or unset; every other process waits until ``manifest.json`` appears (it is written
last, so its presence means the shards are complete) and then checks the shards against it. With Lightning's
own launcher the other ranks start after rank 0 has built the module, so they find the shards ready; under
``torchrun`` they wait. ``prepare_data`` therefore has nothing left to do.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spectral_lightning.corpus import Manifest, default_out, verify_shards
from spectral_lightning.data import WindowDataModule
from spectral_lightning.errors import ConfigError, DataError
from spectral_lightning.tokenization import BPETokenizer

#: How long a rank other than 0 waits for rank 0 to finish preparing the shards.
PREPARE_WAIT_S = 6 * 3600.0


class TokenArray:
    """A token shard as a read-only sequence of int64 tensors, opened lazily in each process.

    ``len()`` is the number of tokens; indexing with a slice or an index tensor reads just those tokens from the
    memmap. The memmap itself is not pickled (a DataLoader worker reopens the file), so workers started with
    ``spawn`` do not receive a copy of the shard either.
    """

    def __init__(self, path: str | Path, dtype: str, tokens: int) -> None:
        self.path, self.dtype, self.tokens = Path(path), np.dtype(dtype), tokens
        self._data: np.memmap | None = None

    @property
    def data(self) -> np.memmap:
        if self._data is None:
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.tokens,))
        return self._data

    def __len__(self) -> int:
        return self.tokens

    def __getitem__(self, key: slice | Tensor) -> Tensor:
        index = key.numpy() if isinstance(key, Tensor) else key
        return torch.from_numpy(self.data[index].astype(np.int64))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}


def _this_rank() -> int:
    """The process's rank on its node as a launcher announces it before the trainer exists: ``LOCAL_RANK``, else
    ``RANK``, else 0. One process per node prepares, like Lightning's ``prepare_data_per_node``: right for disks
    local to each node, and harmless on a shared one (concurrent preparations write identical files, each renamed
    into place whole)."""
    for name in ("LOCAL_RANK", "RANK"):
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


class TokenDataModule(WindowDataModule):
    """Subword language modelling data: a corpus prepared into token shards, read as random windows.

    Args:
        path: the corpus: a UTF-8 text file, a folder (recursively ``*.txt``, ``*.md``, ``*.jsonl`` with a
            ``text`` field per line) or a glob. Documents (files, jsonl lines; the paragraphs of a single file)
            are the unit of the validation split.
        out: the shard folder; default ``data/<name of path>``. Prepared on first use; reused while its manifest
            matches the sources and options (else a one-line error says what differs).
        tokenizer: ``bpe`` (train a byte-level BPE of ``vocab_size`` tokens on the training documents) or the
            path of an existing ``tokenizer.json`` with an ``<|endoftext|>`` token.
        vocab_size: tokens of the trained BPE (≥ 257: 256 bytes + ``<|endoftext|>``).
        block_size: context length T in tokens (≥ 1).
        batch_size: windows per batch and per device (≥ 1).
        batches_per_epoch: training batches that make one epoch (≥ 1); validation runs after each epoch.
        val_fraction: share of the documents held out for validation, in (0, 1).
        seed: seed of the validation choice, the tokenizer's sample and the training windows (batch g on rank r
            is drawn from (seed, r, g)).
        num_workers: DataLoader worker processes (0 = load in the main process).
    """

    def __init__(
        self,
        path: str,
        out: str | None = None,
        tokenizer: str = "bpe",
        vocab_size: int = 8192,
        block_size: int = 256,
        batch_size: int = 64,
        batches_per_epoch: int = 500,
        val_fraction: float = 0.1,
        seed: int = 1337,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_options()
        # Imported here, not at the top: the package imports this module, and a module-level import would load
        # spectral_lightning.prepare before `python -m spectral_lightning.prepare` runs it (a runpy warning).
        from spectral_lightning.prepare import prepare

        self.out = Path(out) if out is not None else default_out(path)
        try:
            if _this_rank() == 0:
                self.manifest = prepare(path, self.out, tokenizer, vocab_size, val_fraction, seed)
            else:
                self.manifest = self._wait_for_manifest()
                verify_shards(self.out, self.manifest)
        except ConfigError as err:
            raise type(err)(f"data: {err}") from None
        self.tokenizer = BPETokenizer.from_file(self.out / "tokenizer.json")
        splits = self.manifest.splits
        self.train_data = TokenArray(self.out / "train.bin", self.manifest.dtype, splits["train"]["tokens"])
        self.val_data = TokenArray(self.out / "val.bin", self.manifest.dtype, splits["val"]["tokens"])
        self.check_windows(self.out, "tokens", "use a larger corpus, a smaller block_size, or another val_fraction")

    def _wait_for_manifest(self) -> Manifest:
        deadline = time.monotonic() + PREPARE_WAIT_S
        while (manifest := Manifest.read(self.out)) is None:
            if time.monotonic() > deadline:
                raise DataError(f"rank 0 did not finish preparing {self.out} within {PREPARE_WAIT_S:.0f} s")
            time.sleep(1.0)
        return manifest
