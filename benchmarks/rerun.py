"""Cached rerun: a second `cscf run` on unchanged inputs against the start-up it cannot avoid.

A rerun whose every stage is a cache hit still starts Python, imports torch, Prefect and
the stages, starts Prefect's temporary in-process server and runs a flow. The floor is
exactly that with a trivial flow (one no-op task), in a subprocess started the same way
on the same workspace; what the rerun takes beyond it is the price of the caching
itself (cache keys from file and code hashes, cached results read back) and of writing
metrics.json and report.md again.

    python -m benchmarks --only rerun [--full]
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from benchmarks import REPO_ROOT

# The tests' tiny dataset, imported as pytest does: a third-party wheel in the
# environment ships a top-level `tests` package that hides ours.
sys.path.insert(0, str(REPO_ROOT / "tests"))
from tiny_data import write_dataset  # noqa: E402

EPOCHS = 2


def _timed(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (the process and the children it waited for: Prefect's
    server) and stdout of `command` run from the repository root; a failure raises."""
    cpu_before = _children_cpu_s()
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return wall, _children_cpu_s() - cpu_before, done.stdout


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _stage_states(stdout: str) -> dict[str, str]:
    """The `stages: name=State, ...` line that `cscf run` prints last."""
    found = re.findall(r"^stages: (.*)$", stdout, flags=re.MULTILINE)
    if not found:
        raise RuntimeError(f"no 'stages:' line in the output of cscf run:\n{stdout[-2000:]}")
    return dict(item.split("=", 1) for item in found[-1].split(", "))


