"""benchmarks/reproduce.py at toy size: two tiny configs, one seed, a few steps, through the real cli.py."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, make_text

from spectral_lightning import DCT, Dense
from spectral_lightning.analysis import parameter_report
from spectral_lightning.cli import cli_main
from spectral_lightning.model import GPT, GPTConfig
from spectral_lightning.parameterizations import find_class, resolve

# benchmarks/ holds scripts, not a package: reproduce.py imports its two siblings from the folder it runs in.
sys.path.insert(0, str(REPO / "benchmarks"))
import reproduce  # noqa: E402
from reproduce_grid import Budget, build_grid, paper_spec, summary_stem, sweep_spec  # noqa: E402
from reproduce_report import CSV_COLUMNS, by_run, curve_lines, curves_plot, plot_points, summary_markdown, tuned  # noqa: E402

DEBUG = "n_layer=1,n_embd=32,n_head=2,block=16,batch=16"


def tiny_params(vocab_size: int, parameterization) -> int:  # noqa: ANN001
    return GPT(GPTConfig(vocab_size, 16, 1, 2, 32, 0.0, True), parameterization).num_parameters()


def test_grid_has_every_run_once():
    grid = build_grid(["paper", "sweep"], [2, 4, 10, 20])
    names = [s.name for s in grid]
    assert len(names) == len(set(names))
    # 5 paper runs + 4 compressions x 5 parameterizations, of which dct2x (zigzag, mn/2) and dct4x (lowpass,
    # mn/4) are shared.
    assert len(grid) == 5 + 4 * 5 - 2
    by_name = {s.name: s for s in grid}
    assert by_name["dct2x"].groups == ("paper", "sweep")
    assert by_name["lowrank48"].groups == ("paper",)
    cells = {(s.parameterization, s.compression) for s in grid if "sweep" in s.groups}
    assert len(cells) == 20
    assert [s.name for s in build_grid(["paper"], [])] == ["dense", "dct2x", "dct4x", "lowrank", "lowrank48"]


@pytest.mark.parametrize(("steps", "interval"), [(5000, 500), (300, 150), (6, 3), (7, 1), (1, 1)])
def test_validation_runs_at_the_last_step(steps: int, interval: int):
    assert reproduce.validation_interval(steps) == interval


def test_throughput_skips_the_time_a_run_was_stopped():
    # 10 steps per log at 1 s each; the run stops after step 30 and resumes (from step 30) an hour later.
    logged = [(float(t), 10 * t, 0.0) for t in range(4)] + [(3603.0 + t, 40 + 10 * t, 0.0) for t in range(3)]
    assert reproduce.tokens_per_second(logged, tokens_per_step=100) == pytest.approx(1000.0)
    restarted = logged[:3] + [(50.0, 10, 0.0), (51.0, 20, 0.0)]  # an earlier step logged again after a restart
    assert reproduce.tokens_per_second(restarted, tokens_per_step=100) == pytest.approx(1000.0)
    assert math.isnan(reproduce.tokens_per_second(logged[:1], tokens_per_step=100))


def test_summary_marks_sweep_cells_with_fewer_seeds():
    grid = build_grid(["paper", "sweep"], [10])

    def row(run: str, seed: int, loss: float) -> dict:
        return {
            "run": run, "seed": seed, "machine": "test", "final_val_loss": loss, "best_val_loss": loss,
            "final_val_ppl": math.exp(loss), "mean_stable_rank": 10.0, "stored_params": 100, "pct_of_dense": 10.0,
            "tokens_per_s": 1.0,
        }  # fmt: skip

    rows = [row("dense", 0, 1.5), row("dense", 1, 1.7), row("dct_random_c10", 0, 2.0), row("lowrank_c10", 0, 2.2)]
    rows.append(row("lowrank_c10", 1, 2.4))
    md = summary_markdown(rows, grid, Budget(5000, "cpu", ()), "cmd")
    sweep = md.split("## Sweep: final val loss")[1].split("##")[0]
    lines = [line for line in sweep.splitlines()[4:] if line]
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ")[-1].strip(" |") for line in lines}
    assert cells == {"dct random": "2.000 (n = 1)", "lowrank": "2.300 ± 0.141"}
    assert "| dense | dense | 100 | 10.0% | 1.600 ± 0.141 |" in md
    assert "seeds 0, 1; mean ± std over seeds ((n = k): a cell with only k of them)" in md


BASELINE_RUNS = [
    # (run name, config, class path of a parameterization given on the command line, compression)
    ("dense", "dense.yaml", None, None),
    ("dct4x", "dct4x.yaml", None, 4.0),  # the sweep's dct lowpass at c = 4: the paper run, not trained again
    ("dct_random_c4", "dct4x.yaml", None, 4.0),
    ("lowrank_c4", "lowrank.yaml", None, 4.0),
    ("monarch_c4", "dct4x.yaml", "spectral_lightning.parameterizations.monarch.Monarch", 4.0),
    ("sparse_lowrank_c4", "dct4x.yaml", "spectral_lightning.parameterizations.sparse_lowrank.SparseLowRank", 4.0),
    ("kronecker_c4", "dct4x.yaml", "spectral_lightning.parameterizations.kronecker.Kronecker", 4.0),
    ("dct_lowpass_c10", "dct4x.yaml", None, 10.0),
    ("dct_random_c10", "dct4x.yaml", None, 10.0),
    ("lowrank_c10", "lowrank.yaml", None, 10.0),
    ("monarch_c10", "dct4x.yaml", "spectral_lightning.parameterizations.monarch.Monarch", 10.0),
    ("sparse_lowrank_c10", "dct4x.yaml", "spectral_lightning.parameterizations.sparse_lowrank.SparseLowRank", 10.0),
    ("kronecker_c10", "dct4x.yaml", "spectral_lightning.parameterizations.kronecker.Kronecker", 10.0),
]


def test_baselines_grid_has_every_parameterization_at_c4_and_c10():
    grid = build_grid(["baselines"], [2, 4, 10, 20])  # the sweep's compressions do not apply
    assert [(s.name, s.config, s.compression) for s in grid] == [(n, cfg, c) for n, cfg, _, c in BASELINE_RUNS]
    by_name = {s.name: s for s in grid}
    for name, _, class_path, c in BASELINE_RUNS:
        spec = by_name[name]
        assert spec.groups == ("baselines",)
        if class_path is not None:  # the parameterization resolves to the registered class at this compression
            flag, value = spec.overrides
            assert flag == "--model.parameterization"
            assert resolve(json.loads(value)) == find_class(class_path)(compression=c)
            assert spec.parameterization == find_class(class_path).name
    assert by_name["dct_random_c10"].overrides == sweep_spec("dct_random", 10).overrides
    assert by_name["lowrank_c4"].parameterization == "lowrank"
    # With the other groups, the runs they share are trained once and belong to every group that has them.
    everything = {s.name: s for s in build_grid(["paper", "sweep", "baselines"], [2, 4, 10, 20])}
    assert len(everything) == 5 + 4 * 5 - 2 + 3 * 2  # paper + sweep, plus Monarch, sparse + low-rank, Kronecker
    assert everything["dense"].groups == ("paper", "baselines")
    assert everything["dct4x"].groups == ("paper", "sweep", "baselines")
    assert everything["dct_random_c10"].groups == ("sweep", "baselines")
    assert everything["sparse_lowrank_c4"].groups == ("baselines",)
    assert [s.name for s in build_grid(["baselines"], [], [2])][1:] == [
        "dct_lowpass_c2", "dct_random_c2", "lowrank_c2", "monarch_c2", "sparse_lowrank_c2", "kronecker_c2"
    ]  # fmt: skip


def synthetic(run: str, seed: int, loss: float, tokens_per_s: float, pct: float, bpb: float | None = 2.0) -> dict:
    """A finished run's row as metrics.json holds it (label: the run name without its ``_c<c>``)."""
    return {
        "run": run, "parameterization": run.split("_c")[0], "seed": seed, "machine": "test", "final_val_loss": loss,
        "best_val_loss": loss - 0.1, "final_val_ppl": math.exp(loss), "final_val_bpb": bpb, "mean_stable_rank": 10.0,
        "stored_params": 100, "pct_of_dense": pct, "tokens_per_s": tokens_per_s,
    }  # fmt: skip


