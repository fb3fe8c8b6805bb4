"""Prediction: `cscf predict`'s streaming (tasks.serving.predict.predict_file) against the bare forward.

Throughput: both score the same samples (both modalities, a third with one only) with
the same model folder; the bare forward gets its tensors in memory, batch by batch,
before the clock starts, so the ratio prices reading Parquet, checking rows, building
tensors, the softmax/top-k and writing Parquet.

Peak memory: a child process predicts a 1,000,000-row file (generated in a temporary
folder) written as ONE row group, as pyarrow's writer makes them, and another child the
same rows in 65,536-row groups; each reports its own high-water mark (VmHWM). Not
ru_maxrss: a child's starts at its parent's resident size at exec (Linux), so it
reported the benchmark process's peak, grown by the benchmarks run before. Bounded
streaming means the one-group peak is about the small-groups one
(predict_peak_rss_one_group_ratio, target <= 1.5; reading whole row groups gave 1.56).
The memory run uses a one-linear-mapper model: memory depends on the batch and the
vectors, not on the mappers' width.

    python -m benchmarks --only predict [--full]
"""

from __future__ import annotations

import json
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
MEMORY_ROWS = 1_000_000  # rows of the memory run's input: 600,000 samples, a third unimodal
SMALL_GROUP_ROWS = 65_536
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


def write_input(path: Path, samples: int, row_group_rows: int = SMALL_GROUP_ROWS) -> Path:
    """Long-form rows of `samples` samples (a third show modality a only), rows of a sample
    adjacent, in row groups of `row_group_rows` rows."""
    rng = np.random.default_rng(0)
    ids = np.arange(samples)
    rows_id, rows_mod, vectors = [], [], []
    for modality, dim, mask in (("a", DIMS[0], np.ones(samples, bool)), ("b", DIMS[1], ids % 3 != 0)):
        n = int(mask.sum())
        rows_id.append(np.char.add("s", ids[mask].astype(str)))
        rows_mod.append(np.full(n, modality))
        flat = rng.standard_normal(n * dim, dtype=np.float32)
        vectors.append(pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * dim), pa.array(flat)))
    order = np.argsort(np.concatenate(rows_id), kind="stable")
    table = pa.table({"sample_id": pa.array(np.concatenate(rows_id)), "modality": pa.array(np.concatenate(rows_mod)),
                      "vector": pa.concat_arrays(vectors)}).take(pa.array(order))
    pq.write_table(table, path, row_group_size=row_group_rows)
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
import json, sys
from pathlib import Path
from tasks.store.model_file import load_model
from tasks.serving.predict import predict_file

def high_water_kb():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])

trained = load_model(Path(sys.argv[1]))
loaded = high_water_kb()
tally = predict_file(trained, Path(sys.argv[2]), Path(sys.argv[3]))
print(json.dumps({"loaded_kb": loaded, "peak_kb": high_water_kb(), "samples": tally.samples}))
"""


def peak_memory(model: Path, data: Path, out: Path, samples: int) -> dict[str, float]:
    """Resident high-water mark (MiB) of a fresh process predicting `data` (`samples` samples)
    with `model`, once the model is loaded and at the end, and its wall time, start included."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(data), str(out)],
                          check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["samples"] == samples == pq.read_metadata(out).num_rows
    return {"peak_rss_mb": figures["peak_kb"] / 1024, "loaded_rss_mb": figures["loaded_kb"] / 1024, "s": seconds,
            "input_mb": data.stat().st_size / 2**20}


def _memory(folder: Path, rows: int) -> dict[str, float]:
    """Peak memory of predicting `rows` rows written as one row group, and in small ones."""
    model = make_model_folder(folder / "small-model", mappers=({"kind": "linear"},))
    samples = rows * 3 // 5  # two rows for two samples in three, one for the third
    peaks = {}
    for name, group in (("one_group", rows), ("small_groups", SMALL_GROUP_ROWS)):
        data = write_input(folder / f"input-{name}.parquet", samples, group)
        peaks[name] = peak_memory(model, data, folder / f"out-{name}.parquet", samples)
        data.unlink()
    one, small = peaks["one_group"], peaks["small_groups"]
    return {"predict_1m_rows_one_group_peak_rss_mb": one["peak_rss_mb"],
            "predict_1m_rows_small_groups_peak_rss_mb": small["peak_rss_mb"],
            "predict_1m_rows_loaded_rss_mb": small["loaded_rss_mb"],
            "predict_peak_rss_one_group_ratio": one["peak_rss_mb"] / small["peak_rss_mb"],
            "predict_1m_rows_input_mb": one["input_mb"], "predict_1m_rows_s": small["s"]}


def run(full: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="cscf-bench-predict-") as tmp:
        figures = _throughput(Path(tmp), SAMPLES["full" if full else "default"])
        figures |= _memory(Path(tmp), MEMORY_ROWS)
    return figures


if __name__ == "__main__":
    print(run("--full" in sys.argv))
