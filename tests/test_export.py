"""Dense and compressed exports, and initializing any parameterization from a trained checkpoint (``init_from``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, make_text, quiet_trainer

from spectral_lightning import CharDataModule, ConfigError, SpectralLM
from spectral_lightning.checkpoints import COMPRESSED_FORMAT, DENSE_FORMAT, load_model
from spectral_lightning.cli import cli_main
from spectral_lightning.export import compressed_export, dense_export, export, main, to_bytes
from spectral_lightning.model import GPT, GPTConfig
from spectral_lightning.parameterizations import Dense, DenseLinear

TINY = {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32}

# Each row: a parameterization as the CLI gives it, and whether its export must hold fewer bytes than the dense one.
STRATEGIES = {
    "dense": ({"class_path": "dense"}, False),
    "dct_lowpass_c4": ({"class_path": "dct", "init_args": {"compression": 4, "selection": "lowpass"}}, True),
    "dct_random_c2": ({"class_path": "dct", "init_args": {"compression": 2, "selection": "random", "seed": 3}}, True),
    "lowrank": ({"class_path": "lowrank", "init_args": {"rank": 4}}, True),
    "monarch_c4": ({"class_path": "monarch", "init_args": {"compression": 4}}, True),
    "kronecker_c4": ({"class_path": "kronecker", "init_args": {"compression": 4}}, True),
    "sparse_lowrank_c4": ({"class_path": "sparse_lowrank", "init_args": {"compression": 4}}, True),
}


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory: pytest.TempPathFactory) -> CharDataModule:
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return CharDataModule(path=str(path), block_size=16, batch_size=8, batches_per_epoch=4)


def train(dm: CharDataModule, parameterization: dict, path: Path, steps: int = 4) -> Path:
    """A tiny model trained a few steps (so biases and norms move off their init), saved as a .ckpt."""
    L.seed_everything(0)
    module = SpectralLM(vocab=dm.vocab, **TINY, parameterization=parameterization, lr=1e-2, warmup_steps=0)
    trainer = quiet_trainer(max_steps=steps)
    trainer.fit(module, dm)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module", params=list(STRATEGIES))
def trained(request: pytest.FixtureRequest, datamodule: CharDataModule, tmp_path_factory: pytest.TempPathFactory):
    name = request.param
    spec, smaller = STRATEGIES[name]
    ckpt = train(datamodule, spec, tmp_path_factory.mktemp(name) / "last.ckpt")
    return name, ckpt, smaller


@pytest.fixture(scope="module")
def dense_ckpt(datamodule: CharDataModule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(datamodule, {"class_path": "dense"}, tmp_path_factory.mktemp("dense_src") / "last.ckpt", steps=8)


@torch.no_grad()
def val_loss(model: torch.nn.Module, dm: CharDataModule) -> float:
    """Mean next-character cross-entropy over every validation window (what ``val/loss`` logs)."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for batch in dm.val_dataloader():
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(x).float()
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").double()
        count += y.numel()
    return float(total / count)


def tokens(vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab_size, (3, 16), generator=torch.Generator().manual_seed(seed))


# -- dense export ------------------------------------------------------------------------------------------
def test_dense_export_reloads_without_spectral_layers_and_gives_identical_logits(trained, tmp_path: Path) -> None:
    name, ckpt, _ = trained
    module = SpectralLM.load(ckpt)
    biases = [layer.bias for layer in module.model.linears().values() if layer.bias is not None]
    assert any(b.abs().sum() > 0 for b in biases), "training must move the biases, or bias export is untested"

    out = tmp_path / "dense.pt"
    result = export(ckpt, "dense", out)
    assert result.bytes == out.stat().st_size == result.dense_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["dense.pt"]  # no temporary file left behind

    raw = torch.load(out, weights_only=True)  # plain values only
    assert raw["format"] == DENSE_FORMAT and raw["vocab"] == module.hparams.vocab
    reference = GPT(GPTConfig(**raw["config"]), Dense())
    assert list(raw["state_dict"]) == list(reference.state_dict())
    reference.load_state_dict(raw["state_dict"])  # strict: the keys of a plain dense GPT

    model, tokenizer = load_model(out)
    assert tokenizer.vocab == module.hparams.vocab
    assert all(isinstance(layer, DenseLinear) for layer in model.linears().values())
    x = tokens(len(tokenizer))
    expected = module(x)
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=0)
    if name == "dense":
        assert torch.equal(model(x), expected)


