"""Prediction: `cscf predict`'s streaming (tasks.serving.predict.predict_file) against the bare forward.

Throughput: both score the same samples (both modalities, a third with one only) with
the same model folder; the bare forward gets its tensors in memory, batch by batch,
before the clock starts, so the ratio prices reading Parquet, checking rows, building
tensors, the softmax/top-k and writing Parquet. Peak memory: a child process predicts a
1-million-sample file (generated in a temporary folder, streamed) and reports its
maximum resident set size, next to the same child's size once the model is loaded and
to the peak on a quarter of the input: bounded streaming means the peak does not grow
with the input. The memory run
uses a one-linear-mapper model so that it takes a minute on 2 cores: memory depends on
the batch and the vectors, not on the mappers' width.

    python -m benchmarks --only predict [--full]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cscf_model import create_model
from tasks.store.model_file import load_model, save_model
from tasks.serving.predict import BATCH_ROWS, predict_file

DIMS = (64, 48)
CLASSES = 32
SAMPLES = {"default": 20_000, "full": 100_000}
MEMORY_SAMPLES = 1_000_000
DMSS = {"router": "dmss", "fusion": "csmf", "unimodal": "stacking"}


def make_model_folder(folder: Path, **overrides: object) -> Path:
    """An untrained CSCF saved as `cscf run` saves one (its prediction cost does not depend on training)."""
    torch.manual_seed(0)
    seen = torch.zeros(2, CLASSES, dtype=torch.bool)
    seen[0, : CLASSES // 2] = True
    seen[1, CLASSES // 2 :] = True
    # the paper's DMSS + CSMF: a learned router (router="gate") exists only after fitting on training data
    model = create_model("CSCF", list(DIMS), torch.randn(CLASSES, 384), seen, **DMSS, **overrides)
    checkpoint = {"model": model.state_dict(), "config": model.config.to_dict(), "input_dims": list(DIMS),
                  "modalities": ["a", "b"], "class_names": [f"class-{i}" for i in range(CLASSES)]}
    return save_model(folder, checkpoint, "minilm", {"mode": "offline", "n_descriptions": 1, "offline_template": []})


def write_input(path: Path, samples: int, chunk: int = 100_000) -> Path:
    """Long-form rows of `samples` samples, written chunk by chunk: a third show modality a only."""
    rng = np.random.default_rng(0)
    schema = pa.schema([("sample_id", pa.string()), ("modality", pa.string()), ("vector", pa.list_(pa.float32()))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, samples, chunk):
            ids = np.arange(start, min(start + chunk, samples))
            both = ids % 3 != 0
            rows_id, rows_mod, vectors = [], [], []
            for modality, dim, mask in (("a", DIMS[0], np.ones(len(ids), bool)), ("b", DIMS[1], both)):
                n = int(mask.sum())
                rows_id.append(np.char.add("s", ids[mask].astype(str)))
                rows_mod.append(np.full(n, modality))
                flat = rng.standard_normal(n * dim, dtype=np.float32)
                vectors.append(pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * dim), pa.array(flat)))
            order = np.argsort(np.concatenate(rows_id), kind="stable")  # rows of a sample adjacent
            table = pa.table({"sample_id": pa.array(np.concatenate(rows_id)), "modality": pa.array(np.concatenate(rows_mod)),
                              "vector": pa.concat_arrays(vectors)}).take(pa.array(order))
            writer.write_table(table)
    return path


def _bare_batches(path: Path) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """The same samples as tensors in BATCH_ROWS-sized batches of samples, built before timing."""
    df = pq.read_table(path).to_pandas()
    ids = df["sample_id"].unique()
    pos = {s: i for i, s in enumerate(ids)}
    feats = [torch.zeros(len(ids), d) for d in DIMS]
    present = torch.zeros(len(ids), 2, dtype=torch.bool)
    for m, name in enumerate("ab"):
        rows = df[df["modality"] == name]
        where = torch.tensor(rows["sample_id"].map(pos).to_numpy())
        feats[m][where] = torch.tensor(np.stack(rows["vector"].to_numpy()))
        present[where, m] = True
    step = BATCH_ROWS // 2  # a batch of BATCH_ROWS rows holds about this many samples
    return [([x[i : i + step] for x in feats], present[i : i + step]) for i in range(0, len(ids), step)]


def _throughput(folder: Path, samples: int) -> dict[str, float]:
    trained = load_model(make_model_folder(folder / "model"))
    data = write_input(folder / "input.parquet", samples)
    batches = _bare_batches(data)
    with torch.no_grad():
        began = time.perf_counter()
        for feats, present in batches:
            trained.model(feats, present)
        bare = time.perf_counter() - began
    began = time.perf_counter()
    tally = predict_file(trained, data, folder / "out.parquet")
    streamed = time.perf_counter() - began
    assert tally.samples == samples
    return {"predict_samples_per_s": samples / streamed, "predict_bare_samples_per_s": samples / bare,
            "predict_ratio": bare / streamed}


_CHILD = """
import json, resource, sys
from pathlib import Path
from tasks.store.model_file import load_model
from tasks.serving.predict import predict_file
trained = load_model(Path(sys.argv[1]))
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tally = predict_file(trained, Path(sys.argv[2]), Path(sys.argv[3]))
print(json.dumps({"loaded_kb": loaded, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "samples": tally.samples}))
"""


def _peak_memory(folder: Path, samples: int) -> dict[str, float]:
    """Peak and after-load resident memory (MiB) of a child predicting `samples` samples, and its time."""
    model = make_model_folder(folder / "small-model", mappers=({"kind": "linear"},))
    data = write_input(folder / f"input-{samples}.parquet", samples)
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(data), str(folder / "memory-out.parquet")],
                         check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["samples"] == samples
    return {"input_mb": data.stat().st_size / 2**20, "peak_rss_mb": figures["peak_kb"] / 1024,
            "loaded_rss_mb": figures["loaded_kb"] / 1024, "s": seconds}


def run(full: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cscf-bench-predict-") as tmp:
        figures = _throughput(Path(tmp), SAMPLES["full" if full else "default"])
        million = _peak_memory(Path(tmp), MEMORY_SAMPLES)
        quarter = _peak_memory(Path(tmp), MEMORY_SAMPLES // 4)
    figures |= {f"predict_1m_{k}": v for k, v in million.items()}
    figures["predict_250k_peak_rss_mb"] = quarter["peak_rss_mb"]
    return figures


if __name__ == "__main__":
    print(run("--full" in sys.argv))
    print("max rss of this process (MiB):", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
