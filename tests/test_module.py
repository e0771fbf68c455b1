"""SpectralLM: it learns, checkpoints reload exactly, resuming continues the step, schedule and data stream,
and the optimizer groups and schedule follow the documented rules."""

from __future__ import annotations

import math
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, make_text, quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from spectral_lightning import CharDataModule, ConfigError, ParameterizedLinear, SpectralLM, optim, parameterize
from spectral_lightning.cli import cli_main
from spectral_lightning.data import RandomWindowBatches
from spectral_lightning.parameterizations import DCT, Dense, LowRank, unregister

TINY = dict(n_layer=1, n_head=2, n_embd=32)


def unigram_entropy(text: str) -> float:
    """H(X) in nats of the text's character frequencies."""
    n = len(text)
    return -sum(c / n * math.log(c / n) for c in Counter(text).values())


def bigram_entropy(text: str) -> float:
    """H(X_t | X_{t-1}) in nats, the plug-in estimate on the text itself (optimistic for a bigram model)."""
    pairs, firsts = Counter(zip(text, text[1:], strict=False)), Counter(text[:-1])
    n = len(text) - 1
    return -sum(c / n * math.log(c / firsts[a]) for (a, _), c in pairs.items())


def make_trainer(root: Path, max_steps: int, callbacks: list[Callback] | None = None) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=-1,
        gradient_clip_val=1.0,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks or []),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )


def checkpointing(dirpath: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=dirpath, monitor="val/loss", mode="min", save_top_k=1, save_last=True)


class Recorder(Callback):
    """Records, before every training step, the global step, the optimizer's LR and the batch."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.lrs: list[float] = []
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:  # noqa: ANN001
        self.steps.append(trainer.global_step)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.batches.append(batch.clone())


class Interrupt(Callback):
    """Stops a run hard, as a crash would, just before training step ``at``."""

    class Stop(Exception):
        pass

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.at:
            raise Interrupt.Stop


# -- learning and exact reload ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-layer, d = 64 DCT model trained 200 CPU steps on a learnable 20,000-character text."""
    root = tmp_path_factory.mktemp("trained")
    text = make_text()
    path = root / "text.txt"
    path.write_text(text, encoding="utf-8")
    L.seed_everything(0)
    dm = CharDataModule(path=str(path), block_size=32, batch_size=16, batches_per_epoch=50, seed=0)
    model = SpectralLM(
        vocab=dm.vocab,
        block_size=32,
        n_layer=2,
        n_head=4,
        n_embd=64,
        parameterization=DCT(compression=2.0, selection="zigzag"),
        lr=3e-3,
        warmup_steps=20,
        min_lr=3e-4,
    )
    trainer = make_trainer(root, 200, [checkpointing(root / "ckpt")])
    trainer.fit(model, dm)
    return dict(text=text, dm=dm, model=model, trainer=trainer, ckpt=root / "ckpt", root=root)


def test_200_steps_learn_well_below_unigram_entropy(trained: dict) -> None:
    assert trained["trainer"].global_step == 200
    val_loss = float(trained["trainer"].callback_metrics["val/loss"])
    h1, h2 = unigram_entropy(trained["text"]), bigram_entropy(trained["text"])
    print(f"unigram entropy {h1:.4f} nats, bigram entropy {h2:.4f} nats, val loss after 200 steps {val_loss:.4f}")
    # Measured: H1 = 2.523, H2 = 1.191, val loss ~0.90 (the text's true rate is ~0.8 nats/char).
    assert val_loss < 0.5 * h1
    assert val_loss < h2  # the model uses more than the previous character
    ppl = float(trained["trainer"].callback_metrics["val/ppl"])
    assert ppl == pytest.approx(math.exp(val_loss), rel=1e-4)


def test_checkpoint_reload_reproduces_val_loss_exactly(trained: dict) -> None:
    dm, model = trained["dm"], trained["model"]
    before = make_trainer(trained["root"], 1).validate(model, dm, verbose=False)[0]
    assert before["val/loss"] == float(trained["trainer"].callback_metrics["val/loss"])
    loaded = SpectralLM.load_from_checkpoint(trained["ckpt"] / "last.ckpt")
    after = make_trainer(trained["root"], 1).validate(loaded, dm, verbose=False)[0]
    assert after == before  # val/loss and val/ppl, bit for bit
    best = [p for p in trained["ckpt"].iterdir() if p.name != "last.ckpt"]
    assert len(best) == 1


# -- resume ------------------------------------------------------------------------------------------------


