"""Features stage: bring-your-own feature vectors (CONTRACTS section 1), validated.

Input is long form, one row per (sample, modality). Bad rows are not fatal: each is
written to a `rejected` table with its reason, counted in the log with example ids,
and left out. Only when nothing usable remains does the stage stop.

A user's file is read twice, a batch of rows at a time: once for what the checks read
(ids, labels, each vector's length and whether it is finite: no vectors are kept), once
to write the usable rows. Holding the whole table to check it peaked at 3.5 GB at
VGGSound's size (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks.store import catalog
from tasks.store.inputs import InputError, read_classes

log = logging.getLogger("cscf.features")

REQUIRED = ("sample_id", "class_name", "modality", "vector")
CHECKED = ("sample_id", "class_name", "modality", "split")  # the columns the checks read besides vectors
# A user's file is read this many rows at a time, each row group in 1 MiB reads rather than
# whole (the pre-buffering default): a batch costs its own rows' memory (as tasks/serving/predict.py).
BATCH_ROWS = catalog.ROW_GROUP_ROWS
_SCAN = ds.ParquetFragmentScanOptions(pre_buffer=False, use_buffered_stream=True, buffer_size=1 << 20)


def read_features(path: str | Path) -> pa.Table:
    """A Parquet file or folder of Parquet files, with the vector column as list<float32>."""
    dataset = open_features(path)
    with _read_errors(path):
        return _as_features(dataset.to_table())


def open_features(path: str | Path) -> ds.Dataset:
    """The Parquet file or folder at `path`, its columns checked, nothing read but footers."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: features file or folder not found")
    with _read_errors(path):
        dataset = ds.dataset(path, format="parquet")
    schema = dataset.schema
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise InputError(f"{path}: missing required column(s) {missing} (has {schema.names})")
    vtype = schema.field("vector").type
    if not (pa.types.is_list(vtype) or pa.types.is_fixed_size_list(vtype) or pa.types.is_large_list(vtype)):
        raise InputError(f"{path}: column 'vector' must be a list of floats, got {vtype}")
    if not (pa.types.is_floating(vtype.value_type) or pa.types.is_integer(vtype.value_type)):
        raise InputError(f"{path}: column 'vector' must hold floats, got {vtype}")
    return dataset


def feature_batches(dataset: ds.Dataset, path: str | Path) -> Iterator[pa.Table]:
    """The rows of `dataset` in file order, as FEATURES tables of at most BATCH_ROWS rows."""
    columns = [c for c in (*REQUIRED, "split") if c in dataset.schema.names]
    batches = dataset.to_batches(columns=columns, batch_size=BATCH_ROWS, batch_readahead=1, fragment_readahead=1,
                                 fragment_scan_options=_SCAN)
    while True:
        with _read_errors(path):
            batch = next(batches, None)
        if batch is None:
            return
        yield _as_features(pa.Table.from_batches([batch]))


@contextlib.contextmanager
def _read_errors(path: str | Path) -> Iterator[None]:
    """A Parquet read error inside the block, as one InputError line naming the file."""
    try:
        yield
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not readable as Parquet, corrupt or truncated? ({str(e).splitlines()[0]})") from e


def _as_features(table: pa.Table) -> pa.Table:
    """`table`'s columns as the FEATURES schema: strings, list<float32> vectors, a null split if none."""
    cols = {c: table[c].cast(pa.string()) for c in ("sample_id", "class_name", "modality")}
    cols["vector"] = table["vector"].cast(pa.list_(pa.float32()))
    cols["split"] = table["split"].cast(pa.string()) if "split" in table.column_names else pa.nulls(len(table), pa.string())
    return pa.table(cols, schema=catalog.FEATURES)


def check_features_file(path: str | Path) -> None:
    """Open every Parquet file under `path` and read its footer: a cheap check, done before
    the pipeline starts, that names a missing, truncated or corrupt file at once."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: features file or folder not found")
    for f in sorted(path.rglob("*.parquet")) if path.is_dir() else [path]:
        with _read_errors(f):
            pq.ParquetFile(f).close()


def row_facts(table: pa.Table) -> pa.Table:
    """What the checks read of each row of a FEATURES table: the CHECKED columns, the
    vector's `length` and whether it holds a NaN or inf (`nonfinite`); not the vectors."""
    facts = table.select(list(CHECKED)).append_column("length", pc.list_value_length(table["vector"]))
    return facts.append_column("nonfinite", pa.array(_nonfinite_rows(table["vector"])))


