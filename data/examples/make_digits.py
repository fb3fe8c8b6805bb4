"""A real dataset seen through two views: scikit-learn's handwritten digits, split down the middle.

Each 8x8 digit image becomes one sample with two modalities: `left` (the left four
pixel columns, 32 values) and `right` (the right four). Neither half alone shows the
whole digit (a 1 and a 7 share their right stroke), so the views are complementary,
as audio and video are. The data ships inside scikit-learn: no network.

Writes, in the bring-your-own-features format (CONTRACTS section 1):
  OUT_DIR/classes.csv        class_name ("zero".."nine") and a short description
  OUT_DIR/features.parquet   long form, no split column (the project makes a seeded split)

Usage: .venv/bin/python data/examples/make_digits.py OUT_DIR
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
from sklearn.datasets import load_digits

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, not only as a module
    sys.path.insert(0, str(REPO_ROOT))

from tasks import catalog  # noqa: E402

# Descriptions become the class semantics, so they say what the strokes look like.
SHAPES = {
    "zero": "a single closed oval loop with an empty middle",
    "one": "a single vertical stroke, sometimes with a small flag at the top",
    "two": "a curved hook at the top running into a diagonal and a flat base line",
    "three": "two stacked bumps opening to the left, joined in the middle",
    "four": "a vertical stroke crossed by a horizontal bar with a slanted arm on the left",
    "five": "a flat top bar and a short vertical stroke above a round belly opening left",
    "six": "a curved stroke coming down from the top into a closed loop at the bottom",
    "seven": "a flat top bar and a long diagonal stroke down to the left",
    "eight": "two closed loops stacked one above the other, pinched in the middle",
    "nine": "a closed loop at the top with a straight tail down the right side",
}

FEATURES_NO_SPLIT = pa.schema([field for field in catalog.FEATURES if field.name != "split"])


def _standardise(view: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per pixel; pixels that never vary (blank borders) stay 0."""
    std = view.std(axis=0)
    return ((view - view.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def make_digits(out_dir: Path) -> tuple[Path, Path]:
    """Write classes.csv and features.parquet for the two-view digits; return their paths."""
    digits = load_digits()
    names = list(SHAPES)  # in label order: names[k] is the digit k
    n = len(digits.target)
    sample_ids = [f"digit-{i:04d}" for i in range(n)]
    class_names = [names[label] for label in digits.target]
    views = {
        "left": _standardise(digits.images[:, :, :4].reshape(n, -1)),
        "right": _standardise(digits.images[:, :, 4:].reshape(n, -1)),
    }
    table = pa.concat_tables(
        pa.table(
            {
                "sample_id": sample_ids,
                "class_name": class_names,
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
    for name, shape in SHAPES.items():
        writer.writerow([name, f"the handwritten digit {name}, {shape}"])
    classes = catalog.write_text(buffer.getvalue(), out_dir / "classes.csv")
    return classes, features


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: make_digits.py OUT_DIR", file=sys.stderr)
        return 2
    classes, features = make_digits(Path(argv[0]))
    print(f"wrote {classes} and {features}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