def test_summary_baselines_table_relative_throughput_and_plot_lines():
    rows = [synthetic("dense", 0, 1.5, 1000.0, 100.0), synthetic("dense", 1, 1.7, 3000.0, 100.0)]
    rows += [synthetic("monarch_c4", 0, 2.0, 1000.0, 28.3)]
    rows += [{**synthetic("monarch_c4", 1, 2.2, 1400.0, 28.3), "machine": "Linux-6.19-other-kernel, test"}]
    rows += [synthetic("sparse_lowrank_c10", 0, 2.5, 4000.0, 14.3, bpb=None)]
    rows += [synthetic("lowrank_c10", 0, 2.4, float("nan"), 14.0)]
    rows += [{**synthetic("kronecker_c10", 0, 2.6, 500.0, 14.2), "machine": "slower"}]
    grid = build_grid(["paper", "sweep", "baselines"], [4, 10], [4, 10])
    md = summary_markdown(rows, grid, Budget(5000, "cpu", ()), "cmd")
    table = md.split("## Baselines")[1].split("Paper: v1")[0]
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    cells = {tuple(line.strip("| ").split(" | ")[:2]): line.strip("| ").split(" | ")[2:] for line in lines}
    # (parameterization, c) -> params, % of dense, final, best, bpb, stable rank, tokens/s, x dense, n; dense
    # first, then each compression in the group's order; cells without runs are left out.
    assert list(cells) == [
        ("dense", "–"), ("monarch", "4"), ("lowrank", "10"), ("sparse_lowrank", "10"), ("kronecker", "10")
    ]  # fmt: skip
    assert cells[("dense", "–")] == ["100", "100.0%", "1.600 ± 0.141", "1.500 ± 0.141", "2.000 ± 0.000", "10.0 ± 0.0",
                                     "2,000", "1.00×", "2"]  # fmt: skip
    # Relative throughput: each run's tokens/s over the mean of the dense runs on its machine (2,000), averaged;
    # the same hardware under another kernel counts as the same machine; a run from a machine without a dense run
    # gets no ratio.
    assert cells[("monarch", "4")][6:] == ["1,200", "0.60×", "2"]
    assert cells[("kronecker", "10")][6:] == ["500", "–", "1"]
    assert cells[("sparse_lowrank", "10")][4] == "–"  # no bpb recorded
    assert cells[("sparse_lowrank", "10")][6:] == ["4,000", "2.00×", "1"]
    assert cells[("lowrank", "10")][6:] == ["–", "–", "1"]  # no throughput measured
    # The plot draws one line per parameterization: val loss against the share of the dense model stored.
    points = plot_points(rows)
    assert set(points) == {"dense", "monarch", "sparse_lowrank", "lowrank", "kronecker"}
    assert points["monarch"] == [(28.3, pytest.approx(2.1), pytest.approx(math.sqrt(0.02)))]
    # Without a run that only the baselines, tuning or adaptive group trains, the report is what it was before
    # those groups existed (the report's grid holds every group).
    others = [r for r in rows if r["run"] in ("dense", "lowrank_c10")]
    others += [synthetic("dct_random_c4", 0, 2.1, 900.0, 28.3), synthetic("dct4x", 0, 1.9, 900.0, 28.3)]
    old_grid = build_grid(["paper", "sweep"], [4, 10])
    every = build_grid(["paper", "sweep", "baselines", "tuning", "adaptive"], [4, 10], [4, 10], [4, 10])
    new = summary_markdown(others, every, Budget(5000, "cpu", ()), "cmd")
    for title in ("Baselines", "Tuning", "Adaptive", "Final K"):
        assert title not in new
    assert new == summary_markdown(others, old_grid, Budget(5000, "cpu", ()), "cmd")


