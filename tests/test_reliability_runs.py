"""Kills, concurrent runs and determinism (issue 14) on the tiny dataset, in real processes.

A kill here is a SIGKILL: no `finally`, no atexit, half-written files stay as they are.
The pipeline's stages run in a child process (`python tests/test_reliability_runs.py`,
the stages without Prefect, as `Stage.run` does inside the Prefect tasks), which kills
itself right after writing a chosen checkpoint, or which the test kills from outside.
Concurrency runs the real `cscf run` twice at once on one workspace, Prefect's temporary
servers included. Every comparison is on bytes: metrics.json of a resumed or concurrent
run must equal the uninterrupted run's, not merely be close.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_data, fake_llm_server when run as a script

from tiny_data import write_dataset  # noqa: E402

pytestmark = pytest.mark.slow

EPOCHS = 3
ROOT = Path(__file__).resolve().parent.parent


def run_stages(workspace: Path, features: Path, classes: Path, seed: int = 0,
               names: tuple[str, ...] | None = None, llm: str = "offline") -> dict[str, str]:
    """The pipeline's stages through `Wiring`, each as `Stage.run` (no Prefect); keys by label."""
    from flows.params import LLMParams, STAGE_NAMES, PipelineParams
    from flows.pipeline import Wiring
    from tasks.stages import STAGES

    class PlainWiring(Wiring):
        def call(self, task: Any, refresh: bool = False, **kwargs: Any) -> str:
            key = STAGES[task.name].run({"workspace": self.params.workspace, **kwargs})
            self.runs[f"{task.name}[{kwargs['method']}]" if "method" in kwargs else task.name] = {"state": "", "key": key}
            return key

    params = PipelineParams(features=str(features), classes=str(classes), modalities=["audio", "video"],
                            workspace=str(workspace), epochs=EPOCHS, seed=seed, llm=LLMParams(mode=llm))
    wiring = PlainWiring(params)
    for name in names or STAGE_NAMES:
        getattr(wiring, name)
    return wiring.summary()["keys"]


def metrics_bytes(workspace: Path, keys: dict[str, str]) -> bytes:
    return (workspace / "evaluate" / f"{keys['evaluate']}.metrics.json").read_bytes()


