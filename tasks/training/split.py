"""Modality split stage: which classes each modality saw, and which samples train or test.

The paper states MMHCL for m modalities whose seen sets may overlap or be disjoint
(section 3), then measures it on two disjoint halves (section 4.1). Both are modes here:

- `data`: a modality saw the classes it has `train` rows for. This is how users hold
  their data: an audio collection labelled with one class list, a video collection with
  another, no paired training samples, lists that may overlap.
- `halves`: the paper's protocol, generalised: a seeded division of the classes into one
  disjoint group per modality; `overlap` F puts a seeded fraction F of the classes into
  every group.
- a CSV file `modality, class_name`: the seen sets written down.
- `auto`: `data` when some modality has train rows for only part of the classes (the data
  is already heterogeneous), else `halves`.

Samples are divided into train and test by the `split` column when given, else by a
seeded class-stratified split. Rows of a modality for a class it did not see never reach
training (tasks/training/mmhcl_data.py). The stage writes the seen sets it used twice: as the
`classes` table (one row per class and modality) and as a CSV that `--seen FILE` accepts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.store import catalog
from tasks.store.inputs import InputError, read_classes

log = logging.getLogger("cscf.split")

TEST_FRACTION = 0.3
SEEN_MODES = ("auto", "halves", "data", "file")


def choose_modalities(available: list[str], requested: list[str] | None, source: str) -> list[str]:
    """The requested modalities (two or more), else the first two in sorted order."""
    available = sorted(available)
    chosen = requested or available[:2]
    if len(chosen) < 2 or len(set(chosen)) != len(chosen):
        raise InputError(f"{source}: need two or more different modalities, got {chosen} (available: {available})")
    missing = [m for m in chosen if m not in available]
    if missing:
        raise InputError(f"{source}: modality {missing} has no rows (available: {available})")
    return list(chosen)


def split_classes(class_names: list[str], n_groups: int, seed: int, overlap: float = 0.0) -> list[list[str]]:
    """`halves`: seeded disjoint groups, one per modality, plus a shared fraction `overlap`.

    The shared classes are the first round(overlap * N) of one seeded permutation and the
    rest is cut into n_groups near-equal runs (earlier groups get the extra classes), so
    with two groups and no overlap this is the paper's halves (A_s gets the extra class).
    """
    order = np.random.default_rng(seed).permutation(len(class_names))
    n_shared = int(round(overlap * len(class_names)))
    shared, rest = order[:n_shared], order[n_shared:]
    return [[class_names[i] for i in sorted([*shared, *group])] for group in np.array_split(rest, n_groups)]


def split_samples(samples: pd.DataFrame, seed: int, test_fraction: float = TEST_FRACTION) -> pd.Series:
    """train/test per sample: the given split where every row of the sample has one,
    otherwise a seeded split stratified by class and by the modalities a sample shows
    (`shows`, when given), so that each modality keeps train samples of its classes
    when its samples are not paired with the others'."""
    given = samples["split"]
    rng = np.random.default_rng(seed + 1)
    out = given.copy()
    todo = samples[given.isna()]
    strata = ["class_name", "shows"] if "shows" in samples else ["class_name"]
    for _, group in todo.groupby(strata, sort=True):
        idx = group.index.to_numpy()[rng.permutation(len(group))]
        n_test = int(round(test_fraction * len(idx))) if len(idx) > 1 else 0
        out[idx[:n_test]] = "test"
        out[idx[n_test:]] = "train"
    return out