def _resume_setup(text_file: Path) -> tuple[CharDataModule, dict]:
    dm = CharDataModule(path=str(text_file), block_size=16, batch_size=8, batches_per_epoch=10, seed=5)
    hparams = dict(vocab=dm.vocab, block_size=16, **TINY, parameterization="dct", warmup_steps=5, lr=2e-3)
    return dm, hparams


def test_resume_after_interruption_matches_uninterrupted_run(text_file: Path, tmp_path: Path) -> None:
    dm, hparams = _resume_setup(text_file)
    L.seed_everything(1)
    reference, ref_rec = SpectralLM(**hparams), Recorder()
    make_trainer(tmp_path / "ref", 30, [ref_rec]).fit(reference, dm)

    L.seed_everything(1)
    first = SpectralLM(**hparams)
    with pytest.raises(Interrupt.Stop):
        make_trainer(tmp_path, 30, [checkpointing(tmp_path / "ckpt"), Interrupt(at=20)]).fit(first, dm)
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 20

    resumed, rec = SpectralLM(**hparams), Recorder()
    trainer = make_trainer(tmp_path, 30, [checkpointing(tmp_path / "ckpt"), rec])
    trainer.fit(resumed, dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt")

    assert trainer.global_step == 30
    assert rec.steps == list(range(20, 30))
    lr = hparams["lr"]
    assert rec.lrs == pytest.approx([lr * resumed.lr_factor(s, 30) for s in range(20, 30)], rel=1e-12)
    assert rec.lrs == pytest.approx(ref_rec.lrs[20:], rel=1e-12)
    assert ref_rec.lrs[:6] == pytest.approx([lr * (s + 1) / 5 for s in range(5)] + [lr], rel=1e-12)
    stream = RandomWindowBatches(dm.train_data, 16, 8, seed=5, rank=0)
    assert all(torch.equal(b, stream[20 + i]) for i, b in enumerate(rec.batches))  # the data stream continues
    assert all(torch.equal(a, b) for a, b in zip(rec.batches, ref_rec.batches[20:], strict=True))
    for (name, a), b in zip(resumed.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_with_longer_budget_continues_step_and_schedule(text_file: Path, tmp_path: Path) -> None:
    dm, hparams = _resume_setup(text_file)
    L.seed_everything(2)
    make_trainer(tmp_path, 20, [checkpointing(tmp_path / "ckpt")]).fit(SpectralLM(**hparams), dm)
    model, rec = SpectralLM(**hparams), Recorder()
    trainer = make_trainer(tmp_path, 30, [checkpointing(tmp_path / "ckpt"), rec])
    trainer.fit(model, dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert trainer.global_step == 30
    assert rec.steps == list(range(20, 30))
    expected = [hparams["lr"] * model.lr_factor(s, 30) for s in range(20, 30)]
    assert rec.lrs == pytest.approx(expected, rel=1e-12)
    final_lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert final_lr == pytest.approx(model.hparams.min_lr, rel=1e-12)  # cosine ends on the floor at max_steps


# -- optimizer groups and schedule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "decayed"),
    [(Dense(), {"weight"}), (DCT(compression=2.0), {"coef"}), (LowRank(rank=4), {"A", "B"})],
    ids=["dense", "dct", "lowrank"],
)
@pytest.mark.parametrize("parameterize", [None, ["blocks.*.mlp.*", "lm_head"]], ids=["blocks", "mlp+head"])
def test_parameter_groups_by_role(strategy, decayed: set[str], parameterize: list[str] | None) -> None:  # noqa: ANN001
    model = SpectralLM(
        vocab="abcdefgh", block_size=16, n_layer=2, n_head=2, n_embd=16, parameterization=strategy,
        parameterize=parameterize, weight_decay=0.05,
    )  # fmt: skip
    decay, no_decay = model.parameter_groups()
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}  # each exactly once

    names = {id(p): n for n, p in model.named_parameters()}
    linears = {n for n, m in model.named_modules() if isinstance(m, ParameterizedLinear)}
    norms_and_embeddings = {
        n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm | torch.nn.Embedding)
    }
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    for name in decay_names:
        owner, leaf = name.rsplit(".", 1)
        assert owner in linears and leaf != "bias", name
    for name in no_decay_names:
        owner, leaf = name.rsplit(".", 1)
        assert leaf == "bias" or owner in norms_and_embeddings, name
    # Every linear's weight-defining values are decayed: the chosen strategy's kind where it applies,
    # dense weights elsewhere (e.g. the LM head unless a pattern selects it).
    parameterized = set(model.model.parameterized)
    for owner in linears:
        leaves = {n.rsplit(".", 1)[1] for n in decay_names if n.rsplit(".", 1)[0] == owner}
        assert leaves == (decayed if owner.removeprefix("model.") in parameterized else {"weight"}), owner
    assert {n for n in no_decay_names if not n.endswith("bias")} >= {"model.wte.weight", "model.wpe.weight"}


