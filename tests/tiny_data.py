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
