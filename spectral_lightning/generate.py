"""Sample text from a trained model: ``python -m spectral_lightning.generate --ckpt_path X --prompt "ROMEO:"``.

Reads any checkpoint kind (a Lightning ``.ckpt``, a compressed or a dense export); the vocabulary comes from
the file. By default the linears are materialized once into a dense copy of the model before sampling
(``--materialize_weights false`` samples with the stored parameterization, whose layers cache their weight while
autograd is off, so they are also reconstructed once). Tokens are streamed as they come when stdout is a
terminal (``--stream``), whole samples are printed otherwise; the output text is the same either way.

Sample ``i`` uses a generator seeded with ``seed + i``, so it does not depend on how many samples are drawn.
Generation speed (new tokens per second, loading excluded) is printed to stderr.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterator
from typing import TextIO

import torch

from spectral_lightning.checkpoints import load_model
from spectral_lightning.convert import densify
from spectral_lightning.errors import ConfigError, exit_on_user_error
from spectral_lightning.model import CausalLM
from spectral_lightning.tokenization import Tokenizer

SEPARATOR = "-" * 40


def pick_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r} is not valid: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} is not available on this machine: use cpu or auto")
    return dev


@torch.no_grad()
def materialize(model: CausalLM) -> CausalLM:
    """A copy of ``model`` with every parameterized linear materialized once into a plain ``nn.Linear``."""
    return densify(copy.deepcopy(model)).eval()


def check_options(max_new_tokens: int, temperature: float, top_k: int | None, num_samples: int) -> None:
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens={max_new_tokens} is not valid: expected an integer >= 0")
    if not temperature >= 0:
        raise ConfigError(f"temperature={temperature} is not valid: expected a number >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k={top_k} is not valid: expected an integer >= 1, or null for no cut-off")
    if num_samples < 1:
        raise ConfigError(f"num_samples={num_samples} is not valid: expected an integer >= 1")


def sample_stream(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the text that follows ``prompt`` piece by piece, as the model samples each token (a character; for a
    BPE, the text the new token completes, so multi-byte characters are never split).

    An empty prompt starts from the tokenizer's start (a newline, or a BPE's document separator), not yielded.
    Raises ConfigError (before sampling anything) if a character model's prompt has characters outside the
    vocabulary.
    """
    start = tokenizer.encode(prompt) if prompt else tokenizer.start_ids()
    device = next(model.parameters()).device
    idx = torch.tensor([start], dtype=torch.long, device=device)  # (1, T)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    model.eval()
    new: list[int] = []
    emitted = ""
    for token in model.generate(idx, max_new_tokens, temperature, top_k, generator):
        new.append(int(token[0, 0]))
        text = tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # an incomplete UTF-8 sequence waits for its next byte
            yield text[len(emitted) :]
            emitted = text
    if len(emitted) < len(text := tokenizer.decode(new)):
        yield text[len(emitted) :]


def generate(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompt: str = "",
    max_new_tokens: int = 500,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int | None = 1337,
    num_samples: int = 1,
    out: TextIO | None = None,
    stream: bool = False,
) -> list[str]:
    """Sample ``num_samples`` continuations of ``prompt``; returns them (prompt included).

    When ``out`` is given, each sample is written to it followed by a newline and a separator line:
    character by character (flushed) when ``stream`` is true, as a whole otherwise.
    """
    check_options(max_new_tokens, temperature, top_k, num_samples)
    tokenizer.encode(prompt)  # an unknown character fails here, before anything is printed
    samples = []
    for i in range(num_samples):
        parts = [prompt]
        if out is not None and stream:
            out.write(prompt)
            out.flush()
        for ch in sample_stream(model, tokenizer, prompt, max_new_tokens, temperature, top_k, _seed(seed, i)):
            parts.append(ch)
            if out is not None and stream:
                out.write(ch)
                out.flush()
        text = "".join(parts)
        samples.append(text)
        if out is not None:
            out.write(("" if stream else text) + f"\n{SEPARATOR}\n")
            out.flush()
    return samples


def _seed(seed: int | None, i: int) -> int | None:
    return None if seed is None else seed + i


def generate_command(
    ckpt_path: str,
    prompt: str = "",
    max_new_tokens: int = 500,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int | None = 1337,
    num_samples: int = 1,
    device: str = "auto",
    materialize_weights: bool = True,
    stream: bool | None = None,
) -> None:
    """Print text sampled from a trained model.

    Args:
        ckpt_path: a Lightning checkpoint of SpectralLM (.ckpt), a compressed export or a dense export; the
            vocabulary is read from it.
        prompt: text to continue; every character must be in the model's vocabulary (empty: start from a
            newline).
        max_new_tokens: characters to sample per sample (>= 0).
        temperature: softmax temperature (>= 0; lower is more conservative; 0 = greedy argmax).
        top_k: sample only among the k most likely characters (>= 1); null for no cut-off.
        seed: seed of sample 0 (sample i uses seed + i); null for a different result at each run.
        num_samples: how many independent samples to print (>= 1), separated by a line of dashes.
        device: auto (CUDA when available), cpu, cuda or cuda:N.
        materialize_weights: rebuild every linear once as a dense weight before sampling (dense speed);
            false samples with the stored parameterization (its layers cache their reconstructed weight).
        stream: print characters as they are sampled; default: when stdout is a terminal.
    """
    check_options(max_new_tokens, temperature, top_k, num_samples)
    dev = pick_device(device)
    model, tokenizer = load_model(ckpt_path, map_location=dev)
    tokenizer.encode(prompt)
    if materialize_weights:
        model = materialize(model)
    stream = sys.stdout.isatty() if stream is None else stream
    began = time.perf_counter()
    generate(model, tokenizer, prompt, max_new_tokens, temperature, top_k, seed, num_samples, sys.stdout, stream)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - began
    tokens = max_new_tokens * num_samples
    print(
        f"generated {tokens} tokens in {elapsed:.2f} s: {tokens / max(elapsed, 1e-9):.1f} tokens/s "
        f"({dev}, {'materialized dense weights' if materialize_weights else 'stored parameterization'})",
        file=sys.stderr,
    )


def main(args: list[str] | None = None) -> None:
    """``python -m spectral_lightning.generate --ckpt_path X --prompt "..." [options]``.

    User errors (missing checkpoint, a prompt character outside the vocabulary, bad options) print one line
    and exit with status 2.
    """
    from jsonargparse import auto_cli

    with exit_on_user_error():
        auto_cli(generate_command, args=args, as_positional=False)


if __name__ == "__main__":
    main()