def print_config(spec, text_file: Path, capsys: pytest.CaptureFixture[str]) -> dict:  # noqa: ANN001
    """The effective config of a grid run: its config file and overrides through cli.py's --print_config."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", str(REPO / "configs" / spec.config), *spec.overrides, "--data.path",
                  str(text_file), "--print_config"])  # fmt: skip
    assert exit_.value.code in (None, 0)
    return yaml.safe_load(capsys.readouterr().out)


def test_tuning_grid_reuses_the_paper_runs_at_dropout_0(text_file: Path, capsys: pytest.CaptureFixture[str]):
    grid = build_grid(["tuning"], [2, 4, 10, 20])
    assert [(s.name, s.config, s.overrides) for s in grid] == [
        ("dense", "dense.yaml", ()),
        ("dense_do0.1", "dense.yaml", ("--model.dropout", "0.1")),
        ("dense_do0.2", "dense.yaml", ("--model.dropout", "0.2")),
        ("dct4x", "dct4x.yaml", ()),
        ("dct4x_do0.1", "dct4x.yaml", ("--model.dropout", "0.1")),
        ("dct4x_do0.2", "dct4x.yaml", ("--model.dropout", "0.2")),
    ]
    by_name = {s.name: s for s in grid}
    assert by_name["dct4x_do0.2"].compression == 4.0 and by_name["dense_do0.1"].compression is None
    # The dropout-0 runs are the paper runs: the same spec (same run folder), trained once for both groups ...
    paper = {s.name: s for s in build_grid(["paper"], [])}
    assert by_name["dense"] == paper["dense"] and by_name["dct4x"] == paper["dct4x"]
    everything = {s.name: s for s in build_grid(["paper", "tuning"], [])}
    assert len(everything) == 5 + 4
    assert everything["dct4x"].groups == ("paper", "tuning") and everything["dct4x_do0.1"].groups == ("tuning",)
    # ... which holds because the paper's budget trains without dropout; the override reaches the model.
    assert print_config(by_name["dct4x"], text_file, capsys)["model"]["dropout"] == 0.0
    printed = print_config(by_name["dct4x_do0.2"], text_file, capsys)
    assert printed["model"]["dropout"] == 0.2
    assert printed["model"]["parameterization"]["init_args"]["selection"] == "lowpass"


ADAPTIVE_RUNS = [
    # (run name, config, compression): per c the fixed lowpass, fixed random and the two moving supports
    ("dense", "dense.yaml", None),
    ("dct4x", "dct4x.yaml", 4.0),  # the fixed lowpass support at c = 4 is the paper's dct4x
    ("dct_random_c4", "dct4x.yaml", 4.0),
    ("adaptive_c4", "adaptive/dct4x.yaml", 4.0),
    ("adaptive_global_c4", "adaptive/dct4x-global.yaml", 4.0),
    ("dct_lowpass_c10", "dct4x.yaml", 10.0),
    ("dct_random_c10", "dct4x.yaml", 10.0),
    ("adaptive_c10", "adaptive/dct4x.yaml", 10.0),
    ("adaptive_global_c10", "adaptive/dct4x-global.yaml", 10.0),
    ("dct_lowpass_c20", "dct4x.yaml", 20.0),
    ("dct_random_c20", "dct4x.yaml", 20.0),
    ("adaptive_c20", "adaptive/dct4x.yaml", 20.0),
    ("adaptive_global_c20", "adaptive/dct4x-global.yaml", 20.0),
]


def test_adaptive_grid_shares_the_fixed_supports(text_file: Path, capsys: pytest.CaptureFixture[str]):
    grid = build_grid(["adaptive"], [2, 4, 10, 20])  # the sweep's compressions do not apply
    assert [(s.name, s.config, s.compression) for s in grid] == ADAPTIVE_RUNS
    by_name = {s.name: s for s in grid}
    assert by_name["dct_random_c10"] == sweep_spec("dct_random", 10)
    assert by_name["dct_lowpass_c20"] == sweep_spec("dct_lowpass", 20)
    assert by_name["adaptive_global_c10"].overrides == ("--model.parameterization.init_args.compression", "10")
    assert {by_name[n].parameterization for n in ("adaptive_c4", "adaptive_global_c4")} == {
        "dct adaptive", "dct adaptive global"
    }  # fmt: skip
    everything = {s.name: s for s in build_grid(["paper", "sweep", "adaptive"], [2, 4, 10, 20])}
    assert len(everything) == 5 + 4 * 5 - 2 + 3 * 2  # paper + sweep, plus the moving supports at c = 4, 10, 20
    assert everything["dense"].groups == ("paper", "adaptive")
    assert everything["dct4x"].groups == ("paper", "sweep", "adaptive")
    assert everything["dct_random_c20"].groups == ("sweep", "adaptive")
    assert everything["adaptive_global_c20"].groups == ("adaptive",)
    assert [s.name for s in build_grid(["adaptive"], [], [], [2])] == [
        "dense", "dct_lowpass_c2", "dct_random_c2", "adaptive_c2", "adaptive_global_c2"
    ]  # fmt: skip
    # The moving supports: random start, an update every 100 steps, the group's compression.
    for name, budget in (("adaptive_c10", "per_layer"), ("adaptive_global_c10", "global")):
        options = print_config(by_name[name], text_file, capsys)["model"]["parameterization"]["init_args"]
        assert options["compression"] == 10.0 and options["budget"] == budget
        assert options["selection"] == "random" and options["update_every"] == 100


# Each run's plot/table label, as its spec gives it (``dense (dropout 0.1)``, ``dct adaptive global``, ...).
LABELS = {
    s.name: s.parameterization
    for s in build_grid(["paper", "sweep", "tuning", "adaptive", "tries"], [4, 10, 20], [], [4, 10, 20])
}


def scored(run: str, seed: int, final: float, best: float, tokens_per_s: float = 1000.0, **extra: float) -> dict:
    """A finished run's row with its own final and best val loss (and any extra metrics.json keys)."""
    row = synthetic(run, seed, final, tokens_per_s, 28.3)
    return {**row, "best_val_loss": best, "parameterization": LABELS[run], **extra}


