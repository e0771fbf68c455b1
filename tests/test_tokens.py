"""Token shards (spectral_lightning.prepare) and TokenDataModule: round trips, the manifest, windows, bad input."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import REPO, make_text

import spectral_lightning.corpus as corpus
import spectral_lightning.prepare as prep
from spectral_lightning import TokenDataModule
from spectral_lightning.data import BatchStreamSampler, RandomWindowBatches
from spectral_lightning.errors import ConfigError, DataError
from spectral_lightning.seeds import derive_seed
from spectral_lightning.tokenization import END_OF_TEXT, BPETokenizer

VOCAB = 300  # 256 bytes + the separator + 43 merges: trains in well under a second


def make_corpus(root: Path) -> list[str]:
    """A folder of .txt, .md and .jsonl sources (and a file prepare ignores); returns its documents in order."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    docs = {
        "a.txt": make_text(3_000, seed=1) + "\r\nWindows line ends stay.\r\n",
        "sub/c.md": "# Héllo wörld ✓\n\n" + make_text(2_000, seed=2),
    }
    for name, text in docs.items():
        (root / name).write_bytes(text.encode("utf-8"))
    lines = [make_text(500 + 37 * i, seed=10 + i) for i in range(8)]
    records = [json.dumps({"text": t, "id": i}) for i, t in enumerate(lines)]
    (root / "b.jsonl").write_text("\n".join(records[:4]) + "\n\n" + "\n".join(records[4:]) + "\n", encoding="utf-8")
    (root / "notes.bin").write_bytes(bytes(range(256)))  # not a source: wrong suffix
    return [docs["a.txt"], *lines, docs["sub/c.md"]]  # sorted by path: a.txt, b.jsonl, sub/c.md


def split_documents(out: Path, split: str) -> list[str]:
    """The documents of a shard: its tokens decoded and cut at the separators (each document ends with one)."""
    manifest = corpus.Manifest.read(out)
    ids = np.fromfile(out / f"{split}.bin", dtype=manifest.dtype)
    text = BPETokenizer.from_file(out / "tokenizer.json").decode(ids.tolist())
    assert text.endswith(END_OF_TEXT)
    return text.split(END_OF_TEXT)[:-1]


def is_val(seed: int, document: int, val_fraction: float) -> bool:
    """The documented rule (when it leaves both splits non-empty)."""
    return derive_seed(seed, "val", document) / float(1 << 63) < val_fraction


def prepare(path: Path, out: Path, **options: object) -> corpus.Manifest:
    return prep.prepare(path, out, **{"vocab_size": VOCAB, "progress": False, **options})


# -- shards --------------------------------------------------------------------------------------------------


def test_shards_decode_to_the_documents_joined_by_the_separator(tmp_path: Path) -> None:
    docs = make_corpus(tmp_path / "corpus")
    manifest = prepare(tmp_path / "corpus", tmp_path / "out", val_fraction=0.3, seed=5)
    val = [is_val(5, d, 0.3) for d in range(len(docs))]
    assert 0 < sum(val) < len(docs)  # the rule applies unchanged: both splits non-empty
    expected = {
        "train": [d for d, v in zip(docs, val, strict=True) if not v],
        "val": [d for d, v in zip(docs, val, strict=True) if v],
    }
    for split in ("train", "val"):
        assert split_documents(tmp_path / "out", split) == expected[split]  # exactly, \r\n and accents included
        assert manifest.splits[split]["documents"] == len(expected[split])
        assert manifest.splits[split]["bytes"] == sum(len(d.encode("utf-8")) for d in expected[split])
        ids = np.fromfile(tmp_path / "out" / f"{split}.bin", dtype=np.uint16)
        assert manifest.splits[split]["tokens"] == len(ids)
        assert (ids == manifest.separator).sum() == len(expected[split])
    assert manifest.dtype == "uint16" and manifest.vocab_size == VOCAB
    assert [s["path"] for s in manifest.sources] == ["a.txt", "b.jsonl", "sub/c.md"]
    sizes = [(tmp_path / "corpus" / s["path"]).stat().st_size for s in manifest.sources]
    assert [s["bytes"] for s in manifest.sources] == sizes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]  # fmt: skip  (no temporary file left)


