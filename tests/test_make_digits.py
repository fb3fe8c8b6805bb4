"""data/examples/make_digits.py: scikit-learn digits written as a two-view CONTRACTS dataset."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from tasks.store import catalog

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "examples" / "make_digits.py"
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _load_script() -> ModuleType:
    """The script is not a package module, so load it from its file as users run it."""
    spec = importlib.util.spec_from_file_location("make_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _load_script().make_digits(tmp_path_factory.mktemp("digits"))


def test_classes_csv_names_ten_digits_with_descriptions(written: tuple[Path, Path]) -> None:
    classes, _ = written
    with classes.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class_name"] for r in rows] == NAMES
    for row in rows:
        assert row["description"].startswith(f"the handwritten digit {row['class_name']}, ")


def test_features_follow_the_contract_without_a_split(written: tuple[Path, Path]) -> None:
    _, features = written
    table = pq.read_table(features)
    assert table.column_names == ["sample_id", "class_name", "modality", "vector"]
    assert pa.types.is_list(table.schema.field("vector").type)
    assert table.schema.field("vector").type.value_type == pa.float32()
    assert table.num_rows == 1797 * 2
    assert set(table["class_name"].to_pylist()) == set(NAMES)
    modalities_of: dict[str, set[str]] = {}
    for sample_id, modality in zip(table["sample_id"].to_pylist(), table["modality"].to_pylist()):
        modalities_of.setdefault(sample_id, set()).add(modality)
    assert len(modalities_of) == 1797
    assert all(m == {"left", "right"} for m in modalities_of.values())


def test_views_are_the_standardised_image_halves(written: tuple[Path, Path]) -> None:
    _, features = written
    table = catalog.read_table(features)
    images = load_digits().images
    for modality, columns in (("left", slice(0, 4)), ("right", slice(4, 8))):
        rows = table.filter(pc.equal(table["modality"], modality))
        vectors = np.stack(rows["vector"].to_numpy(zero_copy_only=False))
        assert vectors.shape == (1797, 32) and vectors.dtype == np.float32
        pixels = images[:, :, columns].reshape(1797, -1)
        std = pixels.std(axis=0)
        expected = (pixels - pixels.mean(axis=0)) / np.where(std > 0, std, 1.0)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