def table(md: str, title: str) -> list[list[str]]:
    """The body rows of the first table after the ``## <title>`` heading, as lists of cells."""
    section = md.split(f"## {title}")[1].split("\n## ")[0].split("\n\n")[2]
    return [line.strip("| ").split(" | ") for line in section.splitlines()[2:]]


TUNING_ROWS = [
    # dense: dropout 0.1 has the lowest best val loss, dropout 0.2 the lowest final one (so the choice is by best).
    scored("dense", 0, 1.60, 1.55), scored("dense", 1, 1.64, 1.57),
    scored("dense_do0.1", 0, 1.58, 1.50), scored("dense_do0.1", 1, 1.58, 1.52),
    scored("dense_do0.2", 0, 1.56, 1.54),
    scored("dct4x", 0, 1.70, 1.66),
    scored("dct4x_do0.2", 0, 1.66, 1.62), scored("dct4x_do0.2", 1, 1.70, 1.64),
]  # fmt: skip


def test_tuning_table_compares_the_best_tuned_models():
    grid = build_grid(["paper", "sweep", "tuning"], [4, 10])
    md = summary_markdown(TUNING_ROWS, grid, Budget(5000, "cpu", ()), "cmd")
    # model, dropout, final, best, n; dense first; a dropout without runs is left out.
    assert table(md, "Tuning") == [
        ["dense", "0", "1.620 ± 0.028", "1.560 ± 0.014", "2"],
        ["dense", "0.1", "1.580 ± 0.000", "1.510 ± 0.014", "2"],
        ["dense", "0.2", "1.560", "1.540", "1"],
        ["dct4x", "0", "1.700", "1.660", "1"],
        ["dct4x", "0.2", "1.680 ± 0.028", "1.630 ± 0.014", "2"],
    ]
    # Best-tuned: dense at 0.1 (best 1.510, final 1.580), dct4x at 0.2 (best 1.630, final 1.680); the gaps are
    # dct4x - dense between those two configs: 1.630 - 1.510 and 1.680 - 1.580.
    assert (
        "Best-tuned (lowest mean best val loss): dense at dropout 0.1 (best 1.510, final 1.580); dct4x at dropout "
        "0.2 (best 1.630, final 1.680). Gap dct4x − dense, best-tuned against best-tuned: +0.120 best vs best, "
        "+0.100 final vs final." in md
    )
    assert tuned(by_run(TUNING_ROWS), "dense")[0] == 0.1
    # The plot keeps the paper-setting runs and leaves the dropout variants to the table.
    assert {r["parameterization"] for r in TUNING_ROWS} == {
        "dense", "dense (dropout 0.1)", "dense (dropout 0.2)", "dct lowpass", "dct lowpass (dropout 0.2)"
    }  # fmt: skip
    assert set(plot_points(TUNING_ROWS)) == {"dense", "dct lowpass"}


ADAPTIVE_ROWS = [
    scored("dense", 0, 1.60, 1.55, 4000.0),
    scored("dct4x", 0, 1.70, 1.66, 1500.0),
    scored("dct_random_c4", 0, 1.80, 1.76, 1000.0), scored("dct_random_c4", 1, 1.80, 1.78, 1200.0),
    scored("adaptive_c4", 0, 1.72, 1.65, 880.0, mean_support_changed=0.1),
    scored("adaptive_c4", 1, 1.74, 1.67, 660.0, mean_support_changed=0.2),
    scored("adaptive_global_c10", 0, 1.90, 1.80, 500.0, mean_support_changed=0.15),
]  # fmt: skip


def test_adaptive_table_gap_to_the_best_tuned_dense():
    grid = build_grid(["paper", "sweep", "tuning", "adaptive"], [4, 10], [4, 10], [4, 10])
    budget = Budget(5000, "cpu", ())
    md = summary_markdown(ADAPTIVE_ROWS + TUNING_ROWS[2:5], grid, budget, "cmd")
    # selection, c, % of dense, best, final, gap, stable rank, tokens/s, x random, changed, n. The gap is to the
    # best-tuned dense's best val loss (dense_do0.1: 1.510), tokens/s relative to the fixed random runs' mean
    # (1,100) at the same c; cells without runs are left out.
    assert (
        "gap: mean best val loss minus that of the best-tuned dense (`dense_do0.1`, dropout 0.1), best val loss 1.510"
        in md
    )
    assert table(md, "Adaptive frequency support") == [
        ["dense", "–", "28.3%", "1.550", "1.600", "+0.040", "10.0", "4,000", "–", "–", "1"],
        ["dense, dropout 0.1", "–", "28.3%", "1.510 ± 0.014", "1.580 ± 0.000", "+0.000", "10.0 ± 0.0", "1,000", "–",
         "–", "2"],
        ["fixed lowpass", "4", "28.3%", "1.660", "1.700", "+0.150", "10.0", "1,500", "1.36×", "–", "1"],
        ["fixed random", "4", "28.3%", "1.770 ± 0.014", "1.800 ± 0.000", "+0.260", "10.0 ± 0.0", "1,100", "1.00×",
         "–", "2"],
        ["adaptive, per layer", "4", "28.3%", "1.660 ± 0.014", "1.730 ± 0.014", "+0.150", "10.0 ± 0.0", "770",
         "0.70×", "0.150 ± 0.071", "2"],
        ["adaptive, global", "10", "28.3%", "1.800", "1.900", "+0.290", "10.0", "500", "–", "0.150", "1"],
    ]  # fmt: skip
    # Without tuning runs, the gap is to the paper's dense run (best 1.550), and the report says so.
    md = summary_markdown(ADAPTIVE_ROWS, grid, budget, "cmd")
    assert "the paper's dense run (dropout 0; no tuning run has finished), best val loss 1.550" in md
    assert [row[5] for row in table(md, "Adaptive frequency support")] == [
        "+0.000", "+0.110", "+0.220", "+0.110", "+0.250"
    ]  # fmt: skip
    assert "## Tuning" not in md
    # The global run logged no support/k (no update): the K table says so instead of showing nothing.
    assert "Final K per layer (global budget): the global-budget runs logged no support update." in md
    # The plot gains one line per moving-support label, beside the fixed ones.
    points = plot_points(ADAPTIVE_ROWS)
    assert points["dct adaptive"] == [(28.3, pytest.approx(1.73), pytest.approx(math.sqrt(2e-4)))]
    assert set(points) == {"dense", "dct lowpass", "dct random", "dct adaptive", "dct adaptive global"}


