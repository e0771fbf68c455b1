"""Bad inputs through the real entry points: one clear message, a non-zero exit, no traceback, nothing written.

Every row of ``ROWS`` runs ``cli_main`` in this process (``SystemExit`` and stderr captured) or, where no CLI
path exists, the public API, inside a fresh working folder. Each row asserts that the message names the
offending option or file and what would be valid, and that neither the working folder (logs, checkpoints,
data cache) nor the shared checkpoint's folder gained or changed a file. One row is repeated through
``python cli.py`` in a subprocess to check the real process: exit status 2 and a stderr without a traceback.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO, make_text

import spectral_lightning.data as data
from spectral_lightning import SpectralLM
from spectral_lightning.cli import cli_main
from spectral_lightning.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter", "ignore:.*logging interval")

TINY = [
    "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32",
    "--data.block_size", "16", "--data.batch_size", "4", "--data.batches_per_epoch", "2",
    "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", "out",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--seed_everything", "0",
]  # fmt: skip


def fit(*extra: str, path: str = "tiny.txt") -> list[str]:
    """``fit`` on a local text file with a tiny model, plus ``extra`` options."""
    return ["fit", "--data.path", path, *TINY, *extra]


def fit_download(*extra: str) -> list[str]:
    """``fit`` on the named dataset (downloaded into ``cache``), plus ``extra`` options."""
    return ["fit", "--data.dataset", "tinyshakespeare", "--data.data_dir", "cache", *TINY, *extra]


@dataclass
class Env:
    """What a row may use: its working folder (the cwd), a local HTTP server and a trained checkpoint."""

    dir: Path
    server: str
    ckpt: Path  # last.ckpt of a tiny run on make_text() (17 characters), 2 steps
    monkeypatch: pytest.MonkeyPatch

    @property
    def ckpt_root(self) -> Path:
        """The folder that run worked in (its ``out/lightning_logs/version_0/checkpoints`` holds ``ckpt``)."""
        return self.ckpt.parents[4]

    def write(self, name: str, content: str | bytes) -> str:
        path = self.dir / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return name

    def serve_dataset(self, url: str, sha256: str) -> None:
        self.monkeypatch.setitem(data.DATASETS, "tinyshakespeare", (url, sha256))


@dataclass
class Row:
    """``build(env)`` returns CLI arguments, or (``api=True``) a function that must raise ``ConfigError``."""

    id: str
    build: Callable[[Env], list[str] | Callable[[], object]]
    expect: tuple[str, ...]
    api: bool = False


OPTION_TYPO_YAML = """\
model:
  parameterization:
    class_path: spectral_lightning.DCT
    init_args:
      compresion: 3
