"""`cscf predict`: a saved model (tasks/store/model_file.py) classifies new samples, streamed.

Input is the long form of CONTRACTS section 1 (`class_name` and `split` optional); each
sample shows any non-empty subset of the model's modalities. A file is read in record
batches (a large row group in slices, never whole) and written batch by batch, so memory
stays bounded whatever the input's size and row-group size. Rows of one sample must be
adjacent for that; a file whose rows are not grouped by sample is first sorted by DuckDB
out of core (into a temporary file), not loaded. Rows without a sample_id (null or "")
are set aside and counted wherever they are. `check_predict_input` is the cheap check of
an input (footer, modalities, vector lengths) done before any prediction starts.

Scores come from `tasks.evaluation.scoring.cscf_predict(model)`, the function the
evaluation stage scores CSCF with, so `cscf predict` and the evaluation cannot drift.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from tasks.store import catalog
from tasks.store.inputs import InputError
from tasks.store.model_file import TrainedModel
from tasks.store.progress import progress
from tasks.evaluation.scoring import cscf_predict

log = logging.getLogger("cscf.predict")

TOP_K = 5
BATCH_ROWS = 65_536  # input rows per record batch: about 30 MB of 100-d float32 vectors
READ_BUFFER = 1 << 20  # bytes a Parquet column is read through, page by page (see open_parquet)
SAMPLE_ROWS = 4096  # rows whose vector lengths check_predict_input reads from a list column
REQUIRED = ("sample_id", "modality", "vector")
SORT_MEMORY = "1GB"  # DuckDB's memory limit when it has to group a file by sample


@dataclass
class Tally:
    """What one prediction run saw: samples and correct ones per combination of modalities
    (when labels are given), rows set aside and why, with a few example ids."""

    samples: int = 0
    labelled: Counter = field(default_factory=Counter)  # combination -> labelled samples
    correct: Counter = field(default_factory=Counter)  # combination -> correct predictions
    rejected: Counter = field(default_factory=Counter)  # reason -> rows
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> up to 3 sample ids

    def reject(self, reason: str, sample_ids: list[str]) -> None:
        self.rejected[reason] += len(sample_ids)
        self.examples.setdefault(reason, []).extend(sample_ids[: 3 - len(self.examples.get(reason, []))])

    def merge(self, other: "Tally") -> "Tally":
        self.samples += other.samples
        self.labelled.update(other.labelled)
        self.correct.update(other.correct)
        for reason, n in other.rejected.items():
            self.rejected[reason] += n
            self.examples.setdefault(reason, []).extend(other.examples[reason][: 3 - len(self.examples[reason])])
        return self

    def summary(self) -> dict[str, Any]:
        """Accuracy in percent per combination of modalities, and overall, over labelled samples."""
        acc = {c: {"samples": n, "accuracy": 100.0 * self.correct[c] / n} for c, n in sorted(self.labelled.items())}
        total = sum(self.labelled.values())
        return {"samples": self.samples, "labelled": total,
                "accuracy": 100.0 * sum(self.correct.values()) / total if total else None,
                "accuracy_by_modalities": acc,
                "rejected_rows": {r: {"rows": n, "examples": self.examples[r]} for r, n in self.rejected.items()}}


def input_files(path: Path) -> list[Path]:
    """The Parquet files of an input: the file itself, or every *.parquet under a folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else []
    if not files:
        raise InputError(f"{path}: no Parquet file found")
    return files


def check_predict_input(trained: TrainedModel, features: Path) -> None:
    """The checks that cost little, done before any prediction starts (and before Prefect
    does): every input file is Parquet with the required columns, shows only the model's
    modalities (the sample_id and modality columns alone are read, batch by batch) and
    vectors of their lengths (a fixed_size_list's width, else the first SAMPLE_ROWS rows;
    a wrong length further on is still found while predicting). InputError naming the file.
    """
    for path in input_files(features):
        file = open_parquet(path)
        input_columns(file, path)
        _check_lengths(file, path, trained, _check_modalities(file, path, trained))


def predict_file(trained: TrainedModel, source: Path, out: Path, top_k: int = TOP_K,
                 batch_rows: int = BATCH_ROWS) -> Tally:
    """Predict every sample of one Parquet file into `out` (CONTRACTS section 5), atomically."""
    tally, done = Tally(), 0
    with catalog.batch_writer(out, catalog.PREDICTED) as write, _grouped(source) as grouped, \
            progress(f"predict {source.name}", pq.read_metadata(grouped).num_rows, log, unit="row") as shown:
        for table in sample_batches(grouped, batch_rows, source):
            ids, features, present, labels = samples_to_tensors(table, trained, source, tally)
            if ids:
                write(predict_batch(trained, ids, features, present, labels, top_k, tally))
            done += len(table)
            shown.update(done)
    return tally


