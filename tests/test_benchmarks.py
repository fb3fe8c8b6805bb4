"""The performance benchmarks at their smallest sizes: they run, measure what they claim, and report.

The whole `python -m benchmarks` takes minutes, so each part is run through its own
function; the cached-rerun part is covered by its floor (the cscf run it compares with
is tested in test_pipeline.py) and by its guard against a rerun that was not cached.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import __main__ as bench
from benchmarks import duckdb_queries, rerun, train
from cscf_model import TrainConfig
from tasks.query import connect


def _positive_finite(figures: dict[str, float], keys: set[str]) -> None:
    assert keys <= set(figures), keys - set(figures)
    assert all(math.isfinite(v) for v in figures.values()), figures
    assert all(figures[k] > 0 for k in keys), figures


def test_train_figures() -> None:
    figures = train.run(tiny=True)
    _positive_finite(figures, {"train_ratio", "train_samples_per_s", "train_bare_samples_per_s",
                               "checkpoint_overhead_ratio", "checkpoint_mb"})


def test_bare_loop_does_the_trainers_work() -> None:
    """Same weights, batches and dropout: the bare loop's losses are the trainer's, epoch by epoch."""
    problem = train.make_problem(train.SIZES["tiny"])
    cfg = TrainConfig(epochs=3, batch_size=16, device="cpu")
    with train.one_thread():
        _, trainer_losses = train.train_project(problem, cfg)
        _, bare_losses = train.train_bare(problem, cfg)
    assert len(trainer_losses) == 3
    assert bare_losses == pytest.approx(trainer_losses, rel=1e-5)


def test_duckdb_figures() -> None:
    figures = duckdb_queries.run(tiny=True)
    _positive_finite(figures, {"duckdb_count_s", "duckdb_knn_s", "numpy_knn_s", "duckdb_knn_ratio"})
    assert figures["duckdb_rows"] == duckdb_queries.ROWS["tiny"]


def test_duckdb_queries_answer_right(tmp_path: Path) -> None:
    rows = 1000
    path = duckdb_queries.write_features(tmp_path, rows)
    con = connect(tmp_path)
    counts = con.sql(duckdb_queries.COUNT_SQL).fetchall()
    assert len(counts) == duckdb_queries.CLASSES
    assert sum(a + v for _, a, v in counts) == rows
    query = np.random.default_rng(3).standard_normal(duckdb_queries.DIM).astype(np.float32)
    nearest = duckdb_queries.nearest_sql(con, query)
    assert len(nearest) == duckdb_queries.K
    assert nearest == duckdb_queries.nearest_numpy(path, query)


def test_rerun_floor_runs_a_prefect_flow(tmp_path: Path) -> None:
    wall, cpu, stdout = rerun._timed(rerun.floor_command(tmp_path))
    assert stdout.strip() == "floor: Completed"
    assert 0 < cpu < 10 * wall


def test_rerun_refuses_a_run_that_was_not_cached() -> None:
    line = "stages: features=Cached, train[CSCF]=Completed"
    with pytest.raises(RuntimeError, match=r"not fully cached.*train\[CSCF\]"):
        rerun.cached_rerun([sys.executable, "-c", f"print({line!r})"])


def test_main_prints_one_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--only", "duckdb", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    _positive_finite(figures, {"duckdb_count_s", "duckdb_knn_s", "wall_s"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[:4] == ["name", "value", "unit", "meaning"]
    assert {line.split()[0] for line in printed[1:]} == set(figures)


def test_main_rejects_an_unknown_part() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "training"])
