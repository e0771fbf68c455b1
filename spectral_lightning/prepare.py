"""Turn a text corpus of any size into token shards: ``train.bin``, ``val.bin``, ``tokenizer.json`` and a manifest.

Command line (the same as :func:`prepare`; ``--help`` lists the options)::

    python -m spectral_lightning.prepare --path corpus/ --out data/corpus --vocab_size 8192

**Sources.** ``path`` is a text file, a folder (searched recursively for ``*.txt``, ``*.md`` and ``*.jsonl``) or a
glob (``corpus/**/*.jsonl``). Sources are read in sorted order, so the shards are a pure function of the sources
and the options. **Documents** are the unit of the validation split and are separated in the token stream by one
``<|endoftext|>``: every ``.txt``/``.md`` file is a document and every non-blank line of a ``.jsonl`` file (an object
with a ``text`` string) is one; a corpus of a single text file, which has no other boundaries, is cut into
paragraphs at blank lines instead (each paragraph keeps its blank lines, so no text is lost). Empty documents are
skipped.

**Validation split.** Document ``d`` goes to ``val.bin`` when ``derive_seed(seed, "val", d) / 2**63 <
val_fraction``: a seeded choice of whole documents, about ``val_fraction`` of them, never a cut inside one. When
that leaves a split empty, the one document closest to the threshold changes sides, so each split has at least one
document (the corpus needs two).

**Tokenizer.** ``tokenizer: bpe`` trains a byte-level BPE of ``vocab_size`` tokens on a seeded sample of the
training documents of at most :data:`TOKENIZER_SAMPLE_BYTES` (so memory stays bounded for any corpus); or
``tokenizer`` is the path of an existing ``tokenizer.json`` that has an ``<|endoftext|>`` token.

**Constant memory, all cores.** Files are read in 1 MB blocks and cut into pieces of at most
:data:`PIECE_CHARS` characters (at line ends where possible); pieces are tokenized in batches with
``tokenizers``' ``encode_batch``, which runs on all cores (``workers`` limits it), and appended to the shards.
The corpus is read three times: a check (UTF-8, JSON, document count, SHA-256), the tokenizer's sample, and the
tokenization.

**Files.** Shards hold token ids as ``uint16`` when the vocabulary fits (≤ 65,536 tokens), else ``uint32``.
Every file is written under a temporary name and renamed when complete, ``manifest.json`` last: a folder with a
manifest is a finished preparation, and a failed one leaves none of its files behind. The manifest records the
format version, every source's path (relative to the corpus root), size and SHA-256, the options, the tokenizer's
SHA-256, the dtype and the token, byte and document counts of each split.

**Reuse.** When ``out/manifest.json`` exists, preparing again hashes the sources: if they and the options match
the manifest, nothing is redone. If not, nothing is overwritten either (a preparation may have taken hours): the
error names what differs (which file changed, appeared or disappeared, which option), and the user deletes the
folder or picks another ``--out``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spectral_lightning.corpus import (
    SPLITS,
    Manifest,
    Piece,
    Source,
    default_out,
    differences,
    find_sources,
    fingerprint,
    read_pieces,
    scan_corpus,
    shard_dtype,
    val_rule,
    val_score,
    verify_shards,
)
from spectral_lightning.errors import ConfigError, DataError, exit_on_user_error
from spectral_lightning.files import PendingFile, atomic_write_bytes
from spectral_lightning.tokenization import END_OF_TEXT, BPETokenizer, check_bpe_vocab_size

#: Characters tokenized per ``encode_batch`` call: bounds the memory of the token lists in flight.
BATCH_CHARS = 1 << 21
#: Most UTF-8 bytes of training text the BPE is trained on.
TOKENIZER_SAMPLE_BYTES = 50 * 1024 * 1024


# -- preparation -------------------------------------------------------------------------------------------
def _check_options(tokenizer: str, vocab_size: int, val_fraction: float, seed: int, workers: int | None) -> None:
    if tokenizer != "bpe" and not Path(tokenizer).is_file():
        raise DataError(f"tokenizer={tokenizer!r} is neither 'bpe' nor an existing tokenizer.json file")
    check_bpe_vocab_size(vocab_size)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction!r} is not valid: expected a value in (0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} is not valid: expected an integer")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers={workers!r} is not valid: expected a positive integer, or none for all cores")


def _options(tokenizer: str, vocab_size: int, val_fraction: float, seed: int) -> dict[str, Any]:
    """The options the shards depend on (a given tokenizer.json is recorded by hash, so it may move)."""
    if tokenizer == "bpe":
        return {"tokenizer": "bpe", "vocab_size": vocab_size, "val_fraction": val_fraction, "seed": seed}
    digest = hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest()
    return {"tokenizer": f"file sha256:{digest}", "val_fraction": val_fraction, "seed": seed}


def prepare(
    path: str | Path,
    out: str | Path | None = None,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    val_fraction: float = 0.1,
    seed: int = 1337,
    workers: int | None = None,
    progress: bool = True,
) -> Manifest:
    """Prepare (or reuse) the token shards of the corpus ``path`` in ``out``; see the module docstring.

    Args:
        path: a UTF-8 text file, a folder (recursively: ``*.txt``, ``*.md``, ``*.jsonl`` with a ``text`` field
            per line) or a glob.
        out: the shard folder (created); default ``data/<name of path>``.
        tokenizer: ``bpe`` (train a byte-level BPE on a sample of the training documents) or the path of an
            existing ``tokenizer.json`` with an ``<|endoftext|>`` token.
        vocab_size: tokens of the trained BPE, at least 257 (256 bytes + ``<|endoftext|>``); ignored with a file.
        val_fraction: share of the documents held out for validation, in (0, 1).
        seed: seed of the validation choice and of the tokenizer's training sample.
        workers: threads that tokenize (default: all cores). It takes effect only before the process first
            tokenizes in parallel (``tokenizers`` sizes its thread pool once).
        progress: show a progress bar (on stderr).

    Returns:
        The manifest of the shards, new or reused.
    """
    _check_options(tokenizer, vocab_size, val_fraction, seed, workers)
    if workers is not None:
        os.environ["RAYON_NUM_THREADS"] = str(workers)  # the size of tokenizers' thread pool
    out = Path(out) if out is not None else default_out(path)
    sources = find_sources(path)
    options = _options(tokenizer, vocab_size, val_fraction, seed)

    existing = Manifest.read(out)
    if existing is not None:
        found = differences(existing, fingerprint(sources), options)
        if found:
            raise DataError(
                f"the shards in {out} were prepared from other sources or options: {'; '.join(found)}; delete {out} "
                "or choose another --out"
            )
        verify_shards(out, existing)
        return existing

    scan = scan_corpus(sources, val_fraction, seed)
    if scan.documents < 2:
        raise DataError(
            f"{path} has {scan.documents} non-empty document(s); the split into training and validation documents "
            "needs at least 2 (a single text file is cut at blank lines)"
        )
    is_val = val_rule(scan, val_fraction, seed)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the shard folder {out}: {err.strerror}; choose another --out") from None

    with _Progress(progress, scan.text_bytes) as bar:
        if tokenizer == "bpe":
            fraction = min(1.0, TOKENIZER_SAMPLE_BYTES / max(1, scan.text_bytes * (1 - val_fraction)))
            bar.phase(f"training a {vocab_size:,}-token BPE")
            bpe = BPETokenizer.train(_sample(sources, is_val, fraction, seed, bar), vocab_size)
        else:
            bpe = BPETokenizer.from_file(tokenizer)
        separator = bpe.tokenizer.token_to_id(END_OF_TEXT)
        if separator is None:
            raise DataError(f"tokenizer {tokenizer} has no {END_OF_TEXT} token, which separates the documents")
        dtype = shard_dtype(len(bpe))
        bar.phase("tokenizing")
        splits, hashes = _write_shards(out, sources, bpe, separator, dtype, is_val, bar)

    sources_now = [{**record, "sha256": hashes[record["path"]]} for record in scan.sources]
    if sources_now != scan.sources:
        changed = [a["path"] for a, b in zip(scan.sources, sources_now, strict=True) if a != b]
        _remove(out)
        raise DataError(f"source {', '.join(changed)} changed while it was being prepared; prepare again")
    manifest = Manifest(
        path=str(path),
        sources=scan.sources,
        options=options,
        tokenizer_sha256=bpe.hash,
        vocab_size=len(bpe),
        separator=separator,
        dtype=dtype.name,
        splits=splits,
        documents="paragraphs" if len(sources) == 1 and sources[0].path.suffix.lower() != ".jsonl" else "files",
    )
    try:
        atomic_write_bytes(out / "tokenizer.json", bpe.spec.encode("utf-8"))
        atomic_write_bytes(out / "manifest.json", manifest.to_json().encode("utf-8"))
    except BaseException:
        _remove(out)
        raise
    return manifest


def _remove(out: Path) -> None:
    """Remove what a failed preparation wrote (it never writes into a folder that has a manifest)."""
    for name in ("train.bin", "val.bin", "tokenizer.json", "manifest.json"):
        (out / name).unlink(missing_ok=True)


def _sample(sources: list[Source], is_val: Any, fraction: float, seed: int, bar: _Progress) -> Iterator[str]:
    """A seeded sample of the training pieces, about ``fraction`` of them, at most the sample cap in bytes."""
    taken = 0
    for piece in read_pieces(sources, {}):
        bar.advance(piece.bytes)
        if is_val(piece.document) or val_score(seed, "sample", piece.piece) >= fraction:
            continue
        taken += piece.bytes
        if taken > TOKENIZER_SAMPLE_BYTES:
            return
        yield piece.text


def _write_shards(
    out: Path, sources: list[Source], bpe: BPETokenizer, separator: int, dtype: np.dtype, is_val: Any, bar: _Progress
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """Tokenize every piece and append it to train.bin or val.bin; returns the counts and the sources' hashes."""
    files = {split: PendingFile(out / f"{split}.bin") for split in SPLITS}
    counts = {split: {"tokens": 0, "bytes": 0, "documents": 0} for split in SPLITS}
    hashes: dict[str, Any] = {}
    try:
        batch: list[Piece] = []
        size = 0
        for piece in read_pieces(sources, hashes):
            batch.append(piece)
            size += piece.bytes
            if size >= BATCH_CHARS:
                _encode(batch, bpe, separator, dtype, is_val, files, counts)
                bar.advance(size)
                batch, size = [], 0
        _encode(batch, bpe, separator, dtype, is_val, files, counts)
        bar.advance(size)
        for pending in files.values():
            pending.commit()
    except BaseException:
        for pending in files.values():
            pending.discard()
        _remove(out)
        raise
    return counts, {name: h.hexdigest() for name, h in hashes.items()}


