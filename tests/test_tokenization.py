"""Tokenizers behind one interface: a BPE encodes any text and decodes it back, its bytes per token make bits per
byte exact, and it travels with the run (checkpoint, export, generation) like a character vocabulary."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import make_text, quiet_trainer

from spectral_lightning import ConfigError, SpectralLM
from spectral_lightning.checkpoints import check_vocab, load_model
from spectral_lightning.data import CharDataModule
from spectral_lightning.errors import DataError
from spectral_lightning.export import export
from spectral_lightning.generate import generate
from spectral_lightning.tokenization import END_OF_TEXT, BPETokenizer, CharTokenizer, tokenizer_from_spec

pytest.importorskip("tokenizers")
TEXT = make_text(20_000) + " caf\u00e9 na\u00efve \u20ac5 \U0001f600.\n"  # 1- to 4-byte characters


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([TEXT[i : i + 2_000] for i in range(0, len(TEXT), 2_000)], vocab_size=300)


def test_bpe_round_trips_any_text_and_counts_its_bytes(bpe: BPETokenizer) -> None:
    assert len(bpe) == 300
    for text in (TEXT, "unseen words: zebra \u00fc\u00df \U0001f680", ""):
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert sum(bpe.token_bytes()[i] for i in ids) == len(text.encode("utf-8"))
    assert len(bpe.encode(TEXT)) < len(TEXT.encode("utf-8")) / 2  # merges were learned
    assert bpe.token_bytes()[bpe.start_ids()[0]] == 0  # the separator stands for no text
    assert bpe.decode(bpe.start_ids()) == END_OF_TEXT


def test_the_spec_rebuilds_the_same_tokenizer_and_tells_the_kinds_apart(bpe: BPETokenizer, tmp_path: Path) -> None:
    again = tokenizer_from_spec(bpe.spec)
    assert isinstance(again, BPETokenizer) and again.encode(TEXT) == bpe.encode(TEXT)
    assert isinstance(tokenizer_from_spec("{|}~"), CharTokenizer)  # characters that merely look like JSON
    (tmp_path / "tokenizer.json").write_text(bpe.spec, encoding="utf-8")
    assert BPETokenizer.from_file(tmp_path / "tokenizer.json").encode("the cat") == bpe.encode("the cat")


def test_bad_tokenizer_inputs_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vocab_size=100 is not valid: a byte-level BPE needs at least 256"):
        BPETokenizer.train(["abc"], vocab_size=100)
    with pytest.raises(DataError, match="does not exist"):
        BPETokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"model": {"type": "BPE"', encoding="utf-8")
    with pytest.raises(DataError, match="is not a valid tokenizer.json"):
        BPETokenizer.from_file(tmp_path / "bad.json")


def test_a_different_tokenizer_is_refused_by_size_and_hash_not_by_its_json(bpe: BPETokenizer) -> None:
    other = BPETokenizer.train([TEXT.upper()], vocab_size=290)
    with pytest.raises(ConfigError) as err:
        check_vocab(bpe.spec, other.spec, "--ckpt_path x.ckpt", "or drop --ckpt_path")
    message = str(err.value)
    assert f"a BPE tokenizer of 300 tokens (SHA-256 {bpe.hash[:12]})" in message
    assert "a BPE tokenizer of 290 tokens" in message and len(message) < 400 and "\n" not in message


def test_a_bpe_model_trains_logs_bits_per_byte_and_travels_with_its_checkpoint(
    bpe: BPETokenizer, tmp_path: Path
) -> None:
    """The training module takes the BPE's spec as its vocabulary: the checkpoint and the exports rebuild the
    tokenizer, generation decodes text, and val/bpb is the hand-computed nats / UTF-8 bytes / ln 2."""
    ids = torch.tensor(bpe.encode(TEXT))
    windows = ids[: (len(ids) - 1) // 17 * 17 + 1]
    val = torch.stack([windows[i * 17 : i * 17 + 17] for i in range(8)])  # 8 windows of 16 + 1 tokens
    torch.manual_seed(0)
    module = SpectralLM(vocab=bpe.spec, block_size=16, n_layer=1, n_head=2, n_embd=16, parameterization="dct")
    assert module.model.config.vocab_size == 300 and module.hparams.vocab == bpe.spec
    loader = torch.utils.data.DataLoader(list(val), batch_size=4)
    metrics = quiet_trainer(limit_val_batches=None).validate(module, loader, verbose=False)[0]
    with torch.no_grad():
        nats = float(F.cross_entropy(module(val[:, :-1]).flatten(0, 1), val[:, 1:].flatten(), reduction="sum"))
    n_bytes = sum(bpe.token_bytes()[int(t)] for t in val[:, 1:].flatten())
    assert metrics["val/bpb"] == pytest.approx(nats / n_bytes / math.log(2), rel=1e-5)

    trainer = quiet_trainer(max_steps=3)
    trainer.fit(module, torch.utils.data.DataLoader(list(val), batch_size=4))
    trainer.save_checkpoint(tmp_path / "bpe.ckpt")
    reloaded = SpectralLM.load(tmp_path / "bpe.ckpt")
    assert isinstance(reloaded.tokenizer, BPETokenizer) and reloaded.tokenizer.spec == bpe.spec
    export(tmp_path / "bpe.ckpt", "dense", tmp_path / "dense.pt")
    model, tokenizer = load_model(tmp_path / "dense.pt")
    assert tokenizer.spec == bpe.spec
    (sample,) = generate(model, tokenizer, "caf\u00e9", max_new_tokens=12, seed=0)
    assert sample.startswith("caf\u00e9") and len(sample.encode("utf-8")) > len("caf\u00e9".encode())


def test_character_runs_keep_their_vocabulary_spec(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(make_text(2_000), encoding="utf-8")
    dm = CharDataModule(path=str(path), block_size=16)
    assert dm.vocab == "".join(sorted(set(path.read_text()))) == CharTokenizer(dm.vocab).spec
    assert (
        SpectralLM(vocab=dm.vocab, block_size=16, n_layer=1, n_head=2, n_embd=16).tokenizer.decode([0]) == dm.vocab[0]
    )