def sample_batches(path: Path, batch_rows: int, name: Path | None = None) -> Iterator[pa.Table]:
    """Record batches of a file grouped by sample, each holding whole samples only: the rows
    of the last sample of a batch wait for the next batch, where the sample may continue."""
    file = open_parquet(path, name or path)
    columns = input_columns(file, name or path)
    carry: pa.Table | None = None
    for batch in record_batches(file, batch_rows, columns):
        table = pa.Table.from_batches([batch])
        table = table if carry is None else pa.concat_tables([carry, table.cast(carry.schema)])
        last = _last_sample(table["sample_id"])
        yield table.filter(pc.invert(last))
        carry = table.filter(last).combine_chunks()  # copies: no slice keeps a read batch alive
    if carry is not None and len(carry):
        yield carry


def input_columns(file: pq.ParquetFile, name: Path) -> list[str]:
    """The columns prediction reads; InputError naming the file if a required one is missing."""
    names = file.schema_arrow.names
    missing = sorted(set(REQUIRED) - set(names))
    if missing:
        raise InputError(f"{name}: missing required column(s) {missing} (has {names})")
    return [c for c in ("sample_id", "class_name", "modality", "vector") if c in names]


def _last_sample(sample_id: pa.ChunkedArray) -> pa.ChunkedArray:
    """Rows of the batch's last sample with a sample_id, held back for the next batch.

    Rows without one (null or "") are never held back: they are set aside in the batch they
    came in (samples_to_tensors), wherever they are, even as the batch's last row."""
    named = np.flatnonzero(_named(sample_id))
    if not len(named):
        return pa.chunked_array([np.zeros(len(sample_id), dtype=bool)], pa.bool_())
    return pc.fill_null(pc.equal(sample_id, sample_id[int(named[-1])]), False)


