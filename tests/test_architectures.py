"""``--model.architecture gpt | llama | hf``: every architecture trains through cli.py, reloads from its checkpoint
with the same val loss, exports and generates; the default patterns mean each architecture's block linears."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import REPO, make_text, printed_config
from lightning import LightningDataModule

from spectral_lightning import SpectralLM, TokenDataModule
from spectral_lightning.architectures import patterns_for
from spectral_lightning.checkpoints import load_model, read_checkpoint
from spectral_lightning.cli import cli_main
from spectral_lightning.export import export
from spectral_lightning.generate import generate
from spectral_lightning.model import BLOCK_LINEARS

DEBUG = [
    "--data.block_size", "16", "--data.batch_size", "4", "--data.batches_per_epoch", "4",
    "--trainer.max_steps", "4", "--trainer.limit_val_batches", "3", "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false", "--model.warmup_steps", "1", "--seed_everything", "0",
]  # fmt: skip
DCT4 = ["--model.parameterization", "spectral_lightning.DCT", "--model.parameterization.init_args.compression", "4"]
GPT2 = '{"class_path": "transformers.GPT2Config", "init_args": {"n_layer": 2, "n_head": 2, "n_embd": 32}}'
ARCHITECTURES = {
    "gpt": ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32"],
    "llama": ["--model.architecture", "llama", "--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "32",
              "--model.mlp_hidden", "64"],
    "hf": ["--model.architecture", "hf", "--model.hf_config", GPT2],
}  # fmt: skip
# The linears each architecture parameterizes by default (per block), and how many blocks the debug model has.
BLOCK_NAMES = {
    "gpt": ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"),
    "llama": ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
              "mlp.down_proj"),
    "hf": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}  # fmt: skip


def val_loss(module: SpectralLM, text: Path, dm: LightningDataModule | None = None) -> float:
    """Mean next-token loss over every validation window of the run's data module ``dm`` (default: the characters
    of ``text``), which is what val/loss logs."""
    from spectral_lightning.data import CharDataModule

    dm = dm or CharDataModule(path=str(text), block_size=16, batch_size=4)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            logits = module(batch[:, :-1]).float()
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
            total += float(loss)
            count += batch[:, 1:].numel()
    return total / count


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_trains_reloads_exports_and_generates(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "hf":
        pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "tiny.txt"
    text.write_text(make_text(6_000), encoding="utf-8")
    args = ["fit", "--data.path", str(text), *DEBUG, *ARCHITECTURES[name], *DCT4, "--trainer.default_root_dir", "out"]
    cli = cli_main(args)
    module = cli.model
    blocks = {n.rsplit(".", 2)[0] for n in module.model.parameterized}
    expected = {f"{b}.{suffix}" for b in blocks for suffix in BLOCK_NAMES[name]}
    assert set(module.model.parameterized) == expected and len(blocks) == (1 if name == "gpt" else 2)
    assert cli.trainer.global_step == 4

    (ckpt,) = (tmp_path / "out").rglob("*.ckpt")
    assert read_checkpoint(ckpt).architecture == name
    reloaded = SpectralLM.load(ckpt)
    assert reloaded.hparams.architecture == name
    module.eval()
    assert val_loss(reloaded, text) == pytest.approx(val_loss(module, text), rel=1e-6)

    for kind in ("compressed", "dense"):
        export(ckpt, kind, tmp_path / f"{kind}.pt")
        model, tokenizer = load_model(tmp_path / f"{kind}.pt")
        x = torch.randint(len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(model(x), reloaded.model(x), rtol=1e-5, atol=1e-5)
        samples = generate(model, tokenizer, "the cat", max_new_tokens=8, seed=0)
        assert len(samples[0]) == len("the cat") + 8 and set(samples[0]) <= set(tokenizer.vocab)


def test_default_patterns_stand_for_each_architectures_block_linears() -> None:
    assert patterns_for("gpt", None) == list(BLOCK_LINEARS)
    assert patterns_for("llama", list(BLOCK_LINEARS)) == ["blocks.*.attn.*_proj", "blocks.*.mlp.*_proj"]
    assert patterns_for("llama", [*BLOCK_LINEARS, "lm_head"])[-1] == "lm_head"  # `parameterize+ lm_head`
    assert patterns_for("hf", None) is None  # every linear but the output head
    assert patterns_for("hf", ["transformer.h.*.mlp.*"]) == ["transformer.h.*.mlp.*"]


@pytest.mark.parametrize("architecture", ["gpt", "llama"])
def test_set_dropout_reaches_every_dropout_of_the_built_in_models(architecture: str) -> None:
    """Late dropout (``dropout_from_step``) switches the model's dropout off and on through ``set_dropout``: every
    ``nn.Dropout`` and the attention probabilities' dropout; in training mode the output then follows ``p``."""
    module = SpectralLM(vocab="abcdefgh", block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.3,
                        architecture=architecture, dropout_from_step=3)  # fmt: skip
    model, idx = module.model.train(), torch.randint(0, 8, (2, 8))
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    attention = [m for m in model.modules() if isinstance(getattr(m, "dropout", None), float)]
    assert len(dropouts) >= 2 * 2 + 1 and len(attention) == 2  # residual branches and embedding; one per block
    model.set_dropout(0.0)
    assert {m.p for m in dropouts} == {m.dropout for m in attention} == {0.0}
    assert torch.equal(model(idx), model.eval()(idx))  # no dropout left: training mode computes eval's output
    model.train().set_dropout(0.3)
    assert {m.p for m in dropouts} == {m.dropout for m in attention} == {0.3}
    assert not torch.equal(model(idx), model.eval()(idx))


