"""A tiny CONTRACTS-format dataset for pipeline tests: real class names, two modalities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CLASSES = ["dog barking", "cat meowing", "church bells", "car horn", "rain falling", "baby crying"]


def tiny_rows(per_class: int = 16, seed: int = 0) -> list[dict]:
    """Rows with well separated classes: audio (16-d) and video (12-d) per sample."""
    rng = np.random.default_rng(seed)
    centres = {"audio": rng.normal(size=(len(CLASSES), 16)), "video": rng.normal(size=(len(CLASSES), 12))}
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            sid = f"{name.replace(' ', '-')}-{i:03d}"
            for modality, centre in centres.items():
                vec = centre[c] + 0.3 * rng.normal(size=centre.shape[1])
                rows.append({"sample_id": sid, "class_name": name, "modality": modality, "vector": vec.astype(np.float32).tolist()})
    return rows


def write_dataset(folder: Path, rows: list[dict] | None = None, classes: list[str] | None = None) -> tuple[Path, Path]:
    """features.parquet and classes.csv in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    features, classes_csv = folder / "features.parquet", folder / "classes.csv"
    pq.write_table(pa.Table.from_pylist(rows if rows is not None else tiny_rows()), features)
    pd.DataFrame({"class_name": classes or CLASSES}).to_csv(classes_csv, index=False)
    return features, classes_csv


# Heterogeneous data as users hold it: three sources, each labelled with its own (overlapping)
# class list, unpaired training rows; test samples show two or three modalities; the last
# class has no training rows anywhere (seen by no modality).
HETERO_CLASSES = [*CLASSES, "thunder"]
HETERO_SEEN = {"audio": [0, 1, 2, 3], "video": [2, 3, 4, 5], "text": [0, 5]}
HETERO_DIMS = {"audio": 16, "video": 12, "text": 8}


def hetero_rows(train_per_class: int = 12, test_per_class: int = 6, seed: int = 0) -> list[dict]:
    """Training rows per modality for its own classes only (ids not shared across modalities);
    test rows: every class through all modalities, one in three samples without `text`."""
    rng = np.random.default_rng(seed)
    centres = {m: rng.normal(size=(len(HETERO_CLASSES), d)) for m, d in HETERO_DIMS.items()}
    vec = lambda m, c: (centres[m][c] + 0.3 * rng.normal(size=HETERO_DIMS[m])).astype(np.float32).tolist()  # noqa: E731
    rows = []
    for m, classes in HETERO_SEEN.items():
        for c in classes:
            for i in range(train_per_class):
                rows.append({"sample_id": f"{m}-train-{c}-{i}", "class_name": HETERO_CLASSES[c], "modality": m,
                             "vector": vec(m, c), "split": "train"})
    for c, name in enumerate(HETERO_CLASSES):
        for i in range(test_per_class):
            for m in HETERO_DIMS:
                if m != "text" or i % 3:
                    rows.append({"sample_id": f"test-{c}-{i}", "class_name": name, "modality": m,
                                 "vector": vec(m, c), "split": "test"})
    return rows