def test_parameterized_lr_scale_gives_the_compressed_linears_their_own_rate() -> None:
    """parameterized_lr_scale: the coefficients (here of the MLP linears only) get lr × scale through warm-up and
    decay; every other Parameter, the dense attention linears included, keeps lr; scale 1 keeps the two groups
    (and their order) of checkpoints written before the option existed."""
    kwargs = dict(vocab="abcdefgh", block_size=16, n_layer=2, n_head=2, n_embd=16, parameterization=DCT(), lr=1e-3)
    kwargs["parameterize"] = ["blocks.*.mlp.*"]
    reference = SpectralLM(**kwargs)
    plain = reference.parameter_groups()
    assert len(plain) == 2
    plain_names = {id(p): n for n, p in reference.named_parameters()}
    model = SpectralLM(**kwargs, parameterized_lr_scale=3.0)
    decay, no_decay, scaled = model.parameter_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in scaled["params"]} == {
        f"model.blocks.{i}.mlp.{f}.coef" for i in (0, 1) for f in ("fc", "proj")
    }
    assert scaled["lr"] == pytest.approx(3e-3) and scaled["weight_decay"] == decay["weight_decay"] == 0.1
    scaled_names = {names[id(p)] for p in scaled["params"]}
    assert [names[id(p)] for p in decay["params"]] == [
        plain_names[id(p)] for p in plain[0]["params"] if plain_names[id(p)] not in scaled_names
    ]  # the dense linears, in the order they had
    assert len({id(p) for g in (decay, no_decay, scaled) for p in g["params"]}) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: model.lr_factor(step, 100))
    for _ in range(30):
        optimizer.step()
        schedule.step()
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs[2] == pytest.approx(3 * lrs[0]) and lrs[0] == pytest.approx(1e-3 * model.lr_factor(30, 100))
    with pytest.raises(ConfigError, match="model.parameterized_lr_scale=0.0 is not valid: expected a number > 0"):
        SpectralLM(**kwargs, parameterized_lr_scale=0.0)


def test_parameterized_weight_decay_sets_the_compressed_linears_decay() -> None:
    """parameterized_weight_decay: the coefficients form their own group with that decay (at the shared lr when
    the scale is 1); one AdamW step with zero gradients shrinks them by 1 - lr × scale × decay and the dense
    linears by 1 - lr × weight_decay; a negative value is refused with the option's name."""
    kwargs = dict(vocab="abcdefgh", block_size=16, n_layer=1, n_head=2, n_embd=16, parameterization=DCT(), lr=1e-2)
    kwargs["parameterize"] = ["blocks.*.mlp.*"]
    same_rate = SpectralLM(**kwargs, parameterized_weight_decay=0.0).parameter_groups()
    assert [g["weight_decay"] for g in same_rate] == [0.1, 0.0, 0.0] and same_rate[2]["lr"] == pytest.approx(1e-2)
    model = SpectralLM(**kwargs, parameterized_lr_scale=4.0, parameterized_weight_decay=0.025)
    coef, dense = model.model.blocks[0].mlp.fc.coef, model.model.blocks[0].attn.qkv.weight
    before = coef.detach().clone(), dense.detach().clone()
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-2)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(coef.detach(), before[0] * (1 - 4e-2 * 0.025))
    torch.testing.assert_close(dense.detach(), before[1] * (1 - 1e-2 * 0.1))
    with pytest.raises(ConfigError, match="model.parameterized_weight_decay=-0.1 is not valid: expected a number >= 0"):
        SpectralLM(**kwargs, parameterized_weight_decay=-0.1)


