"""Features stage: bring-your-own feature vectors (CONTRACTS section 1), validated.

Input is long form, one row per (sample, modality). Bad rows are not fatal: each is
written to a `rejected` table with its reason, counted in the log with example ids,
and left out. Only when nothing usable remains does the stage stop.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

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


def read_features(path: str | Path) -> pa.Table:
    """A Parquet file or folder of Parquet files, with the vector column as list<float32>."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: features file or folder not found")
    try:
        table = ds.dataset(path, format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not readable as Parquet, corrupt or truncated? ({str(e).splitlines()[0]})") from e
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing required column(s) {missing} (has {table.column_names})")
    vtype = table.schema.field("vector").type
    if not (pa.types.is_list(vtype) or pa.types.is_fixed_size_list(vtype) or pa.types.is_large_list(vtype)):
        raise InputError(f"{path}: column 'vector' must be a list of floats, got {vtype}")
    if not (pa.types.is_floating(vtype.value_type) or pa.types.is_integer(vtype.value_type)):
        raise InputError(f"{path}: column 'vector' must hold floats, got {vtype}")
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
        try:
            pq.ParquetFile(f).close()
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{f}: not readable as Parquet, corrupt or truncated? ({str(e).splitlines()[0]})") from e


def find_bad_rows(table: pa.Table, class_names: set[str]) -> pd.Series:
    """The reason each row is unusable ("" for good rows); the first failed check wins.

    The expected vector length of a modality is its most common length.
    """
    meta = table.select(["sample_id", "class_name", "modality", "split"]).to_pandas()
    reason = pd.Series("", index=meta.index, dtype=object)

    def flag(mask: pd.Series | np.ndarray, why: str) -> None:
        reason[pd.Series(mask, index=meta.index) & (reason == "")] = why

    flag(meta["sample_id"].isna() | (meta["sample_id"] == ""), "empty sample_id")
    flag(meta["modality"].isna() | (meta["modality"] == ""), "empty modality")
    flag(~meta["class_name"].isin(class_names), "unknown class")
    flag(meta["split"].notna() & ~meta["split"].isin(["train", "test"]), "split not train/test")
    lengths = pc.list_value_length(table["vector"]).to_pandas().fillna(0).astype(int)
    expected = lengths.groupby(meta["modality"]).agg(lambda s: s.mode().iloc[0])
    flag(lengths != meta["modality"].map(expected), "wrong vector length")
    flag(_nonfinite_rows(table["vector"]), "NaN or inf in vector")
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
    reason = find_bad_rows(table, class_names)
    bad = (reason != "").to_numpy()
    rejected = table.filter(pa.array(bad)).select(["sample_id", "modality", "class_name"])
    rejected = rejected.append_column("reason", pa.array(reason[bad].tolist(), pa.string()))
    for why, rows in rejected.to_pandas().groupby("reason"):
        log.warning(
            "%s: %d row(s) rejected: %s (e.g. sample_id %s, class %s, modality %s)",
            source, len(rows), why, rows["sample_id"].head(3).tolist(),
            rows["class_name"].head(3).tolist(), rows["modality"].head(3).tolist(),
        )
    _explain_unknown_classes(rejected, class_names, source)
    good = table.filter(pa.array(~bad)) if bad.any() else table
    missing = sorted(class_names - set(good["class_name"].to_pylist()))
    if missing:
        log.warning("%s: %d class(es) of classes.csv have no usable sample: %s; no modality can learn them, "
                    "so they are only ever predicted as unseen classes", source, len(missing), missing[:10])
    if len(good) == 0:
        raise InputError(f"{source}: no usable rows left ({int(bad.sum())} rejected: see the warnings above)")
    return good, rejected


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
    rejected rows, with the extractor's reason.
    """
    class_names = set(read_classes(classes)["class_name"])
    failed = catalog.REJECTED.empty_table()
    if extracted is not None:
        from tasks.ingest.extract import read_extracted

        folder = catalog.stage_dir(workspace, "extract") / extracted
        media, failures = read_extracted(folder)
        table, source = media.select(catalog.FEATURES.names), f"features extracted into {folder}"
        failed = pa.table({"sample_id": failures["sample_id"], "modality": failures["modality"],
                           "class_name": pa.nulls(len(failures), pa.string()),
                           "reason": pc.binary_join_element_wise("extraction failed: ", failures["reason"], "")})
    elif published is not None:
        from tasks.ingest.published_features import ingest_published

        table, source = ingest_published(Path(published), published_layout), str(published)
    elif features is not None:
        table, source = read_features(features), str(features)
    else:
        from tasks.ingest.default_dataset import make_default_dataset

        table, source = make_default_dataset(seed=default_seed), "embedded default dataset"
    good, rejected = validate_features(table, class_names, source)
    rejected = pa.concat_tables([failed.cast(catalog.REJECTED), rejected.cast(catalog.REJECTED)])
    catalog.write_table(rejected, catalog.stage_output(workspace, "features", key, ".rejected.parquet"), catalog.REJECTED)
    catalog.write_table(good, catalog.stage_output(workspace, "features", key), catalog.FEATURES)
    log.info("%s: %d rows, modalities %s", source, len(good), sorted(set(good["modality"].to_pylist())))
