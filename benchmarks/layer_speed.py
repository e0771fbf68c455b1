"""Speed of one DCT layer on its two execution paths, and of whole LLaMA models, against dense.

Three markdown tables, below the machine name and the torch version:

1. **One linear layer, forward + backward** at the paper's shapes (384×128 qkv, 128×128 proj, 512×128 fc,
   128×512 proj) and the LLaMA 60M / 130M ones (d×d attention, h×d gate/up, d×h down; d = 512, h = 1376 and
   d = 768, h = 2048), ``--tokens`` rows (default 16,384: batch 64 × context 256): dense ``nn.Linear``-style,
   the DCT layer rebuilding W (``path="materialize"``) and skipping it (``path="transform"``), at c = 2, 4, 16.
   Each cell: median milliseconds over ``--repeats`` round-robin runs (methods interleaved, so a busy machine
   slows them alike); the work counted from the shapes (GMAC: multiply-adds of the products; in brackets the cost
   model's count for the transform path, transforms included); the path ``auto`` picks for this token count, its
   speed against dense, and whether it is the faster path (within 5%).
2. **Whole-model training tokens/s** at the 130M shape (``--vocab``: 32,000 as in the papers): dense, dct4x
   (lowpass c = 4) and lowpass c = 16 with ``path="auto"``, plus c = 4 with ``path="materialize"`` (what a DCT
   run cost before the transform path). The model classes directly (no Trainer): forward, cross-entropy, backward,
   AdamW step, ``--steps`` timed steps after one warm-up, batch × context from ``--batch`` / ``--context``.
3. **Per-part times of the 130M dct4x layers** on the transform path (torch profiler, self CPU time by op):
   transforms (reorders, FFTs, twiddles), block products, and the rest of the wall time.

    OMP_NUM_THREADS=1 python benchmarks/layer_speed.py --threads 1             # the full run (~15 min on 1 core)
    python benchmarks/layer_speed.py --quick                                    # a CPU smoke test (~20 s)
    python benchmarks/layer_speed.py --device cuda --tokens 65536

On a CPU the transform path streams rows in cache-sized chunks (``fast_dct.chunk_rows``); on a GPU it runs whole.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from spectral_lightning.llama import Llama, LlamaConfig
from spectral_lightning.parameterizations import DCT, Dense, dct_cost

#: (label, out_features m, in_features n)
PAPER_SHAPES = [("paper qkv", 384, 128), ("paper proj", 128, 128), ("paper fc", 512, 128), ("paper mlp proj", 128, 512)]
LLAMA_SHAPES = [
    ("60M attn", 512, 512),
    ("60M gate/up", 1376, 512),
    ("60M down", 512, 1376),
    ("130M attn", 768, 768),
    ("130M gate/up", 2048, 768),
    ("130M down", 768, 2048),
]
COMPRESSIONS = (2.0, 4.0, 16.0)
TRANSFORM_OPS = {
    "aten::_fft_r2c",
    "aten::_fft_c2r",
    "aten::index_select",
    "aten::addcmul",
    "aten::mul",
    "aten::complex",
    "aten::constant_pad_nd",
    "aten::fill_",
    "aten::flip",
    "aten::cat",
}
BLOCK_OPS = {"aten::mm", "aten::addmm", "aten::addmm_"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} thread(s)"


def round_robin(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each step over ``repeats`` rounds, the steps interleaved within a round (after one
    warm-up call each)."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def layer_step(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        layer(x).backward(g)
        for p in layer.parameters():
            p.grad = None
        x.grad = None

    return step


def layer_table(args: argparse.Namespace, device: torch.device, shapes: list[tuple[str, int, int]]) -> None:
    T = args.tokens
    cal = dct_cost.calibration(device, torch.float32)
    print(f"\n### One layer, forward + backward, {T:,} tokens, selection {args.selection}\n")
    print(
        f"calibration, in multiply-adds: transform per element {cal.elem:.1f} + {cal.fft:.2f} per log2 n, "
        f"one tensor operation {cal.op:,.0f}\n"
    )
    print(
        "| layer | m×n | dense ms | c | materialize ms | transform ms | auto vs dense | GMAC dense / mat / "
        "transform (model) | auto picks | auto faster? |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    for label, m, n in shapes:
        x = torch.randn(T, n, device=device, requires_grad=True)
        g = torch.randn(T, m, device=device)
        torch.manual_seed(0)
        dense = Dense().build(n, m, bias=False).to(device)
        layers = {}
        for c in COMPRESSIONS:
            for path in ("materialize", "transform"):
                layers[(c, path)] = (
                    DCT(compression=c, selection=args.selection, path=path).build(n, m, False).to(device)
                )
        steps = {"dense": layer_step(dense, x, g)}
        steps.update({f"{c}-{p}": layer_step(layer, x, g) for (c, p), layer in layers.items()})
        times = round_robin(steps, args.repeats, device)
        for i, c in enumerate(COMPRESSIONS):
            mat, tra = layers[(c, "materialize")], layers[(c, "transform")]
            auto = DCT(compression=c, selection=args.selection).build(n, m, False).to(device)
            picks = "transform" if auto.uses_transform(x) else "materialize"
            t_mat, t_tra = times[f"{c}-materialize"], times[f"{c}-transform"]
            fastest = "transform" if t_tra < t_mat else "materialize"
            ok = "yes" if picks == fastest or abs(t_tra - t_mat) < 0.05 * min(t_tra, t_mat) else "no"
            strips = tra._strips
            gmac = (
                3 * T * m * n / 1e9,
                dct_cost.materialize_cost(m, n, mat.ra, mat.cb, T, True, False, cal) / 1e9,
                3 * T * sum(a * (e - s) for a, s, e in strips) / 1e9,
                dct_cost.transform_cost(m, n, strips, T, True, cal) / 1e9,
            )
            t_auto = t_tra if picks == "transform" else t_mat
            print(
                f"| {label if i == 0 else ''} | {m}×{n} | {times['dense'] * 1e3:.1f} | {c:g} | {t_mat * 1e3:.1f} | "
                f"{t_tra * 1e3:.1f} | {times['dense'] / t_auto:.2f}× | {gmac[0]:.3g} / {gmac[1]:.3g} / {gmac[2]:.3g} "
                f"({gmac[3]:.3g}) | {picks} | {ok} |",
                flush=True,
            )


def model_step(model: torch.nn.Module, idx: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.roll(idx, -1, dims=1)

    def step() -> None:
        logits = model(idx)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def model_table(args: argparse.Namespace, device: torch.device) -> None:
    d, h, layers = (128, 352, 2) if args.quick else (768, 2048, 12)
    heads = d // 64
    config = LlamaConfig(
        vocab_size=args.vocab, block_size=args.context, n_layer=layers, n_head=heads, n_embd=d, mlp_hidden=h
    )
    B, T = args.batch, args.context
    print(f"\n### Whole LLaMA model (d={d}, h={h}, {layers} layers, vocab {args.vocab:,}), training, batch {B} × {T}\n")
    print("| model | parameters | step s (median) | tokens/s | vs dense |")
    print("|---|---:|---:|---:|---:|")
    runs = {
        "dense": Dense(),
        "dct4x lowpass (auto)": DCT(compression=4.0),
        "dct c=16 lowpass (auto)": DCT(compression=16.0),
        "dct4x lowpass (materialize)": DCT(compression=4.0, path="materialize"),
    }
    idx = torch.randint(args.vocab, (B, T), generator=torch.Generator().manual_seed(0)).to(device)
    dense_rate = None
    for name, parameterization in runs.items():
        torch.manual_seed(0)
        model = Llama(config, parameterization).to(device)
        times = round_robin({name: model_step(model, idx)}, args.steps, device)
        rate = B * T / times[name]
        dense_rate = dense_rate or rate
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params:,} | {times[name]:.2f} | {rate:,.0f} | {rate / dense_rate:.2f}× |", flush=True)
        del model


def part_table(args: argparse.Namespace, device: torch.device, shapes: list[tuple[str, int, int]]) -> None:
    T = args.tokens
    print(f"\n### Parts of the transform path, dct4x lowpass, forward + backward, {T:,} tokens (profiler)\n")
    print("| layer | m×n | total ms | transforms ms | block products ms | rest ms |")
    print("|---|---|---:|---:|---:|---:|")
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for label, m, n in shapes:
        layer = DCT(compression=4.0, path="transform").build(n, m, False).to(device)
        x = torch.randn(T, n, device=device, requires_grad=True)
        step = layer_step(layer, x, torch.randn(T, m, device=device))
        step()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            sync(device)
            start = time.perf_counter()
            for _ in range(args.repeats):
                step()
            sync(device)
            total = (time.perf_counter() - start) / args.repeats
        events = prof.key_averages()
        transforms = sum(getattr(e, key) for e in events if e.key in TRANSFORM_OPS) / 1e6 / args.repeats
        block = sum(getattr(e, key) for e in events if e.key in BLOCK_OPS) / 1e6 / args.repeats
        print(
            f"| {label} | {m}×{n} | {total * 1e3:.1f} | {transforms * 1e3:.1f} | {block * 1e3:.1f} | "
            f"{(total - transforms - block) * 1e3:.1f} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tokens", type=int, default=16_384, help="rows through one layer")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per layer (median)")
    parser.add_argument("--selection", default="lowpass", choices=["lowpass", "zigzag"])
    parser.add_argument("--batch", type=int, default=2, help="whole model: sequences per step")
    parser.add_argument("--context", type=int, default=256, help="whole model: tokens per sequence")
    parser.add_argument("--vocab", type=int, default=32_000, help="whole model: vocabulary (embedding and head)")
    parser.add_argument("--steps", type=int, default=3, help="whole model: timed steps per model (median)")
    parser.add_argument("--skip", default="", help="comma-separated tables to skip: layers, model, parts")
    parser.add_argument("--quick", action="store_true", help="small shapes and counts: a smoke test")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.tokens, args.repeats, args.steps, args.vocab, args.context = 512, 1, 1, 256, 64
    device = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    print(f"## layer_speed: {machine(device)}, torch {torch.__version__}, python {platform.python_version()}")
    shapes = PAPER_SHAPES + (LLAMA_SHAPES[:1] if args.quick else LLAMA_SHAPES)
    if "layers" not in skip:
        layer_table(args, device, shapes)
    if "model" not in skip:
        model_table(args, device)
    if "parts" not in skip:
        part_table(args, device, [s for s in LLAMA_SHAPES if s[0].startswith("130M")][: 1 if args.quick else 3])


if __name__ == "__main__":
    main()
