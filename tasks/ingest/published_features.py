"""Published audio-visual GZSL feature sets as long-form features (catalog.FEATURES).

Two releases share one folder layout, `<root>/{audio,video}/<stage>/<ClassName>.<ext>`,
where `<root>` is `<dataset>/features/<method>` of the downloaded archive:

- ClipClap-GZSL (dkurzend/ClipClap-GZSL, CLIP/CLAP features): `<ClassName>.pkl`, a
  pickled dict with `features` ([n, d] array or list of n rows) and `video_names`
  (n clip names, str or bytes), as written by `splitting_scripts_cls/create_pkl_files_cls.py`
  and read by `src/utils.py:read_features`.
- AVCA-GZSL (ExplainableML/AVCA-GZSL): `<ClassName>.h5` with datasets `data` [n, d] and
  `video_urls` [n] (bytes), as read by `src/utils.py:read_features`.

The class name is the file stem, kept as it is (`ApplyEyeMakeup`). A clip is one
sample: its audio and video rows share `sample_id` = the clip name, and a clip found
in one modality only still gives that modality's row.

Stage folders map to CONTRACTS splits as both repositories train and test their final
model (`dataset.py:get_data_by_modality`): "train_val" = stage_1_train + stage_1_val_seen
+ stage_1_val_unseen is the training set, "test" = stage_2_test_seen +
stage_2_test_unseen. AudioSetZSL's trn/val/tst follow the same rule. Other stage
names need `stage_splits`.

Pickles can run code when loaded: ingest only archives from a source you trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.store import catalog

MODALITIES = ("audio", "video")
LAYOUTS = {"clipclap": ".pkl", "avca": ".h5"}
STAGE_SPLITS: dict[str, str | None] = {
    "stage_1_train": "train",
    "stage_1_val_seen": "train",
    "stage_1_val_unseen": "train",
    "stage_2_train": "train",
    "stage_2_test_seen": "test",
    "stage_2_test_unseen": "test",
    "trn": "train",
    "val": "train",
    "tst": "test",
    "train": "train",
    "test": "test",
}


def ingest_published(
    root: Path, layout: str = "auto", stage_splits: Mapping[str, str | None] | None = None
) -> pa.Table:
    """All clips of a published feature set as FEATURES rows, sorted by (sample_id, modality).

    layout: "clipclap", "avca", or "auto" (by the files' extension).
    stage_splits: stage folder -> "train", "test" or None (no split: the project then
        makes its own), replacing the default mapping `STAGE_SPLITS`.
    """
    root = Path(root)
    folders = _modality_folders(root)
    layout = _detect_layout(root, folders) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown published layout {layout!r}; known: {sorted(LAYOUTS)} or 'auto'")
    splits = dict(STAGE_SPLITS if stage_splits is None else stage_splits)
    read = {name: _read_modality(name, folder, LAYOUTS[layout], splits) for name, folder in folders.items()}
    _check_pairs({name: files for name, (_, files) in read.items()}, splits)
    table = pa.concat_tables([table for table, _ in read.values()])
    return table.sort_by([("sample_id", "ascending"), ("modality", "ascending")])


def published_classes(table: pa.Table) -> pd.DataFrame:
    """The classes.csv of an ingested feature set: its class names, sorted."""
    return pd.DataFrame({"class_name": sorted(set(table.column("class_name").to_pylist()))})


def _modality_folders(root: Path) -> dict[str, Path]:
    """`audio/` and `video/` under `root`, or under the one folder below it that holds them."""
    if not root.is_dir():
        raise FileNotFoundError(f"published features folder {root} does not exist")
    parents = (
        [root]
        if any((root / m).is_dir() for m in MODALITIES)
        else sorted({p.parent for m in MODALITIES for p in root.rglob(m) if p.is_dir()})
    )
    if not parents:
        raise FileNotFoundError(
            f"{root}: no audio/ or video/ folder (expected <root>/{{audio,video}}/<stage>/<Class>.pkl|.h5)"
        )
    if len(parents) > 1:
        raise ValueError(
            f"{root}: holds several feature sets ({[str(p) for p in parents[:4]]}); pass one of them"
        )
    return {m: parents[0] / m for m in MODALITIES if (parents[0] / m).is_dir()}


def _detect_layout(root: Path, folders: dict[str, Path]) -> str:
    found = {
        layout
        for layout, ext in LAYOUTS.items()
        for folder in folders.values()
        if any(folder.glob(f"*/*{ext}"))
    }
    if len(found) != 1:
        what = "both .pkl and .h5 files" if found else "no .pkl or .h5 files"
        raise ValueError(
            f"{root}: cannot tell the layout, it has {what} in <modality>/<stage>/; pass layout="
        )
    return found.pop()


def _clip_name(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _read_clipclap(path: Path) -> tuple[np.ndarray, list[str]]:
    with path.open("rb") as f:
        content = pickle.load(f)
    if not isinstance(content, dict) or not {"features", "video_names"} <= content.keys():
        raise ValueError(f"{path}: expected a pickled dict with 'features' and 'video_names'")
    return np.asarray(content["features"], dtype=np.float32), [_clip_name(v) for v in content["video_names"]]


def _read_avca(path: Path) -> tuple[np.ndarray, list[str]]:
    with h5py.File(path, "r") as f:
        if "data" not in f or "video_urls" not in f:
            raise ValueError(f"{path}: expected HDF5 datasets 'data' and 'video_urls'")
        return np.asarray(f["data"][()], dtype=np.float32), [_clip_name(v) for v in f["video_urls"][()]]


def _read_modality(
    modality: str, folder: Path, ext: str, splits: dict[str, str | None]
) -> tuple[pa.Table, dict[str, Path]]:
    """The rows of one modality and the file of each clip; clip names must be unique across its files."""
    seen: dict[str, Path] = {}
    columns: dict[str, list] = {"sample_id": [], "class_name": [], "split": []}
    matrices: list[np.ndarray] = []
    for path in sorted(folder.glob(f"*/*{ext}")):
        stage = path.parent.name
        if stage not in splits:
            raise ValueError(
                f"{path}: unknown stage folder {stage!r}; known: {sorted(splits)} (pass stage_splits=)"
            )
        matrix, names = _read_clipclap(path) if ext == ".pkl" else _read_avca(path)
        if not names and matrix.size == 0:
            continue
        if matrix.ndim != 2 or matrix.shape[0] != len(names):
            raise ValueError(f"{path}: {len(names)} clip names for features of shape {matrix.shape}")
        if matrices and matrix.shape[1] != matrices[0].shape[1]:
            raise ValueError(
                f"{path}: {modality} features have {matrix.shape[1]} dims, earlier files {matrices[0].shape[1]}"
            )
        for name in names:
            if name in seen:
                raise ValueError(f"{path}: clip {name!r} appears twice in {modality} (also in {seen[name]})")
            seen[name] = path
        columns["sample_id"] += names
        columns["class_name"] += [path.stem] * len(names)
        columns["split"] += [splits[stage]] * len(names)
        matrices.append(matrix)
    values = np.concatenate(matrices) if matrices else np.zeros((0, 0), dtype=np.float32)
    table = pa.table(
        {**columns, "modality": [modality] * len(values), "vector": catalog.vector_column(values)}
    )
    return table.select(catalog.FEATURES.names).cast(catalog.FEATURES), seen


def _check_pairs(files: dict[str, dict[str, Path]], splits: dict[str, str | None]) -> None:
    """A clip found in both modalities must have the same class and split in both."""
    if len(files) < 2:
        return
    audio, video = files["audio"], files["video"]
    for name in sorted(audio.keys() & video.keys()):
        a, v = audio[name], video[name]
        if a.stem != v.stem or splits[a.parent.name] != splits[v.parent.name]:
            raise ValueError(
                f"clip {name!r} is in class/stage {a.stem}/{a.parent.name} in {a} but {v.stem}/{v.parent.name} in {v}"
            )