def cached_rerun(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of `command`, a `cscf run` that must find every stage cached."""
    wall, cpu, stdout = _timed(command)
    missed = {k: v for k, v in _stage_states(stdout).items() if v != "Cached"}
    if missed:
        raise RuntimeError(f"the rerun was not fully cached (inputs or code changed meanwhile?): {missed}")
    return wall, cpu


def floor_command(workspace: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.rerun", str(workspace)]


def floor(workspace: str) -> None:
    """The floor's subprocess: the CLI's Prefect environment, its imports, a trivial flow."""
    from flows import cli, runtime  # noqa: F401  (cli: the imports `cscf` pays)

    runtime.prefect_env(workspace)
    import flows.pipeline  # noqa: F401  (torch, the model, every stage: what `cscf run` imports)
    from prefect import flow, task

    @task
    def noop() -> None:
        pass

    @flow(name="cscf-floor")
    def trivial() -> None:
        noop()

    state = trivial(return_state=True)
    print(f"floor: {state.name}")
    if not state.is_completed():
        raise SystemExit(1)


def run(full: bool = False) -> dict[str, float]:
    """Best wall and CPU seconds of the cached rerun and of the floor (alternating), and their ratios.

    On a machine shared with other jobs both swing by a fifth to a third from one run
    to the next (CPU time too: contended cores run slower), hence the repeats.
    """
    repeats = 3 if full else 2
    with tempfile.TemporaryDirectory() as tmp:
        features, classes = write_dataset(Path(tmp) / "data")
        workspace = Path(tmp) / "workspace"
        command = [
            sys.executable, "-m", "flows.cli", "run", "--features", str(features), "--classes", str(classes),
            "--epochs", str(EPOCHS), "--workspace", str(workspace), "--out", str(Path(tmp) / "out"),
        ]
        first_s = _timed(command)[0]  # computes and caches every stage
        rerun, base = [float("inf")] * 2, [float("inf")] * 2
        for _ in range(repeats):
            rerun = [min(a, b) for a, b in zip(rerun, cached_rerun(command))]
            base = [min(a, b) for a, b in zip(base, _timed(floor_command(workspace))[:2])]
    return {
        "first_run_s": first_s,
        "cached_rerun_s": rerun[0],
        "rerun_floor_s": base[0],
        "cached_rerun_ratio": rerun[0] / base[0],
        "cached_rerun_cpu_s": rerun[1],
        "rerun_floor_cpu_s": base[1],
        "cached_rerun_cpu_ratio": rerun[1] / base[1],
    }


PROMPTS = ("A recording of {class_name}.", "The sight and the sound of {class_name}.", "{class_name}, up close.")


def _write_prompt(folder: Path, index: int) -> Path:
    path = folder / f"offline-{index}.txt"
    path.write_text(PROMPTS[index % len(PROMPTS)] + "\n")
    return path


def own_work_s(command: list[str], workspace: Path) -> tuple[float, list[str]]:
    """Seconds the stages that `command` (a `cscf run`) would recompute on `workspace` take
    themselves, run here in-process through the pipeline's own wiring with no Prefect, on
    a copy of the workspace; and their labels."""
    from flows import cli
    from flows.pipeline import Wiring
    from tasks.stages import STAGES

    seconds: dict[str, float] = {}

    class Timed(Wiring):
        def call(self, task: object, refresh: bool = False, **kwargs: object) -> str:
            stage, params = STAGES[task.name], {"workspace": self.params.workspace, **kwargs}
            built = stage.is_built(self.params.workspace, stage.key(params))
            began = time.perf_counter()
            key = stage.run(params)
            if not built:
                label = f"{task.name}[{kwargs['method']}]" if "method" in kwargs else task.name
                seconds[label] = time.perf_counter() - began
            return key

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "workspace"
        shutil.copytree(workspace, copy, ignore=shutil.ignore_patterns(".prefect", ".prefect-results", ".locks"))
        args = cli.parser().parse_args(command[3:])
        args.workspace, args.out = str(copy), None
        Timed(cli.pipeline_params(args)).evaluate
    return sum(seconds.values()), list(seconds)


def prompt_change_rerun(command: list[str], workspace: Path, prompt: Path) -> dict[str, float]:
    """A rerun after the description prompt changed: its wall time against the own work of
    the stages it recomputes (descriptions and everything downstream of them)."""
    changed = [*command, "--offline-template", str(prompt)]
    # Best of 2: the first in-process run also pays imports and the text encoder's loading,
    # which the second (and the server case, measured after it) does not.
    own_s, recomputed = min(own_work_s(changed, workspace) for _ in range(2))
    wall, cpu, stdout = _timed(changed)
    states = _stage_states(stdout)
    cached = {k for k, v in states.items() if v == "Cached"}
    if cached != {"features", "split"} or set(recomputed) != set(states) - cached:
        raise RuntimeError(f"a prompt change should recompute all but features and split; states {states}")
    return {"prompt_rerun_s": wall, "prompt_rerun_own_work_s": own_s, "prompt_rerun_ratio": wall / own_s}


@contextlib.contextmanager
def local_server(home: Path) -> Iterator[str]:
    """A `prefect server start` on a free port of 127.0.0.1 for the block; yields its API URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"prefect server on port {port} did not answer (exit {server.poll()})")
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_with_server(full: bool = False) -> dict[str, float]:
    """The two reruns users make many times a day, first as `cscf run` makes them (temporary
    server), then against a long-running local server (PREFECT_API_URL), which skips it."""
    with tempfile.TemporaryDirectory() as tmp:
        features, classes = write_dataset(Path(tmp) / "data")
        workspace = Path(tmp) / "workspace"
        command = [
            sys.executable, "-m", "flows.cli", "run", "--features", str(features), "--classes", str(classes),
            "--epochs", str(EPOCHS), "--workspace", str(workspace), "--out", str(Path(tmp) / "out"), "--llm", "offline",
        ]
        start = [*command, "--offline-template", str(_write_prompt(Path(tmp), 0))]
        _timed(start)
        figures = prompt_change_rerun(command, workspace, _write_prompt(Path(tmp), 1))
        with local_server(Path(tmp) / "server-home") as url:
            os.environ["PREFECT_API_URL"] = url
            try:
                served = prompt_change_rerun(command, workspace, _write_prompt(Path(tmp), 2))
                cached = min(cached_rerun([*command, "--offline-template", str(_write_prompt(Path(tmp), 2))])[0]
                             for _ in range(2))
            finally:
                del os.environ["PREFECT_API_URL"]
    return {**figures, **{f"server_{k}": v for k, v in served.items()}, "server_cached_rerun_s": cached}


if __name__ == "__main__":
    floor(sys.argv[1])  # the floor's subprocess: python -m benchmarks.rerun WORKSPACE