def _named(sample_id: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(n,) bool: rows whose sample_id is neither null nor empty."""
    return pc.fill_null(pc.not_equal(sample_id.cast(pa.string()), ""), False).to_numpy(zero_copy_only=False)


def samples_to_tensors(
    table: pa.Table, trained: TrainedModel, source: Path, tally: Tally
) -> tuple[list[str], list[torch.Tensor], torch.Tensor, list[str | None] | None]:
    """Long-form rows -> sample ids, one (B, d_m) tensor per model modality (zeros where absent),
    presence (B, M) and labels (None without a class_name column).

    A modality the model does not know or a vector of the wrong length stops the run
    (InputError naming it); an empty sample_id, NaN/inf or a repeated (sample, modality) row is
    set aside and counted, as the features stage does.
    """
    modalities, dims = trained.modalities, trained.input_dims
    sample_id = table["sample_id"].cast(pa.string()).to_numpy(zero_copy_only=False)
    modality = table["modality"].cast(pa.string()).to_numpy(zero_copy_only=False)
    unknown = sorted(set(pd.unique(modality)) - set(modalities), key=str)
    if unknown:
        i = int(np.flatnonzero(modality == unknown[0])[0])
        raise InputError(f"{source}: modality {unknown[0]!r} (sample_id {sample_id[i]!r}) is not one of the model's "
                         f"modalities {modalities}")
    vectors = table["vector"]
    lengths = pc.fill_null(pc.list_value_length(vectors), 0).to_numpy()
    expected = np.array([dims[m] for m in modality], dtype=np.int64)
    wrong = np.flatnonzero(lengths != expected)
    if len(wrong):
        i = int(wrong[0])
        raise InputError(f"{source}: modality {modality[i]!r} needs vectors of length {expected[i]}, sample_id "
                         f"{sample_id[i]!r} has {lengths[i]} ({len(wrong)} such row(s) in this batch)")
    flat = pc.list_flatten(vectors).cast(pa.float32()).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    finite = np.logical_and.reduceat(np.isfinite(flat), offsets[:-1]) if len(flat) else np.ones(0, bool)
    keep = np.ones(len(table), dtype=bool)
    for reason, bad in (("empty sample_id", pd.isna(sample_id) | (sample_id == "")), ("NaN or inf in vector", ~finite)):
        bad &= keep
        if bad.any():
            tally.reject(reason, [str(s) for s in sample_id[bad]])
            keep &= ~bad
    codes, ids = pd.factorize(pd.Series(sample_id).where(keep, None))
    m_index = np.array([modalities.index(m) for m in modality], dtype=np.int64)
    repeated = keep & pd.Series(codes * len(modalities) + m_index).duplicated().to_numpy()
    if repeated.any():
        tally.reject("duplicated (sample_id, modality)", [str(s) for s in sample_id[repeated]])
        keep &= ~repeated
    n = len(ids)
    present = torch.zeros(n, len(modalities), dtype=torch.bool)
    features = []
    for m, name in enumerate(modalities):
        rows = np.flatnonzero(keep & (m_index == m))
        x = torch.zeros(n, dims[name])
        if len(rows):
            block = pc.list_flatten(vectors.take(pa.array(rows))).cast(pa.float32()).to_numpy(zero_copy_only=False)
            x[codes[rows]] = torch.tensor(block.reshape(len(rows), dims[name]))
            present[codes[rows], m] = True
        features.append(x)
    labels = None
    if "class_name" in table.column_names:
        by_sample = pd.Series(table["class_name"].cast(pa.string()).to_numpy(zero_copy_only=False))[keep]
        first = pd.Series(by_sample.to_numpy(), index=codes[keep]).groupby(level=0).first()
        labels = [None if pd.isna(v) else str(v) for v in first.reindex(range(n)).to_numpy()]
    return [str(s) for s in ids], features, present, labels


@torch.no_grad()
def predict_batch(trained: TrainedModel, ids: list[str], features: list[torch.Tensor], present: torch.Tensor,
                  labels: list[str | None] | None, top_k: int, tally: Tally) -> pa.Table:
    """Score one batch of samples and return the output rows (catalog.PREDICTED)."""
    scores, dominant, _ = cscf_predict(trained.model)(features, present)
    prob = scores.softmax(-1).double()
    k = min(top_k, prob.shape[1])
    top_p, top_i = prob.topk(k, dim=-1)
    names = np.array(trained.class_names, dtype=object)
    modalities = np.array(trained.modalities, dtype=object)
    present_np = present.numpy()
    shown = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(present_np.sum(1))]).astype(np.int32)),
                                     pa.array(np.broadcast_to(modalities, present_np.shape)[present_np], pa.string()))
    top = pa.StructArray.from_arrays([pa.array(names[top_i.numpy().reshape(-1)], pa.string()),
                                      pa.array(top_p.numpy().reshape(-1))], names=["class_name", "probability"])
    predicted = names[top_i[:, 0].numpy()]
    combos = ["+".join(modalities[row]) for row in present_np]
    tally.samples += len(ids)
    if labels is not None:
        for combo, label, pred in zip(combos, labels, predicted):
            if label is not None:
                tally.labelled[combo] += 1
                tally.correct[combo] += label == pred
    return pa.table({
        "sample_id": pa.array(ids, pa.string()),
        "predicted_class": pa.array(predicted, pa.string()),
        "probability": pa.array(top_p[:, 0].numpy()),
        "modalities": shown,
        "dominant_modality": pa.array(modalities[dominant.numpy()], pa.string()),
        "top_k": pa.ListArray.from_arrays(pa.array(np.arange(len(ids) + 1, dtype=np.int32) * k), top),
    })


def record_batches(file: pq.ParquetFile, batch_rows: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The file's rows in batches of at most `batch_rows`, read a batch at a time whatever
    the row-group size (pyarrow's writer makes groups of up to 1M rows) when the file was
    opened by open_parquet. Row group by row group, so that no read spans two groups."""
    for group in range(file.num_row_groups):
        yield from file.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)


def open_parquet(path: Path, name: Path | None = None) -> pq.ParquetFile:
    """A Parquet file opened for streaming: not pre-buffered and read through a READ_BUFFER
    buffer, so a batch costs its own rows' memory, not its row group's. pyarrow's defaults
    read each column chunk of a group whole, even in iter_batches (measured, pyarrow 25,
    1,000,000 rows of 64-d vectors in one row group, 65,536-row batches: 303 MiB of Arrow
    memory alive with the defaults, 57 MiB with these settings; `cscf predict` on 1M rows
    in one group peaked at 1.87 GB reading whole groups, 1.2 GB now, as with small groups).
    InputError naming the file (`name`, default `path`) if it is not Parquet."""
    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{name or path}: not readable as Parquet ({str(e).splitlines()[0]})") from None


