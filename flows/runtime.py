"""The Prefect runtime of a `cscf` command, set up at the edge before any flow runs:
settings that keep Prefect local and quiet, the temporary server, and what Ctrl-C and
SIGTERM do (CONTRACTS section 2: stop in seconds, one line, exit 130 / 143, no process
left behind, a rerun resumes)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Iterator

log = logging.getLogger("cscf")

SERVER_STOP_S = 5.0  # a polite SIGTERM first; SIGKILL after this


def prefect_env(workspace: str) -> None:
    """Keep Prefect local and quiet before it is imported: no analytics, state inside the workspace."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "cscf")
    if "PREFECT_API_URL" not in os.environ:
        home = Path(os.environ.setdefault("PREFECT_HOME", str(Path(workspace).resolve() / ".prefect")))
        home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class TemporaryServer:
    """Prefect's API server for one `cscf` command, as Prefect's own temporary server runs it
    (uvicorn on 127.0.0.1, no UI), with two differences that make stopping clean:

    - it runs in a session of its own, so a terminal's Ctrl-C (sent to the whole foreground
      process group) does not reach it: the client can still record the interrupted run,
      where Prefect's own server died with the client and left it retrying for minutes;
    - it asks Linux for SIGTERM when its parent dies (PR_SET_PDEATHSIG), so a `cscf` killed
      by SIGKILL, which no handler can catch, leaves no server behind.
    """

    def __init__(self, home: Path, timeout_s: float) -> None:
        self.log_path, self.timeout_s = home / "temporary-server.log", timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, attempts: int = 3) -> None:
        """Start and wait until it answers. A port found free can be taken by another process
        before uvicorn binds it; the server then exits at once, and another port is tried."""
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(attempts):
            self._launch()
            while not self._healthy():
                if self.process.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the temporary Prefect server did not answer within {self.timeout_s:.0f} s "
                                       f"(its log: {self.log_path})")
                time.sleep(0.1)
            else:
                return
        raise RuntimeError(f"the temporary Prefect server exited with code {self.process.returncode}, "
                           f"{attempts} times (its log: {self.log_path})")

    def _launch(self) -> None:
        import prefect

        with socket.socket() as s:  # a free port on loopback; uvicorn binds it a moment later
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent),
                   "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        log.info("Starting temporary Prefect server on 127.0.0.1:%d", self.port)
        with self.log_path.open("ab") as server_log:  # a file, not a pipe nobody reads: a full pipe blocks
            self.process = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent(),
                                            stdout=server_log, stderr=server_log)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """At once, for a second Ctrl-C: no waiting."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def _die_with_parent():  # -> Callable[[], None] | None, run in the child between fork and exec
    """The child's PR_SET_PDEATHSIG = SIGTERM, on Linux; elsewhere nothing (no such call)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call: no signal would come
            os._exit(1)

    return arm


_server: TemporaryServer | None = None


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """Flows in this block report to a Prefect API: the user's (PREFECT_API_URL) or a
    temporary server for this command, stopped at the end of the block.

    Starting is serialised per PREFECT_HOME: two `cscf run` on one workspace share its
    database, and two servers migrating a fresh database at once collide ("table already
    exists"); the second waits for the first to answer, then finds the tables made.
    """
    global _server
    from filelock import FileLock
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    from prefect.settings import temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    server = TemporaryServer(home, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    try:
        with FileLock(home / "cscf-server-start.lock"):
            server.start()
    except BaseException:  # Ctrl-C while it starts: not left to its parent-death signal
        server.stop()
        raise
    _server = server
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield
            except BaseException:
                stopping()  # interrupted or failed: a second Ctrl-C must not wait for what follows
                raise
            finally:
                _drain_prefect_services()
    finally:
        _server = None
        server.stop()


def _drain_prefect_services() -> None:
    """Send the events and logs Prefect still holds while the server can take them; left to
    exit time, they would go to a stopped server and fill the terminal with errors."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=SERVER_STOP_S)


# Exit codes of a command stopped by a signal, as shells report them: 128 + the signal.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached `cscf`; a KeyboardInterrupt so that Prefect records the run
    as crashed and every `finally` on the way out runs (atomic writes leave no half file)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` in the main thread (SIGTERM's default would end
    the process with no cleanup at all). Prefect raises its own TerminationSignal for SIGTERM
    while a flow runs; `cscf` treats both alike. A second signal while stopping ends the
    process at once, killing the temporary server first."""
    previous = {s: signal.getsignal(s) for s in EXIT_CODES}
    quiet = _QuietOnceInterrupted()

    def first(signum: int, frame: FrameType | None) -> None:
        stopping()
        quiet.interrupted = True
        raise Interrupted(signum)

    for s in EXIT_CODES:
        signal.signal(s, first)
    for name in PREFECT_RUN_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        yield
    finally:
        for name in PREFECT_RUN_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
        for s, handler in previous.items():
            signal.signal(s, handler)


PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _QuietOnceInterrupted(logging.Filter):
    """After an interrupt, Prefect logs "Crash detected!" and "Finished in state Crashed" for
    every run on the way out; the command's one line says it all. Prefect's own SIGTERM
    handler bypasses ours while a flow runs, so the first record logged while an interrupt
    is being handled also marks the run as interrupted."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.exceptions import TerminationSignal

        if not self.interrupted:
            handled = sys.exc_info()[1] or (record.exc_info or (None, None))[1]
            self.interrupted = isinstance(handled, (KeyboardInterrupt, TerminationSignal))
        return not self.interrupted


def stopping() -> None:
    """From now on a signal ends the process at once: the user asked twice."""
    def now(signum: int, frame: FrameType | None) -> None:
        if _server is not None:
            _server.kill()
        os._exit(EXIT_CODES.get(signal.Signals(signum), 128 + signum))

    for s in EXIT_CODES:
        signal.signal(s, now)
