"""One reader for every file a model lives in: kinds, checks, rebuilds, and one message per bad file everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_text, quiet_trainer

from spectral_lightning import CharDataModule, ConfigError, SpectralLM
from spectral_lightning import generate as generate_cli
from spectral_lightning.checkpoints import (
    COMPRESSED_FORMAT,
    load_model,
    read_checkpoint,
)
from spectral_lightning.cli import cli_main
from spectral_lightning.export import compressed_export, dense_export, export, save_atomic
from spectral_lightning.export import main as export_cli

TINY = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32}
PARAMETERIZATION = {"class_path": "dct", "init_args": {"compression": 4, "selection": "random"}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DCT model trained 3 steps: its .ckpt, its compressed and dense exports, and the text file."""
    root = tmp_path_factory.mktemp("ckpts")
    text = root / "tiny.txt"
    text.write_text(make_text(), encoding="utf-8")
    dm = CharDataModule(path=str(text), block_size=16, batch_size=4, batches_per_epoch=3)
    module = SpectralLM(vocab=dm.vocab, **TINY, parameterization=PARAMETERIZATION, lr=1e-2, warmup_steps=0)
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(module, dm)
    trainer.save_checkpoint(root / "run.ckpt")
    export(root / "run.ckpt", "compressed", root / "compressed.pt")
    export(root / "run.ckpt", "dense", root / "dense.pt")
    return {
        "lightning": root / "run.ckpt",
        "compressed": root / "compressed.pt",
        "dense": root / "dense.pt",
        "text": text,
    }


@pytest.mark.parametrize("kind", ["lightning", "compressed", "dense"])
def test_every_kind_is_recognised_and_rebuilds_the_same_logits(files: dict[str, Path], kind: str) -> None:
    ckpt = read_checkpoint(files[kind])
    assert ckpt.kind == kind
    reference, tokenizer = load_model(files["lightning"])
    model, other = load_model(files[kind])
    assert other.vocab == tokenizer.vocab == ckpt.vocab
    assert model.config == reference.config
    x = torch.randint(len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), reference(x), rtol=1e-6, atol=1e-6)


def test_module_load_rebuilds_the_trained_parameterization_and_refuses_dense(files: dict[str, Path]) -> None:
    for kind in ("lightning", "compressed"):
        module = SpectralLM.load(files[kind])
        assert module.parameterization.spec() == {
            "class_path": "spectral_lightning.parameterizations.dct.DCT",
            "init_args": {**module.parameterization.options(), **PARAMETERIZATION["init_args"]},
        }
        assert not module.training
    with pytest.raises(ConfigError, match="is a dense export: it holds no parameterization"):
        SpectralLM.load(files["dense"])


def test_a_compressed_export_of_the_earlier_layout_still_loads(files: dict[str, Path], tmp_path: Path) -> None:
    """Exports written before the parameterization was serialized by ``spec()`` named it ``strategy``."""
    module = SpectralLM.load(files["compressed"])
    old = compressed_export(module)
    old["strategy"] = old.pop("parameterization")
    save_atomic(old, tmp_path / "old.pt")
    reloaded = SpectralLM.load(tmp_path / "old.pt")
    assert reloaded.parameterization == module.parameterization
    for key, value in module.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[key], value), key


def test_checks_name_the_file_and_what_differs(files: dict[str, Path]) -> None:
    ckpt = read_checkpoint(files["lightning"], option="model.init_from")
    ckpt.check_vocab(ckpt.vocab)
    with pytest.raises(ConfigError, match=r"model.init_from .*run.ckpt was trained on a vocabulary of 17 characters"):
        ckpt.check_vocab(ckpt.vocab + "Z")
    module = SpectralLM.load(files["lightning"])
    ckpt.check_state_dict(module.state_dict())
    wider = SpectralLM(vocab=ckpt.vocab, **{**TINY, "n_embd": 64}, parameterization=PARAMETERIZATION)
    with pytest.raises(ConfigError, match=r"model.wte.weight has shape \(17, 32\), this model \(17, 64\)"):
        ckpt.check_state_dict(wider.state_dict())
    with pytest.raises(ConfigError, match="n_embd: 32 vs 64"):
        ckpt.check_sizes(wider.model.config)
    with pytest.raises(ConfigError, match="is a compressed export, not a Lightning checkpoint"):
        read_checkpoint(files["compressed"]).require_lightning()


def _bad_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    half = tmp_path / "half.ckpt"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(bytes(range(256)) * 64)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)  # a valid torch file, but not ours
    return {"missing": tmp_path / "missing.ckpt", "truncated": half, "noise": noise, "foreign": other}


def _one_error_line(capsys: pytest.CaptureFixture[str], run) -> str:  # noqa: ANN001 (a callable)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("bad", ["missing", "truncated", "noise", "foreign"])
def test_the_same_bad_file_gives_the_same_one_line_error_at_every_entry_point(
    files: dict[str, Path], bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = str(_bad_files(tmp_path, files["lightning"])[bad])
    monkeypatch.chdir(tmp_path)
    fit = ["fit", "--data.path", str(files["text"]), "--data.block_size", "16", "--model.n_layer", "1",
           "--model.n_head", "2", "--model.n_embd", "32", "--trainer.accelerator", "cpu",
           "--trainer.default_root_dir", "out", "--trainer.max_steps", "1"]  # fmt: skip
    messages = {
        "fit": _one_error_line(capsys, lambda: cli_main([*fit, "--ckpt_path", path])),
        "generate": _one_error_line(capsys, lambda: generate_cli.main(["--ckpt_path", path, "--max_new_tokens", "2"])),
        "export": _one_error_line(capsys, lambda: export_cli(["--ckpt_path", path, "--output", "x.pt"])),
    }
    init_from = _one_error_line(capsys, lambda: cli_main([*fit, "--model.init_from", path]))
    assert messages["fit"] == messages["generate"] == messages["export"]
    assert messages["fit"].startswith(f"error: --ckpt_path {path} ")
    assert init_from == messages["fit"].replace("--ckpt_path", "model.init_from")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.pt").exists()


def test_an_export_given_to_fit_ckpt_path_points_to_init_from(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--data.path", str(files["text"]), "--trainer.accelerator", "cpu", "--trainer.max_steps", "1",
            "--ckpt_path", str(files["compressed"])]  # fmt: skip
    message = _one_error_line(capsys, lambda: cli_main(args))
    assert "is a compressed export, not a Lightning checkpoint" in message and "--model.init_from" in message


def test_a_foreign_lightning_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}, "hyper_parameters": {"width": 3}}, path)
    with pytest.raises(ConfigError, match="Lightning checkpoint of another model"):
        read_checkpoint(path)


def test_export_formats_carry_what_load_model_needs(files: dict[str, Path]) -> None:
    module = SpectralLM.load(files["lightning"])
    assert compressed_export(module)["format"] == COMPRESSED_FORMAT
    assert set(dense_export(module.model, module.hparams.vocab)) == {
        "format",
        "architecture",
        "config",
        "vocab",
        "state_dict",
    }


def test_a_dense_export_without_an_architecture_is_a_gpt(files: dict[str, Path], tmp_path: Path) -> None:
    """Dense exports written before there was a choice of architecture hold no ``architecture`` key."""
    old = torch.load(files["dense"], weights_only=True)
    assert old.pop("architecture") == "gpt"
    save_atomic(old, tmp_path / "old_dense.pt")
    model, _ = load_model(tmp_path / "old_dense.pt")
    reference, _ = load_model(files["dense"])
    x = torch.randint(17, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x), reference(x))
