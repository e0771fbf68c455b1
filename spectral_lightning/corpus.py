"""A text corpus as documents, and the manifest of the token shards made from it.

**Sources.** A text file, a folder (searched recursively for ``*.txt``, ``*.md`` and ``*.jsonl``) or a glob
(``corpus/**/*.jsonl``), read in sorted order, so the shards are a pure function of the sources and the options.
**Documents** are the unit of the validation split and are separated in the token stream by one ``<|endoftext|>``:
every ``.txt``/``.md`` file is a document and every non-blank line of a ``.jsonl`` file (an object with a ``text``
string) is one; a corpus of a single text file, which has no other boundaries, is cut into paragraphs at blank
lines instead (each paragraph keeps its blank lines, so no text is lost). Empty documents are skipped. Files are
read in 1 MB blocks and cut into pieces of at most :data:`PIECE_CHARS` characters, so any size streams in constant
memory.

**Manifest.** ``manifest.json`` records the format version, every source's path (relative to the corpus root),
size and SHA-256, the options, the tokenizer's SHA-256, the dtype and the token, byte and document counts of each
split: :mod:`spectral_lightning.prepare` writes it last, :mod:`spectral_lightning.tokens` checks the shards against
it.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectral_lightning.errors import DataError
from spectral_lightning.seeds import derive_seed

FORMAT = "spectral_lightning.shards/1"
SUFFIXES = (".txt", ".md", ".jsonl")
#: Largest piece of text handed to the tokenizer at once (documents longer than this are cut at line ends).
PIECE_CHARS = 1 << 16
READ_BYTES = 1 << 20
SPLITS = ("train", "val")
_PARAGRAPH_END = re.compile(r"(?:\r?\n){2,}(?=[^\r\n])")  # a run of blank lines followed by text


# -- sources and documents ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One file of the corpus: where it is, and its name relative to the corpus root (what the manifest records)."""

    path: Path
    name: str


def find_sources(path: str | Path) -> list[Source]:
    """The files of the corpus ``path`` (a file, a folder searched recursively, or a glob), sorted by name."""
    text = str(path)
    root = Path(text)
    if root.is_file():
        return [Source(root, root.name)]
    if root.is_dir():
        found = sorted(p for p in root.rglob("*") if p.is_file())
        sources = [Source(p, p.relative_to(root).as_posix()) for p in found if p.suffix.lower() in SUFFIXES]
        if not sources:
            others = f"; it has {len(found)} other files (e.g. {found[0].relative_to(root)})" if found else ""
            raise DataError(f"folder {root} has no .txt, .md or .jsonl files{others}; --path expects text files")
        return sources
    if glob.has_magic(text):
        base = _glob_root(text)
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"the pattern {text} matches no files; --path expects a text file, a folder or a glob")
        return [Source(p, _relative(p, base)) for p in matches]
    raise DataError(f"{text} does not exist; --path expects a text file, a folder of .txt/.md/.jsonl files or a glob")


def _glob_root(pattern: str) -> Path:
    """The folder a glob searches from: its leading components without wildcards (``a/b/*.txt`` → ``a/b``)."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return Path(*fixed) if fixed else Path(".")


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def default_out(path: str | Path) -> Path:
    """``data/<name>``: the stem of a file, the name of a folder, or the last folder before a glob's wildcards."""
    text = str(path)
    base = _glob_root(text) if glob.has_magic(text) and not Path(text).exists() else Path(text)
    name = base.stem if base.is_file() else base.resolve().name
    return Path("data") / (name or "corpus")


def _read_text(source: Source, hasher: Any) -> Iterator[str]:
    """The UTF-8 text of ``source`` in blocks, updating ``hasher`` with its bytes; one-line errors for binary."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(source.path, "rb") as f:
        while True:
            block = f.read(READ_BYTES)
            final = not block
            hasher.update(block)
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{source.path} is not UTF-8 text (byte {max(0, offset + err.start)} cannot be decoded); "
                    "--path expects UTF-8 .txt, .md or .jsonl files"
                ) from None
            if "\x00" in text:
                raise DataError(f"{source.path} looks binary (it contains NUL bytes); --path expects text files")
            offset += len(block)
            if text:
                yield text
            if final:
                return


def _cut(text: str, end: bool) -> Iterator[tuple[str, bool]]:
    """``text`` in pieces of at most :data:`PIECE_CHARS` characters, cut after a newline where there is one;
    the last piece carries ``end``."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = text.rfind("\n", start, start + PIECE_CHARS) + 1 or start + PIECE_CHARS
        yield text[start:cut], False
        start = cut
    if start < len(text):
        yield text[start:], end