def test_tries_change_one_option_of_the_runs_they_vary(text_file: Path, capsys: pytest.CaptureFixture[str]):
    grid = build_grid(["tries"], [2, 10], [10], [10, 20])  # the other groups' compressions do not apply
    assert [s.name for s in grid] == [
        "dense", "dct4x", "adaptive_c4", "adaptive_global_c4", "dct_random_c4", "adaptive_global_c10",
        "adaptive_global_c20",
        "adaptive_lr2_c4", "adaptive_global_lr2_c4", "adaptive_global_lr4_c4", "dct_random_lr2_c4",
        "adaptive_lowpass_c4",
        "adaptive_global_lr2_do0.1_c4", "adaptive_global_lr2_gw20_c4",
        "adaptive_global_lrsqrt_c10", "adaptive_global_lrsqrt_do0.1_c10", "adaptive_global_lr10_c10",
        "adaptive_global_lr4_wd_c4", "adaptive_global_lr10_wd_c10", "adaptive_global_lr4_wd2_c4",
        "adaptive_global_lr4_do0.1_c4",
        "adaptive_global_lr4_c3.79", "adaptive_global_lr4_df0.1_c4", "adaptive_global_lr4_floor_c4",
        "adaptive_global_lr4_df0.5_c4", "adaptive_global_lr4_do0.05_c4", "adaptive_global_lr4_wd4_c4",
        "adaptive_global_lr4_late0.1_c4", "adaptive_global_lr4_rel_c4", "adaptive_global_lr4_gw20_c4",
        "adaptive_global_lr4_uu0.5_c4", "adaptive_global_lrsqrt_c20",
    ]  # fmt: skip
    by_name = {s.name: s for s in grid}
    # The references are the adaptive group's own runs (same folders), so they are trained once for both groups.
    adaptive = {s.name: s for s in build_grid(["adaptive"], [], [], [4, 10, 20])}
    for name in ("dense", "dct4x", "dct_random_c4", "adaptive_c4", "adaptive_global_c4", "adaptive_global_c10"):
        assert by_name[name] == adaptive[name]
    everything = {s.name: s for s in build_grid(["adaptive", "tries"], [], [], [4])}
    assert everything["adaptive_c4"].groups == ("adaptive", "tries")
    # Each try is its base run's command plus one change, which reaches the model.
    lr2 = by_name["adaptive_lr2_c4"]
    assert lr2.config == "adaptive/dct4x.yaml" and lr2.compression == 4.0
    assert lr2.overrides == by_name["adaptive_c4"].overrides + ("--model.parameterized_lr_scale", "2")
    printed = print_config(lr2, text_file, capsys)["model"]
    assert printed["parameterized_lr_scale"] == 2.0 and printed["parameterization"]["init_args"]["update_every"] == 100
    shared = print_config(by_name["adaptive_global_lr2_c4"], text_file, capsys)["model"]
    assert shared["parameterized_lr_scale"] == 2.0 and shared["parameterization"]["init_args"]["budget"] == "global"
    fixed = print_config(by_name["dct_random_lr2_c4"], text_file, capsys)["model"]
    assert fixed["parameterized_lr_scale"] == 2.0
    assert fixed["parameterization"]["init_args"]["selection"] == "random"
    assert fixed["parameterization"]["init_args"]["update_every"] is None
    lowpass = print_config(by_name["adaptive_lowpass_c4"], text_file, capsys)["model"]
    assert lowpass["parameterized_lr_scale"] == 1.0
    assert lowpass["parameterization"]["init_args"]["selection"] == "lowpass"
    assert lowpass["parameterization"]["init_args"]["update_every"] == 100
    # A try may stack its change on another try: the c = 4 global lr × 2 run, with the tuned dense model's dropout.
    stacked = by_name["adaptive_global_lr2_do0.1_c4"]
    assert stacked.overrides == by_name["adaptive_global_lr2_c4"].overrides + ("--model.dropout", "0.1")
    printed = print_config(stacked, text_file, capsys)["model"]
    assert printed["dropout"] == 0.1 and printed["parameterized_lr_scale"] == 2.0
    assert printed["parameterization"]["init_args"]["budget"] == "global"
    window = print_config(by_name["adaptive_global_lr2_gw20_c4"], text_file, capsys)["model"]
    assert window["parameterization"]["init_args"]["grow_window"] == 20 and window["parameterized_lr_scale"] == 2.0
    # The "decay ÷ s" tries keep lr × weight_decay of the coefficients at the dense model's 1e-3 × 0.1.
    for name, scale in (("adaptive_global_lr4_wd_c4", 4), ("adaptive_global_lr10_wd_c10", 10)):
        printed = print_config(by_name[name], text_file, capsys)["model"]
        assert printed["parameterized_lr_scale"] == scale
        assert printed["parameterized_lr_scale"] * printed["parameterized_weight_decay"] == pytest.approx(0.1)
        assert printed["weight_decay"] == 0.1 and printed["parameterization"]["init_args"]["budget"] == "global"
    doubled = print_config(by_name["adaptive_global_lr4_wd2_c4"], text_file, capsys)["model"]
    assert doubled["parameterized_weight_decay"] == 0.2 and doubled["parameterized_lr_scale"] == 4
    quadrupled = print_config(by_name["adaptive_global_lr4_wd4_c4"], text_file, capsys)["model"]
    assert quadrupled["parameterized_weight_decay"] == 0.4 and quadrupled["parameterized_lr_scale"] == 4
    assert quadrupled["weight_decay"] == 0.1
    late = print_config(by_name["adaptive_global_lr4_late0.1_c4"], text_file, capsys)["model"]
    assert late["dropout"] == 0.1 and late["dropout_from_step"] == 2000 and late["parameterized_lr_scale"] == 4
    relative = print_config(by_name["adaptive_global_lr4_rel_c4"], text_file, capsys)["model"]
    assert relative["parameterization"]["init_args"]["budget"] == "global_relative"
    assert relative["parameterized_lr_scale"] == 4 and relative["parameterized_weight_decay"] is None
    window = print_config(by_name["adaptive_global_lr4_gw20_c4"], text_file, capsys)["model"]
    assert window["parameterization"]["init_args"]["grow_window"] == 20 and window["parameterized_lr_scale"] == 4
    frozen = print_config(by_name["adaptive_global_lr4_uu0.5_c4"], text_file, capsys)["model"]["parameterization"]
    assert frozen["init_args"]["update_until"] == 0.5 and frozen["init_args"]["update_every"] == 100
    assert frozen["init_args"]["budget"] == "global"
    dropout = print_config(by_name["adaptive_global_lr4_do0.1_c4"], text_file, capsys)["model"]
    assert dropout["dropout"] == 0.1 and dropout["parameterized_lr_scale"] == 4
    assert dropout["parameterized_weight_decay"] is None
    assert dropout["parameterization"]["init_args"]["budget"] == "global"
    half = print_config(by_name["adaptive_global_lr4_do0.05_c4"], text_file, capsys)["model"]
    assert half["dropout"] == 0.05 and half["parameterized_lr_scale"] == 4
    # The budget nearest 30% of the dense model's parameters (test_c379_is_the_budget_nearest_30_percent).
    near30 = by_name["adaptive_global_lr4_c3.79"]
    assert near30.compression == 3.79 and near30.config == "adaptive/dct4x-global.yaml"
    assert near30.overrides[-2:] == ("--model.parameterization.init_args.compression", "3.79")
    printed = print_config(near30, text_file, capsys)["model"]
    assert printed["parameterization"]["init_args"]["compression"] == 3.79 and printed["parameterized_lr_scale"] == 4
    # Less and more churn (drop fraction 0.1, 0.5) and a coefficient rate annealed to the dense floor, at lr × 4.
    churn = print_config(by_name["adaptive_global_lr4_df0.1_c4"], text_file, capsys)["model"]
    assert churn["parameterization"]["init_args"]["drop_fraction"] == 0.1 and churn["parameterized_lr_scale"] == 4
    more = print_config(by_name["adaptive_global_lr4_df0.5_c4"], text_file, capsys)["model"]
    assert more["parameterization"]["init_args"]["drop_fraction"] == 0.5 and more["parameterized_lr_scale"] == 4
    floor = print_config(by_name["adaptive_global_lr4_floor_c4"], text_file, capsys)["model"]
    assert floor["parameterized_min_lr"] == floor["min_lr"] == 1e-4 and floor["parameterized_lr_scale"] == 4
    assert floor["parameterization"]["init_args"]["drop_fraction"] == 0.3
    # At c = 10 and 20 the coefficient lr is scaled by √c, on the adaptive group's global run at that c.
    for c in (10, 20):
        run = by_name[f"adaptive_global_lrsqrt_c{c}"]
        assert run.compression == c and run.config == "adaptive/dct4x-global.yaml"
        printed = print_config(run, text_file, capsys)["model"]
        assert printed["parameterized_lr_scale"] == pytest.approx(math.sqrt(c), abs=1e-3)
        assert printed["parameterization"]["init_args"]["compression"] == c


