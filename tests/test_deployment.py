"""`cscf/full-pipeline` through a real local server, `prefect deploy` and a process worker
(scripts/prefect_local.sh), as users run it. About a minute on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks.ingest.default_dataset import default_classes_path
from tasks.store.inputs import read_classes

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # typically about 90 s (both runs); 420 s seen on a loaded 2-core machine


@pytest.mark.deployment
def test_full_pipeline_deployment_completes_on_a_worker(tmp_path):
    """On the embedded default dataset, as the README's first command runs it (fewer epochs)."""
    params = {"workspace": str(tmp_path / "ws"), "out": str(tmp_path / "out"), "epochs": 1}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # the script sets its own
    env["VENV_BIN"] = str(Path(sys.executable).parent)
    # then, on the same server and worker, `cscf-predict/predict` with the model the first run wrote
    samples = _default_samples(tmp_path / "new.parquet")
    predict = {"model": str(tmp_path / "out" / "model"), "features": str(tmp_path / "new.parquet"),
               "out": str(tmp_path / "pred.parquet"), "workspace": str(tmp_path / "ws")}
    env |= {"CSCF_THEN": "cscf-predict/predict", "CSCF_THEN_PARAMS": json.dumps({"params": predict})}
    script = subprocess.Popen(["bash", str(ROOT / "scripts" / "prefect_local.sh"), "--params", json.dumps({"params": params})],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = script.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        script.send_signal(signal.SIGTERM)  # the script cancels the run and stops server and worker
        output, _ = script.communicate(timeout=60)
        pytest.fail(f"no result within {TIMEOUT_S} s:\n{output[-3000:]}")
    assert script.returncode == 0, output[-3000:]
    assert "Flow run finished successfully in 'Completed'" in output
    assert "ended Completed" in output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["modalities"] == ["audio", "video"]
    assert metrics["dataset"] == "default"
    everything = read_classes(default_classes_path())["class_name"].tolist()
    assert sorted(metrics["classes"]["A_seen"] + metrics["classes"]["B_seen"]) == sorted(everything)
    assert "(cscf-predict/predict) ended Completed" in output
    predicted = pq.read_table(tmp_path / "pred.parquet")
    assert sorted(predicted["sample_id"].to_pylist()) == samples
    assert set(predicted["predicted_class"].to_pylist()) <= set(everything)


def _default_samples(path: Path, n: int = 40) -> list[str]:
    """n samples of the embedded default dataset, both modalities, labels kept: the predict input."""
    from tasks.ingest.default_dataset import make_default_dataset

    table = make_default_dataset(seed=0)
    ids = sorted(set(table["sample_id"].to_pylist()))[:n]
    pq.write_table(table.filter(pc.is_in(table["sample_id"], pa.array(ids))), path)
    return ids