def _text_pieces(chunks: Iterable[str], paragraphs: bool) -> Iterator[tuple[str, bool]]:
    """(piece, ends a document) for a text file: one document, or one per paragraph."""
    buffer, started = "", False  # started: pieces of the current document were handed over already
    for chunk in chunks:
        buffer += chunk
        start = 0
        if paragraphs:
            for match in _PARAGRAPH_END.finditer(buffer):
                yield from _cut(buffer[start : match.end()], True)
                start, started = match.end(), False
        rest = buffer[start:]
        if len(rest) > PIECE_CHARS:  # a long document: hand over all but its last (possibly unfinished) line
            cut = rest.rfind("\n") + 1 or len(rest)
            yield from _cut(rest[:cut], False)
            rest, started = rest[cut:], True
        buffer = rest
    if buffer:
        yield from _cut(buffer, True)
    elif started:  # the document's text is all handed over: an empty piece ends it
        yield "", True


def _jsonl_pieces(source: Source, chunks: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """(piece, ends a document) for a ``.jsonl`` file: the ``text`` of every non-blank line."""
    buffer, number = "", 0
    for chunk in _with_end(chunks):
        if chunk is not None:
            buffer += chunk
            lines = buffer.split("\n")
            buffer = lines.pop()
        else:
            lines, buffer = [buffer], ""
        for line in lines:
            number += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise DataError(
                    f"{source.path} line {number} is not JSON ({err.msg}); each line must be an object "
                    'like {"text": "..."}'
                ) from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(
                    f'{source.path} line {number} has no "text" string; each line of a .jsonl source must be an '
                    'object like {"text": "..."}'
                )
            if text:
                yield from _cut(text, True)


def _with_end(chunks: Iterable[str]) -> Iterator[str | None]:
    """``chunks``, then ``None`` to mark the end."""
    yield from chunks
    yield None


@dataclass
class Piece:
    """A piece of a document: its text, the document's number, whether it ends it, its own number and size."""

    text: str
    document: int
    end: bool
    piece: int
    bytes: int


def read_pieces(sources: list[Source], hashes: dict[str, Any]) -> Iterator[Piece]:
    """Every piece of every document of the corpus, numbered; fills ``hashes`` (name → sha256 object)."""
    paragraphs = len(sources) == 1 and sources[0].path.suffix.lower() != ".jsonl"
    document = piece = 0
    for source in sources:
        hasher = hashes[source.name] = hashlib.sha256()
        chunks = _read_text(source, hasher)
        if source.path.suffix.lower() == ".jsonl":
            stream = _jsonl_pieces(source, chunks)
        else:
            stream = _text_pieces(chunks, paragraphs)
        for text, end in stream:
            yield Piece(text, document, end, piece, len(text.encode("utf-8")))
            piece += 1
            document += end


def val_score(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) that is a pure function of ``seed`` and ``parts``."""
    return derive_seed(seed, *parts) / float(1 << 63)


@dataclass
class Scan:
    """What the checking pass learns: sizes, hashes, the number of documents and the split's corner cases."""

    sources: list[dict[str, Any]]
    documents: int
    text_bytes: int
    lowest: int  # the document with the lowest val score (moved to val if val would be empty)
    highest: int  # the document with the highest val score (kept in train if train would be empty)
    val_documents: int


def scan_corpus(sources: list[Source], val_fraction: float, seed: int) -> Scan:
    hashes: dict[str, Any] = {}
    documents = text_bytes = val = 0
    low = (2.0, -1)
    high = (-1.0, -1)
    for piece in read_pieces(sources, hashes):
        text_bytes += piece.bytes
        if piece.end:
            score = val_score(seed, "val", piece.document)
            low, high = min(low, (score, piece.document)), max(high, (score, piece.document))
            val += score < val_fraction
            documents += 1
    records = [{"path": s.name, "bytes": s.path.stat().st_size, "sha256": hashes[s.name].hexdigest()} for s in sources]
    return Scan(records, documents, text_bytes, low[1], high[1], val)


def val_rule(scan: Scan, val_fraction: float, seed: int) -> Any:
    """``is_val(document)``: the seeded choice, corrected so that each split has at least one document."""

    def is_val(document: int) -> bool:
        if scan.val_documents == 0:
            return document == scan.lowest
        if scan.val_documents == scan.documents:
            return document != scan.highest
        return val_score(seed, "val", document) < val_fraction

    return is_val


def fingerprint(sources: list[Source]) -> list[dict[str, Any]]:
    """Path (relative to the corpus root), size and SHA-256 of every source, as the manifest records them."""
    records = []
    for source in sources:
        h = hashlib.sha256()
        with open(source.path, "rb") as f:
            for block in iter(lambda f=f: f.read(READ_BYTES), b""):
                h.update(block)
        records.append({"path": source.name, "bytes": source.path.stat().st_size, "sha256": h.hexdigest()})
    return records


# -- the manifest ------------------------------------------------------------------------------------------
@dataclass
class Manifest:
    """What ``manifest.json`` records about a preparation (see the module docstring)."""

    path: str
    sources: list[dict[str, Any]]
    options: dict[str, Any]
    tokenizer_sha256: str
    vocab_size: int
    separator: int
    dtype: str
    splits: dict[str, dict[str, int]]
    format: str = FORMAT
    documents: str = field(default="files")

    def to_json(self) -> str:
        """The manifest as JSON, its format version first."""
        return json.dumps({"format": self.format, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def read(cls, out: str | Path) -> Manifest | None:
        """The manifest of the shard folder ``out``; ``None`` when there is none, a DataError when unreadable."""
        path = Path(out) / "manifest.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            return cls(**data)
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise DataError(f"{path} is not a shard manifest ({err}); delete {Path(out)} to prepare again") from None


def shard_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id of a ``vocab_size``-token vocabulary fits in it, else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def differences(manifest: Manifest, sources: list[dict[str, Any]], options: dict[str, Any]) -> list[str]:
    """What differs between a manifest and these sources and options (empty when the shards can be reused)."""
    found = []
    old = {s["path"]: s for s in manifest.sources}
    new = {s["path"]: s for s in sources}
    for name, record in new.items():
        if name not in old:
            found.append(f"source {name} is new")
        elif (record["bytes"], record["sha256"]) != (old[name]["bytes"], old[name]["sha256"]):
            found.append(f"source {name} changed ({old[name]['bytes']:,} → {record['bytes']:,} bytes, SHA-256 differs)")
    found += [f"source {name} is gone" for name in old if name not in new]
    for key, value in options.items():
        if manifest.options.get(key) != value:
            found.append(f"option {key} is {value!r}, the shards were made with {manifest.options.get(key)!r}")
    return found


def verify_shards(out: str | Path, manifest: Manifest) -> None:
    """Check that the shards and the tokenizer of ``out`` are the ones ``manifest`` describes (sizes, hash)."""
    out = Path(out)
    itemsize = np.dtype(manifest.dtype).itemsize
    for split in SPLITS:
        path = out / f"{split}.bin"
        expected = manifest.splits[split]["tokens"] * itemsize
        if not path.is_file():
            raise DataError(f"shard {path} is missing; delete {out} to prepare again")
        size = path.stat().st_size
        if size != expected:
            raise DataError(
                f"shard {path} has {size:,} bytes, its manifest says {expected:,}: it is truncated or corrupt; "
                f"delete {out} to prepare again"
            )
    tokenizer = out / "tokenizer.json"
    if not tokenizer.is_file():
        raise DataError(f"{tokenizer} is missing; delete {out} to prepare again")
    if hashlib.sha256(tokenizer.read_bytes()).hexdigest() != manifest.tokenizer_sha256:
        raise DataError(f"{tokenizer} is not the tokenizer the shards were made with; delete {out} to prepare again")
