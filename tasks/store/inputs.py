"""Errors in user inputs, and the one user file every group reads: classes.csv.

Ingest, semantics, training and serving all read the class list and report bad input
the same way; both live here, low in the house, so none of them imports another for it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


class InputError(ValueError):
    """A user input that cannot be used; the message names the file, row or class."""


def read_classes(path: str | Path) -> pd.DataFrame:
    """classes.csv with a unique, non-empty `class_name` column (optional `description`)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: classes file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file, expected a 'class_name' column and one row per class") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV ({e})") from e
    if "class_name" not in df.columns:
        raise InputError(f"{path}: missing required column 'class_name' (has {list(df.columns)})")
    if df.empty:
        raise InputError(f"{path}: no classes (a header and no rows)")
    df["class_name"] = df["class_name"].str.strip()
    empty = df.index[df["class_name"] == ""].tolist()
    if empty:
        raise InputError(f"{path}: empty class_name on row(s) {[i + 2 for i in empty[:5]]}")
    dup = df["class_name"][df["class_name"].duplicated()].unique().tolist()
    if dup:
        raise InputError(f"{path}: duplicated class_name {dup[:5]}")
    return df