"""
GOOD = make_text(4_000, seed=1)  # what the local server serves as the dataset
GOOD_SHA = hashlib.sha256(GOOD.encode()).hexdigest()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _under_a_file(env: Env, name: str) -> str:
    """A folder path that cannot be created because its parent is a regular file (works even as root)."""
    env.write(f"{name}.file", "not a folder")
    return f"{name}.file/sub"


def _read_only_dir(env: Env) -> str:
    """A folder that cannot be written: chmod 0o555, or, where chmod does not stop writes (root), a path under
    a regular file."""
    folder = env.dir / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores the mode bits
        return _under_a_file(env, "locked_root")
    return "locked"


def _generate_unknown_prompt(env: Env) -> Callable[[], object]:
    model = SpectralLM.load_from_checkpoint(env.ckpt, map_location="cpu")
    return lambda: model.generate("the cat Xyz", max_new_tokens=5, seed=0)


def _other_vocab_text(env: Env) -> str:
    return env.write("other.txt", make_text(4_000).upper())


ROWS = [
    # -- model options ------------------------------------------------------------------------------------
    Row("unknown_strategy", lambda e: fit("--model.parameterization", "fourier"),
        ("unknown parameterization 'fourier'", "registered names:", "dct", "dense", "lowrank")),
    Row("class_path_not_importable", lambda e: fit("--model.parameterization", "spectral_lightning.Nope"),
        ("class_path 'spectral_lightning.Nope' cannot be imported", "registered name",
         "dct, dense, kronecker, lowrank, monarch")),
    Row("compression_below_1", lambda e: fit("--model.parameterization", "spectral_lightning.DCT",
                                             "--model.parameterization.init_args.compression", "0.5"),
        ("compression=0.5", ">= 1")),
    Row("k_larger_than_mn", lambda e: fit("--model.parameterization", "spectral_lightning.DCT",
                                          "--model.parameterization.init_args.k", "100000"),
        ("k=100000", "96x32 weight", "[1, 3072]")),
    Row("rank_too_large", lambda e: fit("--model.parameterization", "spectral_lightning.LowRank",
                                        "--model.parameterization.init_args.rank", "100"),
        ("rank=100", "[1, 32]")),
    Row("unknown_selection", lambda e: fit("--model.parameterization", "spectral_lightning.DCT",
                                           "--model.parameterization.init_args.selection", "highpass"),
        ("model.parameterization.init_args.selection='highpass' on the command line is not valid",
         "expected one of: 'lowpass', 'zigzag', 'random'")),
    Row("strategy_option_typo", lambda e: fit("--config", e.write("opt.yaml", OPTION_TYPO_YAML)),
        ("unknown option model.parameterization.init_args.compresion of spectral_lightning.DCT in opt.yaml",
         "did you mean model.parameterization.init_args.compression?")),
    Row("n_layer_zero", lambda e: fit("--model.n_layer", "0"), ("n_layer=0", "positive integer")),
    Row("n_embd_negative", lambda e: fit("--model.n_embd", "-1"), ("n_embd=-1", "positive integer")),
    Row("n_embd_not_divisible_by_n_head", lambda e: fit("--model.n_embd", "30", "--model.n_head", "4"),
        ("n_embd=30", "n_head=4", "choose n_head among [1, 2, 3, 5, 6, 10, 15, 30]")),
    Row("pattern_matches_no_module", lambda e: fit("--model.parameterize", "[blocks.*.attn.qkvx]"),
        ("blocks.*.attn.qkvx", "match no linear layer", "blocks.0.attn.qkv, blocks.0.attn.proj")),
    Row("lr_negative", lambda e: fit("--model.lr", "-1"), ("model.lr=-1.0", "lr > 0")),
    Row("dropout_one", lambda e: fit("--model.dropout", "1.0"), ("dropout=1.0", "[0, 1)")),
    Row("dropout_from_negative_step", lambda e: fit("--model.dropout", "0.1", "--model.dropout_from_step", "-1"),
        ("model.dropout_from_step=-1", "a step >= 0")),
    Row("dropout_from_step_without_dropout", lambda e: fit("--model.dropout_from_step", "5"),
        ("model.dropout_from_step=5", "needs model.dropout > 0 (it is 0.0)", "or set it to 0")),
    # -- YAML -----------------------------------------------------------------------------------------------
    Row("yaml_unknown_key", lambda e: fit("--config", e.write("typo.yaml", "model:\n  n_layr: 2\n")),
        ("unknown option model.n_layr in typo.yaml", "did you mean model.n_layer?", "fit --help lists every option")),
    Row("yaml_wrong_type", lambda e: fit("--config", e.write("type.yaml", "model:\n  n_layer: two\n")),
        ("model.n_layer='two' in type.yaml is not valid: expected an integer",)),
    Row("config_before_subcommand", lambda e: ["--config", e.write("early.yaml", "model:\n  n_layer: 1\n"), *fit()],
        ("option model.n_layer in early.yaml comes before the subcommand", "nest the file's options under 'fit:'")),
    Row("unknown_command_line_option", lambda e: fit("--trainer.max_stepz", "3"),
        ("unknown option trainer.max_stepz on the command line", "did you mean trainer.max_steps?")),
    Row("precision_not_a_choice", lambda e: fit("--trainer.precision", "bf17"),
        ("trainer.precision='bf17' on the command line is not valid", "'bf16-mixed'", "'32-true'", "'16-mixed'")),
    Row("missing_config_file", lambda e: fit("--config", "nope.yaml"),
        ("--config file", "nope.yaml does not exist", "expected a YAML file such as configs/dct4x.yaml")),
    # -- data -----------------------------------------------------------------------------------------------
    Row("block_size_exceeds_validation_split", lambda e: fit(path=e.write("short.txt", "abcdefghij" * 10)),
        ("validation split of short.txt has 10 characters", "data.block_size + 1 = 17", "smaller block_size")),
    Row("missing_data_file", lambda e: fit(path="nope.txt"), ("data file nope.txt does not exist", "--data.path")),
    Row("empty_data_file", lambda e: fit(path=e.write("empty.txt", "")), ("empty.txt is empty", "non-empty")),
    Row("non_utf8_data_file", lambda e: fit(path=e.write("latin1.txt", "caf\xe9 ol\xe9 ".encode("latin-1") * 50)),
        ("latin1.txt is not UTF-8", "byte 3")),
    Row("unknown_dataset", lambda e: ["fit", "--data.dataset", "shakespear", *TINY],
        ("data.dataset='shakespear'", "tinyshakespeare", "--data.path")),
    Row("val_fraction_out_of_range", lambda e: fit("--data.val_fraction", "1.5"),
        ("data.val_fraction=1.5", "(0, 1)")),
    Row("batch_size_zero", lambda e: fit("--data.batch_size", "0"), ("data.batch_size=0", "positive integer")),
    # -- downloads ------------------------------------------------------------------------------------------
    Row("download_checksum_mismatch",
        lambda e: (e.serve_dataset(f"{e.server}/corrupted.txt", GOOD_SHA), fit_download())[1],
        ("has SHA-256", f"expected {GOOD_SHA}", "nothing was saved")),
    Row("download_unreachable_no_cache",
        lambda e: (e.serve_dataset(f"http://127.0.0.1:{_closed_port()}/input.txt", GOOD_SHA), fit_download())[1],
        ("could not download", "no cached copy exists at cache/tinyshakespeare/input.txt", "--data.path")),
    Row("cached_copy_corrupt",
        lambda e: ((e.dir / "cache" / "tinyshakespeare").mkdir(parents=True),
                   e.write("cache/tinyshakespeare/input.txt", "tampered"), fit_download())[2],
        ("cached file cache/tinyshakespeare/input.txt", "delete it",
         f"expected SHA-256 {data.TINY_SHAKESPEARE_SHA256}")),
    Row("data_cache_not_writable",
        lambda e: (e.serve_dataset(f"{e.server}/good.txt", GOOD_SHA),
                   fit_download("--data.data_dir", _under_a_file(e, "cache")))[1],
        ("cannot write the data cache cache.file/sub/tinyshakespeare/input.txt", "--data.data_dir")),
    # -- checkpoints ----------------------------------------------------------------------------------------
    Row("ckpt_from_another_vocabulary", lambda e: fit("--ckpt_path", str(e.ckpt), path=_other_vocab_text(e)),
        ("was trained on a vocabulary of 17 characters", "this run's data has a vocabulary of",
         "use the text (and tokenizer) it was trained on")),
    Row("ckpt_truncated",
        lambda e: fit("--ckpt_path", e.write("half.ckpt", e.ckpt.read_bytes()[: e.ckpt.stat().st_size // 2])),
        ("--ckpt_path half.ckpt is not a complete checkpoint", "truncated, corrupt or not a checkpoint")),
    Row("ckpt_corrupt", lambda e: fit("--ckpt_path", e.write("noise.ckpt", bytes(range(256)) * 64)),
        ("--ckpt_path noise.ckpt is not a complete checkpoint", "truncated, corrupt or not a checkpoint")),
    Row("ckpt_missing", lambda e: fit("--ckpt_path", "runs/none.ckpt"),
        ("--ckpt_path runs/none.ckpt does not exist", "'last'")),
    Row("ckpt_last_of_another_model_size",
        lambda e: fit("--trainer.default_root_dir", str(e.ckpt_root / "out"), "--ckpt_path", "last",
                      "--model.n_embd", "64"),
        ("lightning_logs/version_0/checkpoints/last.ckpt does not fit this model",
         "model.wte.weight has shape (17, 32), this model (17, 64)", "use the model options of the run")),
    # -- outputs --------------------------------------------------------------------------------------------
    Row("logger_save_dir_not_writable",
        lambda e: fit("--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
                      "--trainer.logger.save_dir", _under_a_file(e, "logs")),
        ("cannot write to trainer.logger.init_args.save_dir=logs.file/sub", "is a file, not a folder")),
    Row("default_root_dir_read_only", lambda e: fit("--trainer.default_root_dir", _read_only_dir(e)),
        ("cannot write to trainer.default_root_dir=locked", "choose a writable folder")),
    # -- public API (no CLI path) ------------------------------------------------------------------------------
    Row("prompt_character_not_in_vocabulary", _generate_unknown_prompt,
        ("characters 'Xyz' are not in the model's vocabulary of 17 characters", "'\\n .abcdeghimnorst'"), api=True),
]  # fmt: skip


# -- fixtures -------------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base-class signature)
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("served")
    (root / "good.txt").write_text(GOOD, encoding="utf-8")
    (root / "corrupted.txt").write_text(GOOD[:-1] + "!", encoding="utf-8")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of the tiny model after 2 steps on ``make_text()`` (17 characters)."""
    root = tmp_path_factory.mktemp("trained")
    (root / "tiny.txt").write_text(make_text(), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        cli_main(
            fit(
                "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_last=true", "--data.val_fraction=0.03"
            )
        )
    finally:
        os.chdir(cwd)
    return root / "out/lightning_logs/version_0/checkpoints/last.ckpt"


def snapshot(*folders: Path) -> dict[str, tuple[int, int] | None]:
    """Every file (size, mtime) and folder (None) under ``folders``."""
    tree: dict[str, tuple[int, int] | None] = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames:
                tree[os.path.join(dirpath, name)] = None
            for name in filenames:
                st = os.stat(os.path.join(dirpath, name))
                tree[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return tree


@pytest.fixture
def env(tmp_path: Path, server: str, trained_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.txt").write_text(make_text(), encoding="utf-8")
    monkeypatch.chdir(work)
    yield Env(work, server, trained_ckpt, monkeypatch)
    for path in work.rglob("*"):  # undo chmod so pytest can clean up
        if path.is_dir():
            path.chmod(0o755)


# -- the table --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_one_clear_error_and_writes_nothing(
    row: Row, env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    built = row.build(env)
    before = snapshot(env.dir, env.ckpt_root)
    capsys.readouterr()
    if row.api:
        with pytest.raises(ConfigError) as err:
            built()
        message = str(err.value)
        assert "\n" not in message
    else:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(built)
        assert exit_info.value.code == 2
        stderr = capsys.readouterr().err
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, stderr
        assert "usage:" not in stderr  # parsing errors too are the one line, without jsonargparse's usage dump
        message = errors[0]
    for part in row.expect:
        assert part in message, f"{part!r} not in {message!r}"
    assert snapshot(env.dir, env.ckpt_root) == before


# -- the real process -------------------------------------------------------------------------------------------

# Two rows check the real process (the rows above share their code paths): a damaged checkpoint, the one
# LightningCLI itself reads before our checks run, and a parsing error, reported by jsonargparse's parser.
PROCESS_ROWS = [row for row in ROWS if row.id in ("ckpt_truncated", "yaml_unknown_key")]


@pytest.mark.parametrize("row", PROCESS_ROWS, ids=[row.id for row in PROCESS_ROWS])
def test_cli_process_exits_2_without_traceback(row: Row, env: Env) -> None:
    args = row.build(env)
    before = snapshot(env.dir, env.ckpt_root)
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args],
        cwd=env.dir,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr
    for part in row.expect:
        assert part in proc.stderr
    assert snapshot(env.dir, env.ckpt_root) == before
