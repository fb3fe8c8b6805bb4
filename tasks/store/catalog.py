"""The data layer: every dataset the pipeline reads or writes, its schema and its path.

Stages never call pyarrow or open files themselves; they ask this module. That keeps
the formats in one place (as Kedro's catalog does) and guarantees that every output
is written atomically: a crash leaves either the old file or nothing, never half a
table.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Relative: cached stage outputs go under the directory a command runs in, never inside
# the installed package (CONTRACTS section 2).
DEFAULT_WORKSPACE = Path("cscf-workspace")

_VECTOR = pa.list_(pa.float32())
_UMASK = os.umask(0)
os.umask(_UMASK)

# Long-form features, one row per (sample, modality): CONTRACTS section 1.
FEATURES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("class_name", pa.string()),
        ("modality", pa.string()),
        ("vector", _VECTOR),
        ("split", pa.string()),
    ]
)

# Features extracted from media files: FEATURES plus the encoder that made each vector,
# so that vectors of different encoders are never mixed unknowingly.
MEDIA_FEATURES = pa.schema(
    list(FEATURES) + [("encoder", pa.string()), ("encoder_version", pa.string())]
)

# Media files the extraction stage could not read, one row per (sample, modality).
EXTRACTION_FAILURES = pa.schema(
    [
        ("sample_id", pa.string()),
        ("path", pa.string()),
        ("modality", pa.string()),
        ("reason", pa.string()),
    ]
)

# One text per class; `source` says where it came from (user, offline, llm:<model>, published).
DESCRIPTIONS = pa.schema(
    [
        ("class_name", pa.string()),
        ("description", pa.string()),
        ("source", pa.string()),
    ]
)

# The semantic vector c_i of every class (paper eq. 11), in classes.csv order.
CLASS_EMBEDDINGS = pa.schema(
    [
        ("class_name", pa.string()),
        ("vector", _VECTOR),
        ("encoder", pa.string()),
    ]
)

# The MMHCL split: one row per (class, modality), whether that modality saw the class in
# training, and which samples train or test.
CLASS_SPLIT = pa.schema(
    [
        ("class_name", pa.string()),
        ("modality", pa.string()),
        ("role", pa.string()),  # "A", "B", "C", ...: the modality's place in the run's modality order
        ("seen", pa.bool_()),
    ]
)
SAMPLE_SPLIT = pa.schema(
    [
        ("sample_id", pa.string()),
        ("class_name", pa.string()),
        ("split", pa.string()),
    ]
)

# Per-sample, per-method predictions of the evaluation stage.
PREDICTIONS = pa.schema(
    [
        ("method", pa.string()),
        ("subset", pa.string()),
        ("sample_id", pa.string()),
        ("true_class", pa.string()),
        ("predicted_class", pa.string()),
        ("dominant", pa.string()),
        ("u", pa.list_(pa.float32())),  # DMSS uncertainty of each modality, in the run's modality order
    ]
)


def stage_dir(workspace: Path, stage: str) -> Path:
    """Folder holding every cached output of one stage."""
    return Path(workspace) / stage


def stage_output(workspace: Path, stage: str, key: str, suffix: str = ".parquet") -> Path:
    """The path of a stage output, named by its cache key so that stale files cannot be reused."""
    return stage_dir(workspace, stage) / f"{key}{suffix}"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# Parquet layout, chosen for DuckDB over a million 512-d feature rows (benchmarks/duckdb_queries.py)
# and for reading 1x VGGSound-size features in bounded memory (benchmarks/scale.py): row groups of
# 16Ki rows, because DuckDB scans a file's row groups in parallel (pyarrow's default of 1Mi rows
# makes such a file one group on one core; the cosine query is 1.06 s at 64Ki rows, 0.86 s at
# 16Ki) and decoding one row group of list<float> briefly takes ~5x its size (values, levels,
# buffers: 1 GB for a 64Ki-row group of 1024-d vectors); dictionaries for the string columns
# only (float vectors never repeat, so trying one for them wastes the writer's time); Snappy,
# pyarrow's default, kept: random float bytes do not compress, and reading is no slower.
ROW_GROUP_ROWS = 16_384


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_string(f.type)]


def write_table(table: pa.Table, path: Path, schema: pa.Schema) -> Path:
    """Write `table` cast to `schema` as Parquet (ROW_GROUP_ROWS layout), atomically."""
    table = table.select(schema.names).cast(schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, use_dictionary=_dictionary_columns(schema))
    return Path(path)


def release_unused_memory() -> None:
    """Return the pages Arrow's allocator keeps for reuse to the OS. After a big Parquet read
    they stay resident (1.4 GB after streaming 1x VGGSound's features) while PyTorch, which
    cannot reuse them, allocates its own."""
    pa.default_memory_pool().release_unused()


def vector_column(matrix: np.ndarray) -> pa.ListArray:
    """Rows of an [n, d] matrix as the list<float32> `vector` column, without a Python loop."""
    matrix = np.asarray(matrix, dtype=np.float32)
    offsets = np.arange(matrix.shape[0] + 1, dtype=np.int32) * matrix.shape[1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.reshape(-1)))


def read_table(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read a Parquet file (or folder of files) written by a stage, checking its schema."""
    table = pq.read_table(path)
    if schema is not None:
        missing = [n for n in schema.names if n not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}")
        table = table.select(schema.names).cast(schema)
    return table


def write_json(obj: Any, path: Path) -> Path:
    """Write JSON atomically (metrics, resolved configs)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return Path(path)


def write_text(text: str, path: Path) -> Path:
    """Write a text file (report.md) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)

# Rows the features stage refused, and why (CONTRACTS section 1: nothing silently dropped).
REJECTED = pa.schema(
    [
        ("sample_id", pa.string()),
        ("modality", pa.string()),
        ("class_name", pa.string()),
        ("reason", pa.string()),
    ]
)


def copy_file(source: Path, target: Path) -> Path:
    """Copy a stage output to a user-facing place (--out), atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(Path(source).read_bytes())
    return Path(target)


def write_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt  # only the stages that draw pay for matplotlib

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


# `cscf predict` output, one row per sample (CONTRACTS section 5).
PREDICTED = pa.schema(
    [
        ("sample_id", pa.string()),
        ("predicted_class", pa.string()),
        ("probability", pa.float64()),
        ("modalities", pa.list_(pa.string())),  # the modalities the sample showed
        ("dominant_modality", pa.string()),
        ("top_k", pa.list_(pa.struct([("class_name", pa.string()), ("probability", pa.float64())]))),
    ]
)


@contextlib.contextmanager
def batch_writer(path: Path, schema: pa.Schema) -> Iterator[Callable[[pa.Table], None]]:
    """Write a Parquet file one table at a time (bounded memory), atomically: `path` appears
    only when the block succeeds, with every batch written."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, use_dictionary=_dictionary_columns(schema)) as writer:
        yield lambda table: writer.write_table(table.select(schema.names).cast(schema), row_group_size=ROW_GROUP_ROWS)
