"""The Prefect runtime of a `cscf` command, set up at the edge before any flow runs:
settings that keep Prefect local and quiet, and the temporary server."""

from __future__ import annotations

import os
from pathlib import Path


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


def start_temporary_server() -> None:
    """Start Prefect's temporary server now, one process at a time per PREFECT_HOME.

    Two `cscf run` on one workspace share its Prefect database; started together, both
    servers create the tables of a fresh database and one exits ("table ... already
    exists"), then restarts late or times out. Holding a lock in PREFECT_HOME until the
    server answers lets the first finish the migrations; the second then finds them done.
    """
    from filelock import FileLock
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value():  # a server of the user's (or of the tests)
        return
    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(home / "cscf-server-start.lock"):
        SubprocessASGIServer().start()
