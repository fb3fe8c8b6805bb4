"""Stage outputs -> tensors for training and evaluation, under the MMHCL protocol.

Training keeps, for every modality, only its train-split rows of the classes it saw
(CONTRACTS section 3): with two disjoint modalities, A_s classes through A and B_s
classes through B. The test set keeps every test sample with whatever of the
modalities it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    """Join features, split and class embeddings into tensors."""
    classes = catalog.read_table(catalog.stage_output(workspace, "split", split_key, ".classes.parquet")).to_pandas()
    samples = catalog.read_table(catalog.stage_output(workspace, "split", split_key, ".samples.parquet")).to_pandas()
    emb = catalog.read_table(catalog.stage_output(workspace, "class_embeddings", embeddings_key)).to_pandas()
    feats = catalog.read_table(catalog.stage_output(workspace, "features", features_key)).to_pandas()

    grid = classes.pivot(index="class_name", columns="role", values="seen")
    class_names = list(dict.fromkeys(classes["class_name"]))
    modalities = classes.drop_duplicates("role").sort_values("role")["modality"].tolist()
    index = {c: i for i, c in enumerate(class_names)}
    emb = emb.set_index("class_name").loc[class_names]
    class_emb = torch.tensor(np.stack(emb["vector"].to_numpy()), dtype=torch.float32)
    seen = torch.tensor(grid.loc[class_names].to_numpy(dtype=bool).T)  # (M, N), roles in order
    split = samples.set_index("sample_id")["split"]
    feats = feats[feats["modality"].isin(modalities)]
    feats = feats.assign(split=feats["sample_id"].map(split))

    train_x, train_y = [], []
    for m, modality in enumerate(modalities):
        rows = feats[(feats["modality"] == modality) & (feats["split"] == "train")]
        rows = rows[seen[m, torch.tensor(rows["class_name"].map(index).to_numpy(), dtype=torch.long)].numpy()]
        train_x.append(torch.tensor(np.stack(rows["vector"].to_numpy()), dtype=torch.float32))
        train_y.append(torch.tensor(rows["class_name"].map(index).to_numpy(), dtype=torch.long))

    test_ids = sorted(samples.loc[samples["split"] == "test", "sample_id"])
    pos = {s: i for i, s in enumerate(test_ids)}
    test_rows = feats[feats["split"] == "test"]
    labels = torch.tensor([index[c] for c in samples.set_index("sample_id").loc[test_ids, "class_name"]], dtype=torch.long)
    test_x, available = [], torch.zeros(len(test_ids), len(modalities), dtype=torch.bool)
    for m, modality in enumerate(modalities):
        rows = test_rows[test_rows["modality"] == modality]
        x = torch.zeros(len(test_ids), train_x[m].shape[1])
        where = torch.tensor(rows["sample_id"].map(pos).to_numpy(), dtype=torch.long)
        if len(rows):
            x[where] = torch.tensor(np.stack(rows["vector"].to_numpy()), dtype=torch.float32)
        available[where, m] = True
        test_x.append(x)
    seen_by = seen[:, labels].T
    return MMHCLData(class_names, modalities, class_emb, seen, TrainData(train_x, train_y),
                     TestSet(test_ids, labels, seen_by, test_x, available))