def test_a_single_file_is_split_at_blank_lines(tmp_path: Path) -> None:
    paragraphs = [f"Speaker {i}:\n{make_text(200 + i, seed=i)}\n\n" for i in range(20)]
    paragraphs[-1] = paragraphs[-1].rstrip("\n")  # the last one without a trailing blank line
    (tmp_path / "play.txt").write_text("".join(paragraphs), encoding="utf-8")
    manifest = prepare(tmp_path / "play.txt", tmp_path / "out", val_fraction=0.2, seed=3)
    assert manifest.documents == "paragraphs"
    val = [is_val(3, d, 0.2) for d in range(20)]
    assert split_documents(tmp_path / "out", "train") == [p for p, v in zip(paragraphs, val, strict=True) if not v]
    assert split_documents(tmp_path / "out", "val") == [p for p, v in zip(paragraphs, val, strict=True) if v]


@pytest.mark.parametrize("read_bytes", [777, 1 << 20], ids=["blocks cut characters", "one block per file"])
def test_long_documents_are_tokenized_in_pieces_and_still_decode_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_bytes: int
) -> None:
    monkeypatch.setattr(corpus, "PIECE_CHARS", 500)
    monkeypatch.setattr(prep, "BATCH_CHARS", 2_000)
    monkeypatch.setattr(corpus, "READ_BYTES", read_bytes)
    docs = [make_text(6_000, seed=i).replace("cat", "çat→") + "\n" for i in range(3)]  # ending at a line end
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(doc, encoding="utf-8")
    prepare(tmp_path, tmp_path / "out", val_fraction=0.5, seed=0)
    assert sorted(split_documents(tmp_path / "out", "train") + split_documents(tmp_path / "out", "val")) == sorted(docs)


