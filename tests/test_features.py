"""Bring-your-own features (CONTRACTS section 1): bad rows are counted and named, never silently dropped."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.store import catalog
from tasks.ingest.features import build_features, read_features
from tasks.store.inputs import InputError, read_classes
from tasks.training.split import build_split
from tiny_data import CLASSES, tiny_rows, write_dataset


def _build(tmp_path: Path, rows: list[dict]) -> tuple[pa.Table, pa.Table]:
    features, classes = write_dataset(tmp_path / "in", rows)
    build_features(tmp_path / "ws", "k", str(features), str(classes), 0)
    read = lambda suffix: catalog.read_table(catalog.stage_output(tmp_path / "ws", "features", "k", suffix))  # noqa: E731
    return read(".parquet"), read(".rejected.parquet")


def test_bad_rows_are_rejected_with_reasons_and_logged(tmp_path, caplog):
    rows = tiny_rows(per_class=4)
    good = len(rows)
    rows[0] = {**rows[0], "class_name": "unicorn singing"}
    rows[1] = {**rows[1], "vector": rows[1]["vector"][:-1]}
    rows[2] = {**rows[2], "vector": [math.nan] + rows[2]["vector"][1:]}
    rows.append(dict(rows[3]))  # duplicated (sample_id, modality)
    with caplog.at_level("WARNING", logger="cscf.features"):
        kept, rejected = _build(tmp_path, rows)
    reasons = {(r["sample_id"], r["modality"]): r["reason"] for r in rejected.to_pylist()}
    assert sorted(rejected["reason"].to_pylist()) == sorted(
        ["unknown class", "wrong vector length", "NaN or inf in vector", "duplicated (sample_id, modality)"]
    )
    assert reasons[rows[0]["sample_id"], rows[0]["modality"]] == "unknown class"
    assert reasons[rows[1]["sample_id"], rows[1]["modality"]] == "wrong vector length"
    assert len(kept) == good - 3  # the duplicate's first copy stays
    assert "1 row(s) rejected: unknown class" in caplog.text
    assert rows[0]["sample_id"] in caplog.text and "unicorn singing" in caplog.text


def test_conflicting_labels_across_modalities_are_rejected(tmp_path):
    rows = tiny_rows(per_class=3)
    rows[1] = {**rows[1], "class_name": CLASSES[-1]}  # same sample, other modality, other class
    kept, rejected = _build(tmp_path, rows)
    assert set(rejected["reason"].to_pylist()) == {"class_name differs across modalities"}
    assert rows[0]["sample_id"] not in kept["sample_id"].to_pylist()


def test_nothing_usable_is_an_error_naming_the_file(tmp_path):
    rows = [{**r, "class_name": "unknown"} for r in tiny_rows(per_class=2)]
    with pytest.raises(InputError, match="features.parquet: no usable rows"):
        _build(tmp_path, rows)
    assert not list((tmp_path / "ws").rglob("*.parquet"))


def test_fixed_size_vectors_and_split_column_are_accepted(tmp_path):
    rows = tiny_rows(per_class=3)
    table = pa.Table.from_pylist(rows)
    width = len(rows[0]["vector"])
    audio = table.filter(pa.compute.equal(table["modality"], "audio"))
    audio = audio.set_column(3, "vector", audio["vector"].cast(pa.list_(pa.float64(), width)))
    audio = audio.append_column("split", pa.array(["test"] * len(audio)))
    path = tmp_path / "f.parquet"
    import pyarrow.parquet as pq

    pq.write_table(audio, path)
    out = read_features(path)
    assert out.schema.equals(catalog.FEATURES)
    assert set(out["split"].to_pylist()) == {"test"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.parquet", "missing.parquet: features file or folder not found"),
        (lambda d: _write_table(d, {"sample_id": ["a"], "modality": ["x"], "vector": [[1.0]]}), "missing required column(s) ['class_name']"),
        (lambda d: _write_table(d, {"sample_id": ["a"], "class_name": ["c"], "modality": ["x"], "vector": ["1,2"]}), "'vector' must be a list"),
    ],
)
def test_unreadable_features_give_one_clear_error(tmp_path, make, message):
    with pytest.raises(InputError, match=_escape(message)):
        read_features(make(tmp_path))


def test_classes_csv_problems_name_the_file(tmp_path):
    bad = tmp_path / "classes.csv"
    bad.write_text("name\ndog\n")
    with pytest.raises(InputError, match="classes.csv: missing required column 'class_name'"):
        read_classes(bad)
    bad.write_text("class_name\ndog\ndog\n")
    with pytest.raises(InputError, match=r"duplicated class_name \['dog'\]"):
        read_classes(bad)


def test_requested_modality_without_rows_is_an_error(tmp_path):
    features, classes = write_dataset(tmp_path / "in")
    build_features(tmp_path / "ws", "f", str(features), str(classes), 0)
    with pytest.raises(InputError, match=r"modality \['depth'\] has no rows \(available: \['audio', 'video'\]\)"):
        build_split(tmp_path / "ws", "s", "f", str(classes), ["audio", "depth"], 0)
    assert not (tmp_path / "ws" / "split").exists()


def test_cli_reports_a_missing_file_in_one_line(tmp_path, capsys):
    from flows.cli import main

    code = main(["run", "--features", str(tmp_path / "nope.parquet"), "--classes", str(tmp_path / "c.csv"),
                 "--workspace", str(tmp_path / "ws"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("cscf: error: ") and "nope.parquet: features file not found" in err[-1]
    assert not (tmp_path / "out").exists()


def _write_table(folder: Path, columns: dict) -> Path:
    import pyarrow.parquet as pq

    path = folder / "f.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_a_streamed_file_gives_what_checking_the_whole_table_gives(tmp_path, monkeypatch):
    """The user's file is checked and written a batch at a time (issue 22): with 5-row batches
    over 3-row row groups, the kept and rejected rows are those of the whole table checked
    at once, in order, and the output's row groups have catalog.ROW_GROUP_ROWS (here 7) rows."""
    from tasks.ingest import features as stage

    rows = tiny_rows(per_class=4)
    rows[0] = {**rows[0], "class_name": "unicorn singing"}
    rows[7] = {**rows[7], "vector": [math.nan] + rows[7]["vector"][1:]}
    rows[12] = {**rows[12], "vector": rows[12]["vector"][:-1]}
    rows.append(dict(rows[20]))  # duplicated (sample_id, modality)
    rows[31] = {**rows[31], "class_name": CLASSES[0]}  # its other modality says otherwise
    features, classes = write_dataset(tmp_path / "in", rows)
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), features, row_group_size=3)
    monkeypatch.setattr(stage, "BATCH_ROWS", 5)
    monkeypatch.setattr(catalog, "ROW_GROUP_ROWS", 7)
    kept, rejected = _build(tmp_path, rows)
    want_kept, want_rejected = stage.validate_features(read_features(features), set(CLASSES), str(features))
    assert kept.equals(want_kept.combine_chunks())
    assert rejected.equals(want_rejected.cast(catalog.REJECTED).combine_chunks())
    assert len(rejected) == 6  # unknown class, NaN, wrong length, duplicate, two rows of the conflicting sample
    groups = pq.ParquetFile(catalog.stage_output(tmp_path / "ws", "features", "k")).metadata
    sizes = [groups.row_group(i).num_rows for i in range(groups.num_row_groups)]
    assert sizes == [7] * (len(kept) // 7) + ([len(kept) % 7] if len(kept) % 7 else [])
