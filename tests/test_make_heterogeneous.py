"""data/examples/make_heterogeneous.py: paired views rebuilt as unpaired, overlapping training data."""

from __future__ import annotations

import pandas as pd

from data.examples.make_heterogeneous import make_heterogeneous, owners

CLASSES = [f"c{i}" for i in range(10)]
VIEWS = ["a", "b", "c"]


def _paired(per_class: int = 10) -> pd.DataFrame:
    return pd.DataFrame([{"sample_id": f"{c}-{i}", "class_name": c, "modality": m, "vector": [float(i)]}
                         for c in CLASSES for i in range(per_class) for m in VIEWS])


def test_every_class_has_one_owner_and_a_share_has_two() -> None:
    who = owners(CLASSES, VIEWS, shared=0.3, seed=0)
    assert sorted(len(v) for v in who.values()) == [1] * 7 + [2] * 3
    assert all(len(set(v)) == len(v) for v in who.values())
    firsts = [v[0] for v in who.values()]
    assert sorted(firsts.count(m) for m in VIEWS) == [3, 3, 4]  # round robin


def test_training_rows_are_unpaired_and_only_through_owners() -> None:
    rows = make_heterogeneous(_paired(), CLASSES, VIEWS, shared=0.3, test=0.3, seed=0)
    who = owners(CLASSES, VIEWS, shared=0.3, seed=0)
    train, test = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
    assert train.groupby("sample_id")["modality"].nunique().max() == 1  # one modality per training sample
    assert all(m in who[c] for c, m in zip(train["class_name"], train["modality"]))
    assert (test.groupby("sample_id")["modality"].nunique() == 3).all()  # test samples keep every view
    assert test.groupby("class_name")["sample_id"].nunique().eq(3).all()  # 30% of 10 items per class
    two = [c for c, v in who.items() if len(v) == 2][0]
    assert set(train.loc[train["class_name"] == two, "modality"]) == set(who[two])  # items dealt to both owners
