"""The development harness (benchmarks/development.py): the validation/test carving and one
end-to-end run on tiny heterogeneous data, the way the defaults of issue 21 were chosen."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks.development import carve, main, part, prepare
from benchmarks.gate_bound import main as gate_bound_main
from tiny_data import HETERO_CLASSES, hetero_rows, write_dataset


def test_carve_halves_every_class_disjointly_and_reproducibly(tmp_path: Path) -> None:
    folder = tmp_path / "hetero"
    write_dataset(folder, hetero_rows(), HETERO_CLASSES)
    data = prepare(folder, tmp_path / "ws", seed=0)
    halves = carve(data.test, seed=0)
    val, test = halves["validation"], halves["test"]
    assert not set(val.tolist()) & set(test.tolist())
    assert sorted(val.tolist() + test.tolist()) == list(range(len(data.test.labels)))
    for c in data.test.labels.unique():
        n = int((data.test.labels == c).sum())
        assert int((data.test.labels[val] == c).sum()) == n // 2  # a half of every class
    assert torch.equal(carve(data.test, seed=0)["validation"], val)
    assert not torch.equal(carve(data.test, seed=1)["validation"], val)
    cut = part(data, val)
    assert cut.test.sample_ids == [data.test.sample_ids[i] for i in val.tolist()]
    assert torch.equal(cut.test.features[1], data.test.features[1][val])


def test_harness_scores_every_candidate_on_the_split_asked_for(tmp_path: Path) -> None:
    folder = tmp_path / "hetero-s0"
    write_dataset(folder, hetero_rows(), HETERO_CLASSES)
    args = ["--data", str(tmp_path / "hetero-s{seed}"), "--seeds", "0", "--epochs", "2",
            "--workspace", str(tmp_path / "ws"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert main([*args, "--split", "test"]) == 0  # the trained model is reused from the workspace
    val = json.loads((tmp_path / "out" / "validation.json").read_text())["hetero-s0"]
    test = json.loads((tmp_path / "out" / "test.json").read_text())["hetero-s0"]
    assert {"CSCF", "CSCF before (prior, mean)", "B+O"} <= set(val) and set(test) == set(val) | {"CSCF --validation"}
    for got in (val["CSCF"], test["CSCF"]):
        assert 0 <= got["scores"]["all"] <= 100 and got["ceiling"]["all"] is not None
    assert val["CSCF"]["scores"] != test["CSCF"]["scores"]  # two halves, two sets of samples
    nested = json.loads((tmp_path / "out" / "validation-file.json").read_text())["hetero-s0"]
    assert set(nested) == {"CSCF", "--validation, gates as trained", "--validation"}
    assert all(0 <= v <= 100 for v in nested.values())


def test_gate_bound_scores_the_validation_half_as_the_harness_does(tmp_path: Path) -> None:
    folder = tmp_path / "hetero-s0"
    write_dataset(folder, hetero_rows(), HETERO_CLASSES)
    common = ["--data", str(tmp_path / "hetero-s{seed}"), "--seeds", "0", "--epochs", "2",
              "--workspace", str(tmp_path / "ws")]
    assert main([*common, "--out", str(tmp_path / "out")]) == 0
    assert gate_bound_main([*common, "--json", str(tmp_path / "bound.json")]) == 0
    bound = json.loads((tmp_path / "bound.json").read_text())["hetero-s0"]
    harness = json.loads((tmp_path / "out" / "validation.json").read_text())["hetero-s0"]["CSCF"]
    # the same trained model on the same samples: CSCF and its ceiling as the harness scored them
    assert bound["CSCF"] == harness["scores"]["all"] and bound["routing ceiling"] == harness["ceiling"]["all"]
    modalities = {k for k in bound if k.startswith("oracle gate: ")}
    assert modalities == {f"oracle gate: {m}" for m in ("audio", "text", "video")} and {"oracle gates: every modality", "Platt-scaled on validation samples",
                                     "refitted on validation samples"} <= set(bound)
    assert all(0 <= v <= 100 for v in bound.values())