def test_c379_is_the_budget_nearest_30_percent():
    """The c = 3.79 try holds the issue's "at most 30% of the dense parameters"; the next step down, c = 3.78, not."""
    stored = {c: parameter_report(GPT(GPTConfig(), DCT(compression=c, selection="random")))[1] for c in (3.78, 3.79)}
    assert stored[3.79].stored == 247_440 and stored[3.79].dense == 826_368
    assert stored[3.79].ratio <= 0.30 < stored[3.78].ratio


def test_tries_table_pairs_each_try_with_its_base_by_seed():
    rows = ADAPTIVE_ROWS + [
        scored("adaptive_lr2_c4", 0, 1.69, 1.61),  # base adaptive_c4 seed 0: best 1.65
        scored("adaptive_global_lr2_c4", 0, 1.69, 1.61),  # no adaptive_global_c4 run: no delta
        scored("dct_random_lr2_c4", 0, 1.75, 1.70), scored("dct_random_lr2_c4", 2, 1.79, 1.74),  # base: seed 0 only
        scored("adaptive_lowpass_c4", 5, 1.70, 1.64),  # no base run on seed 5
        scored("adaptive_global_lr2_do0.1_c4", 0, 1.60, 1.58),  # its base is the global lr × 2 try: 1.61
    ]  # fmt: skip
    grid = build_grid(["paper", "adaptive", "tries"], [], [], [4])
    md = summary_markdown(rows, grid, Budget(5000, "cpu", ()), "cmd")
    # try, % of dense, best, final, base (same seeds), delta, gap to the paper dense (best 1.550), stable rank, n
    assert table(md, "Tries") == [
        ["adaptive, per layer, coefficient lr × 2", "28.3%", "1.610", "1.690", "1.650 (`adaptive_c4`)", "-0.040",
         "+0.060", "10.0", "1"],
        ["adaptive, global, coefficient lr × 2", "28.3%", "1.610", "1.690", "– (`adaptive_global_c4`)", "–",
         "+0.060", "10.0", "1"],
        ["fixed random, coefficient lr × 2", "28.3%", "1.720 ± 0.028", "1.770 ± 0.028", "1.760 (`dct_random_c4`)",
         "-0.060", "+0.170", "10.0 ± 0.0", "2"],
        ["adaptive, per layer, low-pass start", "28.3%", "1.640", "1.700", "– (`adaptive_c4`)", "–", "+0.090",
         "10.0", "1"],
        ["adaptive, global, coefficient lr × 2, dropout 0.1", "28.3%", "1.580", "1.600",
         "1.610 (`adaptive_global_lr2_c4`)", "-0.030", "+0.030", "10.0", "1"],
    ]  # fmt: skip
    # The tries stay out of the plot, like the dropout variants, and out of the report until one has finished.
    assert set(plot_points(rows)) == set(plot_points(ADAPTIVE_ROWS))
    assert "## Tries" not in summary_markdown(ADAPTIVE_ROWS, grid, Budget(5000, "cpu", ()), "x")


