"""A real dataset seen through several views: scikit-learn's handwritten digits, cut into pieces.

Each 8x8 digit image becomes one sample. Two sets of views, chosen with `--views`:

- `halves` (the default): `left` (the left four pixel columns, 32 values) and `right`
  (the right four). Neither half alone shows the whole digit (a 1 and a 7 share their
  right stroke), so the views are complementary, as audio and video are.
- `four`: three informative views and one clearly weak one, for methods that must
  learn how far to trust each modality: `left` and `right` as above, `middle` (pixel
  rows 2 to 5, 32 values, overlapping both halves) and `thumb` (a 2x2 thumbnail: the
  ink summed over each 4x4 quadrant, 4 values). The four quadrants themselves were
  not used: alone they all score 0.60-0.67, so none of them is the weak one.

Measured accuracy of each view alone (5-fold logistic regression on the written,
standardised vectors; chance is 0.10), as printed by
`.venv/bin/python data/examples/make_digits.py OUT_DIR --views four`:
  left 0.796, right 0.831, middle 0.899, thumb 0.514.

The data ships inside scikit-learn: no network.

Writes, in the bring-your-own-features format (CONTRACTS section 1):
  OUT_DIR/classes.csv        class_name ("zero".."nine") and a short description
  OUT_DIR/features.parquet   long form, no split column (the project makes a seeded split)

Usage: .venv/bin/python data/examples/make_digits.py OUT_DIR [--views halves|four]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, not only as a module
    sys.path.insert(0, str(REPO_ROOT))

from data.examples.long_form import standardise, write_dataset  # noqa: E402
from tasks.store import catalog  # noqa: E402

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
VIEW_SETS = ("halves", "four")


def pixel_views(images: np.ndarray, views: str) -> dict[str, np.ndarray]:
    """The raw (unstandardised) views of [n, 8, 8] images, one [n, dim] matrix per modality."""
    n = len(images)
    out = {"left": images[:, :, :4].reshape(n, -1), "right": images[:, :, 4:].reshape(n, -1)}
    if views == "four":
        out["middle"] = images[:, 2:6, :].reshape(n, -1)
        out["thumb"] = images.reshape(n, 2, 4, 2, 4).sum(axis=(2, 4)).reshape(n, -1)
    elif views != "halves":
        raise ValueError(f"unknown view set {views!r}: pick one of {', '.join(VIEW_SETS)}")
    return out


def make_digits(out_dir: Path, views: str = "halves") -> tuple[Path, Path]:
    """Write classes.csv and features.parquet for the digits seen through `views`; return their paths."""
    digits = load_digits()
    names = list(SHAPES)  # in label order: names[k] is the digit k
    sample_ids = [f"digit-{i:04d}" for i in range(len(digits.target))]
    class_names = [names[label] for label in digits.target]
    vectors = {modality: standardise(raw) for modality, raw in pixel_views(digits.images, views).items()}
    descriptions = {name: f"the handwritten digit {name}, {shape}" for name, shape in SHAPES.items()}
    return write_dataset(Path(out_dir), sample_ids, class_names, vectors, descriptions)


def view_accuracies(features: Path, seed: int = 0) -> dict[str, float]:
    """5-fold logistic-regression accuracy of each written view alone, measured on the file itself."""
    table = catalog.read_table(features).to_pandas()
    out = {}
    for modality, rows in table.groupby("modality", sort=False):
        rows = rows.sort_values("sample_id")
        logreg = LogisticRegression(max_iter=2000, random_state=seed)
        vectors = np.stack(rows["vector"].to_numpy())
        out[modality] = float(cross_val_score(logreg, vectors, rows["class_name"], cv=5).mean())
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="make_digits.py", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--views", choices=VIEW_SETS, default="halves", help="which views to write (default: halves)")
    args = p.parse_args(argv)
    classes, features = make_digits(args.out_dir, args.views)
    print(f"wrote {classes} and {features}")
    accuracies = view_accuracies(features)
    print("each view alone, 5-fold logistic regression (chance 0.100): "
          + ", ".join(f"{modality} {accuracy:.3f}" for modality, accuracy in accuracies.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
