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
import pyarrow.parquet as pq
import torch

from cscf_model import TrainData

from tasks.store import catalog


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


def load_mmhcl(
    workspace: Path, features_key: str, split_key: str, embeddings_key: str, parts: Sequence[str] = ("train", "test"),
    train_dtype: torch.dtype = torch.float32,
) -> MMHCLData:
    """Join features, split and class embeddings into tensors: the train and/or test `parts`
    (the other is left empty: training never reads the test set, evaluation never the
    training set). The training vectors are stored as `train_dtype`: bf16 halves what a
    bf16 training holds (TrainData), and its math stays fp32.

    Columnar (pyarrow compute, NumPy) with no per-row Python, and the vectors streamed a
    row group at a time into the tensors: at VGGSound's size (400k feature rows, 1.2 GB of
    vectors) a per-row join took most of the stage, and holding the whole features table
    next to the tensors doubled the stage's memory."""
    classes = catalog.read_table(catalog.stage_output(workspace, "split", split_key, ".classes.parquet")).to_pandas()
    samples = catalog.read_table(catalog.stage_output(workspace, "split", split_key, ".samples.parquet"))
    emb = catalog.read_table(catalog.stage_output(workspace, "class_embeddings", embeddings_key)).to_pandas()
    features = catalog.stage_output(workspace, "features", features_key)
    meta = pq.read_table(features, columns=["sample_id", "class_name", "modality"])

    grid = classes.pivot(index="class_name", columns="role", values="seen")
    class_names = list(dict.fromkeys(classes["class_name"]))
    modalities = classes.drop_duplicates("role").sort_values("role")["modality"].tolist()
    emb = emb.set_index("class_name").loc[class_names]
    class_emb = torch.tensor(np.stack(emb["vector"].to_numpy()), dtype=torch.float32)
    seen = torch.tensor(grid.loc[class_names].to_numpy(dtype=bool).T)  # (M, N), roles in order
    class_of = _positions(meta["class_name"], class_names)
    modality_of = _positions(meta["modality"], modalities)
    sample_split = np.asarray(samples["split"].to_pylist() + [None], dtype=object)
    split = sample_split[_positions(meta["sample_id"], samples["sample_id"])]  # -1 (not in the split) -> None

    # Where each feature row goes: its row in its modality's training matrix, and its row
    # in the test matrices (-1: nowhere, or a part not asked for).
    train_dest, train_sizes = np.full(len(meta), -1, dtype=np.int64), [0] * len(modalities)
    for m in range(len(modalities) if "train" in parts else 0):
        keep = (modality_of == m) & (split == "train") & (class_of >= 0)
        keep[keep] = seen[m, torch.from_numpy(class_of[keep])].numpy()
        train_sizes[m] = int(keep.sum())
        train_dest[keep] = np.arange(train_sizes[m])
    test_ids = np.sort(np.asarray(samples["sample_id"].filter(pc.equal(samples["split"], "test")).to_pylist(), dtype=object))
    test_ids = test_ids if "test" in parts else test_ids[:0]
    test_pos = _positions(meta["sample_id"], test_ids)
    test_dest = np.where((split == "test") & (test_pos >= 0), test_pos, -1)
    train_x, test_x, available = _stream_vectors(features, modality_of, len(modalities),
                                                 (train_dest, train_sizes, train_dtype), (test_dest, len(test_ids)))
    train_y = [torch.from_numpy(class_of[(modality_of == m) & (train_dest >= 0)]) for m in range(len(modalities))]

    test_class = samples["class_name"].take(_positions(pa.array(test_ids, pa.string()), samples["sample_id"]))
    labels = torch.from_numpy(_positions(test_class, class_names))
    seen_by = seen[:, labels].T
    return MMHCLData(class_names, modalities, class_emb, seen, TrainData(train_x, train_y),
                     TestSet(test_ids.tolist(), labels, seen_by, test_x, available))


def _stream_vectors(
    path: Path, modality_of: np.ndarray, n_modalities: int, train: tuple[np.ndarray, list[int], torch.dtype],
    test: tuple[np.ndarray, int],
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Training matrices (n_m, d_m) per modality, test matrices (n_test, d_m) (zeros where a
    sample lacks the modality) and the test set's availability (n_test, M), filled from the
    features file one row group at a time. train/test: each feature row's destination
    row (-1: not used) and the number of rows; train also the dtype its matrices are kept in."""
    (train_dest, train_sizes, train_dtype), (test_dest, n_test) = train, test
    train_x: list[torch.Tensor | None] = [None] * n_modalities
    test_x: list[torch.Tensor | None] = [None] * n_modalities
    available = torch.zeros(n_test, n_modalities, dtype=torch.bool)
    start, parquet = 0, pq.ParquetFile(path)
    # Row group by row group, released after each: ParquetFile.iter_batches held 1.6 GB while
    # streaming 1x VGGSound's 1.2 GB of vectors, this 0.3 GB.
    for group in range(parquet.num_row_groups):
        vectors = parquet.read_row_group(group, columns=["vector"], use_threads=False).column(0).combine_chunks()
        rows = slice(start, start + len(vectors))
        start += len(vectors)
        for m in np.unique(modality_of[rows]):
            if m < 0:
                continue
            mine = modality_of[rows] == m
            for dest, out, size, dtype in ((train_dest[rows], train_x, train_sizes[m], train_dtype),
                                           (test_dest[rows], test_x, n_test, torch.float32)):
                want = mine & (dest >= 0)
                if not want.any():
                    continue
                x = _matrix(vectors.filter(pa.array(want)))
                if out[m] is None:
                    out[m] = torch.zeros(size, x.shape[1], dtype=dtype)
                out[m][torch.from_numpy(dest[want])] = x.to(dtype)
            available[torch.from_numpy(test_dest[rows][mine & (test_dest[rows] >= 0)]), int(m)] = True
        del vectors
        catalog.release_unused_memory()
    dims = [next((x.shape[1] for x in (a, b) if x is not None), None) for a, b in zip(train_x, test_x)]
    if None in dims:
        raise ValueError(f"{path}: modality {dims.index(None)} has no rows to learn its vector length from")
    train_x = [torch.zeros(0, d, dtype=train_dtype) if x is None else x for x, d in zip(train_x, dims)]
    test_x = [torch.zeros(n_test, d) if x is None else x for x, d in zip(test_x, dims)]
    return train_x, test_x, available


def _positions(values: pa.ChunkedArray | pa.Array, among: Sequence[str] | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    """Index of each value in `among` (int64), -1 where it is not there."""
    found = pc.index_in(values, value_set=pa.array(among, pa.string()) if not isinstance(among, pa.ChunkedArray)
                        else among.combine_chunks())
    return found.fill_null(-1).to_numpy().astype(np.int64)


def _matrix(vectors: pa.Array) -> torch.Tensor:
    """Equal-length float lists as an (n, d) float32 tensor, from the flat values buffer."""
    values = vectors.flatten().to_numpy()
    return torch.from_numpy(values.reshape(len(vectors), -1).astype(np.float32, copy=True))
