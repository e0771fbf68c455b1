"""The reproduction's grid: every run ``benchmarks/reproduce.py`` can train, by group, and the budget they share.

A run is a ``RunSpec``: a config under configs/, command-line overrides and the labels the reports give it;
``build_grid`` lists the runs of the selected groups, each once however many groups share it (the groups are
described in reproduce.py). A ``Budget`` (steps, warm-up, device, size overrides) names the runs' folders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

RANDOM_BASIS = "spectral_lightning.parameterizations.random_basis.RandomBasis"
# Parameterizations given to a run as a class path with only ``compression`` set (no config of their own).
CLASS_PATHS: dict[str, str] = {
    "random_basis": RANDOM_BASIS,
    "monarch": "spectral_lightning.parameterizations.monarch.Monarch",
    "sparse_lowrank": "spectral_lightning.parameterizations.sparse_lowrank.SparseLowRank",
    "kronecker": "spectral_lightning.parameterizations.kronecker.Kronecker",
}

# The paper's numbers (4 layers, d = 128, tiny Shakespeare). v1 reports validation perplexity, v2 validation loss.
PAPER_V1_PPL: dict[str, str] = {
    "dense": "6.1 (100%)",
    "dct2x": "6.1 (52%)",
    "dct4x": "6.9 (29%)",
    "lowrank": "8.8 (21%)",
}
PAPER_V2_LOSS: dict[str, str] = {"dense": "1.580", "dct2x": "1.604", "lowrank48": "1.801"}

PAPER_RUNS: tuple[tuple[str, str, float | None, str], ...] = (
    # (run name = config file, parameterization line in the plot, sweep compression c it also stands for, description)
    ("dense", "dense", None, "dense"),
    ("dct2x", "dct zigzag", 2.0, "DCT, K = mn/2 (zigzag)"),
    ("dct4x", "dct lowpass", 4.0, "DCT, K = mn/4 (lowpass)"),
    ("lowrank", "lowrank", None, "low-rank, r = 16"),
    ("lowrank48", "lowrank", None, "low-rank, r = 48"),
)

# Sweep parameterizations: (key used in run names, plot/table label, base config, parameterization overrides for c).
SWEEP_PARAMETERIZATIONS: tuple[str, ...] = ("dct_lowpass", "dct_zigzag", "dct_random", "random_basis", "lowrank")
PARAMETERIZATION_LABEL: dict[str, str] = {
    "dct_lowpass": "dct lowpass",
    "dct_zigzag": "dct zigzag",
    "dct_random": "dct random",
    "random_basis": "random_basis",
    "lowrank": "lowrank",
    "monarch": "monarch",
    "sparse_lowrank": "sparse_lowrank",
    "kronecker": "kronecker",
}
# A sweep point that is exactly a paper run is not trained twice.
SHARED_WITH_PAPER: dict[tuple[str, float], str] = {("dct_zigzag", 2.0): "dct2x", ("dct_lowpass", 4.0): "dct4x"}
DEFAULT_COMPRESSIONS: tuple[float, ...] = (2.0, 4.0, 10.0, 20.0)
# The baselines group: every parameterization at the same compressions (dense joins as the reference).
BASELINE_PARAMETERIZATIONS: tuple[str, ...] = (
    "dct_lowpass",
    "dct_random",
    "lowrank",
    "monarch",
    "sparse_lowrank",
    "kronecker",
)
BASELINE_COMPRESSIONS: tuple[float, ...] = (4.0, 10.0)
# The tuning group: the paper's dense and dct4x at each model dropout (dropout 0 is the paper run itself).
TUNING_MODELS: tuple[str, ...] = ("dense", "dct4x")
TUNING_DROPOUTS: tuple[float, ...] = (0.0, 0.1, 0.2)
# The adaptive group: per support budget, (run-name prefix, plot/table label, config under configs/).
ADAPTIVE_RUNS: dict[str, tuple[str, str, str]] = {
    "per_layer": ("adaptive", "dct adaptive", "adaptive/dct4x.yaml"),
    "global": ("adaptive_global", "dct adaptive global", "adaptive/dct4x-global.yaml"),
}
ADAPTIVE_COMPRESSIONS: tuple[float, ...] = (4.0, 10.0, 20.0)
# The tries group: (run name, table label, the run it varies, its compression, its one change as options). The run
# it varies is a support budget of the adaptive group ("per_layer", "global"), "random" for the fixed random support,
# or an earlier try (a change stacked on that try; a compression other than that try's is the change, set last).
# Coefficient lr scales are √c: an AdamW step then moves W as far, in Frobenius norm, as a dense step does. AdamW's
# decoupled decay shrinks by lr × weight_decay per step, so a scaled rate also scales the decay; the "decay ÷ s"
# tries set the coefficients' weight_decay to 0.1 / s, which keeps it, and "decay × 2" and "× 4" double and quadruple
# it (0.2 and 0.4: the coefficients then shrink 8 and 16 times as fast per step as the dense weights).
TRIES: tuple[tuple[str, str, str, float, tuple[str, ...]], ...] = (
    (
        "adaptive_lr2_c4",
        "adaptive, per layer, coefficient lr × 2",
        "per_layer",
        4.0,
        ("--model.parameterized_lr_scale", "2"),
    ),
    (
        "adaptive_global_lr2_c4",
        "adaptive, global, coefficient lr × 2",
        "global",
        4.0,
        ("--model.parameterized_lr_scale", "2"),
    ),
    (
        "adaptive_global_lr4_c4",
        "adaptive, global, coefficient lr × 4",
        "global",
        4.0,
        ("--model.parameterized_lr_scale", "4"),
    ),
    ("dct_random_lr2_c4", "fixed random, coefficient lr × 2", "random", 4.0, ("--model.parameterized_lr_scale", "2")),
    (
        "adaptive_lowpass_c4",
        "adaptive, per layer, low-pass start",
        "per_layer",
        4.0,
        ("--model.parameterization.init_args.selection", "lowpass"),
    ),
    (
        "adaptive_global_lr2_do0.1_c4",
        "adaptive, global, coefficient lr × 2, dropout 0.1",
        "adaptive_global_lr2_c4",
        4.0,
        ("--model.dropout", "0.1"),
    ),
    (
        "adaptive_global_lr2_gw20_c4",
        "adaptive, global, coefficient lr × 2, Ĝ summed over 20 steps",
        "adaptive_global_lr2_c4",
        4.0,
        ("--model.parameterization.init_args.grow_window", "20"),
    ),
    (
        "adaptive_global_lrsqrt_c10",
        "adaptive, global, coefficient lr × √10",
        "global",
        10.0,
        ("--model.parameterized_lr_scale", "3.162"),
    ),
    (
        "adaptive_global_lrsqrt_do0.1_c10",
        "adaptive, global, coefficient lr × √10, dropout 0.1",
        "adaptive_global_lrsqrt_c10",
        10.0,
        ("--model.dropout", "0.1"),
    ),
    (
        "adaptive_global_lr10_c10",
        "adaptive, global, coefficient lr × 10",
        "global",
        10.0,
        ("--model.parameterized_lr_scale", "10"),
    ),
    (
        "adaptive_global_lr4_wd_c4",
        "adaptive, global, coefficient lr × 4, their decay ÷ 4",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterized_weight_decay", "0.025"),
    ),
    (
        "adaptive_global_lr10_wd_c10",
        "adaptive, global, coefficient lr × 10, their decay ÷ 10",
        "adaptive_global_lr10_c10",
        10.0,
        ("--model.parameterized_weight_decay", "0.01"),
    ),
    (
        "adaptive_global_lr4_wd2_c4",
        "adaptive, global, coefficient lr × 4, their decay × 2",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterized_weight_decay", "0.2"),
    ),
    (
        "adaptive_global_lr4_do0.1_c4",
        "adaptive, global, coefficient lr × 4, dropout 0.1",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.dropout", "0.1"),
    ),
    (
        "adaptive_global_lr4_c3.79",
        "adaptive, global, coefficient lr × 4, c = 3.79",
        "adaptive_global_lr4_c4",
        3.79,
        (),  # the change is the compression itself
    ),
    (
        "adaptive_global_lr4_df0.1_c4",
        "adaptive, global, coefficient lr × 4, drop fraction 0.1",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.drop_fraction", "0.1"),
    ),
    (
        "adaptive_global_lr4_floor_c4",
        "adaptive, global, coefficient lr × 4, annealed to min_lr",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterized_min_lr", "1e-4"),
    ),
    (
        "adaptive_global_lr4_df0.5_c4",
        "adaptive, global, coefficient lr × 4, drop fraction 0.5",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.drop_fraction", "0.5"),
    ),
    (
        "adaptive_global_lr4_do0.05_c4",
        "adaptive, global, coefficient lr × 4, dropout 0.05",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.dropout", "0.05"),
    ),
    (
        "adaptive_global_lr4_wd4_c4",
        "adaptive, global, coefficient lr × 4, their decay × 4",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterized_weight_decay", "0.4"),
    ),
    (
        "adaptive_global_lr4_late0.1_c4",
        "adaptive, global, coefficient lr × 4, dropout 0.1 from step 2,000",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.dropout", "0.1", "--model.dropout_from_step", "2000"),
    ),
    (
        "adaptive_global_lr4_rel_c4",
        "adaptive, global, coefficient lr × 4, layers compared relative to their mean",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.budget", "global_relative"),
    ),
    (
        "adaptive_global_lr4_gw20_c4",
        "adaptive, global, coefficient lr × 4, Ĝ summed over 20 steps",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.grow_window", "20"),
    ),
    (
        "adaptive_global_lr4_uu0.5_c4",
        "adaptive, global, coefficient lr × 4, support frozen at 50% of training",
        "adaptive_global_lr4_c4",
        4.0,
        ("--model.parameterization.init_args.update_until", "0.5"),
    ),
    (
        "adaptive_global_lrsqrt_c20",
        "adaptive, global, coefficient lr × √20",
        "global",
        20.0,
        ("--model.parameterized_lr_scale", "4.472"),
    ),
)


@dataclass(frozen=True)
class RunSpec:
    """One configuration of the grid (trained once per seed)."""

    name: str
    parameterization: str  # plot/table label
    config: str  # YAML under configs/
    overrides: tuple[str, ...] = ()
    compression: float | None = None  # the sweep's c (K = mn/c), None for rank-specified runs
    description: str = ""
    groups: tuple[str, ...] = field(default=(), compare=False)


def sweep_spec(key: str, c: float) -> RunSpec:
    """The sweep run for parameterization ``key`` at compression ``c``."""
    label = PARAMETERIZATION_LABEL[key]
    name = f"{key}_c{c:g}"
    if key.startswith("dct_"):
        selection = key.removeprefix("dct_")
        overrides = (
            "--model.parameterization.init_args.compression",
            f"{c:g}",
            "--model.parameterization.init_args.selection",
            selection,
        )
        return RunSpec(name, label, "dct4x.yaml", overrides, c, f"DCT {selection}, K = mn/{c:g}")
    if key in CLASS_PATHS:
        spec = json.dumps({"class_path": CLASS_PATHS[key], "init_args": {"compression": c}})
        description = {
            "random_basis": f"random basis, K = mn/{c:g}",
            "monarch": f"Monarch, k·(m+n) ≤ mn/{c:g}",
            "sparse_lowrank": f"sparse + low-rank (S ≥ 3%), r·(m+n) + nnz = ⌊mn/{c:g}⌋",
            "kronecker": f"Kronecker, t terms: t·(m1·n1 + m2·n2) ≤ mn/{c:g}",
        }[key]
        return RunSpec(name, label, "dct4x.yaml", ("--model.parameterization", spec), c, description)
    if key == "lowrank":
        overrides = (
            "--model.parameterization.init_args.rank",
            "null",
            "--model.parameterization.init_args.compression",
            f"{c:g}",
        )
        return RunSpec(name, label, "lowrank.yaml", overrides, c, f"low-rank, r·(m+n) ≤ mn/{c:g}")
    raise ValueError(f"unknown sweep parameterization {key!r}")


def baseline_spec(key: str, c: float) -> RunSpec:
    """The baselines run of parameterization ``key`` at compression ``c`` (a paper run where one is the same)."""
    shared = SHARED_WITH_PAPER.get((key, float(c)))
    if shared:
        return paper_spec(shared)
    return sweep_spec(key, float(c))


def paper_spec(name: str) -> RunSpec:
    """The paper run ``name`` (its config is ``configs/<name>.yaml``, unchanged)."""
    _, label, c, description = next(r for r in PAPER_RUNS if r[0] == name)
    return RunSpec(name, label, f"{name}.yaml", (), c, description)


def tuning_spec(model: str, dropout: float) -> RunSpec:
    """The tuning run of paper config ``model`` at model dropout ``dropout``: the paper run itself at dropout 0
    (shared/paper.yaml trains without dropout), else ``<model>_do<dropout>``."""
    paper = paper_spec(model)
    if dropout == 0:
        return paper
    return RunSpec(
        f"{model}_do{dropout:g}",
        f"{paper.parameterization} (dropout {dropout:g})",  # its own label: the plot leaves these runs out
        paper.config,
        ("--model.dropout", f"{dropout:g}"),
        paper.compression,
        f"{paper.description}, dropout {dropout:g}",
    )


def adaptive_spec(budget: str, c: float) -> RunSpec:
    """The run whose DCT supports move (from a random start, every 100 steps: the adaptive configs' defaults) at
    compression ``c``, with ``budget`` ``per_layer`` (each layer keeps K = mn/c) or ``global`` (ΣK fixed)."""
    prefix, label, config = ADAPTIVE_RUNS[budget]
    what = "each layer keeps K = mn/" if budget == "per_layer" else "one total ΣK = Σmn/"
    return RunSpec(
        f"{prefix}_c{c:g}",
        label,
        config,
        ("--model.parameterization.init_args.compression", f"{c:g}"),
        c,
        f"DCT, moving support ({what}{c:g})",
    )


def try_base(base: str, c: float) -> RunSpec:
    """The run a try at compression ``c`` varies: the fixed random support (``random``), the adaptive run of
    support budget ``base`` (``per_layer``, ``global``) or the try named ``base``."""
    if base == "random":
        return sweep_spec("dct_random", c)
    return adaptive_spec(base, c) if base in ADAPTIVE_RUNS else try_spec(base)


def try_spec(name: str) -> RunSpec:
    """The tries group's run ``name``: the run it varies, with its one change; its own label (the plot leaves
    these runs out: the Tries table holds them)."""
    _, label, base, c, change = next(t for t in TRIES if t[0] == name)
    spec = try_base(base, c)
    if c != spec.compression:  # a try of another try may change its compression: set last, so it wins
        change = (*change, "--model.parameterization.init_args.compression", f"{c:g}")
    return replace(
        spec,
        name=name,
        compression=c,
        parameterization=label,
        overrides=spec.overrides + change,
        description=f"{spec.description}, {label.rsplit(', ', 1)[-1]}",
    )


def build_grid(
    groups: Sequence[str],
    compressions: Sequence[float],
    baseline_compressions: Sequence[float] = BASELINE_COMPRESSIONS,
    adaptive_compressions: Sequence[float] = ADAPTIVE_COMPRESSIONS,
) -> list[RunSpec]:
    """The runs of ``groups`` (``paper``, ``sweep``, ``baselines``, ``tuning``, ``adaptive``, ``tries``), each
    once, in a stable order; ``compressions`` are the sweep's, ``baseline_compressions`` the baselines',
    ``adaptive_compressions`` the adaptive group's (each try names its own compression)."""
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec, group: str) -> None:
        old = runs.get(spec.name)
        groups = old.groups if old else ()
        runs[spec.name] = replace(spec, groups=groups if group in groups else groups + (group,))

    paper = {name: paper_spec(name) for name, *_ in PAPER_RUNS}
    if "paper" in groups:
        for spec in paper.values():
            add(spec, "paper")
    if "sweep" in groups:
        for c in compressions:
            for key in SWEEP_PARAMETERIZATIONS:
                shared = SHARED_WITH_PAPER.get((key, float(c)))
                add(paper[shared] if shared else sweep_spec(key, float(c)), "sweep")
    if "baselines" in groups:
        add(paper["dense"], "baselines")
        for c in baseline_compressions:
            for key in BASELINE_PARAMETERIZATIONS:
                add(baseline_spec(key, c), "baselines")
    if "tuning" in groups:
        for model in TUNING_MODELS:
            for dropout in TUNING_DROPOUTS:
                add(tuning_spec(model, dropout), "tuning")
    if "adaptive" in groups:
        add(paper["dense"], "adaptive")
        for c in adaptive_compressions:
            add(baseline_spec("dct_lowpass", c), "adaptive")  # the paper's dct4x at c = 4
            add(sweep_spec("dct_random", float(c)), "adaptive")
            for budget in ADAPTIVE_RUNS:
                add(adaptive_spec(budget, float(c)), "adaptive")
    if "tries" in groups:
        add(paper["dense"], "tries")
        add(paper["dct4x"], "tries")
        for _, _, base, c, _ in TRIES:  # the runs the tries vary join as references (a try's own base is a try)
            if base == "random" or base in ADAPTIVE_RUNS:
                add(try_base(base, c), "tries")
        for name, *_ in TRIES:
            add(try_spec(name), "tries")
    return list(runs.values())