def find_bad_rows(table: pa.Table, class_names: set[str]) -> pd.Series:
    """The reason each row of a FEATURES table is unusable ("" for good rows)."""
    return bad_row_reasons(row_facts(table), class_names)


def bad_row_reasons(facts: pa.Table, class_names: set[str]) -> pd.Series:
    """The reason each row is unusable ("" for good rows), from its `row_facts`; the first
    failed check wins.

    The expected vector length of a modality is its most common length.
    """
    meta = facts.select(list(CHECKED)).to_pandas()
    reason = pd.Series("", index=meta.index, dtype=object)

    def flag(mask: pd.Series | np.ndarray, why: str) -> None:
        reason[pd.Series(mask, index=meta.index) & (reason == "")] = why

    flag(meta["sample_id"].isna() | (meta["sample_id"] == ""), "empty sample_id")
    flag(meta["modality"].isna() | (meta["modality"] == ""), "empty modality")
    flag(~meta["class_name"].isin(class_names), "unknown class")
    flag(meta["split"].notna() & ~meta["split"].isin(["train", "test"]), "split not train/test")
    lengths = facts["length"].to_pandas().fillna(0).astype(int)
    expected = lengths.groupby(meta["modality"]).agg(lambda s: s.mode().iloc[0])
    flag(lengths != meta["modality"].map(expected), "wrong vector length")
    flag(facts["nonfinite"].to_numpy(), "NaN or inf in vector")
    flag(meta.duplicated(["sample_id", "modality"], keep="first"), "duplicated (sample_id, modality)")
    labels = meta[reason == ""].groupby("sample_id")["class_name"].nunique()
    flag(meta["sample_id"].isin(labels.index[labels > 1]), "class_name differs across modalities")
    return reason


def _nonfinite_rows(vectors: pa.ChunkedArray) -> np.ndarray:
    """(n,) bool: rows whose vector holds a NaN or inf. One chunk at a time, on a view of its
    values: flattening the whole column into one array copied all the vectors (1.2 GB at
    VGGSound's size), and a per-value row index would be twice that."""
    out = []
    for chunk in vectors.chunks:
        lengths = pc.list_value_length(chunk).fill_null(0).to_numpy(zero_copy_only=False)
        starts = np.cumsum(lengths) - lengths
        flags = np.zeros(len(chunk), dtype=bool)
        bad = np.flatnonzero(~np.isfinite(pc.list_flatten(chunk).to_numpy(zero_copy_only=False)))
        flags[np.searchsorted(starts, bad, side="right") - 1] = True
        out.append(flags)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def validate_features(table: pa.Table, class_names: set[str], source: str) -> tuple[pa.Table, pa.Table]:
    """Split `table` into usable rows and rejected rows (with reasons); log a count per reason."""
    facts = row_facts(table)
    bad, rejected = report_bad_rows(facts, bad_row_reasons(facts, class_names), class_names, source)
    return (table.filter(pa.array(~bad)) if bad.any() else table), rejected


def report_bad_rows(facts: pa.Table, reason: pd.Series, class_names: set[str], source: str) -> tuple[np.ndarray, pa.Table]:
    """Log the rows `reason` rejects (a count and example ids per reason, unknown class names
    with their closest match, classes left without a usable row); the (n,) bad-row mask and
    the rejected rows with their reasons. InputError when no usable row is left."""
    bad = (reason != "").to_numpy()
    rejected = facts.filter(pa.array(bad)).select(["sample_id", "modality", "class_name"])
    rejected = rejected.append_column("reason", pa.array(reason[bad].tolist(), pa.string()))
    for why, rows in rejected.to_pandas().groupby("reason"):
        log.warning(
            "%s: %d row(s) rejected: %s (e.g. sample_id %s, class %s, modality %s)",
            source, len(rows), why, rows["sample_id"].head(3).tolist(),
            rows["class_name"].head(3).tolist(), rows["modality"].head(3).tolist(),
        )
    _explain_unknown_classes(rejected, class_names, source)
    missing = sorted(class_names - set(facts["class_name"].filter(pa.array(~bad)).to_pylist()))
    if missing:
        log.warning("%s: %d class(es) of classes.csv have no usable sample: %s; no modality can learn them, "
                    "so they are only ever predicted as unseen classes", source, len(missing), missing[:10])
    if bad.all():
        raise InputError(f"{source}: no usable rows left ({int(bad.sum())} rejected: see the warnings above)")
    return bad, rejected