def test_parameterized_min_lr_anneals_the_scaled_group_to_its_own_floor(text_file: Path, tmp_path: Path) -> None:
    """parameterized_min_lr: the scaled coefficients warm up to lr × 4 and anneal to their own floor (here the
    shared min_lr, 1/40 of their peak) while every other group anneals to min_lr; a run resumed half-way follows
    the same per-group schedule; a floor above the group's peak is refused with the option's name."""
    dm, hparams = _resume_setup(text_file)
    hparams |= dict(parameterized_lr_scale=4.0, parameterized_min_lr=1e-4, min_lr=1e-4)
    model = SpectralLM(**hparams)
    assert model.lr_floors() == pytest.approx([1e-4 / 2e-3, 1e-4 / 2e-3, 1e-4 / 8e-3])
    assert SpectralLM(**(hparams | dict(parameterized_min_lr=None))).lr_floors() == pytest.approx([0.05] * 3)

    class GroupRates(Callback):
        def __init__(self) -> None:
            self.rates: list[list[float]] = []

        def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
            self.rates.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    L.seed_everything(3)
    make_trainer(tmp_path, 10, [checkpointing(tmp_path / "ckpt")]).fit(SpectralLM(**hparams), dm)
    resumed, rates = SpectralLM(**hparams), GroupRates()
    trainer = make_trainer(tmp_path, 20, [checkpointing(tmp_path / "ckpt"), rates])
    trainer.fit(resumed, dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for step, (dense, no_decay, coef) in zip(range(10, 20), rates.rates, strict=True):
        assert dense == no_decay == pytest.approx(2e-3 * resumed.lr_factor(step, 20), rel=1e-12)
        assert coef == pytest.approx(8e-3 * resumed.lr_factor(step, 20, floor=1 / 80), rel=1e-12)
    final = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert final == pytest.approx([1e-4, 1e-4, 1e-4], rel=1e-12)  # both floors reached at max_steps
    with pytest.raises(ConfigError, match=r"model.parameterized_min_lr=0.01 is not valid: expected a number between 0"):
        SpectralLM(**(hparams | dict(parameterized_min_lr=1e-2)))


def test_lr_factor_warmup_then_cosine_to_floor() -> None:
    model = SpectralLM(vocab="ab", block_size=8, **TINY, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    f = model.lr_factor
    assert [f(s, 100) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up
    assert f(10, 100) == pytest.approx(1.0)
    assert f(55, 100) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(100, 100) == pytest.approx(0.1)  # min_lr / lr at max_steps
    assert f(150, 100) == pytest.approx(0.1)  # and it stays on the floor
    decay = [f(s, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    no_warmup = SpectralLM(vocab="ab", block_size=8, **TINY, warmup_steps=0)
    assert no_warmup.lr_factor(0, 50) == pytest.approx(1.0)


def test_optim_groups_and_schedule_for_any_model() -> None:
    """optim.py needs no SpectralLM: a plain model gets groups by role and one schedule per floor."""
    net = torch.nn.Sequential(torch.nn.Embedding(5, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 8))
    parameterize(net, DCT(compression=2), patterns=["2"])  # the Linear stores DCT coefficients
    decay, no_decay, own = optim.parameter_groups(net, {"2"}, lr=1e-3, weight_decay=0.1, lr_scale=4.0, own_min_lr=2e-4)
    assert decay["params"] == [] and own["params"] == list(net[2].weight_parameters())
    undecayed = {id(net[0].weight), id(net[1].weight), id(net[1].bias), id(net[2].bias)}
    assert {id(p) for p in no_decay["params"]} == undecayed
    assert (own["lr"], own["weight_decay"], own["min_lr"]) == (4e-3, 0.1, 2e-4)
    floors = optim.lr_floors([decay, no_decay, own], lr=1e-3, min_lr=1e-4)
    assert floors == pytest.approx([0.1, 0.1, 0.05])
    opt = torch.optim.AdamW([decay, no_decay, own], lr=1e-3)
    schedule = optim.warmup_cosine(opt, total_steps=20, warmup_steps=0, floors=floors)
    for _ in range(20):
        opt.step()
        schedule.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-4, 2e-4])  # each group on its own floor


# -- checkpoints written by the CLI ------------------------------------------------------------------------

USER_STRATEGY = '''
from spectral_lightning import register
from spectral_lightning.parameterizations import DCT


@register("user_dct")
class UserDCT(DCT):
    """A user's own strategy in an importable module."""
'''


@pytest.fixture
def user_strategy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "user_strategies.py").write_text(textwrap.dedent(USER_STRATEGY), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_strategies.UserDCT"
    sys.modules.pop("user_strategies", None)
    unregister("user_dct")


@pytest.mark.parametrize(
    ("config", "kind"),
    [("dense.yaml", Dense), ("dct4x.yaml", DCT), ("lowrank.yaml", LowRank), ("dct4x.yaml", None)],
    ids=["dense", "dct", "lowrank", "user-registered"],
)
def test_load_from_checkpoint_written_by_cli(
    config: str, kind: type | None, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``kind=None``: a user's strategy class from an importable module, named by ``class_path``."""
    text = make_text(4_000, seed=3)
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    extra = [] if kind else ["--model.parameterization", request.getfixturevalue("user_strategy")]
    args = [
        "fit", "--config", str(REPO / "configs" / config), *extra,
        "--data.path", str(tmp_path / "text.txt"), "--data.block_size", "16", "--data.batch_size", "4",
        "--data.batches_per_epoch", "2", "--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2",
        "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.limit_val_batches", "2",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    cli = cli_main(args)
    (ckpt,) = (tmp_path / "runs").rglob("last.ckpt")
    saved = torch.load(ckpt, weights_only=False)["hyper_parameters"]
    if config != "dense.yaml":
        assert isinstance(saved["parameterization"], dict) and "class_path" in saved["parameterization"]

    loaded = SpectralLM.load_from_checkpoint(ckpt)
    kind = kind or sys.modules["user_strategies"].UserDCT
    assert type(loaded.parameterization) is kind and loaded.parameterization == cli.model.parameterization
    assert loaded.tokenizer.vocab == "".join(sorted(set(text)))  # the checkpoint alone rebuilds the tokenizer
    assert loaded.model.num_parameters() == cli.model.model.num_parameters()
    trained = cli.model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, trained[name]), name
    idx = torch.tensor([loaded.tokenizer.encode(text[:16])])
    loaded.eval(), cli.model.eval()
    torch.testing.assert_close(loaded(idx), cli.model(idx), rtol=0, atol=0)
    sample = loaded.generate("the ", max_new_tokens=8, seed=0)[0]
    assert sample.startswith("the ") and len(sample) == 12 and set(sample) <= set(text)


def test_predict_returns_each_validation_window_loss(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(make_text(6_000), encoding="utf-8")
    dm = CharDataModule(path=str(tmp_path / "t.txt"), block_size=16, batch_size=8, val_fraction=0.1)
    L.seed_everything(0)
    module = SpectralLM(vocab=dm.vocab, block_size=16, parameterization=DCT(compression=4), **TINY)
    trainer = quiet_trainer(max_steps=5, limit_val_batches=None)
    trainer.fit(module, dm)
    per_window = torch.cat(trainer.predict(module, datamodule=dm))  # (windows,)
    windows = torch.stack(list(dm.predict_dataloader().dataset))  # (windows, T + 1): the same order
    assert per_window.shape == (len(windows),) and len(windows) > 8  # more than one batch
    module.eval()
    with torch.no_grad():
        logits = module(windows[:, :-1])
    by_hand = torch.stack([torch.nn.functional.cross_entropy(lg, w[1:]) for lg, w in zip(logits, windows, strict=True)])
    torch.testing.assert_close(per_window, by_hand, rtol=1e-5, atol=1e-6)
    # Every window has T targets, so their mean is the validation loss.
    (val,) = trainer.validate(module, datamodule=dm, verbose=False)
    assert float(per_window.mean()) == pytest.approx(val["val/loss"], rel=1e-5)


@pytest.mark.parametrize("accented", [False, True], ids=["ascii", "utf8"])
def test_bits_per_byte_is_nats_over_utf8_bytes(accented: bool, tmp_path: Path) -> None:
    """val/bpb = total next-token nats / total UTF-8 bytes of the predicted tokens / ln 2; for ASCII text every
    character is one byte, so it is val/loss / ln 2."""
    text = make_text(3_000, seed=3)
    if accented:
        text = text.replace("a", "\u00e4").replace("t", "\u20ac")  # 2- and 3-byte characters
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    dm = CharDataModule(path=str(path), block_size=16, batch_size=4, val_fraction=0.2)
    torch.manual_seed(0)
    module = SpectralLM(vocab=dm.vocab, block_size=16, n_layer=1, n_head=2, n_embd=16)
    metrics = quiet_trainer(limit_val_batches=None).validate(module, dm, verbose=False)[0]
    nats, n_bytes, tokens = 0.0, 0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            y = batch[:, 1:]
            nats += float(F.cross_entropy(module(batch[:, :-1]).flatten(0, 1), y.flatten(), reduction="sum"))
            n_bytes += sum(len(dm.vocab[int(t)].encode("utf-8")) for t in y.flatten())
            tokens += y.numel()
    assert metrics["val/loss"] == pytest.approx(nats / tokens, rel=1e-5)
    assert metrics["val/bpb"] == pytest.approx(nats / n_bytes / math.log(2), rel=1e-5)
    if accented:
        assert n_bytes > tokens and metrics["val/bpb"] < metrics["val/loss"] / math.log(2)
    else:
        assert n_bytes == tokens and metrics["val/bpb"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-6)
