"""Tokenizers: characters, or a byte-level BPE, behind one small interface that travels with every run.

A tokenizer is written into the run as its ``spec``, a string: the characters themselves for
:class:`CharTokenizer` (``"\\n !$&',-.3:;?ABC..."``), the ``tokenizer.json`` text for :class:`BPETokenizer`. The
data module exposes it as ``vocab``, LightningCLI links it into the model's hyperparameters, and so every
checkpoint and export carries it: :func:`tokenizer_from_spec` rebuilds the tokenizer from the file alone, and two
runs use the same tokenizer exactly when their specs are equal.

Both kinds provide ``len()``, ``encode``, ``decode`` and ``token_bytes`` (the UTF-8 bytes of text each token id
stands for, which bits per byte divides by).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from spectral_lightning.errors import ConfigError, DataError, first_line

#: The one special token of a BPE: it separates documents in the token stream.
END_OF_TEXT = "<|endoftext|>"


class Tokenizer(Protocol):
    """What the training module, generation and the metrics use of a tokenizer."""

    spec: str

    def __len__(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int] | Tensor) -> str: ...

    def token_bytes(self) -> list[int]: ...

    def start_ids(self) -> list[int]: ...

    def describe(self) -> str: ...


class CharTokenizer:
    """Maps each character of ``vocab`` (a string of distinct characters) to its index."""

    def __init__(self, vocab: str) -> None:
        if not vocab or len(set(vocab)) != len(vocab):
            raise ConfigError("vocab must be a non-empty string of distinct characters")
        self.vocab = vocab
        self.stoi = {ch: i for i, ch in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def spec(self) -> str:
        return self.vocab

    def describe(self) -> str:
        return f"a vocabulary of {len(self.vocab)} characters ({self.vocab!r})"

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({ch for ch in text if ch not in self.stoi})
        if unknown:
            raise ConfigError(
                f"characters {''.join(unknown)!r} are not in the model's vocabulary of {len(self.vocab)} "
                f"characters: {self.vocab!r}"
            )
        return [self.stoi[ch] for ch in text]

    def token_bytes(self) -> list[int]:
        """The UTF-8 length in bytes of every token, in id order: what bits per byte divides by."""
        return [len(ch.encode("utf-8")) for ch in self.vocab]

    def decode(self, ids: list[int] | Tensor) -> str:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return "".join(self.vocab[i] for i in ids)

    def start_ids(self) -> list[int]:
        """What generation starts from without a prompt: a newline when the vocabulary has one."""
        return [self.stoi.get("\n", 0)]


class BPETokenizer:
    """A byte-level BPE (Hugging Face ``tokenizers``): any text encodes, and decodes back exactly.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` with a ByteLevel pre-tokenizer and decoder.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.spec = tokenizer.to_str()

    @classmethod
    def from_spec(cls, spec: str) -> BPETokenizer:
        try:
            return cls(_tokenizers().Tokenizer.from_str(spec))
        except Exception as err:  # noqa: BLE001 (tokenizers raises its own exception types)
            raise DataError(f"the recorded tokenizer cannot be read ({first_line(err)})") from None

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        """Read a ``tokenizer.json``; a missing or corrupt file is a one-line :class:`DataError`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"tokenizer file {path} does not exist; expected a tokenizer.json (or tokenizer: bpe)")
        try:
            return cls(_tokenizers().Tokenizer.from_file(str(path)))
        except Exception as err:  # noqa: BLE001
            raise DataError(f"tokenizer file {path} is not a valid tokenizer.json ({first_line(err)})") from None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE of ``vocab_size`` tokens (256 bytes + merges + ``<|endoftext|>``) on ``texts``."""
        tk = _tokenizers()
        check_bpe_vocab_size(vocab_size)
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @property
    def hash(self) -> str:
        """SHA-256 of the spec: names this exact tokenizer in manifests and messages."""
        return hashlib.sha256(self.spec.encode("utf-8")).hexdigest()

    def describe(self) -> str:
        return f"a BPE tokenizer of {len(self)} tokens (SHA-256 {self.hash[:12]})"

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int] | Tensor) -> str:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def start_ids(self) -> list[int]:
        """What generation starts from without a prompt: the document separator."""
        index = self.tokenizer.token_to_id(END_OF_TEXT)
        return [0 if index is None else index]

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes per token id: a byte-level token's string has one character per byte (GPT-2's byte map);
        special tokens stand for no text (0)."""
        special = {t.content for t in self.tokenizer.get_added_tokens_decoder().values()}
        sizes = [0] * len(self)
        for token, index in self.tokenizer.get_vocab().items():
            sizes[index] = 0 if token in special else len(token)
        return sizes


def check_bpe_vocab_size(vocab_size: object) -> int:
    """``vocab_size`` when a byte-level BPE can have it: the 256 byte tokens plus ``<|endoftext|>`` at least."""
    minimum = 256 + 1
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ConfigError(
            f"vocab_size={vocab_size!r} is not valid: a byte-level BPE needs at least 256 byte tokens + 1 special "
            f"({END_OF_TEXT}) = {minimum}"
        )
    return vocab_size


def tokenizer_from_spec(spec: str) -> CharTokenizer | BPETokenizer:
    """The tokenizer a run recorded: a ``tokenizer.json`` text (a JSON object) is a BPE, anything else the
    characters of a :class:`CharTokenizer`."""
    if spec.startswith("{") and _is_tokenizer_json(spec):
        return BPETokenizer.from_spec(spec)
    return CharTokenizer(spec)


def describe_spec(spec: str) -> str:
    """A short description of a recorded tokenizer for messages (never the whole tokenizer.json)."""
    return tokenizer_from_spec(spec).describe()


def _is_tokenizer_json(spec: str) -> bool:
    try:
        return isinstance(json.loads(spec).get("model"), dict)
    except (ValueError, AttributeError):
        return False


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("a BPE tokenizer needs the tokenizers package: pip install tokenizers") from None
    return tokenizers
