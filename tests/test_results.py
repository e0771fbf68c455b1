"""The README's result tables are the ledger's numbers: every cell is recomputed from ``results/runs.jsonl`` (the
finished 5,000-step runs that ``benchmarks/reproduce.py`` recorded), so a table cannot drift from what was measured
when a run is added or redone."""

from __future__ import annotations

import re
import statistics
import sys

import pytest
from helpers import REPO

# benchmarks/ holds scripts, not a package: the ledger reader and the cell format are reproduce.py's own.
sys.path.insert(0, str(REPO / "benchmarks"))
from reproduce import read_ledger  # noqa: E402
from reproduce_report import mean_std as cell  # noqa: E402

README = (REPO / "README.md").read_text(encoding="utf-8")


def paper_budget_runs() -> dict[str, list[dict]]:
    """The paper budget's finished runs by name (every seed, in seed order), from the tracked ledger."""
    runs: dict[str, list[dict]] = {}
    for (run, tag, _), row in sorted(read_ledger(REPO / "results").items()):
        if tag == "steps5000":
            runs.setdefault(run, []).append(row)
    return runs


RUNS = paper_budget_runs()


def table_after(marker: str) -> list[list[str]]:
    """The cells of the first markdown table after ``marker`` in the README (header and rule left out)."""
    lines = [line.strip() for line in README.split(marker, 1)[1].splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip().strip("*").strip() for c in line.strip("|").split("|")] for line in lines[start + 2 : end]]


def values(run: str, key: str) -> list[float]:
    assert run in RUNS, f"README cites {run}, which results/runs.jsonl does not hold"
    return [r[key] for r in RUNS[run]]


PAPER_TABLE = ["dense", "dct2x", "dct4x", "lowrank", "lowrank48"]


def test_paper_table_is_the_ledgers_final_and_best() -> None:
    rows = table_after("**Val loss after the paper's full budget")
    assert [r[0].split()[0] for r in rows] == PAPER_TABLE
    for row, run in zip(rows, PAPER_TABLE, strict=True):
        assert len(RUNS[run]) == 2, run  # the caption says seeds 0 and 1
        assert row[4] == cell(values(run, "final_val_loss")), run
        assert row[5] == f"{statistics.fmean(values(run, 'best_val_loss')):.3f}", run


BASELINES = [
    ["kronecker_c4", "dct_random_c4", "dct4x", "monarch_c4", "sparse_lowrank_c4", "lowrank_c4"],
    ["kronecker_c10", "dct_random_c10", "dct_lowpass_c10", "monarch_c10", "sparse_lowrank_c10", "lowrank_c10"],
]


def test_baselines_table_is_the_ledgers_mean_final_loss() -> None:
    rows = table_after("Val loss at 5,000 steps (2-core AMD EPYC;")
    assert [r[0] for r in rows] == ["mn/4 (about 29%)", "mn/10 (about 14%)"]
    for row, runs in zip(rows, BASELINES, strict=True):
        assert row[1:] == [f"{statistics.fmean(values(run, 'final_val_loss')):.3f}" for run in runs]
    # The caption's seed counts are the ledger's: two at c = 4; at c = 10 one, except the runs it names as two.
    caption = README.split("Val loss at 5,000 steps (2-core AMD EPYC;", 1)[1].split("\n", 1)[0]
    assert "c = 4 mean of two seeds, c = 10 one seed" in caption
    assert all(len(RUNS[run]) == 2 for run in BASELINES[0])
    named_two = caption.split("c = 10 one seed", 1)[1]
    names = {"dct_random_c10": "DCT random", "dct_lowpass_c10": "low-pass", "kronecker_c10": "Kronecker"}
    for run in BASELINES[1]:
        assert len(RUNS[run]) in (1, 2), run
        assert (len(RUNS[run]) == 2) == (run in names and names[run] in named_two), run


# The adaptive table's rows in order: the run each row reports.
ADAPTIVE_TABLE = [
    "dct4x", "dct_random_c4", "adaptive_c4", "adaptive_global_c4", "adaptive_global_lr2_c4", "adaptive_global_lr4_c4",
    "adaptive_global_lr4_wd4_c4", "dct_random_c10", "kronecker_c10", "adaptive_c10", "adaptive_global_c10",
    "adaptive_global_lr10_wd_c10", "dct_random_c20", "adaptive_c20", "adaptive_global_c20",
]  # fmt: skip


def test_adaptive_table_is_the_ledgers_best_loss_gap_rank_and_seeds() -> None:
    tuned = statistics.fmean(values("dense_do0.1", "best_val_loss"))  # the tuned dense reference
    assert f"best {tuned:.3f} ± {statistics.stdev(values('dense_do0.1', 'best_val_loss')):.3f}" in README
    rows = table_after("against the dense model tuned for dropout")
    assert len(rows) == len(ADAPTIVE_TABLE)
    for row, run in zip(rows, ADAPTIVE_TABLE, strict=True):
        _, pct, best, gap, rank, n = row
        assert pct == f"{RUNS[run][0]['pct_of_dense']:.1f}%", run
        assert best == cell(values(run, "best_val_loss")), run
        assert gap == f"{statistics.fmean(values(run, 'best_val_loss')) - tuned:+.3f}", run
        assert rank == f"{statistics.fmean(values(run, 'mean_stable_rank')):.1f}", run
        assert n == str(len(RUNS[run])), run


@pytest.mark.parametrize("run", sorted({r for runs in BASELINES for r in runs} | set(ADAPTIVE_TABLE)))
def test_every_cited_run_recorded_its_command(run: str) -> None:
    """Each row of the ledger says how it was made: the cli.py command, on a named machine."""
    for row in RUNS[run]:
        assert re.match(r"cli\.py fit --config configs/\S+\.yaml", row["command"]), row["command"]
        assert f"--seed_everything {row['seed']} " in row["command"] and row["machine"]