# -- compressed export -------------------------------------------------------------------------------------
def test_compressed_export_holds_trainable_values_and_reproduces_val_loss(
    trained, datamodule: CharDataModule, tmp_path: Path
) -> None:
    name, ckpt, smaller = trained
    module = SpectralLM.load(ckpt)
    out = tmp_path / "compressed.pt"
    result = export(ckpt, "compressed", out)

    raw = torch.load(out, weights_only=True)
    assert raw["format"] == COMPRESSED_FORMAT
    assert set(raw) == {"format", "parameterization", "hparams", "vocab", "state_dict"}  # no optimizer state
    assert list(raw["state_dict"]) == list(module.model.state_dict())
    assert not any("basis" in key or "positions" in key for key in raw["state_dict"])
    assert sum(t.numel() for t in raw["state_dict"].values()) == module.model.num_parameters()
    assert raw["parameterization"]["init_args"] == module.parameterization.options()
    assert (result.bytes < 0.9 * result.dense_bytes) == smaller
    assert result.bytes < result.checkpoint_bytes  # the .ckpt also carries AdamW's two moments

    reloaded = SpectralLM.load(out)
    assert reloaded.parameterization == module.parameterization
    assert val_loss(reloaded, datamodule) == val_loss(module, datamodule)


def test_compressed_dct4x_is_at_most_35_percent_of_dense_at_paper_size() -> None:
    vocab = "".join(chr(c) for c in range(32, 97))  # 65 characters, like tiny Shakespeare
    sizes = {}
    for name, spec in {"dense": "dense", "dct4x": {"class_path": "dct", "init_args": {"compression": 4}}}.items():
        module = SpectralLM(vocab=vocab, parameterization=spec)  # the paper's 4 x 128 model
        sizes[name] = len(to_bytes(compressed_export(module)))
        dense_bytes = len(to_bytes(dense_export(module.model, vocab)))
    assert module.model.num_parameters() == 236_544
    assert sizes["dct4x"] <= 0.35 * dense_bytes
    assert abs(sizes["dense"] / dense_bytes - 1) < 0.01


