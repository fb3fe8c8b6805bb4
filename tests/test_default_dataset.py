"""The embedded default dataset: its form, its determinism, and that it is fit for MMHCL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks.store import catalog
from tasks.ingest.default_dataset import (
    AUDIO,
    VIDEO,
    default_classes_path,
    make_default_dataset,
    measure_quality,
    read_generator_classes,
)

# Smaller than the shipped default so the tests stay fast; the README holds full-size numbers.
SIZES = {"seed": 0, "train_per_class": 40, "test_per_class": 20}


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return make_default_dataset(**SIZES)


@pytest.fixture(scope="module")
def quality(table: pa.Table) -> dict:
    return measure_quality(table)


def test_schema_and_modalities(table: pa.Table) -> None:
    assert table.schema == catalog.FEATURES
    assert set(table["modality"].to_pylist()) == {"audio", "video"}
    assert set(table["split"].to_pylist()) == {"train", "test"}


def test_every_sample_has_both_modalities_with_the_same_label(table: pa.Table) -> None:
    rows = table.select(["sample_id", "class_name", "modality", "split"]).to_pylist()
    by_sample: dict[str, list[dict]] = {}
    for row in rows:
        by_sample.setdefault(row["sample_id"], []).append(row)
    for sample_id, pair in by_sample.items():
        assert sorted(r["modality"] for r in pair) == ["audio", "video"], sample_id
        assert len({(r["class_name"], r["split"]) for r in pair}) == 1, sample_id


def _vectors(table: pa.Table, modality: str) -> np.ndarray:
    rows = table.filter(pc.equal(table["modality"], modality))
    return np.stack(rows["vector"].to_numpy(zero_copy_only=False))


def test_vectors_have_one_length_per_modality_and_are_finite(table: pa.Table) -> None:
    audio, video = _vectors(table, AUDIO.name), _vectors(table, VIDEO.name)
    assert (audio.shape[1], video.shape[1]) == (512, 384)
    assert np.isfinite(audio).all() and np.isfinite(video).all()
    # video lives in the unit sphere of the text space, like CLIP image features
    np.testing.assert_allclose(np.linalg.norm(video, axis=1), 1.0, atol=1e-5)


def test_same_seed_same_table_other_seed_other_table(table: pa.Table) -> None:
    assert make_default_dataset(**SIZES).equals(table)
    assert not make_default_dataset(**{**SIZES, "seed": 1}).equals(table)


def test_every_class_has_train_and_test_samples(table: pa.Table) -> None:
    names = read_generator_classes(default_classes_path()).names
    assert len(names) >= 20
    audio = table.filter(pc.equal(table["modality"], "audio"))
    counts: dict[tuple[str, str], int] = {}
    for name, split in zip(audio["class_name"].to_pylist(), audio["split"].to_pylist()):
        counts[(name, split)] = counts.get((name, split), 0) + 1
    for name in names:
        assert counts.get((name, "train")) == SIZES["train_per_class"], name
        assert counts.get((name, "test")) == SIZES["test_per_class"], name


def test_video_recognises_classes_zero_shot_from_their_names(quality: dict) -> None:
    assert quality["video_zero_shot"] > 10 * quality["chance"]


def test_each_modality_is_good_not_perfect_and_errs_differently(quality: dict) -> None:
    for modality in ("audio", "video"):
        assert 0.6 < quality["probe_accuracy"][modality] < 1.0, quality["probe_accuracy"]
    confused = {
        m: {tuple(item["pair"]) for item in items} for m, items in quality["most_confused"].items()
    }
    assert confused["audio"] and confused["video"]
    assert not confused["audio"] & confused["video"], confused
    # The pair audio confuses most is one video keeps apart, and vice versa.
    for mine, other in (("audio", "video"), ("video", "audio")):
        worst = quality["most_confused"][mine][0]
        assert worst[other] < worst[mine] / 2, worst


def test_the_modality_that_saw_a_class_is_more_certain_on_it(quality: dict) -> None:
    for modality, certainty in quality["seen_certainty"].items():
        assert certainty["seen"] > certainty["unseen"] + 0.15, (modality, certainty)
    assert quality["routing_accuracy"] > 0.75


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("class_name,sound\ndog,woof\n", "missing columns ['look']"),
        ("class_name,sound,look\ndog,woof,\n", ":2: empty ['look'] for class 'dog'"),
        ("class_name,sound,look\ndog,woof,fur\ndog,grr,teeth\n", ":3: duplicate class 'dog'"),
    ],
)
def test_bad_classes_file_names_the_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "classes.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        read_generator_classes(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