def test_hf_needs_a_config_and_names_what_is_valid() -> None:
    pytest.importorskip("transformers")
    from spectral_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="model.hf_config=None is not valid for model.architecture=hf"):
        SpectralLM(vocab="abc", architecture="hf")
    with pytest.raises(ConfigError, match="cannot be imported"):
        SpectralLM(vocab="abc", architecture="hf", hf_config={"class_path": "transformers.NoSuchConfig"})


LLAMA_CONFIGS = sorted((REPO / "configs").glob("llama*/*.yaml"))
LLAMA_DEBUG = ["--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "32", "--model.mlp_hidden", "64",
               "--data.block_size", "16", "--data.batch_size", "4", "--data.batches_per_epoch", "3",
               "--trainer.max_steps", "3", "--trainer.limit_val_batches", "2", "--trainer.accelerator", "cpu",
               "--trainer.enable_progress_bar", "false"]  # fmt: skip


def test_llama_configs_are_the_papers_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each size's dense config builds the paper's shapes on BPE tokens; the other configs of that size print the
    same options except the parameterization and the run's name (so they build the same shapes, and the full-size
    models need not be built eight times)."""
    monkeypatch.chdir(tmp_path)  # the token shards of README.md go to data/README here
    assert {c.parent.name for c in LLAMA_CONFIGS} == {"llama60m", "llama130m"}
    assert {c.stem for c in LLAMA_CONFIGS} == {"dense", "dct2x", "dct4x", "lowrank"}
    shapes = {"llama60m": (8, 8, 512, 1376), "llama130m": (12, 12, 768, 2048)}
    for size, shape in shapes.items():
        args = ["--config", str(REPO / "configs" / size / "dense.yaml"), "--data.path", str(REPO / "README.md")]
        cli = cli_main(args, run=False)
        hp, data = cli.model.hparams, cli.datamodule
        assert hp.architecture == "llama" and data.hparams.block_size == 256
        # Subword tokens: a 32,000-token BPE asked for; README.md alone supports fewer merges.
        assert isinstance(data, TokenDataModule) and data.hparams.vocab_size == 32_000
        assert data.out == Path("data/README") and 257 < len(data.tokenizer) <= 32_000
        assert (hp.n_layer, hp.n_head, hp.n_embd, cli.model.model.config.mlp_hidden) == shape
        dense = printed_options(args)
        for config in (c for c in LLAMA_CONFIGS if c.parent.name == size and c.stem != "dense"):
            options = printed_options(["--config", str(config), *args[2:]])
            differ = {k for k in dense.keys() | options.keys() if dense.get(k) != options.get(k)}
            assert {k.split(".")[1] for k in differ} == {"parameterization", "logger"}, (config, sorted(differ))
            assert options["trainer.logger.init_args.name"] == f"{size}-{config.stem}"


def printed_options(args: list[str]) -> dict[str, object]:
    """What ``fit <args> --print_config`` prints (no model is built), flattened to dotted keys."""
    flat: dict[str, object] = {}

    def walk(value: object, prefix: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = value

    walk(printed_config(args), "")
    return flat


@pytest.mark.parametrize("config", [c for c in LLAMA_CONFIGS if c.parent.name == "llama60m"], ids=lambda c: c.stem)
def test_llama60m_config_trains_at_debug_size_reloads_exports_and_generates(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "tiny.txt"  # 20 paragraphs: the documents of the validation split
    text.write_text("\n\n".join(make_text(600, seed) for seed in range(20)), encoding="utf-8")
    cli = cli_main(["fit", "--config", str(config), "--data.path", str(text), *LLAMA_DEBUG,
                    "--trainer.default_root_dir", "out"])  # fmt: skip
    (ckpt,) = (tmp_path / "out").rglob("last.ckpt")
    reloaded = SpectralLM.load(ckpt)
    assert type(reloaded.model) is type(cli.model.model) and reloaded.parameterization == cli.model.parameterization
    cli.model.eval()
    dm = cli.datamodule
    assert val_loss(reloaded, text, dm) == pytest.approx(val_loss(cli.model, text, dm), rel=1e-6)
    assert float(cli.trainer.callback_metrics["val/loss"]) > 0 and dm.hparams.block_size == 16
    export(ckpt, "dense", tmp_path / "dense.pt")
    model, tokenizer = load_model(tmp_path / "dense.pt")
    x = torch.randint(len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(x), reloaded.model(x), rtol=1e-5, atol=1e-5)
    assert generate(model, tokenizer, "the", max_new_tokens=5, seed=0)[0].startswith("the")
