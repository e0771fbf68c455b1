"""CharTokenizer, the download cache and CharDataModule: splits, windows, batch streams and file errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_text

import spectral_lightning.data as data
import spectral_lightning.files as files
from spectral_lightning.data import BatchStreamSampler, CharDataModule, CharTokenizer, RandomWindowBatches
from spectral_lightning.errors import ConfigError, DataError

# -- tokenizer ----------------------------------------------------------------------------------------------


def test_tokenizer_vocab_is_sorted_set_and_round_trips() -> None:
    text = make_text(2_000)
    tok = CharTokenizer.from_text(text)
    assert tok.vocab == "".join(sorted(set(text)))
    assert len(tok) == len(set(text))
    ids = tok.encode(text)
    assert ids[:3] == [tok.vocab.index(ch) for ch in text[:3]]
    assert min(ids) == 0 and max(ids) == len(tok) - 1
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text


def test_tokenizer_unknown_characters_are_named() -> None:
    tok = CharTokenizer.from_text("the cat sat")
    with pytest.raises(ConfigError, match=r"'\?Z'") as err:  # the unknown chars, sorted, in one string
        tok.encode("the Z? cat Z")
    assert tok.vocab in str(err.value)  # and what would be valid


def test_tokenizer_rejects_repeated_characters() -> None:
    with pytest.raises(ConfigError):
        CharTokenizer("abca")


# -- DataModule on a local file -----------------------------------------------------------------------------


def test_vocab_known_right_after_construction(text_file: Path) -> None:
    text = text_file.read_text(encoding="utf-8")
    dm = CharDataModule(path=str(text_file), block_size=16, batch_size=4)
    assert dm.vocab == "".join(sorted(set(text)))
    assert dm.vocab_size == len(set(text))


def test_split_is_contiguous(text_file: Path) -> None:
    text = text_file.read_text(encoding="utf-8")
    assert len(text) == 20_000
    dm = CharDataModule(path=str(text_file), block_size=16, batch_size=4)
    ids = torch.tensor(dm.tokenizer.encode(text))
    assert len(dm.train_data) == 18_000 and len(dm.val_data) == 2_000
    assert torch.equal(dm.train_data, ids[:18_000])  # exactly the first 90%
    assert torch.equal(dm.val_data, ids[18_000:])  # exactly the last 10%, no overlap, nothing dropped
    dm30 = CharDataModule(path=str(text_file), block_size=16, batch_size=4, val_fraction=0.3)
    assert len(dm30.train_data) == 14_000 and torch.equal(dm30.val_data, ids[14_000:])


def test_validation_covers_every_window_once_deterministically(text_file: Path) -> None:
    block = 32
    dm = CharDataModule(path=str(text_file), block_size=block, batch_size=7)
    batches = list(dm.val_dataloader())
    again = list(dm.val_dataloader())
    assert len(batches) == len(again) and all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    windows = torch.cat(batches)  # (N, T + 1)
    n = (len(dm.val_data) - 1) // block  # 62 windows of 2,000 chars: every full window, leftover < block
    assert windows.shape == (n, block + 1) and n == 62
    inputs, targets = windows[:, :-1].flatten(), windows[:, 1:].flatten()
    assert torch.equal(inputs, dm.val_data[: n * block])  # inputs tile the split without overlap or gap
    assert torch.equal(targets, dm.val_data[1 : n * block + 1])  # each position is predicted exactly once
    assert torch.equal(torch.cat(list(dm.test_dataloader())), windows)


def _contained_in(rows: torch.Tensor, source: torch.Tensor) -> bool:
    all_windows = source.unfold(0, rows.shape[1], 1)  # (L - T, T + 1)
    return all(bool((all_windows == row).all(dim=1).any()) for row in rows)


def test_training_batches_are_a_function_of_seed_rank_index(text_file: Path) -> None:
    dm = CharDataModule(path=str(text_file), block_size=16, batch_size=8)
    ds = RandomWindowBatches(dm.train_data, 16, 8, seed=3, rank=0)
    b = ds[5]
    assert b.shape == (8, 17) and b.dtype == torch.long
    assert torch.equal(b, RandomWindowBatches(dm.train_data, 16, 8, seed=3, rank=0)[5])  # same triple, same batch
    assert not torch.equal(b, ds[6])
    assert not torch.equal(b, RandomWindowBatches(dm.train_data, 16, 8, seed=3, rank=1)[5])  # DDP ranks differ
    assert not torch.equal(b, RandomWindowBatches(dm.train_data, 16, 8, seed=4, rank=0)[5])
    # Every row is a real window of the training split: no validation text leaks into training.
    assert _contained_in(torch.cat([ds[i] for i in range(4)]), dm.train_data)


def test_train_dataloader_uses_rank_and_resumes_at_global_step(text_file: Path) -> None:
    dm = CharDataModule(path=str(text_file), block_size=16, batch_size=4, batches_per_epoch=5, seed=7)
    ds = RandomWindowBatches(dm.train_data, 16, 4, seed=7, rank=0)
    fresh = list(dm.train_dataloader())  # no trainer: rank 0 from batch 0
    assert len(fresh) == 5 and all(torch.equal(fresh[i], ds[i]) for i in range(5))

    dm.trainer = SimpleNamespace(global_rank=0, global_step=7, accumulate_grad_batches=1)
    resumed = list(dm.train_dataloader())  # finishes the epoch the run stopped in: batches 7, 8, 9
    assert len(resumed) == 3 and all(torch.equal(resumed[i], ds[7 + i]) for i in range(3))

    dm.trainer = SimpleNamespace(global_rank=1, global_step=0, accumulate_grad_batches=1)
    rank1 = list(dm.train_dataloader())
    expected = RandomWindowBatches(dm.train_data, 16, 4, seed=7, rank=1)
    assert all(torch.equal(rank1[i], expected[i]) for i in range(5))
    assert not any(torch.equal(a, b) for a, b in zip(fresh, rank1, strict=True))


def test_workers_give_the_same_batches(text_file: Path) -> None:
    kwargs = dict(path=str(text_file), block_size=16, batch_size=4, batches_per_epoch=6)
    serial = CharDataModule(num_workers=0, **kwargs)
    parallel = CharDataModule(num_workers=2, **kwargs)
    stream = RandomWindowBatches(serial.train_data, 16, 4, seed=1337, rank=0)
    train_a, train_b = serial.train_dataloader(), parallel.train_dataloader()
    for epoch in range(2):  # the second epoch carries on the stream: batches 6..11
        a, b = list(train_a), list(train_b)
        assert len(a) == len(b) == 6
        assert all(torch.equal(x, stream[6 * epoch + i]) for i, x in enumerate(a))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), f"epoch {epoch}"
    a, b = list(serial.val_dataloader()), list(parallel.val_dataloader())
    assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_sampler_resumes_mid_epoch_then_continues_whole_epochs() -> None:
    sampler = BatchStreamSampler(batches_per_epoch=5, start=7)
    assert len(sampler) == 5
    assert list(sampler) == [7, 8, 9]
    assert list(sampler) == [10, 11, 12, 13, 14]
    assert list(sampler) == [15, 16, 17, 18, 19]
    fresh = BatchStreamSampler(batches_per_epoch=4)
    assert [list(fresh) for _ in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(
    ("option", "value"),
    [("block_size", 0), ("batch_size", -1), ("batches_per_epoch", 0), ("val_fraction", 1.0), ("num_workers", -2)],
)
def test_invalid_options_are_named(text_file: Path, option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"data.{option}"):
        CharDataModule(path=str(text_file), **{option: value})


def test_unknown_dataset_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tinyshakespeare") as err:
        CharDataModule(dataset="enwik8", data_dir=str(tmp_path))
    assert "enwik8" in str(err.value) and "--data.path" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def _write_missing(path: Path) -> None:
    pass


def _write_empty(path: Path) -> None:
    path.write_bytes(b"")


def _write_latin1(path: Path) -> None:
    path.write_bytes("the caf\xe9 sat on a mat\n".encode("latin-1") * 50)


def _write_short(path: Path) -> None:
    path.write_text("the cat sat on a mat\n" * 5, encoding="utf-8")  # 105 chars: val split has 11 < 33


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (_write_missing, "does not exist"),
        (_write_empty, "empty"),
        (_write_latin1, "not UTF-8"),
        (_write_short, "fewer than one window"),
    ],
    ids=["missing", "empty", "not-utf8", "too-short"],
)
def test_bad_text_files_are_named(tmp_path: Path, write, expected: str) -> None:  # noqa: ANN001
    path = tmp_path / "corpus.txt"
    write(path)
    with pytest.raises(DataError, match=expected) as err:
        CharDataModule(path=str(path), block_size=32)
    assert str(path) in str(err.value)


# -- download against a local HTTP server -------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base-class signature)
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """Serves ``<tmp>/www/corpus.txt`` on 127.0.0.1; ``stop()`` shuts it down (idempotent)."""
    www = tmp_path / "www"
    www.mkdir()
    body = make_text(3_000).encode("utf-8")
    (www / "corpus.txt").write_bytes(body)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            thread.join()
            stopped = True

    url = f"http://127.0.0.1:{httpd.server_address[1]}/corpus.txt"
    yield SimpleNamespace(url=url, body=body, sha=hashlib.sha256(body).hexdigest(), stop=stop)
    stop()


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_download_caches_verified_file_and_reuses_it_offline(server: SimpleNamespace, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "corpus" / "input.txt"
    assert data.download(server.url, dest, server.sha) == dest
    assert dest.read_bytes() == server.body
    assert _files_under(tmp_path / "cache") == [dest]  # no temp file left beside it
    server.stop()
    assert data.download(server.url, dest, server.sha, timeout=2) == dest  # offline: the cache is enough
    assert dest.read_bytes() == server.body


def test_datamodule_downloads_named_dataset_then_works_offline(
    server: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(data.DATASETS, "tiny", (server.url, server.sha))
    cache = tmp_path / "cache"
    dm = CharDataModule(dataset="tiny", data_dir=str(cache), block_size=16, batch_size=4)
    assert dm.source == cache / "tiny" / "input.txt"
    assert dm.vocab == "".join(sorted(set(server.body.decode("utf-8"))))
    server.stop()
    again = CharDataModule(dataset="tiny", data_dir=str(cache), block_size=16, batch_size=4)
    assert torch.equal(again.train_data, dm.train_data) and torch.equal(again.val_data, dm.val_data)


def test_wrong_checksum_is_an_error_and_leaves_nothing(server: SimpleNamespace, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dest = cache / "corpus" / "input.txt"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DataError, match="SHA-256") as err:
        data.download(server.url, dest, wrong)
    assert server.sha in str(err.value) and wrong in str(err.value)  # got and expected
    assert _files_under(cache) == []


def test_failed_write_leaves_no_temp_file(
    server: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "cache" / "corpus" / "input.txt"

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(DataError, match="--data.data_dir") as err:
        data.download(server.url, dest, server.sha)
    assert str(dest) in str(err.value)
    assert _files_under(tmp_path / "cache") == []


def test_corrupt_cached_file_is_reported(server: SimpleNamespace, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "input.txt"
    dest.parent.mkdir()
    dest.write_bytes(server.body[:-10])
    with pytest.raises(DataError, match="delete it") as err:
        data.download(server.url, dest, server.sha)
    assert str(dest) in str(err.value)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connections are refused


def test_unreachable_server_says_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/input.txt"
    monkeypatch.setitem(data.DATASETS, "tiny", (url, "0" * 64))
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        CharDataModule(dataset="tiny", data_dir=str(cache))
    message = str(err.value)
    assert "--data.path" in message
    assert str(cache / "tiny" / "input.txt") in message
    assert url in message
    assert _files_under(cache) == []


def test_http_error_is_a_data_error(server: SimpleNamespace, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "input.txt"
    with pytest.raises(DataError, match="--data.path"):
        data.download(server.url.replace("corpus.txt", "missing.txt"), dest, server.sha)
    assert not dest.exists()


def test_temp_files_are_hidden_and_in_the_same_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", spy)
    dest = tmp_path / "sub" / "file.bin"
    data.atomic_write_bytes(dest, b"abc")
    assert dest.read_bytes() == b"abc"
    (src, dst), *_ = seen
    assert Path(src).parent == dest.parent and Path(src).name.startswith(".") and dst == str(dest)
    assert _files_under(tmp_path) == [dest]