def _explain_unknown_classes(rejected: pa.Table, class_names: set[str], source: str) -> None:
    """One warning per unknown class name, with the closest name of classes.csv (a typo?)."""
    reasons = rejected.to_pandas()
    unknown = reasons.loc[reasons["reason"] == "unknown class", "class_name"].value_counts()
    for name, count in unknown.head(20).items():
        close = difflib.get_close_matches(str(name), sorted(class_names), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        log.warning("%s: class %r is not in classes.csv (%d row(s) rejected)%s", source, name, count, hint)


def build_features(
    workspace: Path,
    key: str,
    features: str | None,
    classes: str,
    default_seed: int,
    extracted: str | None = None,
    published: str | None = None,
    published_layout: str = "auto",
) -> None:
    """Validate one source of feature vectors into the workspace.

    The source is the user's Parquet (`features`), the extraction stage's shards
    (`extracted`: its key), a published feature set (`published`: its root folder), or
    else the embedded default dataset. Files the extraction could not read join the
    rejected rows, with the extractor's reason. The user's Parquet is streamed
    (`feature_batches`), the others are tables in memory.
    """
    class_names = set(read_classes(classes)["class_name"])
    failed = catalog.REJECTED.empty_table()
    batches: Callable[[], Iterable[pa.Table]]
    if extracted is not None:
        from tasks.ingest.extract import read_extracted

        folder = catalog.stage_dir(workspace, "extract") / extracted
        media, failures = read_extracted(folder)
        table, source = media.select(catalog.FEATURES.names), f"features extracted into {folder}"
        failed = pa.table({"sample_id": failures["sample_id"], "modality": failures["modality"],
                           "class_name": pa.nulls(len(failures), pa.string()),
                           "reason": pc.binary_join_element_wise("extraction failed: ", failures["reason"], "")})
        batches = lambda: [table]  # noqa: E731
    elif published is not None:
        from tasks.ingest.published_features import ingest_published

        table, source = ingest_published(Path(published), published_layout), str(published)
        batches = lambda: [table]  # noqa: E731
    elif features is not None:
        dataset, source = open_features(features), str(features)
        batches = lambda: feature_batches(dataset, features)  # noqa: E731
    else:
        from tasks.ingest.default_dataset import make_default_dataset

        table, source = make_default_dataset(seed=default_seed), "embedded default dataset"
        batches = lambda: [table]  # noqa: E731
    facts = pa.concat_tables(row_facts(t) for t in batches())
    bad, rejected = report_bad_rows(facts, bad_row_reasons(facts, class_names), class_names, source)
    rejected = pa.concat_tables([failed.cast(catalog.REJECTED), rejected.cast(catalog.REJECTED)])
    catalog.write_table(rejected, catalog.stage_output(workspace, "features", key, ".rejected.parquet"), catalog.REJECTED)
    with catalog.batch_writer(catalog.stage_output(workspace, "features", key), catalog.FEATURES) as write:
        for group in _regroup(_kept(batches(), ~bad), catalog.ROW_GROUP_ROWS):
            write(group)
    good = facts.filter(pa.array(~bad))
    log.info("%s: %d rows, modalities %s", source, len(good), sorted(set(good["modality"].to_pylist())))


def _kept(tables: Iterable[pa.Table], keep: np.ndarray) -> Iterator[pa.Table]:
    """The rows of consecutive `tables` that `keep` (one flag per row of all of them) marks,
    as zero-copy slices, one per run of kept rows: Arrow's filter of a vector batch peaked
    at 1.2 GB writing 1x VGGSound (0.75 GB with slices)."""
    start = 0
    for table in tables:
        flags = np.concatenate([[False], keep[start : start + len(table)], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(flags))  # run starts and ends, alternately
        for a, b in zip(edges[::2], edges[1::2]):
            yield table.slice(a, b - a)
        start += len(table)


def _regroup(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of `tables`, in order, as tables of `rows` rows (the last one shorter), so
    that the output's row groups are catalog.ROW_GROUP_ROWS whatever the input's."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += len(table)
        while count >= rows:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, rows)
            pending, count = [whole.slice(rows)], count - rows
    if count:
        yield pa.concat_tables(pending)