def child(workspace: Path, dataset: tuple[Path, Path], *args: str, env: dict[str, str] | None = None,
          wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """This file as a script: the stages in a fresh process (see `main` below)."""
    cmd = [sys.executable, __file__, str(workspace), str(dataset[0]), str(dataset[1]), *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """One uninterrupted run, in this process (its global RNG state is whatever pytest left)."""
    ws = tmp_path_factory.mktemp("reference") / "ws"
    return ws, run_stages(ws, *dataset)


# Where each child is killed, in order, and what the next run then logs. B trains before
# CSCF, so CSCF's first epoch-0001 checkpoint is the 2nd one the first child writes.
KILLS = [
    ("main training", r"\.partial/epoch-0001\.pt$", 2, "CSCF: resuming from epoch 2 of 3 (training)"),
    # the case: main training done, calibration not begun; its initial weights once
    # came from the global RNG state, which a resume that skips training leaves elsewhere
    ("between the trainings", r"\.partial/epoch-0002\.pt$", 1, "CSCF: resuming from epoch 3 of 3 (training)"),
    ("calibration training", r"/calibration/epoch-0001\.pt$", 1,
     "CSCF: resuming from epoch 2 of 3 (calibration training)"),
]


def test_sigkill_at_each_point_of_training_then_resume_gives_identical_metrics(reference, dataset, tmp_path, caplog):
    """Three SIGKILLs in a row, each run resuming the last one's work: in the main training,
    between it and the calibration's training, and in the calibration's training; the
    fourth run finishes with the uninterrupted run's metrics.json, byte for byte."""
    ref_ws, ref_keys = reference
    ws = tmp_path / "ws"
    shutil.copytree(ref_ws, ws, ignore=shutil.ignore_patterns("train", "evaluate", ".locks"))
    trained_b = ws / "train" / f"{ref_keys['train[B]']}.pt"
    logs = []
    for where, pattern, nth, _ in KILLS:
        killed = child(ws, dataset, "--kill-after", pattern, str(nth))
        assert killed.returncode == -signal.SIGKILL, f"killed in {where}:\n{killed.stdout}{killed.stderr}"
        assert not (ws / "train" / f"{ref_keys['train[CSCF]']}.pt").exists()
        logs.append(killed.stderr)
        if len(logs) == 1:  # B's model as the first kill left it: later runs must reuse it
            b_written = trained_b.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="cscf.train"):
        keys = run_stages(ws, *dataset)
    logs.append(caplog.text)
    assert keys == ref_keys
    for (where, _, _, resumed), after in zip(KILLS, logs[1:]):
        assert resumed in after, f"after the kill in {where}:\n{after}"
    assert all("B: resuming" not in log for log in logs) and trained_b.stat().st_mtime_ns == b_written  # reused
    assert metrics_bytes(ws, keys) == metrics_bytes(ref_ws, ref_keys)
    assert not list((ws / "train").glob("*.partial"))


def _answers_on_disk(cache: Path) -> dict[str, Path]:
    """Class name -> its cache file, for the answers the stage has written whole.

    The per-class files are written through `catalog.atomic_path`: a hidden temporary
    sibling (`.<name>.json.<random>.tmp`) renamed onto `<name>.json`. A SIGKILL between
    the two leaves the temporary file behind; it is not an answer (the stage never reads
    it) and must not be counted as one.
    """
    answers = {}
    for path in cache.glob("*.json"):
        if path.name.startswith("."):
            continue
        answers[json.loads(path.read_text(encoding="utf-8"))["class_name"]] = path
    return answers


def test_sigkill_during_descriptions_keeps_the_answers_received(dataset, tmp_path):
    """The LLM answers written before the kill are not asked for again, and only the
    others are; the stage output (hence every key downstream) equals an uninterrupted run's.

    What the stage guarantees is about answers on disk: an answer the HTTP client had
    received but not yet written (renamed into place) when the kill came is lost and is
    asked again, which is why the count is taken from the cache, not from the server.
    """
    from fake_llm_server import FakeLLMServer
    from tasks.semantics.descriptions import DEFAULT_TEMPLATE, load_template, render_prompt

    with FakeLLMServer(answer_delay_s=0.4) as server:
        env = {"OPENAI_API_KEY": "sk-fake-reliability", "OPENAI_BASE_URL": server.base_url}
        clean_ws, killed_ws = tmp_path / "clean", tmp_path / "killed"
        clean = child(clean_ws, dataset, "--llm", "descriptions", env=env)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        asked_clean = len(server.requests)
        classes = set(_answers_on_disk(clean_ws / "descriptions" / "per-class"))
        assert len(classes) == asked_clean

        proc = child(killed_ws, dataset, "--llm", "descriptions", env=env, wait=False)
        cache = killed_ws / "descriptions" / "per-class"
        deadline = time.monotonic() + 120
        while len(_answers_on_disk(cache)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, proc.stdout.read()
        done_before_kill = set(_answers_on_disk(cache))
        assert 2 <= len(done_before_kill) < asked_clean

        server.wait_quiet()  # requests the killed child had sent are recorded before the count
        before = len(server.requests)
        rerun = child(killed_ws, dataset, "--llm", "descriptions", env=env)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    template = load_template(DEFAULT_TEMPLATE)
    asked_again = sorted(request.prompt for request in server.requests[before:])
    assert asked_again == sorted(render_prompt(template, name) for name in classes - done_before_kill)
    clean_out, = (clean_ws / "descriptions").glob("*.parquet")
    rerun_out, = (killed_ws / "descriptions").glob("*.parquet")
    assert rerun_out.name == clean_out.name and rerun_out.read_bytes() == clean_out.read_bytes()


def _cli(workspace: Path, out: Path, dataset: tuple[Path, Path], seed: int) -> subprocess.Popen:
    """A real `cscf run` with its own temporary Prefect server; PREFECT_HOME is the workspace's."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    cmd = [sys.executable, "-m", "flows.cli", "run", "--features", str(dataset[0]), "--classes", str(dataset[1]),
           "--modalities", "audio,video", "--epochs", str(EPOCHS), "--seed", str(seed), "--llm", "offline",
           "--workspace", str(workspace), "--out", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_concurrent_runs_on_one_workspace_agree(reference, dataset, tmp_path):
    """Two `cscf run` with the same inputs and one with another seed, all at once on a fresh
    workspace: all finish; the same-seed ones write the uninterrupted run's metrics."""
    ref_ws, ref_keys = reference
    ws = tmp_path / "ws"
    runs = {name: _cli(ws, tmp_path / name, dataset, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    logs = {name: proc.communicate(timeout=400)[0] for name, proc in runs.items()}
    for name, proc in runs.items():
        assert proc.returncode == 0, f"run {name}:\n{logs[name][-3000:]}"
    server_log = (ws / ".prefect" / "temporary-server.log").read_text()  # the three servers' output
    assert "already exists" not in server_log and "startup failed" not in server_log  # none lost the race for a fresh database
    expected = metrics_bytes(ref_ws, ref_keys)
    assert (tmp_path / "a" / "metrics.json").read_bytes() == expected
    assert (tmp_path / "b" / "metrics.json").read_bytes() == expected
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["seed"] == 1
    assert not list((ws / "train").glob("*.partial"))
    import pyarrow.parquet as pq

    for table in ws.rglob("*.parquet"):  # every cache entry whole
        pq.read_table(table)


ENV_KEY = "sk-env-RELIABILITY-7f3a9c"
BLOCK_KEY = "sk-block-RELIABILITY-2b8e1d"


def test_api_keys_leave_no_trace(dataset, prefect_server, tmp_path, caplog, capfd, monkeypatch):
    """A full run with the key in OPENAI_API_KEY, then the descriptions stage with the key in
    a Prefect Secret block: neither key is in any log line, workspace or output file
    (Parquet, JSON, report, model, Prefect result records) or Prefect database row
    other than the Secret block's own."""
    import sqlite3

    from prefect.blocks.system import Secret
    from prefect.settings import get_current_settings

    from fake_llm_server import FakeLLMServer
    from flows.params import LLMParams, PipelineParams
    from flows.pipeline import cscf
    from flows.stage_flows import descriptions

    Secret(value=BLOCK_KEY).save("cscf-reliability-key", overwrite=True)
    caplog.set_level(logging.DEBUG)
    ws, out = tmp_path / "ws", tmp_path / "out"
    with FakeLLMServer() as server:
        llm = {"mode": "llm", "base_url": server.base_url}
        params = PipelineParams(features=str(dataset[0]), classes=str(dataset[1]), modalities=["audio", "video"],
                                workspace=str(ws), out=str(out), epochs=EPOCHS, llm=LLMParams(**llm))
        monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
        assert cscf(params)["states"]["descriptions"] == "Completed"
        monkeypatch.delenv("OPENAI_API_KEY")
        by_block = params.model_copy(update={"llm": LLMParams(**llm, model="other-model", secret_block="cscf-reliability-key")})
        assert descriptions(by_block)["states"]["descriptions"] == "Completed"
        used = {r.authorization for r in server.requests}
    assert used == {f"Bearer {ENV_KEY}", f"Bearer {BLOCK_KEY}"}  # both keys really were used

    captured = capfd.readouterr()
    texts = {"log records": caplog.text, "stdout": captured.out, "stderr": captured.err}
    for f in [*ws.rglob("*"), *out.rglob("*")]:
        if f.is_file():
            texts[str(f)] = f.read_bytes().decode("latin-1")
    db = Path(get_current_settings().server.database.connection_url.get_secret_value().split("///", 1)[1])
    with sqlite3.connect(db) as con:
        texts["prefect database"] = "\n".join(line for line in con.iterdump() if "block_document" not in line)
    assert "task_run" in texts["prefect database"] and len(texts) > 20
    leaks = [where for where, text in texts.items() if ENV_KEY in text or BLOCK_KEY in text]
    assert leaks == []


def main(argv: list[str]) -> None:
    """Child process: `WS FEATURES CLASSES [--kill-after REGEX N] [--llm STAGE]`.

    --kill-after: SIGKILL this process right after the N-th training checkpoint whose path
    matches REGEX is written. --llm STAGE: descriptions by the LLM in the environment
    (OPENAI_*), running the stages up to STAGE only.
    """
    workspace, features, classes, *rest = argv
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    names, llm = None, "offline"
    if rest[:1] == ["--kill-after"]:
        from tasks.training import train as train_stage

        pattern, nth, real_save, seen = re.compile(rest[1]), int(rest[2]), train_stage._save, []

        def save_then_die(state: dict[str, Any], path: Path) -> None:
            real_save(state, path)
            if pattern.search(path.as_posix()):
                seen.append(path)
                if len(seen) == nth:
                    os.kill(os.getpid(), signal.SIGKILL)

        train_stage._save = save_then_die
    elif rest[:1] == ["--llm"]:
        names, llm = (rest[1],), "llm"
    print(json.dumps(run_stages(Path(workspace), Path(features), Path(classes), names=names, llm=llm)))


if __name__ == "__main__":
    main(sys.argv[1:])
