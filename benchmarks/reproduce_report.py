"""The reproduction's reports: tables (markdown, csv) and plots from finished runs' rows.

A row is what a finished run recorded (its ``metrics.json``, one line of the ledger ``runs.jsonl``); every
function here is a pure function of rows and the grid, apart from the writers, which go through a temporary file.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from reproduce_grid import (
    ADAPTIVE_RUNS,
    ADAPTIVE_SELECTIONS,
    BASELINE_PARAMETERIZATIONS,
    PAPER_RUNS,
    PAPER_V1_PPL,
    PAPER_V2_LOSS,
    PARAMETERIZATION_LABEL,
    SWEEP_PARAMETERIZATIONS,
    TRIES,
    TUNING_DROPOUTS,
    TUNING_MODELS,
    Budget,
    RunSpec,
    adaptive_selection_spec,
    adaptive_spec,
    baseline_spec,
    sweep_spec,
    try_base,
    tuning_spec,
)

from spectral_lightning.files import atomic_write_bytes


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


CSV_COLUMNS: tuple[str, ...] = (
    "run",
    "parameterization",
    "config",
    "compression",
    "seed",
    "steps",
    "stored_params",
    "pct_of_dense",
    "final_val_loss",
    "best_val_loss",
    "final_val_ppl",
    "mean_stable_rank",
    "tokens_per_s",
    "wall_s",
    "machine",
    "accelerator",
    "resumed",
    "command",
    "run_dir",
)


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``m ± s`` over seeds (``m`` alone for one seed)."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def sweep_cell(rows: Sequence[dict], key: str, digits: int, seeds: int) -> str:
    """One sweep cell: mean ± std of ``key`` over its runs, marked ``(n = k)`` when it has only k < ``seeds``
    runs (a grid still running, or cells trained with fewer seeds); ``–`` when it has none."""
    if not rows:
        return "–"
    cell = mean_std([r[key] for r in rows], digits)
    return cell if len(rows) >= seeds else f"{cell} (n = {len(rows)})"


def by_run(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["run"], []).append(row)
    return out


def summary_markdown(rows: list[dict], grid: list[RunSpec], budget: Budget, command: str) -> str:
    """Markdown tables (paper table, sweep) for the rows of this budget."""
    runs = by_run(rows)
    seeds = sorted({r["seed"] for r in rows})
    machines = sorted({r["machine"] for r in rows})
    lines = [
        "# Reproduction summary",
        "",
        f"Budget: {budget.steps} steps per run ({budget.warmup} warm-up steps, then cosine decay; batch × context "
        "as in each config unless overridden), "
        f"seeds {', '.join(map(str, seeds)) or '–'}; mean ± std over seeds ((n = k): a cell with only k of them). "
        f"Machine: {'; '.join(machines) or '–'}.",
        "",
        f"Command: `{command}`",
        "",
        "Val loss: mean next-character cross-entropy on the held-out 10% (nats); perplexity = exp(val loss). "
        "Stable rank: ‖W‖_F²/‖W‖₂², averaged over the parameterized block linears "
        "(at most min(m, n) for an m×n weight).",
        "",
    ]
    paper = [s for s in grid if "paper" in s.groups and s.name in runs]
    if paper:
        lines += [
            "## Paper table",
            "",
            "| config | what | params | % of dense | final val loss | best val loss | perplexity | stable rank "
            "| tokens/s | seeds | paper v1 ppl | paper v2 val loss |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for spec in paper:
            rs = runs[spec.name]
            lines.append(
                f"| {spec.name} | {spec.description} | {rs[0]['stored_params']:,} | {rs[0]['pct_of_dense']:.1f}% "
                f"| {mean_std([r['final_val_loss'] for r in rs])} | {mean_std([r['best_val_loss'] for r in rs])} "
                f"| {mean_std([r['final_val_ppl'] for r in rs], 2)} "
                f"| {mean_std([r['mean_stable_rank'] for r in rs], 1)} "
                f"| {statistics.fmean(r['tokens_per_s'] for r in rs):,.0f} | {len(rs)} "
                f"| {PAPER_V1_PPL.get(spec.name, '–')} | {PAPER_V2_LOSS.get(spec.name, '–')} |"
            )
        lines.append("")
    sweep = [s for s in grid if "sweep" in s.groups and s.name in runs and s.compression is not None]
    paper_names = {name for name, *_ in PAPER_RUNS}
    if any(s.name not in paper_names for s in sweep):  # not just the two paper runs the sweep shares
        cs = sorted({s.compression for s in sweep})
        cells = {(s.parameterization, s.compression): runs[s.name] for s in sweep}
        parameterizations = [
            PARAMETERIZATION_LABEL[k]
            for k in SWEEP_PARAMETERIZATIONS
            if any(st == PARAMETERIZATION_LABEL[k] for st, _ in cells)
        ]
        header = " | ".join(f"K = mn/{c:g}" for c in cs)
        for title, key, digits in (
            ("final val loss", "final_val_loss", 3),
            ("mean stable rank of the parameterized weights", "mean_stable_rank", 1),
        ):
            lines += [f"## Sweep: {title}", "", f"| parameterization | {header} |", "|---|" + "---:|" * len(cs)]
            for st in parameterizations:
                row = [sweep_cell(cells.get((st, c), []), key, digits, len(seeds)) for c in cs]
                lines.append(f"| {st} | " + " | ".join(row) + " |")
            lines.append("")
        lines += [
            "Stored parameters (% of dense) per cell:",
            "",
            f"| parameterization | {header} |",
            "|---|" + "---:|" * len(cs),
        ]
        for st in parameterizations:
            row = [
                f"{cells[(st, c)][0]['stored_params']:,} ({cells[(st, c)][0]['pct_of_dense']:.1f}%)"
                if (st, c) in cells
                else "–"
                for c in cs
            ]
            lines.append(f"| {st} | " + " | ".join(row) + " |")
        lines.append("")
    lines += baselines_markdown(runs, grid)
    lines += tuning_markdown(runs, grid)
    lines += adaptive_markdown(runs, grid)
    lines += tries_markdown(runs)
    lines += [
        "Paper: v1 reports validation perplexity (dense 6.1; DCT 6.1 at 52% and 6.9 at 29% of the parameters; "
        "low-rank 8.8 at 21%); v2 reports validation loss (dense 1.580; DCT K = mn/2 1.604; rank-48 low-rank "
        "1.801 at the same count).",
        "",
    ]
    return "\n".join(lines)


def hardware(row: dict) -> str:
    """The machine a run's throughput belongs to: its ``machine`` without the OS part (processor, core count and
    GPU; the same hardware keeps its key across kernel updates)."""
    return row.get("machine", "").split(", ", 1)[-1]


def relative_speed(rows: Sequence[dict], reference: Sequence[dict]) -> float | None:
    """Mean over ``rows`` of each run's training tokens/s over the mean of the ``reference`` runs on the same
    machine (throughput compares only within a machine); None when no run has a reference there."""
    by_machine: dict[str, list[float]] = {}
    for r in reference:
        if math.isfinite(r["tokens_per_s"]):
            by_machine.setdefault(hardware(r), []).append(r["tokens_per_s"])
    means = {machine: statistics.fmean(tps) for machine, tps in by_machine.items()}
    ratios = [
        r["tokens_per_s"] / means[hardware(r)]
        for r in rows
        if math.isfinite(r["tokens_per_s"]) and means.get(hardware(r), 0) > 0
    ]
    return statistics.fmean(ratios) if ratios else None


def baselines_markdown(runs: dict[str, list[dict]], grid: list[RunSpec]) -> list[str]:
    """The baselines table (one row per parameterization and compression, dense first), or nothing when no run
    that only the baselines group trains has finished (so reports of the other groups stay as they were).

    Tokens/s are relative to the mean of the dense rows of the same report (same budget and seeds); ``–`` when
    there is no dense run or no throughput."""
    own = [s for s in grid if s.groups == ("baselines",) and s.name in runs]
    if not own:
        return []
    cs = sorted({s.compression for s in own})
    dense = runs.get("dense", [])
    lines = [
        "## Baselines",
        "",
        "Each block linear stores about mn/c values (dense: mn); % of dense counts the whole model (embeddings, "
        "norms and head included). Val loss and stable rank as above, mean ± std over the n seeds; val bpb: bits per "
        "byte of the held-out text at the last validation; tokens/s: mean training throughput, and × dense the "
        "mean ratio of each run's to that of the dense runs on the same machine (–: no dense run there; "
        "benchmarks/throughput.py --configs measures every parameterization on one machine).",
        "",
        "| parameterization | c | params | % of dense | final val loss | best val loss | val bpb | stable rank "
        "| tokens/s | × dense | n |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cells = [("dense", None, dense)] + [
        (PARAMETERIZATION_LABEL[key], c, runs.get(baseline_spec(key, c).name, []))
        for c in cs
        for key in BASELINE_PARAMETERIZATIONS
    ]
    for label, c, rs in cells:
        if not rs:
            continue
        bpb = [r["final_val_bpb"] for r in rs if r.get("final_val_bpb") is not None]
        tps = [r["tokens_per_s"] for r in rs if math.isfinite(r["tokens_per_s"])]
        speed = statistics.fmean(tps) if tps else math.nan
        ratio = relative_speed(rs, dense)
        lines.append(
            f"| {label} | {'–' if c is None else f'{c:g}'} | {rs[0]['stored_params']:,} "
            f"| {rs[0]['pct_of_dense']:.1f}% | {mean_std([r['final_val_loss'] for r in rs])} "
            f"| {mean_std([r['best_val_loss'] for r in rs])} | {mean_std(bpb)} "
            f"| {mean_std([r['mean_stable_rank'] for r in rs], 1)} "
            f"| {'–' if not tps else f'{speed:,.0f}'} | {'–' if ratio is None else f'{ratio:.2f}×'} | {len(rs)} |"
        )
    lines.append("")
    return lines


def tuned(runs: dict[str, list[dict]], model: str) -> tuple[float, list[dict]] | None:
    """The best-tuned ``model`` (one of TUNING_MODELS): (dropout, rows) of the dropout whose finished runs have the
    lowest mean best val loss (the lower dropout on a tie); None when none of its runs finished."""
    cells = [(d, runs[tuning_spec(model, d).name]) for d in TUNING_DROPOUTS if tuning_spec(model, d).name in runs]
    if not cells:
        return None
    return min(cells, key=lambda cell: statistics.fmean(r["best_val_loss"] for r in cell[1]))


def tuning_markdown(runs: dict[str, list[dict]], grid: list[RunSpec]) -> list[str]:
    """The tuning table (val loss per model and dropout) and the best-tuned models compared, or nothing when no
    run that only the tuning group trains (dropout > 0) has finished."""
    paper_names = {name for name, *_ in PAPER_RUNS}
    if not any("tuning" in s.groups and s.name in runs and s.name not in paper_names for s in grid):
        return []
    lines = [
        "## Tuning: model dropout",
        "",
        "The paper's dense and dct4x with model dropout 0 (the paper runs themselves), 0.1 and 0.2; val loss as "
        "above, mean ± std over the n seeds.",
        "",
        "| model | dropout | final val loss | best val loss | n |",
        "|---|---:|---:|---:|---:|",
    ]
    for model in TUNING_MODELS:
        for dropout in TUNING_DROPOUTS:
            rs = runs.get(tuning_spec(model, dropout).name, [])
            if rs:
                lines.append(
                    f"| {model} | {dropout:g} | {mean_std([r['final_val_loss'] for r in rs])} "
                    f"| {mean_std([r['best_val_loss'] for r in rs])} | {len(rs)} |"
                )
    lines.append("")
    best: dict[str, tuple[float, float, float]] = {}  # model -> (dropout, mean best, mean final)
    for model in TUNING_MODELS:
        cell = tuned(runs, model)
        if cell:
            dropout, rs = cell
            best[model] = (
                dropout,
                statistics.fmean(r["best_val_loss"] for r in rs),
                statistics.fmean(r["final_val_loss"] for r in rs),
            )
    parts = [f"{m} at dropout {d:g} (best {b:.3f}, final {f:.3f})" for m, (d, b, f) in best.items()]
    sentence = f"Best-tuned (lowest mean best val loss): {'; '.join(parts)}."
    reference, compressed = TUNING_MODELS
    if reference in best and compressed in best:
        (_, b0, f0), (_, b1, f1) = best[reference], best[compressed]
        sentence += (
            f" Gap {compressed} − {reference}, best-tuned against best-tuned: {b1 - b0:+.3f} best vs best, "
            f"{f1 - f0:+.3f} final vs final."
        )
    return [*lines, sentence, ""]


def adaptive_markdown(runs: dict[str, list[dict]], grid: list[RunSpec]) -> list[str]:
    """The adaptive table (fixed against moving supports per compression) and the final K per layer of the
    global-budget runs, or nothing when no run whose support moves has finished.

    The gap is the cell's mean best val loss minus the best-tuned dense's (the tuning group's runs) when dense
    runs with dropout exist, else minus the paper dense run's; tokens/s are relative to the fixed random runs of
    the same c (same K, same scattered positions, so the ratio is the cost of moving them)."""
    labels = {label for _, label, _ in ADAPTIVE_RUNS.values()}
    own = [s for s in grid if "adaptive" in s.groups and s.name in runs and s.parameterization in labels]
    if not own:
        return []
    cs = sorted({s.compression for s in own})
    reference, which = dense_reference(runs)
    lines = [
        "## Adaptive frequency support",
        "",
        "DCT with K = mn/c coefficients per layer at fixed positions (lowpass block, random) or moving ones (random "
        "start, drop the smallest and grow where the gradient is largest every 100 steps until 75% of training; "
        "per layer: each layer keeps its K; global: the layers share one total). Val loss and stable rank as above, "
        f"mean ± std over the n seeds; gap: mean best val loss minus that of {which}; × random: tokens/s over the "
        "fixed random runs' of the same c on the same machine (each run's own average, so it also carries how "
        "busy the machine was: the cost of the updates alone is measured by benchmarks/adaptive_overhead.py); "
        "changed: mean share of positions changed per support update.",
        "",
        "| selection | c | % of dense | best val loss | final val loss | gap | stable rank | tokens/s | × random "
        "| changed | n |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tuned_dense = tuned(runs, "dense")
    dense_rows = [("dense", None, runs.get("dense", []))]
    if tuned_dense and tuned_dense[0]:  # the reference is a dropout variant: its row too
        dense_rows.append((f"dense, dropout {tuned_dense[0]:g}", None, tuned_dense[1]))
    cells = dense_rows + [
        (label, c, runs.get(adaptive_selection_spec(key, kind, c).name, []))
        for c in cs
        for label, key, kind in ADAPTIVE_SELECTIONS
    ]
    for label, c, rs in cells:
        if not rs:
            continue
        best = statistics.fmean(r["best_val_loss"] for r in rs)
        gap = best - reference
        tps = [r["tokens_per_s"] for r in rs if math.isfinite(r["tokens_per_s"])]
        speed = statistics.fmean(tps) if tps else math.nan
        random = runs.get(sweep_spec("dct_random", c).name, []) if c is not None else []
        ratio = relative_speed(rs, random)
        changed = [r["mean_support_changed"] for r in rs if r.get("mean_support_changed") is not None]
        lines.append(
            f"| {label} | {'–' if c is None else f'{c:g}'} | {rs[0]['pct_of_dense']:.1f}% "
            f"| {mean_std([r['best_val_loss'] for r in rs])} | {mean_std([r['final_val_loss'] for r in rs])} "
            f"| {'–' if math.isnan(gap) else f'{gap:+.3f}'} | {mean_std([r['mean_stable_rank'] for r in rs], 1)} "
            f"| {'–' if not tps else f'{speed:,.0f}'} | {'–' if ratio is None else f'{ratio:.2f}×'} "
            f"| {mean_std(changed)} | {len(rs)} |"
        )
    lines.append("")
    return lines + support_k_markdown(runs, cs)


def dense_reference(runs: dict[str, list[dict]]) -> tuple[float, str]:
    """The dense best val loss the gaps are measured from, and a phrase that names it: the best-tuned dense's mean
    (the tuning group's runs) once a dense run with dropout has finished, else the paper dense run's; NaN with
    no dense run."""
    tuning_ran = any(tuning_spec("dense", d).name in runs for d in TUNING_DROPOUTS if d)
    cell = tuned(runs, "dense") if tuning_ran else ((0.0, runs["dense"]) if "dense" in runs else None)
    if not cell:
        return math.nan, "no dense run has finished: no gap"
    dropout, rs = cell
    reference = statistics.fmean(r["best_val_loss"] for r in rs)
    which = (
        f"the best-tuned dense (`{tuning_spec('dense', dropout).name}`, dropout {dropout:g})"
        if tuning_ran
        else "the paper's dense run (dropout 0; no tuning run has finished)"
    )
    return reference, f"{which}, best val loss {reference:.3f}"


def tries_markdown(runs: dict[str, list[dict]]) -> list[str]:
    """The tries table: each one-option variant beside the run it varies (same seeds only, so the difference is
    paired), with the gap to the dense reference; nothing when no try has finished."""
    done = [(name, label, try_base(base, c).name) for name, label, base, c, _ in TRIES if name in runs]
    if not done:
        return []
    reference, which = dense_reference(runs)
    lines = [
        "## Tries",
        "",
        "One option changed on a run (the adaptive group's per-layer or global run, the fixed random one, or "
        "another try). Best val loss, mean over the n seeds; base: the unchanged run's best val loss on the same "
        f"seeds; Δ: try minus base (negative: the change helped); gap: best val loss minus that of {which}.",
        "",
        "| try | % of dense | best val loss | final val loss | base | Δ | gap | stable rank | n |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label, base_name in done:
        rs = runs[name]
        base_by_seed = {r["seed"]: r for r in runs.get(base_name, [])}
        paired = [(r, base_by_seed[r["seed"]]) for r in rs if r["seed"] in base_by_seed]
        best = statistics.fmean(r["best_val_loss"] for r in rs)
        if paired:
            base_best = statistics.fmean(b["best_val_loss"] for _, b in paired)
            delta = statistics.fmean(r["best_val_loss"] - b["best_val_loss"] for r, b in paired)
            base_cell, delta_cell = f"{base_best:.3f} (`{base_name}`)", f"{delta:+.3f}"
        else:
            base_cell, delta_cell = f"– (`{base_name}`)", "–"
        gap = best - reference
        lines.append(
            f"| {label} | {rs[0]['pct_of_dense']:.1f}% | {mean_std([r['best_val_loss'] for r in rs])} "
            f"| {mean_std([r['final_val_loss'] for r in rs])} | {base_cell} | {delta_cell} "
            f"| {'–' if math.isnan(gap) else f'{gap:+.3f}'} | {mean_std([r['mean_stable_rank'] for r in rs], 1)} "
            f"| {len(rs)} |"
        )
    lines.append("")
    return lines


def support_k_markdown(runs: dict[str, list[dict]], cs: Sequence[float]) -> list[str]:
    """Under the global budget, each layer's final K as a share of its starting K, one column per compression
    (mean over the seeds whose metrics hold ``support_k``); nothing when no global-budget run has finished."""
    finished = [(c, runs.get(adaptive_spec("global", c).name, [])) for c in cs]
    if not any(rs for _, rs in finished):
        return []
    columns = [(c, [r for r in rs if r.get("support_k")]) for c, rs in finished]
    columns = [(c, rs) for c, rs in columns if rs]
    if not columns:
        return ["Final K per layer (global budget): the global-budget runs logged no support update.", ""]
    layers = list(dict.fromkeys(layer for _, rs in columns for r in rs for layer in r["support_k"]))
    lines = [
        "Final K per layer (global budget), as a share of the layer's starting K (mn/c), mean over the n seeds: "
        "above 100% the layer took coefficients from the others, below it gave them up.",
        "",
        "| layer | " + " | ".join(f"c = {c:g} (n = {len(rs)})" for c, rs in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for layer in layers:
        row = []
        for _, rs in columns:
            shares = [r["support_k"][layer][1] / r["support_k"][layer][0] for r in rs if layer in r["support_k"]]
            row.append(f"{100 * statistics.fmean(shares):.0f}%" if shares else "–")
        lines.append(f"| {layer} | " + " | ".join(row) + " |")
    lines.append("")
    return lines


def plot_points(rows: list[dict]) -> dict[str, list[tuple[float, float, float]]]:
    """The plot's lines: per parameterization label, (% of dense, mean, std of final val loss over seeds) per run,
    by increasing share. The tuning group's dropout variants and the tries are left out: the plot compares
    parameterizations at the paper's settings (the Tuning and Tries tables hold them)."""
    variants = {tuning_spec(m, d).parameterization for m in TUNING_MODELS for d in TUNING_DROPOUTS if d}
    variants |= {label for _, label, *_ in TRIES}
    points: dict[str, dict[float, list[float]]] = {}
    for run in by_run(rows).values():
        if run[0]["parameterization"] in variants:
            continue
        points.setdefault(run[0]["parameterization"], {})[run[0]["pct_of_dense"]] = [r["final_val_loss"] for r in run]
    return {
        label: [
            (x, statistics.fmean(pts[x]), statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0.0) for x in sorted(pts)
        ]
        for label, pts in sorted(points.items())
    }


def summary_plot(path: Path, rows: list[dict], budget: Budget) -> None:
    """Final val loss (mean ± std over seeds) against % of dense parameters, one line per parameterization."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "error: the summary plot needs matplotlib (pip install matplotlib); runs.csv and summary.md are written"
        ) from None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for parameterization, pts in plot_points(rows).items():
        xs, ys, err = (list(column) for column in zip(*pts, strict=True))
        if parameterization == "dense":
            ax.axhline(ys[0], color="black", linestyle="--", linewidth=1, label="dense (100%)")
            continue
        moving = parameterization in {label for _, label, _ in ADAPTIVE_RUNS.values()}
        ax.errorbar(xs, ys, yerr=err, marker="s" if moving else "o", capsize=3, label=parameterization)
    labels = ("stored parameters (% of dense model)", "final validation loss (nats/char)")
    save_figure(path, fig, ax, labels, f"Compression vs. loss ({budget.steps} steps per run)", legend_size=8)


def save_figure(path: Path, fig, ax, labels: tuple[str, str], title: str, *, legend_size: int) -> None:  # noqa: ANN001
    """Label, grid and legend ``ax``, then write ``fig`` to ``path`` as PNG (through a temporary file) and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def curve_lines(rows: list[dict], c: float = 4.0) -> dict[str, list[tuple[int, float]]]:
    """The curves plot's lines, by run name: validation loss against step (steps to the nearest ten; mean over the
    seeds whose metrics.json hold a ``val_curve``, older ones do not) for the runs that compare supports at
    compression ``c``: the paper's dense and the best-tuned dense, the fixed lowpass and random supports, the
    adaptive runs and every try at ``c``. A run without a curve is left out."""
    runs = by_run(rows)
    names = ["dense"]
    best_dense = tuned(runs, "dense")
    if best_dense and best_dense[0]:
        names.append(tuning_spec("dense", best_dense[0]).name)
    names += [baseline_spec("dct_lowpass", c).name, sweep_spec("dct_random", c).name]
    names += [adaptive_spec(budget, c).name for budget in ADAPTIVE_RUNS]
    names += [name for name, _, _, try_c, _ in TRIES if try_c == c]
    lines = {}
    for name in names:
        points: dict[int, list[float]] = {}
        for row in runs.get(name, []):
            for step, value in row.get("val_curve") or ():
                # To the nearest ten: the end-of-training validation is logged at step 4,999 by some runs and 5,000
                # by others (a resumed run), which is one point.
                points.setdefault(10 * round(int(step) / 10), []).append(float(value))
        if points:
            lines[name] = [(step, statistics.fmean(values)) for step, values in sorted(points.items())]
    return lines


def curves_plot(path: Path, rows: list[dict], budget: Budget) -> bool:
    """Validation loss against step of :func:`curve_lines` (dense dashed); False (nothing written) when no
    adaptive run or try has a curve."""
    lines = curve_lines(rows)
    if not set(lines) - {"dense", "dct4x", *(tuning_spec("dense", d).name for d in TUNING_DROPOUTS)}:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = {name: len({r["seed"] for r in rows if r["run"] == name and r.get("val_curve")}) for name in lines}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for name, points in lines.items():
        steps, values = zip(*points, strict=True)
        style = {"color": "black", "linestyle": "--"} if name.startswith("dense") else {"marker": "o", "markersize": 3}
        ax.plot(steps, values, label=f"{name} (n = {seeds[name]})", linewidth=1.2, **style)
    finals = [points[-1][1] for points in lines.values()]
    ax.set_ylim(min(finals) - 0.03, max(finals) + 0.35)  # the last two thirds of training, where the runs part
    title = f"Supports at c = 4: validation curves ({budget.steps} steps per run)"
    save_figure(path, fig, ax, ("step", "validation loss (nats/char)"), title, legend_size=7)
    return True