def test_export_command_prints_sizes_and_fails_with_one_line(trained, tmp_path: Path, capsys) -> None:
    _, ckpt, _ = trained
    main(["--ckpt_path", str(ckpt), "--format", "compressed", "--output", str(tmp_path / "c.pt")])
    out = capsys.readouterr().out
    assert "bytes" in out and "of the dense export" in out and (tmp_path / "c.pt").is_file()

    with pytest.raises(SystemExit) as exc:
        main(["--ckpt_path", str(tmp_path / "missing.ckpt"), "--format", "dense", "--output", str(tmp_path / "d.pt")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.ckpt" in err[0]
    assert not (tmp_path / "d.pt").exists()


# -- conversion --------------------------------------------------------------------------------------------
# Each row: the target parameterization, and whether it can represent the dense weights exactly.
CONVERSIONS = {
    "dct_lowpass_c1": ({"class_path": "dct", "init_args": {"compression": 1}}, True),
    "dct_random_c1": ({"class_path": "dct", "init_args": {"compression": 1, "selection": "random"}}, True),
    "lowrank_full": ({"class_path": "lowrank", "init_args": {"rank": 32}}, True),  # min(m, n) = 32
    "dct_lowpass_c4": ({"class_path": "dct", "init_args": {"compression": 4}}, False),
    "lowrank_4": ({"class_path": "lowrank", "init_args": {"rank": 4}}, False),
    "monarch_full": ({"class_path": "monarch", "init_args": {"width": 32}}, True),  # width = min(m, n) = 32
    # A 8×4 (32 values), B at least 32 values: 32 terms represent every tiny-model weight.
    "kronecker_full": ({"class_path": "kronecker", "init_args": {"m1": 8, "n1": 4, "terms": 32}}, True),
    "monarch_c4": ({"class_path": "monarch", "init_args": {"compression": 4}}, False),
    "kronecker_c4": ({"class_path": "kronecker", "init_args": {"compression": 4}}, False),
    "sparse_lowrank_full": ({"class_path": "sparse_lowrank", "init_args": {"rank": 32}}, True),  # min(m, n) = 32
    "sparse_lowrank_c4": ({"class_path": "sparse_lowrank", "init_args": {"compression": 4}}, False),
}


@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_init_from_dense_reproduces_logits_only_at_full_capacity(name: str, dense_ckpt: Path) -> None:
    spec, exact = CONVERSIONS[name]
    dense = SpectralLM.load(dense_ckpt)
    module = SpectralLM(vocab=dense.hparams.vocab, **TINY, parameterization=spec)
    module.initialize_from(dense_ckpt)
    x = tokens(len(dense.hparams.vocab))
    close = torch.allclose(module(x), dense(x), rtol=1e-5, atol=1e-5)
    assert close == exact
    assert torch.equal(module.model.wte.weight, dense.model.wte.weight)


def test_init_from_projection_is_the_best_approximation_on_the_support(dense_ckpt: Path) -> None:
    dense = SpectralLM.load(dense_ckpt)
    module = SpectralLM(vocab=dense.hparams.vocab, **TINY, parameterization="dct")  # lowpass, c = 4
    module.initialize_from(dense_ckpt)
    layer, source = module.model.blocks[0].mlp.fc, dense.model.blocks[0].mlp.fc
    with torch.no_grad():
        residual = source.weight - layer.weight
        # Orthogonal projection: the residual has no component on the kept coefficients.
        c_out = layer.basis_out.double()
        c_in = layer.basis_in.double()
        assert (c_out @ residual.double() @ c_in.t()).abs().max() < 1e-5
        assert 0 < residual.norm() < source.weight.norm()


def test_init_from_runs_once_from_configure_model(dense_ckpt: Path) -> None:
    dense = SpectralLM.load(dense_ckpt)
    spec = CONVERSIONS["dct_lowpass_c1"][0]
    module = SpectralLM(vocab=dense.hparams.vocab, **TINY, parameterization=spec, init_from=str(dense_ckpt))
    x = tokens(len(dense.hparams.vocab))
    assert not torch.allclose(module(x), dense(x), rtol=1e-5, atol=1e-5)  # not applied at construction
    module.configure_model()
    torch.testing.assert_close(module(x), dense(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        module.model.ln_f.weight.add_(1.0)  # "training" after the first configure_model
    module.configure_model()  # e.g. validate after fit: must keep the trained weights
    assert torch.all(module.model.ln_f.weight > 1.5)


def test_init_from_rejects_other_vocabulary_and_sizes(dense_ckpt: Path) -> None:
    vocab = SpectralLM.load(dense_ckpt).hparams.vocab
    with pytest.raises(ConfigError, match="vocabulary"):
        SpectralLM(vocab=vocab + "Z", **TINY).initialize_from(dense_ckpt)
    with pytest.raises(ConfigError, match="n_embd: 32 vs 16"):
        SpectralLM(vocab=vocab, **{**TINY, "n_embd": 16}).initialize_from(dense_ckpt)
    with pytest.raises(ConfigError, match="does not exist"):
        SpectralLM(vocab=vocab, **TINY).initialize_from(dense_ckpt.with_name("nope.ckpt"))


def test_cli_validate_with_init_from_evaluates_the_projected_model(
    dense_ckpt: Path, datamodule: CharDataModule, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["validate", "--config", str(REPO / "configs" / "dct4x.yaml"), "--model.init_from", str(dense_ckpt)]
    args += [f"--model.{k}={v}" for k, v in TINY.items() if k != "block_size"]
    args += [f"--data.path={datamodule.source}", "--data.block_size=16", "--data.batch_size=8"]
    args += ["--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false"]
    cli = cli_main(args)
    expected = SpectralLM(vocab=datamodule.vocab, **TINY, parameterization="dct")
    expected.initialize_from(dense_ckpt)
    logged = float(cli.trainer.callback_metrics["val/loss"])
    assert logged == pytest.approx(val_loss(expected, datamodule), rel=1e-6)
    assert logged > val_loss(SpectralLM.load(dense_ckpt), datamodule)  # the projection loses something


def test_projection_benchmark_reports_kept_energy_and_val_loss(
    dense_ckpt: Path, datamodule: CharDataModule, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``benchmarks/projection.py``: a config at full capacity keeps all of the source (energy 1, the dense
    val loss); a lowpass c = 4 block keeps a share in (0, 1) equal to 1 − ‖residual‖²/‖W‖² (orthogonal
    projection), averaged over the block linears."""
    spec = importlib.util.spec_from_file_location("projection", REPO / "benchmarks" / "projection.py")
    projection = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(projection)
    full = tmp_path / "full.yaml"
    full.write_text("model:\n  parameterization: {class_path: spectral_lightning.DCT, init_args: {compression: 1}}")
    quarter = tmp_path / "quarter.yaml"
    quarter.write_text("model:\n  parameterization: {class_path: spectral_lightning.DCT, init_args: {compression: 4}}")
    args = ["--ckpt_path", str(dense_ckpt), "--configs", str(full), str(quarter), "--val"]
    projection.main([*args, "--data-path", datamodule.hparams.path])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    table = {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:]}
    assert set(table) == {"full", "quarter"}

    dense = SpectralLM.load(dense_ckpt)
    assert table["full"][:4] == ["100.0%", "1.000", "1.000", "1.000"]
    assert float(table["full"][4]) == pytest.approx(val_loss(dense.model, datamodule), abs=1e-3)

    module = SpectralLM(vocab=dense.hparams.vocab, **TINY, parameterization={"class_path": "dct"})
    module.initialize_from(dense_ckpt)
    shares = []
    for name in module.model.parameterized:
        w, r = dense.model.get_submodule(name).weight, module.model.get_submodule(name).weight
        shares.append(float(1 - (w - r).detach().square().sum() / w.detach().square().sum()))
    assert 0 < min(shares) and max(shares) < 1
    assert float(table["quarter"][1]) == pytest.approx(sum(shares) / len(shares), abs=1e-3)
    assert float(table["quarter"][4]) == pytest.approx(val_loss(module.model, datamodule), abs=1e-3)
