"""Ctrl-C, SIGTERM and SIGKILL of a real `cscf run` (issue 20, CONTRACTS section 2).

Each run is the real command line (`flows.cli.main`) in its own process group on a
pseudo-terminal, as a shell runs it in the foreground; the signal goes to the whole group,
as a terminal's Ctrl-C and `timeout`/systemd/Docker's SIGTERM do. To interrupt at a known
point whatever the machine's speed, the child runs this file as a script: it spies on the
pipeline (tasks.training.train._save, tasks.evaluation.evaluate.encode_test), prints a
marker there and waits for the signal. The spies change no source, so cache keys and
metrics are those of an ordinary run.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_data when run as a script

from tiny_data import write_dataset  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 3
MARKER = "cscf-test: paused"
STOP_WITHIN_S = 10.0
# What must never reach the terminal of an interrupted run.
NOISE = ("Traceback", "EventsWorker", "Error logging to API", "ConnectError", "Crash detected")


def cli_args(dataset: tuple[Path, Path], workspace: Path, out: Path) -> list[str]:
    return ["run", "--features", str(dataset[0]), "--classes", str(dataset[1]), "--modalities", "audio,video",
            "--epochs", str(EPOCHS), "--llm", "offline", "--workspace", str(workspace), "--out", str(out)]


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: no Prefect server of the tests, no Prefect home."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    return {**env, "PYTHONPATH": str(ROOT)}


class Terminal:
    """A child process group on a pseudo-terminal (80x24), with its output collected."""

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.proc = subprocess.Popen([sys.executable, __file__, *argv], stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True, cwd=ROOT, env=clean_env())
        os.close(slave)
        self.master, self.output = master, b""

    def read_until(self, marker: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while marker.encode() not in self.output:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.text()[-3000:]
            self._read(0.2)

    def _read(self, wait_s: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], wait_s)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every writer of the terminal has gone
            return False
        self.output += chunk
        return bool(chunk)

    def wait(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        while self._read(0.1) and self.proc.poll() is not None and time.monotonic() < deadline + 2:
            pass
        os.close(self.master)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"still running {timeout_s:.0f} s after the signal:\n{self.text()[-3000:]}")
        return self.proc.returncode

    def text(self) -> str:
        return self.output.decode(errors="replace")


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, whatever session it moved to (the Prefect server's own)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with_children = task / "children"
            children = {int(c) for c in with_children.read_text().split()} if with_children.exists() else set()
            todo += list(children - found)
            found |= children
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (a zombie has exited: its parent just has not reaped it)."""
    running = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state != "Z":
            running.add(pid)
    return running


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> bytes:
    """metrics.json of an uninterrupted `cscf run`."""
    root = tmp_path_factory.mktemp("reference")
    done = subprocess.run([sys.executable, "-m", "flows.cli", *cli_args(dataset, root / "ws", root / "out")],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return (root / "out" / "metrics.json").read_bytes()


def interrupt(dataset, root: Path, pause: str, signum: int, second_after_s: float | None = None) -> tuple[int, str, set[int]]:
    """Run `cscf run` until it pauses at `pause`, send `signum` to its process group (twice
    when `second_after_s` is given) and wait: (exit code, terminal output after the signal,
    the processes it had started)."""
    term = Terminal(["--pause", pause, *cli_args(dataset, root / "ws", root / "out")])
    term.read_until(MARKER, timeout_s=300)
    started, before = descendants(term.proc.pid), len(term.output)
    sent = time.monotonic()
    os.killpg(term.proc.pid, signum)
    if second_after_s is not None:
        time.sleep(second_after_s)
        os.killpg(term.proc.pid, signum)
    code = term.wait(STOP_WITHIN_S)
    assert time.monotonic() - sent < STOP_WITHIN_S
    return code, term.output[before:].decode(errors="replace"), started


def rerun(dataset, root: Path) -> tuple[bytes, str]:
    done = subprocess.run([sys.executable, "-m", "flows.cli", *cli_args(dataset, root / "ws", root / "out")],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return (root / "out" / "metrics.json").read_bytes(), done.stderr


def one_line(output: str) -> str:
    """The interrupted run's own line; nothing of Prefect's crash reporting around it."""
    for noise in NOISE:
        assert noise not in output, output
    lines = [line for line in output.splitlines() if line.startswith("cscf:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_training_stops_in_seconds_and_the_rerun_resumes(dataset, reference, tmp_path, signum, code):
    exit_code, output, started = interrupt(dataset, tmp_path, "training", signum)
    assert exit_code == code
    assert one_line(output) == ("cscf: interrupted during train[CSCF]; CSCF training: epoch 2 of 3 saved; "
                                "rerun the same command to resume")
    assert started and alive(started) == set()  # the temporary server too, though in a session of its own
    assert not (tmp_path / "out").exists()
    metrics, log = rerun(dataset, tmp_path)
    assert "CSCF: resuming from epoch 2 of 3 (training)" in log  # its last checkpoint: the second epoch
    assert metrics == reference


def test_ctrl_c_during_evaluation_stops_and_the_rerun_evaluates(dataset, reference, tmp_path):
    exit_code, output, started = interrupt(dataset, tmp_path, "evaluation", signal.SIGINT)
    assert exit_code == 130
    assert one_line(output) == ("cscf: interrupted during evaluate; finished stages are cached; "
                                "rerun the same command to resume")
    assert alive(started) == set()
    assert not list((tmp_path / "ws" / "evaluate").glob("*"))  # no half-written output
    metrics, log = rerun(dataset, tmp_path)
    assert "training: epoch" not in log  # every training was cached
    assert metrics == reference


def test_a_second_ctrl_c_while_stopping_exits_at_once(dataset, tmp_path):
    exit_code, output, started = interrupt(dataset, tmp_path, "evaluation", signal.SIGINT, second_after_s=0.05)
    assert exit_code == 130
    assert "Traceback" not in output
    time.sleep(1)  # the server's SIGKILL is sent, its exit may lag a moment
    assert alive(started) == set()


def test_after_sigkill_no_process_of_the_run_is_left(dataset, tmp_path):
    term = Terminal(["--pause", "training", *cli_args(dataset, tmp_path / "ws", tmp_path / "out")])
    term.read_until(MARKER, timeout_s=300)
    started = descendants(term.proc.pid)
    assert started, "the run started no server"
    term.proc.kill()  # the main process only: no handler runs, nothing is cleaned up by it
    term.wait(STOP_WITHIN_S)
    deadline = time.monotonic() + 30
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive(started) == set()


def _pause(what: str) -> None:
    print(f"{MARKER} in {what}", flush=True)
    time.sleep(120)  # the test's signal ends this sleep


def _spy(pause: str) -> None:
    """Pause the pipeline at one point: when CSCF is about to save its third epoch, the second
    and saved (B trains first, so that is the second `*.partial/epoch-0002.pt`), or when the
    evaluation starts encoding the test set."""
    if pause == "training":
        from tasks.training import train

        real_save: Callable[[dict[str, Any], Path], None] = train._save
        third_epochs: list[Path] = []

        def pause_then_save(state: dict[str, Any], path: Path) -> None:
            if path.name == "epoch-0002.pt" and path.parent.name.endswith(".partial"):
                third_epochs.append(path)
                if len(third_epochs) == 2:
                    _pause("training")
            real_save(state, path)

        train._save = pause_then_save
    else:
        from tasks.evaluation import evaluate

        real_encode = evaluate.encode_test

        def pause_then_encode(*args: Any, **kwargs: Any) -> Any:
            _pause("evaluation")
            return real_encode(*args, **kwargs)

        evaluate.encode_test = pause_then_encode


if __name__ == "__main__":
    from flows.cli import main

    argv = sys.argv[1:]
    if argv[:1] == ["--pause"]:
        _spy(argv[1])
        argv = argv[2:]
    sys.exit(main(argv))