def test_final_k_per_layer_from_the_event_file(tmp_path: Path):
    from torch.utils.tensorboard import SummaryWriter

    # A global-budget run: K logged at two updates (steps 100 and 200); the last one counts.
    writer = SummaryWriter(str(tmp_path / "run"))
    for step, ks in ((100, (1000, 900, 500)), (200, (1200, 700, 500))):
        for layer, k in zip(("blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc"), ks, strict=True):
            writer.add_scalar(f"support/k/{layer}", k, step)
        writer.add_scalar("support/changed", 0.1, step)
    writer.add_scalar("val/loss", 2.0, 200)
    writer.close()
    final = reproduce.final_support_k(reproduce.read_scalars(tmp_path / "run"))
    assert final == {"blocks.0.attn.qkv": 1200, "blocks.0.attn.proj": 700, "blocks.0.mlp.fc": 500}
    assert reproduce.final_support_k({"val/loss": [(0.0, 1, 2.0)]}) == {}  # a fixed support logs no K

    start = {"blocks.0.attn.qkv": 1000, "blocks.0.attn.proj": 1000, "blocks.0.mlp.fc": 400}
    support_k = {name: [start[name], final[name]] for name in start}  # as collect() writes it
    rows = [{**scored("adaptive_global_c4", 0, 1.9, 1.8), "support_k": support_k}]
    other = {**support_k, "blocks.0.attn.qkv": [1000, 1000]}  # a second seed: qkv kept its K
    rows.append({**scored("adaptive_global_c4", 1, 1.9, 1.8), "support_k": other})
    rows.append(scored("adaptive_global_c10", 0, 2.0, 1.9))  # no update logged: no column
    md = summary_markdown(rows, build_grid(["adaptive"], []), Budget(5000, "cpu", ()),
                                    "cmd")  # fmt: skip
    k_table = md.split("Final K per layer (global budget), as a share")[1].split("\n\n")[1].splitlines()
    assert k_table[0] == "| layer | c = 4 (n = 2) |"
    assert k_table[2:] == ["| blocks.0.attn.qkv | 110% |", "| blocks.0.attn.proj | 70% |", "| blocks.0.mlp.fc | 125% |"]


def test_bad_debug_size_is_rejected():
    with pytest.raises(SystemExit, match="n_lyer"):
        reproduce.debug_overrides("n_lyer=2")


def test_toy_reproduction_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    text = make_text(8_000)  # a short held-out tail keeps validation cheap
    data = tmp_path / "tiny.txt"
    data.write_text(text, encoding="utf-8")
    out = tmp_path / "results"
    argv = ["--groups", "paper", "--only", "dense", "dct4x", "--seeds", "3", "--steps", "2"]
    argv += ["--debug-size", DEBUG, "--data-path", str(data), "--out", str(out), "--device", "cpu", "--jobs", "2"]

    assert reproduce.main(argv) == 0

    with open(out / "runs.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = {r["run"]: r for r in reader}
    assert sorted(rows) == ["dct4x", "dense"]
    vocab = len(set(text))
    dense_params = tiny_params(vocab, Dense())
    assert int(rows["dense"]["stored_params"]) == dense_params
    assert int(rows["dct4x"]["stored_params"]) == tiny_params(vocab, DCT(compression=4.0))
    assert float(rows["dense"]["pct_of_dense"]) == 100.0
    expected_pct = 100 * int(rows["dct4x"]["stored_params"]) / dense_params
    assert float(rows["dct4x"]["pct_of_dense"]) == pytest.approx(expected_pct, abs=0.01)
    for row in rows.values():
        assert row["seed"] == "3" and row["steps"] == "2" and row["accelerator"] == "cpu"
        final, best = float(row["final_val_loss"]), float(row["best_val_loss"])
        # Trained: at this init the loss starts at ln V (uniform; first train loss 2.84-2.85 for ln V = 2.83) and
        # two steps at lr 1e-3 bring val loss to about 2.75; an untrained model cannot get 0.03 below ln V.
        assert best <= final < math.log(vocab) - 0.03
        assert float(row["final_val_ppl"]) == pytest.approx(math.exp(final), rel=1e-3)
        assert 1.0 <= float(row["mean_stable_rank"]) <= 32.0
        assert float(row["tokens_per_s"]) > 0 and float(row["wall_s"]) > 0
        assert row["command"].startswith("cli.py fit --config configs/")
        assert (Path(row["run_dir"]) / "checkpoints" / "last.ckpt").is_file()
        # metrics.json keeps the whole validation curve, ending at the final loss with the best in it
        curve = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())["val_curve"]
        steps = [step for step, _ in curve]
        assert steps and steps == sorted(set(steps))
        assert curve[-1][1] == pytest.approx(final, abs=1e-5)
        assert min(v for _, v in curve) == pytest.approx(best, abs=1e-5)

    # A toy budget writes its own summary; only the paper's 5,000-step budget writes summary.md.
    (summary_md,) = out.glob("summary*.md")
    assert summary_md.name.startswith("summary-steps2-warmup0-")  # + the hash of the size and data overrides
    assert summary_stem(Budget(5000, "cpu", ())) == "summary"
    summary_png = summary_md.with_suffix(".png")
    summary = summary_md.read_text()
    table = [line for line in summary.splitlines() if line.startswith("| dense |") or line.startswith("| dct4x |")]
    assert len(table) == 2
    assert "1.580" in table[0] and "6.1 (100%)" in table[0]  # the paper's numbers beside ours
    assert f"{float(rows['dense']['final_val_loss']):.3f}" in table[0]
    assert "Sweep" not in summary  # only the paper group was run
    assert summary_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Rerunning does not redo finished runs: no new training command, same metrics files.
    logs = {p: p.read_bytes() for p in out.glob("runs/*/*/train.log")}
    metrics = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/metrics.json")}
    assert len(logs) == len(metrics) == 2
    capsys.readouterr()
    assert reproduce.main(argv) == 0
    assert capsys.readouterr().out.count("[skipped]") == 2
    assert {p: p.read_bytes() for p in logs} == logs
    assert {p: p.stat().st_mtime_ns for p in metrics} == metrics
    with open(out / "runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2

    # --report-only rebuilds the reports from the finished runs and trains nothing (e.g. after a grid was cut
    # short, or on results copied from another machine); with no finished run of the budget it says so.
    summary_md.unlink()
    (out / "runs.csv").unlink()
    capsys.readouterr()
    assert reproduce.main([*argv, "--report-only"]) == 0
    assert "[" not in capsys.readouterr().out  # no run line: nothing trained or skipped
    assert {p: p.read_bytes() for p in logs} == logs
    assert summary_md.read_text() == summary  # the recorded command is the training one
    with open(out / "runs.csv", newline="") as f:
        assert sorted(r["run"] for r in csv.DictReader(f)) == ["dct4x", "dense"]
    with pytest.raises(SystemExit, match="no finished run of budget steps7"):
        other = list(argv)
        other[other.index("--steps") + 1] = "7"
        reproduce.main([*other, "--report-only"])

    # The ledger (runs.jsonl, the file a repository keeps) alone is enough: a fresh clone has no run folders, yet
    # skips the finished runs and rebuilds the same reports from the ledger's lines.
    ledger = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["run"], r["seed"]) for r in ledger] == [("dct4x", 3), ("dense", 3)]
    assert ledger[1]["final_val_loss"] == pytest.approx(float(rows["dense"]["final_val_loss"]), abs=1e-5)
    assert (
        ledger[1]["val_curve"] == json.loads((Path(rows["dense"]["run_dir"]) / "metrics.json").read_text())["val_curve"]
    )
    shutil.rmtree(out / "runs")
    summary_md.unlink()
    capsys.readouterr()
    assert reproduce.main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "# 0 of 2 runs left to train"
    assert reproduce.main(argv) == 0
    assert capsys.readouterr().out.count("[skipped]") == 2
    assert not (out / "runs").exists()  # nothing trained
    assert summary_md.read_text() == summary