def _encode(
    batch: list[Piece], bpe: BPETokenizer, separator: int, dtype: np.dtype, is_val: Any, files: dict, counts: dict
) -> None:
    if not batch:
        return
    encode = getattr(bpe.tokenizer, "encode_batch_fast", bpe.tokenizer.encode_batch)  # fast: no offsets (0.21+)
    encodings = encode([p.text for p in batch], add_special_tokens=False)
    ids: dict[str, list[int]] = {split: [] for split in SPLITS}
    for piece, encoding in zip(batch, encodings, strict=True):
        split = "val" if is_val(piece.document) else "train"
        ids[split].extend(encoding.ids)
        counts[split]["bytes"] += piece.bytes
        if piece.end:
            ids[split].append(separator)
            counts[split]["documents"] += 1
    for split, values in ids.items():
        if values:
            np.asarray(values, dtype=dtype).tofile(files[split].file)
            counts[split]["tokens"] += len(values)


class _Progress:
    """A rich progress bar over the corpus's characters with MB/s, on stderr (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar, self.task = enabled, total, None, None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.bar.__enter__()
        return self

    def phase(self, description: str) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.update(self.task, completed=self.total)
            self.task = self.bar.add_task(description, total=self.total)

    def advance(self, amount: int) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task, amount)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


# -- command -----------------------------------------------------------------------------------------------
def prepare_command(
    path: str,
    out: str | None = None,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    val_fraction: float = 0.1,
    seed: int = 1337,
    workers: int | None = None,
) -> None:
    """Tokenize a text corpus into train.bin / val.bin shards with a tokenizer.json and a manifest.json.

    Args:
        path: a UTF-8 text file, a folder (recursively *.txt, *.md, *.jsonl with a "text" field per line) or a glob.
        out: the shard folder; default data/<name of path>.
        tokenizer: bpe (train a byte-level BPE on a sample of the training documents) or a tokenizer.json path.
        vocab_size: tokens of the trained BPE (at least 257: 256 bytes + <|endoftext|>).
        val_fraction: share of the documents held out for validation, in (0, 1).
        seed: seed of the validation choice and of the tokenizer's training sample.
        workers: threads that tokenize; default all cores.
    """
    manifest = prepare(path, out, tokenizer, vocab_size, val_fraction, seed, workers, progress=sys.stderr.isatty())
    where = Path(out) if out is not None else default_out(path)
    train, val = manifest.splits["train"], manifest.splits["val"]
    print(
        f"{where}: train {train['tokens']:,} tokens ({train['documents']:,} documents, {train['bytes']:,} bytes), "
        f"val {val['tokens']:,} tokens ({val['documents']:,} documents), {manifest.vocab_size:,}-token vocabulary, "
        f"{manifest.dtype}"
    )


def main(args: list[str] | None = None) -> None:
    """``python -m spectral_lightning.prepare --path X [--out data/X] ...``; user errors print one line, status 2."""
    from jsonargparse import auto_cli

    with exit_on_user_error():
        auto_cli(prepare_command, args=args, as_positional=False)


if __name__ == "__main__":
    main()