PAPER_STEPS = 5000  # the paper's budget: the default, and the one whose reports are summary.md / summary.png


@dataclass(frozen=True)
class Budget:
    """What every run shares: steps, accelerator and the extra (debug) options."""

    steps: int
    device: str
    extra: tuple[str, ...]  # options that change the experiment (model size, data), part of the run's identity
    warmup: int = 100

    @property
    def tag(self) -> str:
        """Run-folder suffix: the budget, plus a short hash of the extra options when there are any."""
        tag = f"steps{self.steps}"
        if self.warmup != 100:
            tag += f"-warmup{self.warmup}"
        if self.extra:
            tag += "-" + hashlib.sha1(" ".join(self.extra).encode()).hexdigest()[:8]
        return tag


def summary_stem(budget: Budget) -> str:
    """``summary`` for the paper's budget (5,000 steps, default warm-up, no overrides), else ``summary-<tag>``."""
    paper = Budget(PAPER_STEPS, budget.device, ())
    return "summary" if budget.tag == paper.tag else f"summary-{budget.tag}"


ADAPTIVE_SELECTIONS: tuple[tuple[str, str, str], ...] = (
    # (table label, how the spec is found: sweep key or support budget, kind)
    ("fixed lowpass", "dct_lowpass", "fixed"),
    ("fixed random", "dct_random", "fixed"),
    ("adaptive, per layer", "per_layer", "adaptive"),
    ("adaptive, global", "global", "adaptive"),
)


def adaptive_selection_spec(key: str, kind: str, c: float) -> RunSpec:
    """The adaptive group's run of one row of ADAPTIVE_SELECTIONS at compression ``c``."""
    return baseline_spec(key, c) if kind == "fixed" else adaptive_spec(key, c)