def test_sources_are_a_file_a_folder_or_a_glob_named_relative_to_their_root(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    names = lambda path: [s.name for s in corpus.find_sources(path)]  # noqa: E731
    assert names(tmp_path / "corpus" / "a.txt") == ["a.txt"]
    assert names(tmp_path / "corpus") == ["a.txt", "b.jsonl", "sub/c.md"]
    assert names(f"{tmp_path}/corpus/**/*.md") == ["sub/c.md"]
    assert names(f"{tmp_path}/corpus/*.t?t") == ["a.txt"]
    assert corpus.default_out(tmp_path / "corpus" / "a.txt") == Path("data/a")
    assert corpus.default_out(tmp_path / "corpus") == Path("data/corpus")
    assert corpus.default_out(f"{tmp_path}/corpus/**/*.jsonl") == Path("data/corpus")


def test_the_split_keeps_at_least_one_document_on_each_side(tmp_path: Path) -> None:
    for i in range(2):
        (tmp_path / "c" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "c" / f"{i}.txt").write_text(make_text(1_000, seed=i), encoding="utf-8")
    for fraction in (0.001, 0.999):
        manifest = prepare(tmp_path / "c", tmp_path / f"out{fraction}", val_fraction=fraction)
        assert manifest.splits["train"]["documents"] == manifest.splits["val"]["documents"] == 1


def test_shard_dtype_is_uint16_up_to_65536_tokens_then_uint32() -> None:
    assert corpus.shard_dtype(257) == np.uint16
    assert corpus.shard_dtype(65_536) == np.uint16  # ids 0..65535
    assert corpus.shard_dtype(65_537) == np.uint32


def test_a_large_vocabulary_writes_uint32_shards(tmp_path: Path) -> None:
    tk = pytest.importorskip("tokenizers")
    alphabet = tk.pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({f"unused{i}": len(alphabet) + i for i in range(70_000)})
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.add_special_tokens([END_OF_TEXT])
    tokenizer.save(str(tmp_path / "big.json"))
    docs = make_corpus(tmp_path / "corpus")
    manifest = prepare(tmp_path / "corpus", tmp_path / "out", tokenizer=str(tmp_path / "big.json"))
    assert manifest.dtype == "uint32" and manifest.vocab_size == 70_257 and manifest.separator == 70_256
    assert (tmp_path / "out" / "train.bin").stat().st_size == 4 * manifest.splits["train"]["tokens"]
    decoded = split_documents(tmp_path / "out", "train") + split_documents(tmp_path / "out", "val")
    assert sorted(decoded) == sorted(docs)


# -- the manifest and reuse ---------------------------------------------------------------------------------


def test_reuse_does_nothing_when_sources_and_options_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_corpus(tmp_path / "corpus")
    first = prepare(tmp_path / "corpus", tmp_path / "out")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepared again")

    monkeypatch.setattr(BPETokenizer, "train", fail)
    monkeypatch.setattr(prep, "_write_shards", fail)
    assert prepare(tmp_path / "corpus", tmp_path / "out") == first
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda root: (root / "sub" / "c.md").write_text("other text\n", encoding="utf-8"), "source sub/c.md changed"),
        (lambda root: (root / "new.txt").write_text("more text\n", encoding="utf-8"), "source new.txt is new"),
        (lambda root: (root / "a.txt").unlink(), "source a.txt is gone"),
    ],
    ids=["changed", "added", "removed"],
)
def test_the_manifest_catches_a_changed_source_and_names_it(tmp_path: Path, change, message: str) -> None:
    make_corpus(tmp_path / "corpus")
    prepare(tmp_path / "corpus", tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    change(tmp_path / "corpus")
    with pytest.raises(DataError, match=re.escape(message)) as err:
        prepare(tmp_path / "corpus", tmp_path / "out")
    assert "\n" not in str(err.value) and f"delete {tmp_path / 'out'}" in str(err.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # nothing overwritten


def test_the_manifest_catches_a_changed_option(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    prepare(tmp_path / "corpus", tmp_path / "out")
    with pytest.raises(DataError, match=r"option vocab_size is 320, the shards were made with 300"):
        prepare(tmp_path / "corpus", tmp_path / "out", vocab_size=320)
    with pytest.raises(DataError, match=r"option val_fraction is 0\.5"):
        prepare(tmp_path / "corpus", tmp_path / "out", val_fraction=0.5)


# -- TokenDataModule ----------------------------------------------------------------------------------------


def trainer_at(step: int, rank: int = 0, accumulate: int = 1) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, accumulate_grad_batches=accumulate, global_rank=rank)


@pytest.fixture
def datamodule(tmp_path: Path) -> TokenDataModule:
    make_corpus(tmp_path / "corpus")
    return TokenDataModule(
        path=str(tmp_path / "corpus"), out=str(tmp_path / "out"), vocab_size=VOCAB, block_size=16, batch_size=4,
        batches_per_epoch=5, val_fraction=0.3, seed=7,
    )  # fmt: skip


def test_datamodule_exposes_the_vocabulary_right_after_init(datamodule: TokenDataModule, tmp_path: Path) -> None:
    assert datamodule.vocab == (tmp_path / "out" / "tokenizer.json").read_text(encoding="utf-8")
    assert datamodule.vocab_size == VOCAB and datamodule.block_size == 16
    assert datamodule.tokenizer.decode(datamodule.tokenizer.encode("the cat ✓")) == "the cat ✓"


def test_training_windows_are_a_function_of_seed_rank_and_index(datamodule: TokenDataModule, tmp_path: Path) -> None:
    ids = torch.from_numpy(np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16).astype(np.int64))
    memmapped = RandomWindowBatches(datamodule.train_data, 16, 4, seed=7, rank=0)
    in_memory = RandomWindowBatches(ids, 16, 4, seed=7, rank=0)  # CharDataModule's code on the same tokens
    for index in (0, 1, 12_345):
        batch = memmapped[index]
        assert batch.dtype == torch.int64 and batch.shape == (4, 17)
        assert torch.equal(batch, in_memory[index])
        assert torch.equal(batch, RandomWindowBatches(datamodule.train_data, 16, 4, seed=7, rank=0)[index])
        for row in batch:  # each row is a contiguous window of train.bin
            starts = [s for s in range(len(ids) - 16) if torch.equal(ids[s : s + 17], row)]
            assert starts
    other_rank = RandomWindowBatches(datamodule.train_data, 16, 4, seed=7, rank=1)
    other_seed = RandomWindowBatches(datamodule.train_data, 16, 4, seed=8, rank=0)
    assert not torch.equal(memmapped[0], other_rank[0]) and not torch.equal(memmapped[0], other_seed[0])


def test_ranks_draw_different_windows_and_a_resumed_loader_continues_the_stream(
    datamodule: TokenDataModule,
) -> None:
    datamodule.trainer = trainer_at(0)
    fresh = take(12, datamodule)
    datamodule.trainer = trainer_at(7)
    resumed = take(5, datamodule)
    assert all(torch.equal(a, b) for a, b in zip(fresh[7:], resumed, strict=True))
    datamodule.trainer = trainer_at(0, rank=1)
    rank1 = take(12, datamodule)
    assert not any(torch.equal(a, b) for a, b in zip(fresh, rank1, strict=True))
    assert isinstance(datamodule.train_dataloader().sampler, BatchStreamSampler)


def take(n: int, datamodule: TokenDataModule) -> list[torch.Tensor]:
    """The first ``n`` training batches from a new loader (across epoch ends, as the trainer reads them)."""
    loader, batches = datamodule.train_dataloader(), []
    while len(batches) < n:
        batches += list(itertools.islice(loader, n - len(batches)))
    return batches


def test_validation_reads_every_window_of_val_bin_in_order(datamodule: TokenDataModule, tmp_path: Path) -> None:
    ids = torch.from_numpy(np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16).astype(np.int64))
    batches = list(datamodule.val_dataloader())
    windows = torch.cat(batches)
    assert windows.dtype == torch.int64 and windows.shape == ((len(ids) - 1) // 16, 17)
    assert all(len(b) == 4 for b in batches[:-1])
    for i, window in enumerate(windows):
        assert torch.equal(window, ids[16 * i : 16 * i + 17])


def test_the_memmap_is_not_pickled_with_the_dataset(datamodule: TokenDataModule) -> None:
    import pickle

    datamodule.train_data[torch.tensor([0, 1])]  # opens the memmap
    copy = pickle.loads(pickle.dumps(datamodule.train_data))
    assert copy._data is None and len(pickle.dumps(datamodule.train_data)) < 1_000
    assert torch.equal(copy[0:10], datamodule.train_data[0:10])


def test_ranks_other_than_0_wait_for_the_manifest_instead_of_preparing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_corpus(tmp_path / "corpus")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr("spectral_lightning.tokens.PREPARE_WAIT_S", 0.0)
    with pytest.raises(DataError, match="rank 0 did not finish preparing"):
        TokenDataModule(path=str(tmp_path / "corpus"), out=str(tmp_path / "out"), vocab_size=VOCAB, block_size=8)
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("LOCAL_RANK")
    TokenDataModule(path=str(tmp_path / "corpus"), out=str(tmp_path / "out"), vocab_size=VOCAB, block_size=8)
    monkeypatch.setenv("LOCAL_RANK", "1")
    dm = TokenDataModule(path=str(tmp_path / "corpus"), out=str(tmp_path / "out"), vocab_size=VOCAB, block_size=8)
    assert dm.vocab_size == VOCAB


# -- bad input: one line, nothing half-written ------------------------------------------------------------
JSONL_HINT = 'each line of a .jsonl source must be an object like {"text": "..."}'


def _binary_only(root: Path) -> list[str]:
    root.mkdir()
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (root / "data.bin").write_bytes(bytes(range(256)))
    return ["--path", str(root)]


def _binary_txt(root: Path) -> list[str]:
    root.mkdir()
    (root / "a.txt").write_text(make_text(1_000), encoding="utf-8")
    (root / "b.txt").write_bytes(b"text then \xff\xfe garbage")
    return ["--path", str(root)]


def _jsonl_without_text(root: Path) -> list[str]:
    root.mkdir()
    (root / "docs.jsonl").write_text('{"text": "one"}\n{"body": "two"}\n', encoding="utf-8")
    return ["--path", str(root)]


def _corrupt_tokenizer(root: Path) -> list[str]:
    make_corpus(root)
    (root.parent / "tok.json").write_text('{"model": ', encoding="utf-8")
    return ["--path", str(root), "--tokenizer", str(root.parent / "tok.json")]


def _empty_folder(root: Path) -> list[str]:
    root.mkdir()
    return ["--path", str(root)]


BAD_INPUTS = {
    "empty folder": (_empty_folder, "has no .txt, .md or .jsonl files"),
    "only binary files": (_binary_only, "has no .txt, .md or .jsonl files; it has 2 other files"),
    "binary .txt": (_binary_txt, "b.txt is not UTF-8 text (byte 10 cannot be decoded)"),
    "jsonl line without text": (_jsonl_without_text, 'docs.jsonl line 2 has no "text" string'),
    "vocab_size too small": (lambda r: [*(make_corpus(r) and ["--path", str(r)]), "--vocab_size", "200"],
                             "vocab_size=200 is not valid: a byte-level BPE needs at least 256 byte tokens + 1"),
    "missing tokenizer.json": (lambda r: [*(make_corpus(r) and ["--path", str(r)]), "--tokenizer", "nope.json"],
                               "tokenizer='nope.json' is neither 'bpe' nor an existing tokenizer.json file"),
    "corrupt tokenizer.json": (_corrupt_tokenizer, "is not a valid tokenizer.json"),
    "missing path": (lambda r: ["--path", str(r / "nowhere.txt")], "nowhere.txt does not exist; --path expects"),
    "glob without matches": (lambda r: (r.mkdir(), ["--path", str(r / "*.jsonl")])[-1], "matches no files"),
    "workers 0": (lambda r: [*(make_corpus(r) and ["--path", str(r)]), "--workers", "0"], "workers=0 is not valid"),
    "one document": (lambda r: (r.mkdir(), (r / "a.txt").write_text("one paragraph\n"), ["--path", str(r)])[-1],
                     "has 1 non-empty document(s)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_to_the_command_is_one_line_and_writes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make, message = BAD_INPUTS[case]
    monkeypatch.chdir(tmp_path)
    args = make(tmp_path / "corpus")
    with pytest.raises(SystemExit) as exit_info:
        prep.main([*args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_module_command_prints_one_line_for_bad_input(tmp_path: Path) -> None:
    """``python -m spectral_lightning.prepare`` itself: status 2, one line on stderr, no warning, no traceback."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "docs.jsonl").write_text('{"text": "one"}\n[1, 2]\n', encoding="utf-8")
    command = [sys.executable, "-m", "spectral_lightning.prepare", "--path", "corpus", "--out", "out"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == f'error: corpus/docs.jsonl line 2 has no "text" string; {JSONL_HINT}\n'
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_a_failure_while_writing_leaves_no_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_corpus(tmp_path / "corpus")
    monkeypatch.setattr(prep, "BATCH_CHARS", 1_000)
    calls = []

    def encode_then_fail(*args: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_encode(*args)

    real_encode = prep._encode
    monkeypatch.setattr(prep, "_encode", encode_then_fail)
    with pytest.raises(OSError, match="No space left"):
        prepare(tmp_path / "corpus", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_command_prints_the_counts_and_reuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_corpus(tmp_path / "corpus")
    args = ["--path", str(tmp_path / "corpus"), "--out", str(tmp_path / "out"), "--vocab_size", "300"]
    prep.main(args)
    first = capsys.readouterr().out
    assert re.fullmatch(
        r".*out: train [\d,]+ tokens \(\d+ documents, [\d,]+ bytes\), val [\d,]+ tokens .*uint16\n", first
    )
    prep.main(args)
    assert capsys.readouterr().out == first


def datamodule_options(tmp_path: Path, **options: object) -> dict:
    return {"path": str(tmp_path / "corpus"), "out": str(tmp_path / "out"), "vocab_size": VOCAB, **options}


def test_datamodule_refuses_a_truncated_shard(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    TokenDataModule(**datamodule_options(tmp_path, block_size=8))
    shard = tmp_path / "out" / "train.bin"
    size = shard.stat().st_size
    os.truncate(shard, size - 10)
    with pytest.raises(DataError, match=rf"train.bin has {size - 10:,} bytes, its manifest says {size:,}") as err:
        TokenDataModule(**datamodule_options(tmp_path, block_size=8))
    assert "\n" not in str(err.value)


def test_datamodule_refuses_shards_whose_manifest_does_not_match(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    TokenDataModule(**datamodule_options(tmp_path, block_size=8))
    (tmp_path / "corpus" / "a.txt").write_text("changed\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^data: the shards in .* source a\.txt changed"):
        TokenDataModule(**datamodule_options(tmp_path, block_size=8))
    (tmp_path / "out" / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"manifest.json is not a shard manifest"):
        TokenDataModule(**datamodule_options(tmp_path, block_size=8))


def test_datamodule_refuses_a_corpus_smaller_than_one_window(tmp_path: Path) -> None:
    make_corpus(tmp_path / "corpus")
    val_tokens = len(TokenDataModule(**datamodule_options(tmp_path, block_size=8)).val_data)
    with pytest.raises(DataError, match=r"the validation split of .* fewer than one window of data.block_size \+ 1"):
        TokenDataModule(**datamodule_options(tmp_path, block_size=val_tokens))
    TokenDataModule(**datamodule_options(tmp_path, block_size=val_tokens - 1))  # exactly one window fits
    with pytest.raises(DataError, match=r"the training split of .* has [\d,]+ tokens, fewer than one window"):
        TokenDataModule(**datamodule_options(tmp_path, block_size=1_000_000))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"vocab_size": 100}, "data: vocab_size=100 is not valid"),
        ({"tokenizer": "missing.json"}, "data: tokenizer='missing.json' is neither 'bpe' nor"),
        ({"block_size": 0}, "data.block_size=0 is not valid"),
        ({"val_fraction": 1.5}, "val_fraction=1.5 is not valid"),
    ],
)
def test_datamodule_option_errors_are_one_line(tmp_path: Path, options: dict, message: str) -> None:
    make_corpus(tmp_path / "corpus")
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        TokenDataModule(**datamodule_options(tmp_path, **options))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


BPE_CONFIGS = sorted((REPO / "configs" / "bpe").glob("*.yaml"))


@pytest.mark.parametrize("config", BPE_CONFIGS, ids=lambda c: c.stem)
def test_bpe_config_trains_through_the_cli_and_logs_bits_per_byte(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/bpe/*.yaml at debug size on a text of the test's own: shards are prepared on first use, the run
    trains through cli.py, logs val/bpb, and its checkpoint reloads with the BPE and the same val loss."""
    from spectral_lightning import SpectralLM
    from spectral_lightning.cli import cli_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("\n\n".join(make_text(3_000, seed=s) for s in range(8)), encoding="utf-8")
    args = ["fit", "--config", str(config), "--data.path", "corpus.txt", "--data.out", "shards",
            "--data.vocab_size", "300", "--data.block_size", "16", "--data.batch_size", "4",
            "--data.batches_per_epoch", "3", "--trainer.max_steps", "3", "--trainer.limit_val_batches", "2",
            "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32",
            "--trainer.default_root_dir", "out", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    cli = cli_main(args)
    assert type(cli.datamodule).__name__ == "TokenDataModule" and (tmp_path / "shards" / "manifest.json").is_file()
    assert cli.model.model.config.vocab_size == len(cli.datamodule.tokenizer) <= 300  # a small text may merge less
    logged = cli.trainer.callback_metrics
    assert 0 < float(logged["val/bpb"]) < float(logged["val/loss"]) / math.log(2)  # a token is > 1 byte on average
    (ckpt,) = (tmp_path / "out").rglob("last.ckpt")
    reloaded = SpectralLM.load(ckpt)
    assert reloaded.tokenizer.spec == cli.datamodule.vocab
