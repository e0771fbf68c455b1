"""Sampling from checkpoints: determinism, vocabulary, streaming, one reconstruction per layer, errors."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import REPO, make_text, quiet_trainer

from spectral_lightning import CharDataModule, ConfigError, SpectralLM
from spectral_lightning.checkpoints import load_model
from spectral_lightning.export import export
from spectral_lightning.generate import SEPARATOR, generate, main
from spectral_lightning.parameterizations import DCTLinear


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DCT (c = 4) model trained a few steps, saved by the Trainer."""
    folder = tmp_path_factory.mktemp("gen")
    (folder / "tiny.txt").write_text(make_text(), encoding="utf-8")
    dm = CharDataModule(path=str(folder / "tiny.txt"), block_size=16, batch_size=8, batches_per_epoch=8)
    L.seed_everything(0)
    module = SpectralLM(
        vocab=dm.vocab, block_size=16, n_layer=1, n_head=2, n_embd=32, parameterization="dct", lr=1e-2, warmup_steps=0
    )
    trainer = quiet_trainer(max_steps=8)
    trainer.fit(module, dm)
    trainer.save_checkpoint(folder / "last.ckpt")
    return folder / "last.ckpt"


def test_fixed_seed_is_deterministic_and_emits_only_vocabulary(ckpt: Path) -> None:
    model, tokenizer = load_model(ckpt)
    options = {"prompt": "the ", "max_new_tokens": 40, "temperature": 1.0, "top_k": None, "num_samples": 3}
    first = generate(model, tokenizer, seed=7, **options)
    assert generate(model, tokenizer, seed=7, **options) == first
    assert len(first) == 3 and len(set(first)) == 3  # sample i has its own seed
    assert all(s.startswith("the ") and len(s) == 44 and set(s) <= set(tokenizer.vocab) for s in first)
    assert generate(model, tokenizer, seed=8, **options)[0] == first[1]  # sample i uses seed + i
    greedy = generate(model, tokenizer, "the ", 20, temperature=0.0, seed=None, num_samples=2)
    assert greedy[0] == greedy[1]


def test_streamed_output_equals_whole_samples(ckpt: Path) -> None:
    model, tokenizer = load_model(ckpt)

    class Recorder(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            self.writes += 1
            return super().write(s)

    streamed, whole = Recorder(), Recorder()
    samples = generate(model, tokenizer, "a", 15, seed=1, num_samples=2, out=streamed, stream=True)
    generate(model, tokenizer, "a", 15, seed=1, num_samples=2, out=whole, stream=False)
    assert streamed.getvalue() == whole.getvalue() == "".join(f"{s}\n{SEPARATOR}\n" for s in samples)
    assert streamed.writes >= 2 * 15 and whole.writes == 2


def test_greedy_and_top_k_follow_the_model_logits(ckpt: Path) -> None:
    model, tokenizer = load_model(ckpt)
    model.eval()
    # Greedy (temperature 0) is the step-by-step argmax of the model's own logits; top_k = 1 samples the same.
    idx = torch.tensor([tokenizer.encode("the ")])
    with torch.no_grad():
        for _ in range(12):
            idx = torch.cat([idx, model(idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = tokenizer.decode(idx[0].tolist())
    assert generate(model, tokenizer, "the ", 12, temperature=0.0, seed=None)[0] == expected
    assert generate(model, tokenizer, "the ", 12, temperature=1.5, top_k=1, seed=3)[0] == expected
    # top_k = 3: every sampled token is among the 3 most likely after its own context.
    prompt = torch.tensor([tokenizer.encode("a")])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        tokens = torch.cat([prompt.expand(64, 1), *model.generate(prompt.expand(64, 1), 6, 1.0, 3, gen)], dim=1)
        for t in range(1, tokens.size(1)):
            top3 = model(tokens[:, :t])[:, -1].topk(3).indices  # (64, 3)
            assert (top3 == tokens[:, t : t + 1]).any(dim=1).all()
    assert len(set(tokens[:, 1].tolist())) > 1  # it did sample (not argmax only)


@pytest.mark.parametrize("materialize", ["true", "false"])
def test_each_layer_is_reconstructed_once_per_generation(ckpt: Path, materialize: str, monkeypatch, capsys) -> None:
    calls: Counter[int] = Counter()
    original = DCTLinear.reconstruct

    def counting(self: DCTLinear) -> torch.Tensor:
        calls[id(self)] += 1
        return original(self)

    monkeypatch.setattr(DCTLinear, "reconstruct", counting)
    args = ["--ckpt_path", str(ckpt), "--prompt", "the", "--max_new_tokens", "25", "--num_samples", "2"]
    main([*args, "--materialize_weights", materialize, "--stream", "false", "--device", "cpu"])
    captured = capsys.readouterr()
    assert captured.out.count(SEPARATOR) == 2 and "tokens/s" in captured.err
    assert len(calls) == 4 and set(calls.values()) == {1}  # the four block linears, once each


def test_every_checkpoint_kind_and_weight_mode_give_the_same_text(ckpt: Path, tmp_path: Path, capsys) -> None:
    export(ckpt, "dense", tmp_path / "dense.pt")
    export(ckpt, "compressed", tmp_path / "compressed.pt")
    outputs = []
    for path, materialize in [(ckpt, "true"), (ckpt, "false"), (tmp_path / "dense.pt", "true")]:
        main(
            [
                "--ckpt_path",
                str(path),
                "--prompt",
                "cat",
                "--max_new_tokens",
                "30",
                "--materialize_weights",
                materialize,
            ]
        )
        outputs.append(capsys.readouterr().out)
    main(["--ckpt_path", str(tmp_path / "compressed.pt"), "--prompt", "cat", "--max_new_tokens", "30"])
    outputs.append(capsys.readouterr().out)
    assert outputs[0].startswith("cat") and len(set(outputs)) == 1


def test_bad_options_are_one_line_errors(ckpt: Path, capsys) -> None:
    model, tokenizer = load_model(ckpt)
    with pytest.raises(ConfigError, match="not in the model's vocabulary"):
        generate(model, tokenizer, "the Q", 5)
    for option, value in [("--temperature", "-1"), ("--top_k", "0"), ("--num_samples", "0")]:
        with pytest.raises(SystemExit) as exc:
            main(["--ckpt_path", str(ckpt), option, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and option.lstrip("-") in err[0]


def test_unknown_prompt_character_exits_2_with_one_line(ckpt: Path) -> None:
    command = [sys.executable, "-m", "spectral_lightning.generate", "--ckpt_path", str(ckpt), "--prompt", "the ZZ"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'Z'" in lines[0] and "vocabulary" in lines[0]
