"""load_mmhcl on hand-made stage outputs: the MMHCL protocol's tensors, streamed across row groups."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch

from tasks.store import catalog
from tasks.training.mmhcl_data import load_mmhcl

# Classes c0, c1, c2; modality a (3-d) saw c0 and c1, modality b (2-d) saw c2.
SEEN = {("c0", "a"): True, ("c1", "a"): True, ("c2", "a"): False,
        ("c0", "b"): False, ("c1", "b"): False, ("c2", "b"): True}
# (sample, class, split, vectors per modality); s4 has no b, s5 has no a.
SAMPLES = [
    ("s0", "c0", "train", {"a": [1, 1, 1], "b": [9, 9]}),
    ("s1", "c2", "train", {"a": [2, 2, 2], "b": [3, 3]}),
    ("s2", "c1", "train", {"a": [4, 4, 4], "b": [8, 8]}),
    ("s3", "c0", "test", {"a": [5, 5, 5], "b": [6, 6]}),
    ("s4", "c2", "test", {"a": [7, 7, 7]}),
    ("s5", "c1", "test", {"b": [1, 2]}),
]


def _workspace(root: Path) -> Path:
    features = [(sid, cls, m, [float(v) for v in vec], split)
                for sid, cls, split, vecs in SAMPLES for m, vec in vecs.items()]
    columns = list(zip(*features))
    catalog.write_table(pa.table(dict(zip(catalog.FEATURES.names, columns)), schema=catalog.FEATURES),
                        catalog.stage_output(root, "features", "f"), catalog.FEATURES)
    classes = [(c, m, "A" if m == "a" else "B", seen) for (c, m), seen in SEEN.items()]
    catalog.write_table(pa.table(dict(zip(catalog.CLASS_SPLIT.names, zip(*classes)))),
                        catalog.stage_output(root, "split", "s", ".classes.parquet"), catalog.CLASS_SPLIT)
    samples = [(sid, cls, split) for sid, cls, split, _ in SAMPLES]
    catalog.write_table(pa.table(dict(zip(catalog.SAMPLE_SPLIT.names, zip(*samples)))),
                        catalog.stage_output(root, "split", "s", ".samples.parquet"), catalog.SAMPLE_SPLIT)
    emb = pa.table({"class_name": ["c0", "c1", "c2"], "vector": catalog.vector_column(torch.eye(3).numpy()),
                    "encoder": ["x"] * 3})
    catalog.write_table(emb, catalog.stage_output(root, "class_embeddings", "e"), catalog.CLASS_EMBEDDINGS)
    return root


def test_tensors_follow_the_protocol_across_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "ROW_GROUP_ROWS", 2)  # 11 feature rows: six row groups, streamed two rows at a time
    data = load_mmhcl(_workspace(tmp_path), "f", "s", "e")
    assert data.modalities == ["a", "b"] and data.class_names == ["c0", "c1", "c2"]
    # training: a keeps its rows of c0 and c1 (s0, s2), b its row of c2 (s1), in file order
    assert data.train.features[0].tolist() == [[1, 1, 1], [4, 4, 4]] and data.train.labels[0].tolist() == [0, 1]
    assert data.train.features[1].tolist() == [[3, 3]] and data.train.labels[1].tolist() == [2]
    # test: every test sample, zeros where a modality is absent
    assert data.test.sample_ids == ["s3", "s4", "s5"] and data.test.labels.tolist() == [0, 2, 1]
    assert data.test.features[0].tolist() == [[5, 5, 5], [7, 7, 7], [0, 0, 0]]
    assert data.test.features[1].tolist() == [[6, 6], [0, 0], [1, 2]]
    assert data.test.available.tolist() == [[True, True], [True, False], [False, True]]
    assert data.test.seen_by.tolist() == [[True, False], [False, True], [True, False]]


def test_a_stage_loads_only_the_split_it_reads(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    both = load_mmhcl(ws, "f", "s", "e")
    train = load_mmhcl(ws, "f", "s", "e", parts=("train",))
    test = load_mmhcl(ws, "f", "s", "e", parts=("test",))
    assert all(torch.equal(x, y) for x, y in zip(train.train.features, both.train.features))
    assert len(train.test.labels) == 0 and [x.shape for x in train.test.features] == [(0, 3), (0, 2)]
    assert all(torch.equal(x, y) for x, y in zip(test.test.features, both.test.features))
    assert [x.shape for x in test.train.features] == [(0, 3), (0, 2)] and test.input_dims == [3, 2]


def test_training_vectors_can_be_held_in_bf16(tmp_path: Path) -> None:
    """A bf16 training keeps its vectors in bf16 (half the memory at AudioSet's size); the
    test set, which evaluation scores, stays fp32."""
    ws = _workspace(tmp_path)
    fp32 = load_mmhcl(ws, "f", "s", "e")
    bf16 = load_mmhcl(ws, "f", "s", "e", train_dtype=torch.bfloat16)
    assert [x.dtype for x in bf16.train.features] == [torch.bfloat16] * 2
    assert all(torch.equal(x.float(), y) for x, y in zip(bf16.train.features, fp32.train.features))  # small ints: exact
    assert [x.dtype for x in bf16.test.features] == [torch.float32] * 2
