"""Turn a paired multi-view dataset into data as MMHCL users hold it.

Teams own one collection per modality, each labelled with its own class list: the
lists overlap in places, no training sample is recorded by two of them, and a new
sample may come with several modalities. Starting from real paired views (every item
seen through every view, as make_pydocs.py writes them), this script keeps the real
vectors and rebuilds that situation:

- every class is owned by one modality (a seeded round robin), and a share `shared` of
  the classes by a second one too, so the seen sets overlap;
- per class, a share `test` of the items becomes test samples that keep every view;
- the other items are dealt out among the class's owners, and each keeps only its
  owner's view: training rows are unpaired.

Writes OUT_DIR/classes.csv (copied) and OUT_DIR/features.parquet with a `split`
column, ready for `cscf run --features ... --seen data` (which `auto` picks).

Usage: .venv/bin/python data/examples/make_heterogeneous.py IN_DIR OUT_DIR [--modalities a,b,c] [--shared F] [--seed N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tasks.store import catalog  # noqa: E402
from tasks.store.inputs import read_classes  # noqa: E402


def owners(class_names: list[str], modalities: list[str], shared: float, seed: int) -> dict[str, list[str]]:
    """Which modalities saw each class: one each by a seeded round robin, a second for a share `shared`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(class_names))
    out = {class_names[i]: [modalities[r % len(modalities)]] for r, i in enumerate(order)}
    for i in order[: int(round(shared * len(class_names)))]:
        first = out[class_names[i]][0]
        others = [m for m in modalities if m != first]
        out[class_names[i]].append(others[int(rng.integers(len(others)))])
    return out


def make_heterogeneous(
    features: pd.DataFrame, class_names: list[str], modalities: list[str], shared: float, test: float, seed: int
) -> pd.DataFrame:
    """Long-form rows with a split column: paired test samples, unpaired training rows of owners only."""
    features = features[features["modality"].isin(modalities)]
    who = owners(class_names, modalities, shared, seed)
    rng = np.random.default_rng(seed + 1)
    keep = []
    for class_name, rows in features.groupby("class_name", sort=True):
        ids = np.array(sorted(rows["sample_id"].unique()))
        ids = ids[rng.permutation(len(ids))]
        n_test = int(round(test * len(ids)))
        role = {sid: ("test", None) for sid in ids[:n_test]}
        for k, sid in enumerate(ids[n_test:]):
            role[sid] = ("train", who[class_name][k % len(who[class_name])])
        split = rows["sample_id"].map(lambda s: role[s][0])
        mine = rows["sample_id"].map(lambda s: role[s][1]) == rows["modality"]
        keep.append(rows.assign(split=split)[(split == "test") | mine])
    return pd.concat(keep).sort_values(["sample_id", "modality"]).reset_index(drop=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="make_heterogeneous.py", description=__doc__.splitlines()[0])
    p.add_argument("in_dir", type=Path, help="folder with classes.csv and features.parquet (paired views)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--modalities", help="views to keep, comma-separated (default: all, sorted)")
    p.add_argument("--shared", type=float, default=0.3, help="share of the classes seen by two modalities")
    p.add_argument("--test", type=float, default=0.3, help="share of each class's items kept as paired test samples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    table = catalog.read_table(args.in_dir / "features.parquet").to_pandas()
    modalities = args.modalities.split(",") if args.modalities else sorted(table["modality"].unique())
    class_names = read_classes(args.in_dir / "classes.csv")["class_name"].tolist()
    rows = make_heterogeneous(table, class_names, modalities, args.shared, args.test, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    catalog.write_table(pa.Table.from_pandas(rows, preserve_index=False), args.out_dir / "features.parquet", catalog.FEATURES)
    shutil.copyfile(args.in_dir / "classes.csv", args.out_dir / "classes.csv")
    train = rows[rows["split"] == "train"]
    print(f"wrote {args.out_dir}/features.parquet: {rows['sample_id'].nunique()} samples, "
          f"{train['sample_id'].nunique()} training rows (one modality each), "
          f"{rows.loc[rows['split'] == 'test', 'sample_id'].nunique()} paired test samples")
    for m in modalities:
        print(f"  {m}: trained on {train.loc[train['modality'] == m, 'class_name'].nunique()} of {len(class_names)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
