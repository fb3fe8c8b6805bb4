"""`cscf/full-pipeline` through a real local server, `prefect deploy` and a process worker
(scripts/prefect_local.sh), as users run it. About a minute on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.default_dataset import default_classes_path
from tasks.features import read_classes

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # typically about 70 s; the margin is for a loaded machine


@pytest.mark.deployment
def test_full_pipeline_deployment_completes_on_a_worker(tmp_path):
    """On the embedded default dataset, as the README's first command runs it (fewer epochs)."""
    params = {"workspace": str(tmp_path / "ws"), "out": str(tmp_path / "out"), "epochs": 1}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # the script sets its own
    env["VENV_BIN"] = str(Path(sys.executable).parent)
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
