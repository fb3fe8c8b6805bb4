"""Stage outputs -> tensors for training and evaluation, under the MMHCL protocol.

Training keeps, for every modality, only its train-split rows of the classes it saw
(CONTRACTS section 3): with two disjoint modalities, A_s classes through A and B_s
classes through B. The test set keeps every test sample with whatever of the
modalities it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from cscf_model import TrainData

from . import catalog


@dataclass
class TestSet:
    sample_ids: list[str]
    labels: torch.Tensor  # (n,) class index
    seen_by: torch.Tensor  # (n, M) bool: which modalities saw the sample's class in training
    features: list[torch.Tensor]  # per modality (n, d_m), zeros where absent
    available: torch.Tensor  # (n, M) bool: which modalities the sample has


@dataclass
class MMHCLData:
    class_names: list[str]
    modalities: list[str]  # [A, B, ...]
    class_emb: torch.Tensor  # (N, d_s)
    seen: torch.Tensor  # (M, N) bool
    train: TrainData
    test: TestSet

    @property
    def input_dims(self) -> list[int]:
        return [x.shape[1] for x in self.train.features]


def load_mmhcl(workspace: Path, features_key: str, split_key: str, embeddings_key: str) -> MMHCLData:
    """Join features, split and class embeddings into tensors.

    Columnar (pyarrow compute, NumPy) with no per-row Python: at VGGSound's size (400k
    feature rows) a per-row join and `np.stack` of row lists took most of the stage."""
    classes = catalog.read_table(catalog.stage_output(workspace, "split", split_key, ".classes.parquet")).to_pandas()
    samples = catalog.read_table(catalog.stage_output(workspace, "split", split_key, ".samples.parquet"))
    emb = catalog.read_table(catalog.stage_output(workspace, "class_embeddings", embeddings_key)).to_pandas()
    feats = catalog.read_table(catalog.stage_output(workspace, "features", features_key))

    grid = classes.pivot(index="class_name", columns="role", values="seen")
    class_names = list(dict.fromkeys(classes["class_name"]))
    modalities = classes.drop_duplicates("role").sort_values("role")["modality"].tolist()
    emb = emb.set_index("class_name").loc[class_names]
    class_emb = torch.tensor(np.stack(emb["vector"].to_numpy()), dtype=torch.float32)
    seen = torch.tensor(grid.loc[class_names].to_numpy(dtype=bool).T)  # (M, N), roles in order
    class_of = _positions(feats["class_name"], class_names)
    modality_of = _positions(feats["modality"], modalities)
    sample_split = np.asarray(samples["split"].to_pylist() + [None], dtype=object)
    split = sample_split[_positions(feats["sample_id"], samples["sample_id"])]  # -1 (not in the split) -> None

    train_x, train_y = [], []
    for m in range(len(modalities)):
        keep = (modality_of == m) & (split == "train") & (class_of >= 0)
        keep[keep] = seen[m, torch.from_numpy(class_of[keep])].numpy()
        train_x.append(_matrix(feats["vector"].filter(keep)))
        train_y.append(torch.from_numpy(class_of[keep]))

    test_ids = np.sort(np.asarray(samples["sample_id"].filter(pc.equal(samples["split"], "test")).to_pylist(), dtype=object))
    test_class = samples["class_name"].take(_positions(pa.array(test_ids, pa.string()), samples["sample_id"]))
    labels = torch.from_numpy(_positions(test_class, class_names))
    test_pos = _positions(feats["sample_id"], test_ids)
    test_x, available = [], torch.zeros(len(test_ids), len(modalities), dtype=torch.bool)
    for m in range(len(modalities)):
        keep = (modality_of == m) & (split == "test") & (test_pos >= 0)
        x = torch.zeros(len(test_ids), train_x[m].shape[1])
        where = torch.from_numpy(test_pos[keep])
        if len(where):
            x[where] = _matrix(feats["vector"].filter(keep))
        available[where, m] = True
        test_x.append(x)
    seen_by = seen[:, labels].T
    return MMHCLData(class_names, modalities, class_emb, seen, TrainData(train_x, train_y),
                     TestSet(test_ids.tolist(), labels, seen_by, test_x, available))


def _positions(values: pa.ChunkedArray | pa.Array, among: Sequence[str] | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    """Index of each value in `among` (int64), -1 where it is not there."""
    found = pc.index_in(values, value_set=pa.array(among, pa.string()) if not isinstance(among, pa.ChunkedArray)
                        else among.combine_chunks())
    return found.fill_null(-1).to_numpy().astype(np.int64)


def _matrix(vectors: pa.ChunkedArray) -> torch.Tensor:
    """Equal-length float lists as an (n, d) float32 tensor, from the flat values buffer."""
    flat = vectors.combine_chunks()
    values = flat.flatten().to_numpy()
    return torch.from_numpy(values.reshape(len(flat), -1).astype(np.float32, copy=True))
