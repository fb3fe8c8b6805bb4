"""DuckDB views over one workspace's cached stage outputs, for SQL without loading anything.

Each view unions every output of one stage (all runs, all datasets) straight from the
files, and adds `key`, the stage key in the file name, so that one run's rows can be
picked out. A stage with no outputs yet has no view; `connect` again to see new files.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tasks.store import catalog

# view -> (stage folder, file suffix after the key)
PARQUET_VIEWS: dict[str, tuple[str, str]] = {
    "features": ("features", ".parquet"),
    "rejected": ("features", ".rejected.parquet"),
    "descriptions": ("descriptions", ".parquet"),
    "class_embeddings": ("class_embeddings", ".parquet"),
    "split_classes": ("split", ".classes.parquet"),
    "split_samples": ("split", ".samples.parquet"),
    "predictions": ("evaluate", ".predictions.parquet"),
    "predicted": ("predict", ".parquet"),  # outputs of `cscf predict`, recorded in the workspace
}
METRICS_FILES = ("evaluate", ".metrics.json")  # the `metrics` view, one row per (run, method, subset)
VIEWS = (*PARQUET_VIEWS, "metrics")

# the key part of a file name: keys are hex, so it ends at the first dot
_KEY = "split_part(parse_filename(filename), '.', 1)"


def stage_files(workspace: Path, stage: str, suffix: str) -> list[Path]:
    """Outputs of `stage` named `<key><suffix>`: `x.rejected.parquet` is not a `.parquet` output."""
    folder = catalog.stage_dir(workspace, stage)
    return sorted(p for p in folder.glob(f"*{suffix}") if "." not in p.name[: -len(suffix)])


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _metrics_sql(files: str) -> str:
    """metrics.json files (CONTRACTS section 3) as rows key, dataset, seed, method, subset, accuracy.

    `written_at` (the file's time) tells which evaluation is the most recent.
    """
    return f"""
        with runs as (
            select {_KEY} as key, filename, dataset, seed, unnest(map_entries(methods)) as m
            from read_json({files}, filename = true,
                           columns = {{dataset: 'VARCHAR', seed: 'INTEGER', methods: 'MAP(VARCHAR, MAP(VARCHAR, DOUBLE))'}})
        ), scores as (
            select key, filename, dataset, seed, m.key as method, unnest(map_entries(m.value)) as s from runs
        )
        select key, dataset, seed, method, s.key as subset, s.value as accuracy, f.last_modified as written_at
        from scores join read_blob({files}) f using (filename)
    """


def connect(workspace: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per stage output found in `workspace`."""
    workspace = Path(workspace)
    if not workspace.is_dir():
        raise FileNotFoundError(f"{workspace}: no such workspace folder")
    con = duckdb.connect()
    for view, (stage, suffix) in PARQUET_VIEWS.items():
        files = stage_files(workspace, stage, suffix)
        if files:
            con.execute(f"create view {view} as select * exclude (filename), {_KEY} as key "
                        f"from read_parquet({_sql_list(files)}, filename = true, union_by_name = true)")
    files = stage_files(workspace, *METRICS_FILES)
    if files:
        con.execute(f"create view metrics as {_metrics_sql(_sql_list(files))}")
    return con


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The views `connect` made (the stages that have outputs)."""
    return [r[0] for r in con.execute("select view_name from duckdb_views() where not internal order by 1").fetchall()]
