"""DuckDB over the cached features: the two queries a user runs most, timed on a big table.

A features Parquet file of N long-form rows (512-d, FEATURES schema) is written into a
temporary workspace, and the queries go through `tasks.query.connect`'s views exactly
as `cscf query` runs them: per-class sample counts per modality (README's pivot), and
the 10 rows nearest one vector by cosine similarity. The nearest-neighbour query is
also timed as NumPy does it on the same file (read the Parquet, normalise, one
matrix-vector product), the baseline for what SQL costs.

    python -m benchmarks --only duckdb [--full]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa

from tasks import catalog
from tasks.query import connect

DIM, CLASSES, K = 512, 32, 10
MODALITIES = ("audio", "video")
ROWS = {"tiny": 2_000, "default": 20_000, "full": 200_000}
REPEATS = 3

COUNT_SQL = "pivot features on modality using count(*) group by class_name order by class_name"
KNN_SQL = f"""
    select sample_id, modality, list_cosine_similarity(vector, $query::float[]) as cosine
    from features order by cosine desc, sample_id, modality limit {K}
"""


def write_features(workspace: Path, rows: int, seed: int = 0) -> Path:
    """`rows` feature rows (rows / 2 samples seen through both modalities) as one features output."""
    rng = np.random.default_rng(seed)
    samples = np.arange(rows) // len(MODALITIES)
    table = pa.table({
        "sample_id": [f"s{i:07d}" for i in samples],
        "class_name": [f"class-{i % CLASSES:02d}" for i in samples],
        "modality": [MODALITIES[i % len(MODALITIES)] for i in range(rows)],
        "vector": catalog.vector_column(rng.standard_normal((rows, DIM), dtype=np.float32)),
        "split": ["train"] * rows,
    })
    return catalog.write_table(table, catalog.stage_output(workspace, "features", f"bench{rows:08x}"), catalog.FEATURES)


def nearest_sql(con: duckdb.DuckDBPyConnection, query: np.ndarray) -> list[tuple[str, str]]:
    """(sample_id, modality) of the K rows of the `features` view most cosine-similar to `query`."""
    return [(r[0], r[1]) for r in con.execute(KNN_SQL, {"query": query.tolist()}).fetchall()]


def nearest_numpy(path: Path, query: np.ndarray) -> list[tuple[str, str]]:
    """The same K rows as `nearest_sql`, found by NumPy on the Parquet file."""
    table = catalog.read_table(path, catalog.FEATURES)
    vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
    cosine = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    top = np.argpartition(-cosine, K)[:K]
    top = top[np.argsort(-cosine[top], kind="stable")]
    ids, modalities = table.column("sample_id"), table.column("modality")
    return [(ids[int(i)].as_py(), modalities[int(i)].as_py()) for i in top]


def _best_of(work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        began = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - began)
    return best


def run(full: bool = False, tiny: bool = False) -> dict[str, float]:
    """Best-of-3 seconds of the count and nearest-neighbour queries, and NumPy's for the latter."""
    rows = ROWS["tiny" if tiny else "full" if full else "default"]
    query = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_features(Path(tmp), rows)
        con = connect(Path(tmp))
        try:
            count_s = _best_of(lambda: con.sql(COUNT_SQL).fetchall())
            knn_s = _best_of(lambda: nearest_sql(con, query))
        finally:
            con.close()
        numpy_s = _best_of(lambda: nearest_numpy(path, query))
    return {
        "duckdb_rows": float(rows),
        "duckdb_count_s": count_s,
        "duckdb_knn_s": knn_s,
        "numpy_knn_s": numpy_s,
        "duckdb_knn_ratio": knn_s / numpy_s,
    }