def read_seen_file(path: str | Path, modalities: list[str], class_names: list[str]) -> dict[str, list[str]]:
    """A CSV `modality, class_name` naming every seen (modality, class) pair."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable seen-classes CSV ({e})") from e
    missing = [c for c in ("modality", "class_name") if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (a seen file has columns modality, class_name)")
    df = df.assign(modality=df["modality"].str.strip(), class_name=df["class_name"].str.strip())
    for column, known in (("modality", modalities), ("class_name", class_names)):
        bad = df.index[~df[column].isin(known)].tolist()
        if bad:
            row = bad[0]
            raise InputError(f"{path}: row {row + 2} names unknown {column.replace('_', ' ')} {df.at[row, column]!r} "
                             f"(known: {', '.join(known[:10])}{', ...' if len(known) > 10 else ''})")
    return {m: [c for c in class_names if c in set(df.loc[df["modality"] == m, "class_name"])] for m in modalities}


def seen_from_data(train_rows: pd.DataFrame, modalities: list[str], class_names: list[str]) -> dict[str, list[str]]:
    """`data`: each modality saw the classes it has training rows for."""
    have = train_rows.groupby("modality")["class_name"].unique()
    return {m: [c for c in class_names if m in have.index and c in set(have[m])] for m in modalities}


def resolve_seen(
    mode: str, overlap: float, seen_file: str | None, train_rows: pd.DataFrame, modalities: list[str],
    class_names: list[str], seed: int,
) -> tuple[dict[str, list[str]], str]:
    """The seen set of every modality under `mode` (one of SEEN_MODES), and why."""
    from_data = seen_from_data(train_rows, modalities, class_names)
    if mode == "auto":
        partial = [m for m in modalities if len(from_data[m]) < len(class_names)]
        if partial:
            mode, why = "data", f"auto: modality {partial[0]!r} has train rows for {len(from_data[partial[0]])} of {len(class_names)} classes"
        else:
            mode, why = "halves", "auto: every modality has train rows for every class"
    else:
        why = "as requested"
    if mode == "data":
        return from_data, f"data ({why})"
    if mode == "halves":
        groups = split_classes(class_names, len(modalities), seed, overlap)
        return dict(zip(modalities, groups)), f"halves with overlap {overlap:g} ({why})"
    if mode == "file" and seen_file:
        return read_seen_file(seen_file, modalities, class_names), f"file {seen_file}"
    raise InputError(f"--seen must be one of auto, halves, data or a CSV file, got {mode!r}")


def check_seen(seen: dict[str, list[str]], train_rows: pd.DataFrame, class_names: list[str], source: str) -> None:
    """Refuse, before any training, seen sets that cannot be trained; log what is unusual.

    A modality needs training rows for at least two of its seen classes: with one, its
    softmax has nothing to tell apart and calibration nothing to hold out.
    """
    for modality, classes in seen.items():
        rows = train_rows[(train_rows["modality"] == modality) & train_rows["class_name"].isin(classes)]
        trained = sorted(set(rows["class_name"]))
        if len(trained) < 2:
            raise InputError(f"{source}: modality {modality!r} has training rows for {len(trained)} seen class(es) "
                             f"{trained}; it needs at least 2")
        missing = [c for c in classes if c not in set(trained)]
        if missing:
            log.warning("modality %r has no training rows for %d of its seen classes, e.g. %s",
                        modality, len(missing), missing[:3])
    by_none = [c for c in class_names if not any(c in s for s in seen.values())]
    if by_none:
        log.warning("%d class(es) seen by no modality, predicted as unseen by all: %s", len(by_none), by_none[:5])


def build_split(
    workspace: Path,
    key: str,
    features_key: str,
    classes: str,
    modalities: list[str] | None,
    seed: int,
    seen: str = "auto",
    overlap: float = 0.0,
    seen_file: str | None = None,
) -> None:
    """Write `<key>.classes.parquet` (class, modality, seen), `<key>.seen.csv` and `<key>.samples.parquet`."""
    path = catalog.stage_output(workspace, "features", features_key)
    rows = pq.read_table(path, columns=["sample_id", "class_name", "modality", "split"]).to_pandas()
    chosen = choose_modalities(rows["modality"].unique().tolist(), modalities, str(path))
    rows = rows[rows["modality"].isin(chosen)]
    class_names = read_classes(classes)["class_name"].tolist()
    # A sample's split is consistent across its modalities: "test" wins if any row says so.
    samples = rows.groupby("sample_id", sort=True).agg(
        class_name=("class_name", "first"),
        shows=("modality", lambda s: "+".join(sorted(s))),
        split=("split", lambda s: None if s.isna().all() else ("test" if (s == "test").any() else "train")),
    ).reset_index()
    samples["split"] = split_samples(samples, seed)
    train_rows = rows[rows["sample_id"].isin(samples.loc[samples["split"] == "train", "sample_id"])]
    seen_sets, why = resolve_seen(seen, overlap, seen_file, train_rows, chosen, class_names, seed)
    check_seen(seen_sets, train_rows, class_names, str(path))
    roles = [chr(ord("A") + i) for i in range(len(chosen))]
    class_table = pa.table({
        "class_name": [c for c in class_names for _ in chosen],
        "modality": [m for _ in class_names for m in chosen],
        "role": [r for _ in class_names for r in roles],
        "seen": [c in set(seen_sets[m]) for c in class_names for m in chosen],
    })
    seen_csv = pd.DataFrame([(m, c) for m in chosen for c in seen_sets[m]], columns=["modality", "class_name"])
    catalog.write_table(class_table, catalog.stage_output(workspace, "split", key, ".classes.parquet"), catalog.CLASS_SPLIT)
    catalog.write_text(seen_csv.to_csv(index=False), catalog.stage_output(workspace, "split", key, ".seen.csv"))
    catalog.write_table(pa.Table.from_pandas(samples.drop(columns="shows"), preserve_index=False), catalog.stage_output(workspace, "split", key, ".samples.parquet"), catalog.SAMPLE_SPLIT)
    log.info("seen sets: %s; %s; %d train / %d test samples", why,
             ", ".join(f"{r}={m} ({len(seen_sets[m])} classes)" for r, m in zip(roles, chosen)),
             int((samples["split"] == "train").sum()), int((samples["split"] == "test").sum()))
