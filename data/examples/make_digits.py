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

import sys
from pathlib import Path

from sklearn.datasets import load_digits

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, not only as a module
    sys.path.insert(0, str(REPO_ROOT))

from data.examples.long_form import standardise, write_dataset  # noqa: E402

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


def make_digits(out_dir: Path) -> tuple[Path, Path]:
    """Write classes.csv and features.parquet for the two-view digits; return their paths."""
    digits = load_digits()
    names = list(SHAPES)  # in label order: names[k] is the digit k
    n = len(digits.target)
    sample_ids = [f"digit-{i:04d}" for i in range(n)]
    class_names = [names[label] for label in digits.target]
    views = {
        "left": standardise(digits.images[:, :, :4].reshape(n, -1)),
        "right": standardise(digits.images[:, :, 4:].reshape(n, -1)),
    }
    descriptions = {name: f"the handwritten digit {name}, {shape}" for name, shape in SHAPES.items()}
    return write_dataset(Path(out_dir), sample_ids, class_names, views, descriptions)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: make_digits.py OUT_DIR", file=sys.stderr)
        return 2
    classes, features = make_digits(Path(argv[0]))
    print(f"wrote {classes} and {features}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