def test_a_damaged_ledger_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "runs.jsonl").write_text('{"run": "dense", "tag": "steps5000", "seed": 0}\n{"run": "dct4x"\n')
    with pytest.raises(SystemExit, match=r"runs.jsonl line 2 is not a finished run's record"):
        reproduce.sync_ledger(tmp_path)
    (tmp_path / "runs.jsonl").write_text('{"run": "dense", "seed": 0}\n')  # no budget tag
    with pytest.raises(SystemExit, match=r"line 1 .*expected one JSON object with run, tag and seed"):
        reproduce.sync_ledger(tmp_path)


def test_a_run_finished_before_the_column_rename_is_still_read(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"run": "dct4x", "strategy": "dct lowpass", "final_val_loss": 1.629}\n')
    assert reproduce.read_row(metrics) == {"run": "dct4x", "parameterization": "dct lowpass", "final_val_loss": 1.629}


def test_dry_run_lists_only_the_runs_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A grid spans sessions: --dry-run prints the commands still to run and marks the finished ones."""
    argv = ["--groups", "paper", "--steps", "300", "--seeds", "0", "1", "--out", str(tmp_path), "--dry-run"]
    budget = Budget(300, "auto", (), 30)
    finished = reproduce.run_dir(tmp_path, paper_spec("dct4x"), 1, budget)
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    assert reproduce.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "# finished: dct4x seed 1" in lines
    commands = [line for line in lines if not line.startswith("#")]
    assert len(commands) == 9 and not any("dct4x --trainer.logger.init_args.version seed1" in c for c in commands)
    assert lines[-1] == "# 9 of 10 runs left to train"


def test_curves_plot_averages_each_c4_supports_curve_over_its_seeds(tmp_path: Path):
    def curve(run: str, seed: int, values: list[float], **extra) -> dict:
        return scored(run, seed, values[-1], min(values), val_curve=[[500, values[0]], [1000, values[1]]], **extra)

    rows = [scored("dense", 0, 1.58, 1.54)]  # an older metrics.json: no curve, so no line
    rows += [curve("dense_do0.1", 0, [1.98, 1.48]), curve("dct4x", 0, [2.2, 1.9])]  # tuned: 1.48 < 1.54
    rows += [curve("adaptive_global_c4", 0, [2.2, 2.0]), curve("adaptive_global_c4", 1, [2.3, 1.9])]
    rows[-1]["val_curve"] = [[499, 2.3], [999, 1.9]]  # logged one step earlier: the same points
    rows += [curve("adaptive_global_lr2_do0.1_c4", 0, [2.1, 1.8]), curve("adaptive_global_c10", 0, [2.5, 2.3])]
    lines = curve_lines(rows)
    # In the plot's order (references first, then the supports, then the tries); c = 10 runs are not drawn.
    assert list(lines) == ["dense_do0.1", "dct4x", "adaptive_global_c4", "adaptive_global_lr2_do0.1_c4"]
    assert lines["adaptive_global_c4"] == [(500, pytest.approx(2.25)), (1000, pytest.approx(1.95))]
    png = tmp_path / "curves.png"
    assert curves_plot(png, rows, Budget(5000, "cpu", ()))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Only references (no moving support, no try): nothing to compare, no file.
    assert not curves_plot(tmp_path / "none.png", rows[:3], Budget(5000, "cpu", ()))
    assert not (tmp_path / "none.png").exists()
