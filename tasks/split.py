"""Modality split stage: the MMHCL protocol of section 4.1.

Classes are divided into two disjoint halves, A_s (seen in training only through
modality A) and B_s (only through B). Samples are divided into train and test: the
`split` column of the features when given, else a seeded class-stratified split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from . import catalog
from .features import InputError, read_classes

log = logging.getLogger("cscf.split")

TEST_FRACTION = 0.3


def choose_modalities(available: list[str], requested: list[str] | None, source: str) -> list[str]:
    """Modality A and B: the requested ones, else the first two in sorted order."""
    available = sorted(available)
    chosen = requested or available[:2]
    if len(chosen) != 2 or len(set(chosen)) != 2:
        raise InputError(f"{source}: need exactly two different modalities, got {chosen} (available: {available})")
    missing = [m for m in chosen if m not in available]
    if missing:
        raise InputError(f"{source}: modality {missing} has no rows (available: {available})")
    return list(chosen)


def split_classes(class_names: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Seeded disjoint halves (A_s gets the extra class when N is odd)."""
    order = np.random.default_rng(seed).permutation(len(class_names))
    half = (len(class_names) + 1) // 2
    return [class_names[i] for i in sorted(order[:half])], [class_names[i] for i in sorted(order[half:])]


def split_samples(samples: pd.DataFrame, seed: int, test_fraction: float = TEST_FRACTION) -> pd.Series:
    """train/test per sample: the given split where every row of the sample has one,
    otherwise a seeded split stratified by class (at least one train sample per class)."""
    given = samples["split"]
    rng = np.random.default_rng(seed + 1)
    out = given.copy()
    todo = samples[given.isna()]
    for _, group in todo.groupby("class_name", sort=True):
        idx = group.index.to_numpy()[rng.permutation(len(group))]
        n_test = int(round(test_fraction * len(idx))) if len(idx) > 1 else 0
        out[idx[:n_test]] = "test"
        out[idx[n_test:]] = "train"
    return out


def build_split(workspace: Path, key: str, features_key: str, classes: str, modalities: list[str] | None, seed: int) -> None:
    """Write `<key>.classes.parquet` (class, seen_by, role) and `<key>.samples.parquet`."""
    path = catalog.stage_output(workspace, "features", features_key)
    rows = catalog.read_table(path).select(["sample_id", "class_name", "modality", "split"]).to_pandas()
    a, b = choose_modalities(rows["modality"].unique().tolist(), modalities, str(path))
    rows = rows[rows["modality"].isin([a, b])]
    class_names = read_classes(classes)["class_name"].tolist()
    a_seen, b_seen = split_classes(class_names, seed)
    role = {c: "A" for c in a_seen} | {c: "B" for c in b_seen}
    class_table = pa.table(
        {
            "class_name": class_names,
            "seen_by": [a if role[c] == "A" else b for c in class_names],
            "role": [role[c] for c in class_names],
        }
    )
    # A sample's split is consistent across its modalities: "test" wins if any row says so.
    samples = rows.groupby("sample_id", sort=True).agg(
        class_name=("class_name", "first"),
        split=("split", lambda s: None if s.isna().all() else ("test" if (s == "test").any() else "train")),
    ).reset_index()
    samples["split"] = split_samples(samples, seed)
    for name, modality in ((a_seen, a), (b_seen, b)):
        trained = rows[(rows["modality"] == modality) & rows["class_name"].isin(name)]
        trained = trained[trained["sample_id"].isin(samples.loc[samples["split"] == "train", "sample_id"])]
        if trained.empty:
            raise InputError(f"{path}: modality {modality!r} has no training rows for its seen classes")
        missing = sorted(set(name) - set(trained["class_name"]))
        if missing:
            log.warning("modality %r has no training rows for %d of its seen classes, e.g. %s", modality, len(missing), missing[:3])
    catalog.write_table(class_table, catalog.stage_output(workspace, "split", key, ".classes.parquet"), catalog.CLASS_SPLIT)
    catalog.write_table(pa.Table.from_pandas(samples, preserve_index=False), catalog.stage_output(workspace, "split", key, ".samples.parquet"), catalog.SAMPLE_SPLIT)
    log.info("modalities A=%s B=%s; %d classes each side; %d train / %d test samples", a, b, len(a_seen),
             int((samples["split"] == "train").sum()), int((samples["split"] == "test").sum()))
