"""Ingesting ClipClap-GZSL (.pkl) and AVCA-GZSL (.h5) feature trees into FEATURES rows."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from tasks.store import catalog
from tasks.ingest.published_features import ingest_published, published_classes

CLASSES = ("ApplyEyeMakeup", "Basketball", "Drumming")
STAGES = {
    "stage_1_train": "train",
    "stage_1_val_unseen": "train",
    "stage_2_test_seen": "test",
    "stage_2_test_unseen": "test",
}
DIMS = {"audio": 8, "video": 6}
VIDEO_ONLY = "v_Drumming_stage_2_test_unseen_1"  # left out of the audio files


def make_files() -> list[tuple[str, str, str, list[str], np.ndarray]]:
    """(modality, stage, class, clip names, features) of every file of a small release."""
    rng = np.random.default_rng(0)
    files = []
    for stage in STAGES:
        for cls in CLASSES:
            names = [f"v_{cls}_{stage}_{i}" for i in range(2)]
            for modality, dim in DIMS.items():
                kept = [n for n in names if not (modality == "audio" and n == VIDEO_ONLY)]
                files.append(
                    (modality, stage, cls, kept, rng.standard_normal((len(kept), dim)).astype(np.float32))
                )
    return files


def write_tree(root: Path, layout: str, files: list) -> Path:
    for modality, stage, cls, names, features in files:
        folder = root / modality / stage
        folder.mkdir(parents=True, exist_ok=True)
        encoded = [n.encode() for n in names]  # both releases store clip names as bytes
        if layout == "clipclap":
            content = {"features": list(features), "video_names": encoded, "fps": [25] * len(names)}
            (folder / f"{cls}.pkl").write_bytes(pickle.dumps(content))
        else:
            with h5py.File(folder / f"{cls}.h5", "w") as f:
                f.create_dataset("data", data=features)
                f.create_dataset("video_urls", data=np.array(encoded))
    return root


@pytest.fixture
def files() -> list:
    return make_files()


def test_both_layouts_ingest_to_the_same_rows(tmp_path: Path, files: list) -> None:
    clipclap = ingest_published(
        write_tree(tmp_path / "cc" / "features" / "clip", "clipclap", files), "clipclap"
    )
    avca = ingest_published(write_tree(tmp_path / "avca", "avca", files), "avca")
    assert clipclap.schema == catalog.FEATURES
    assert clipclap.equals(avca)
    assert ingest_published(tmp_path / "cc", "auto").equals(clipclap)  # finds features/clip below the root
    assert clipclap.num_rows == sum(len(names) for _, _, _, names, _ in files)


def test_rows_pair_clips_and_map_stages_to_splits(tmp_path: Path, files: list) -> None:
    frame = ingest_published(write_tree(tmp_path, "avca", files)).to_pandas()
    rows = frame.set_index(["sample_id", "modality"])
    for modality, stage, cls, names, features in files:
        for name, vector in zip(names, features):
            row = rows.loc[(name, modality)]
            assert (row["class_name"], row["split"]) == (cls, STAGES[stage])
            np.testing.assert_array_equal(row["vector"], vector)
    per_clip = frame.groupby("sample_id")["modality"].apply(sorted)
    assert per_clip[VIDEO_ONLY] == ["video"]
    assert (per_clip.drop(VIDEO_ONLY).map(tuple) == ("audio", "video")).all()
    assert published_classes(ingest_published(tmp_path))["class_name"].tolist() == list(CLASSES)


def test_duplicated_clip_in_a_modality_names_both_files(tmp_path: Path, files: list) -> None:
    modality, stage, _, names, features = files[0]
    files.append((modality, stage, "Zumba", names[:1], features[:1]))
    write_tree(tmp_path, "clipclap", files)
    with pytest.raises(
        ValueError, match=rf"Zumba\.pkl: clip '{names[0]}' appears twice in {modality}.*{files[0][2]}\.pkl"
    ):
        ingest_published(tmp_path)


def test_clip_with_different_classes_across_modalities_is_an_error(tmp_path: Path, files: list) -> None:
    i = next(i for i, f in enumerate(files) if f[0] == "audio")
    modality, stage, _, names, features = files[i]
    files[i] = (modality, stage, "Zumba", names, features)
    write_tree(tmp_path, "avca", files)
    with pytest.raises(ValueError, match=rf"clip '{names[0]}' is in class/stage Zumba/{stage}"):
        ingest_published(tmp_path)


def test_unknown_stage_folder_needs_a_mapping(tmp_path: Path, files: list) -> None:
    renamed = [(m, "seen" if s == "stage_1_train" else s, c, n, f) for m, s, c, n, f in files]
    write_tree(tmp_path, "avca", renamed)
    with pytest.raises(ValueError, match=r"ApplyEyeMakeup\.h5: unknown stage folder 'seen'"):
        ingest_published(tmp_path)
    table = ingest_published(tmp_path, stage_splits={**STAGES, "seen": None})
    splits = table.to_pandas().groupby("split", dropna=False).size()
    assert splits[np.nan] == 2 * len(CLASSES) * 2  # the "seen" clips, both modalities, no split


def test_mismatched_names_and_features_name_the_file(tmp_path: Path, files: list) -> None:
    modality, stage, cls, names, features = files[0]
    files[0] = (modality, stage, cls, names + ["extra"], features)
    write_tree(tmp_path, "clipclap", files)
    with pytest.raises(ValueError, match=rf"{cls}\.pkl: 3 clip names for features of shape \(2, 8\)"):
        ingest_published(tmp_path)


def test_a_folder_without_features_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no audio/ or video/ folder"):
        ingest_published(tmp_path)
    (tmp_path / "audio" / "stage_1_train").mkdir(parents=True)
    with pytest.raises(ValueError, match="cannot tell the layout"):
        ingest_published(tmp_path)
