"""data/examples/make_digits.py: scikit-learn digits written as a two-view CONTRACTS dataset."""

from __future__ import annotations

import csv
import importlib.util
import re
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


@pytest.fixture(scope="module")
def written_four(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _load_script().make_digits(tmp_path_factory.mktemp("digits4"), views="four")


def test_four_views_are_standardised_functions_of_the_pixels(written_four: tuple[Path, Path]) -> None:
    classes, features = written_four
    with classes.open(newline="") as handle:
        assert [r["class_name"] for r in csv.DictReader(handle)] == NAMES  # same classes and descriptions
    table = catalog.read_table(features)
    assert table.num_rows == 1797 * 4
    images = load_digits().images
    expected_pixels = {
        "left": images[:, :, :4].reshape(1797, -1),
        "right": images[:, :, 4:].reshape(1797, -1),
        "middle": images[:, 2:6, :].reshape(1797, -1),
        "thumb": np.stack([images[:, r:r + 4, c:c + 4].sum(axis=(1, 2)) for r in (0, 4) for c in (0, 4)], axis=1),
    }
    assert list(dict.fromkeys(table["modality"].to_pylist())) == list(expected_pixels)
    for modality, pixels in expected_pixels.items():
        rows = table.filter(pc.equal(table["modality"], modality))
        assert rows["sample_id"].to_pylist() == [f"digit-{i:04d}" for i in range(1797)]
        vectors = np.stack(rows["vector"].to_numpy(zero_copy_only=False))
        std = pixels.std(axis=0)
        np.testing.assert_allclose(vectors, (pixels - pixels.mean(axis=0)) / np.where(std > 0, std, 1.0), atol=1e-5)


def test_four_views_have_one_clearly_weak_view(written_four: tuple[Path, Path]) -> None:
    accuracy = _load_script().view_accuracies(written_four[1])
    assert list(accuracy) == ["left", "right", "middle", "thumb"]
    strong = [accuracy[m] for m in ("left", "right", "middle")]
    assert min(strong) > 0.75  # 0.80, 0.83, 0.90 here
    assert 0.2 < accuracy["thumb"] < min(strong) - 0.2  # 0.51: weak, but far above chance (0.1)


def test_unknown_view_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown view set 'thirds'"):
        _load_script().make_digits(tmp_path, views="thirds")
    assert not any(tmp_path.iterdir())


def test_command_line_writes_the_chosen_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _load_script().main([str(tmp_path), "--views", "four"]) == 0
    assert re.search(r"left 0\.\d{3}, right 0\.\d{3}, middle 0\.\d{3}, thumb 0\.\d{3}$", capsys.readouterr().out, re.M)
    modalities = pq.read_table(tmp_path / "features.parquet", columns=["modality"])["modality"].to_pylist()
    assert set(modalities) == {"left", "right", "middle", "thumb"}