def _check_modalities(file: pq.ParquetFile, path: Path, trained: TrainedModel) -> set[str]:
    """The modalities the file shows, all of them the model's: InputError naming the first
    row of another (row number and sample_id), two columns read a batch at a time."""
    known, shown, start = pa.array(trained.modalities, pa.string()), set(), 0
    for batch in record_batches(file, BATCH_ROWS, ["sample_id", "modality"]):
        modality = batch.column(1).cast(pa.string())
        known_rows = pc.fill_null(pc.is_in(modality, value_set=known), False).to_numpy(zero_copy_only=False)
        if not known_rows.all():
            i = int(np.flatnonzero(~known_rows)[0])
            raise InputError(f"{path}: modality {modality[i].as_py()!r} (row {start + i}, sample_id "
                             f"{batch.column(0)[i].as_py()!r}) is not one of the model's modalities "
                             f"{trained.modalities}")
        shown.update(pc.unique(modality).to_pylist())
        start += len(batch)
    return shown


def _check_lengths(file: pq.ParquetFile, path: Path, trained: TrainedModel, shown: set[str]) -> None:
    """Vectors of each shown modality's length: a fixed_size_list has one width for every
    row; a list's lengths are read on the first SAMPLE_ROWS rows."""
    vector, dims = file.schema_arrow.field("vector").type, trained.input_dims
    if not (pa.types.is_list(vector) or pa.types.is_large_list(vector) or pa.types.is_fixed_size_list(vector)):
        raise InputError(f"{path}: column 'vector' is {vector}, expected a list of floats")
    if pa.types.is_fixed_size_list(vector):
        wrong = sorted(m for m in shown if dims[m] != vector.list_size)
        if wrong:
            raise InputError(f"{path}: modality {wrong[0]!r} needs vectors of length {dims[wrong[0]]}, the file's "
                             f"'vector' column holds {vector.list_size} values per row")
        return
    head = next(record_batches(file, SAMPLE_ROWS, ["sample_id", "modality", "vector"]), None)
    if head is None:
        return
    sample_id, modality = head.column(0).to_pylist(), head.column(1).cast(pa.string()).to_pylist()
    lengths = pc.fill_null(pc.list_value_length(head.column(2)), 0).to_pylist()
    for i, (m, n) in enumerate(zip(modality, lengths)):
        if n != dims[m]:
            raise InputError(f"{path}: modality {m!r} needs vectors of length {dims[m]}, sample_id "
                             f"{sample_id[i]!r} (row {i}) has {n}")


def is_grouped(path: Path) -> bool:
    """Whether the rows of every sample are adjacent: no sample id starts a second run of rows
    (rows without a sample_id, set aside wherever they are, do not break a run).

    Reads the sample_id column only, keeping one 64-bit hash per run of rows."""
    file = open_parquet(path)
    if "sample_id" not in file.schema_arrow.names:
        return True  # sample_batches reports the missing column
    starts, previous = [], None
    for batch in record_batches(file, BATCH_ROWS, ["sample_id"]):
        ids = batch.column(0).cast(pa.string()).to_numpy(zero_copy_only=False)
        ids = ids[_named(batch.column(0))]  # rows without a sample_id are set aside where they are
        new_run = np.ones(len(ids), dtype=bool)
        new_run[1:] = ids[1:] != ids[:-1]
        if len(ids) and previous is not None:
            new_run[0] = ids[0] != previous
        starts.append(pd.util.hash_array(ids[new_run].astype(object)))
        previous = ids[-1] if len(ids) else previous
    run_heads = np.concatenate(starts) if starts else np.zeros(0, np.uint64)
    return len(np.unique(run_heads)) == len(run_heads)


@contextlib.contextmanager
def _grouped(path: Path) -> Iterator[Path]:
    """The file itself when the rows of each sample are adjacent, else a copy sorted by
    sample_id (DuckDB, spilling to a temporary folder beyond SORT_MEMORY), removed after use."""
    if is_grouped(path):
        yield path
        return
    import duckdb

    log.info("%s: rows of a sample are not adjacent; grouping them by sample_id (DuckDB, out of core)", path)
    with tempfile.TemporaryDirectory(prefix="cscf-predict-sort-") as tmp:
        sorted_path = Path(tmp) / "sorted.parquet"
        con = duckdb.connect()
        try:
            con.execute(f"set memory_limit = '{SORT_MEMORY}'; set temp_directory = '{tmp}'; "
                        "set preserve_insertion_order = false")
            source = str(path).replace("'", "''")
            con.execute(f"copy (select * from read_parquet('{source}') order by sample_id) to '{sorted_path}' (format parquet)")
        finally:
            con.close()
        yield sorted_path
