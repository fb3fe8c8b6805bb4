"""What every example dataset script shares: writing views in the bring-your-own-features form.

The scripts in this folder each turn some real data into CONTRACTS section 1 files
(classes.csv plus long-form features.parquet with no split column); only how they
get the vectors differs, so the writing lives here once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from tasks.store import catalog

FEATURES_NO_SPLIT = pa.schema([field for field in catalog.FEATURES if field.name != "split"])


def standardise(view: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column; columns that never vary stay 0."""
    std = view.std(axis=0)
    return ((view - view.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def write_dataset(
    out_dir: Path,
    sample_ids: Sequence[str],
    class_names: Sequence[str],
    views: Mapping[str, np.ndarray],
    descriptions: Mapping[str, str],
) -> tuple[Path, Path]:
    """Write OUT_DIR/features.parquet (one row per sample and view) and OUT_DIR/classes.csv.

    `views` maps a modality name to an [n_samples, dim] matrix whose rows follow
    `sample_ids`; `descriptions` maps each class name to its description, in the
    order the classes are to be listed. Returns (classes path, features path).
    """
    n = len(sample_ids)
    table = pa.concat_tables(
        pa.table(
            {
                "sample_id": list(sample_ids),
                "class_name": list(class_names),
                "modality": [modality] * n,
                "vector": pa.array(list(vectors), type=FEATURES_NO_SPLIT.field("vector").type),
            }
        )
        for modality, vectors in views.items()
    )
    out_dir = Path(out_dir)
    features = catalog.write_table(table, out_dir / "features.parquet", FEATURES_NO_SPLIT)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class_name", "description"])
    for name, description in descriptions.items():
        writer.writerow([name, description])
    classes = catalog.write_text(buffer.getvalue(), out_dir / "classes.csv")
    return classes, features
